// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * fuzz_journal.c - reading the repair journal back: the input is STORE/.vhdheal/journal of a
 * temporary store, opened and listed through the public API (vh_journal_open, vh_journal_list),
 * so that the target follows the journal's record format wherever it goes. Nothing is rolled
 * back or undone: those write the children the journal names.
 *
 * Oracle: every listed repair has an id, a child and both links, and a known state.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "journal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *store;
static char *journal_path;

static void fail(const char *what)
{
    fprintf(stderr, "fuzz oracle: %s\n", what);
    abort();
}

static void store_remove(void)
{
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", store);
    if (system(cmd) != 0)
        fprintf(stderr, "fuzz_journal: could not remove %s\n", store);
}

static void store_init(void)
{
    if (store)
        return;
    store = g_dir_make_tmp("vh-fuzz-journal-XXXXXX", NULL);
    if (!store)
        fail("cannot make a temporary store");
    atexit(store_remove);
    g_autofree char *dir = g_build_filename(store, ".vhdheal", NULL);
    if (g_mkdir_with_parents(dir, 0755) < 0)
        fail("cannot make STORE/.vhdheal");
    journal_path = g_build_filename(dir, "journal", NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    store_init();
    int fd = open(journal_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, data, size) != (ssize_t)size || close(fd) < 0)
        fail("cannot write the journal");
    g_autoptr(GError) err = NULL;
    g_autoptr(vh_journal) j = NULL;
    if (vh_journal_open(store, &j, &err) < 0)
        fail("cannot open the journal");
    g_autoptr(GPtrArray) list = NULL;
    if (vh_journal_list(j, &list, &err) < 0)
        return 0;
    for (guint i = 0; i < list->len; i++) {
        const vh_repair_info *r = list->pdata[i];
        if (!r->id || !r->child || !r->old_link || !r->new_link)
            fail("a listed repair lacks a field");
        if (r->state < VH_REPAIR_OPEN || r->state > VH_REPAIR_UNDONE)
            fail("a listed repair has an unknown state");
    }
    return 0;
}
