// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * fuzz_winpath.c - locator paths mapped into a store (chain/winpath.c). Input: up to four
 * NUL-separated fields, the stored locator path, the child's folder, winroot and the store's
 * absolute path. The stored path and winroot are made valid UTF-8 (the locator decoders and the
 * command line only give that); the child's folder is made canonical, as the store index gives
 * it (its bytes stay raw: file names need not be UTF-8).
 *
 * Oracles: parsed components hold no "" or "." (and no ".." for absolute paths); every candidate
 * not marked outside is a canonical store-relative path (no "", ".", ".." component, no leading
 * "/"); a lookup of it in a small real store (with symlinks out of it) finds only canonical paths
 * whose real path lies inside the store; component comparison is symmetric.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "winpath.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *store_real;
static int store_fd = -1;
static char *store_top;

static void store_remove(void)
{
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", store_top);
    if (system(cmd) != 0)
        fprintf(stderr, "fuzz_winpath: could not remove %s\n", store_top);
}

static void fail(const char *what, const char *a, const char *b)
{
    fprintf(stderr, "fuzz oracle: %s: \"%s\" \"%s\"\n", what, a ? a : "(null)", b ? b : "(null)");
    abort();
}

static void mk(const char *rel, bool dir)
{
    g_autofree char *p = g_build_filename(store_real, rel, NULL);
    if (dir ? g_mkdir_with_parents(p, 0755) < 0 : !g_file_set_contents(p, "x", 1, NULL))
        fail("cannot build the test store", p, g_strerror(errno));
}

static void ln(const char *target, const char *rel)
{
    g_autofree char *p = g_build_filename(store_real, rel, NULL);
    if (symlink(target, p) < 0)
        fail("cannot build the test store", p, g_strerror(errno));
}

/* A store: STORE/VMs/{Base.vhdx, sub/Child.avhdx, in -> sub, out -> ../.., abs -> /etc}. */
static void store_init(void)
{
    if (store_fd >= 0)
        return;
    char *top = store_top = g_dir_make_tmp("vh-fuzz-winpath-XXXXXX", NULL);
    if (!top)
        fail("cannot make a temporary folder", g_get_tmp_dir(), NULL);
    atexit(store_remove);
    g_autofree char *store = g_build_filename(top, "store", NULL);
    if (g_mkdir_with_parents(store, 0755) < 0 || !(store_real = realpath(store, NULL)))
        fail("cannot make the test store", store, NULL);
    mk("VMs/sub", true);
    mk("VMs/Base.vhdx", false);
    mk("VMs/sub/Child.avhdx", false);
    mk("Ünïcode Dir", true);
    mk("Ünïcode Dir/Disk.VHD", false);
    g_autofree char *outside = g_build_filename(top, "outside.vhdx", NULL);
    g_file_set_contents(outside, "x", 1, NULL);
    ln("sub", "VMs/in");
    ln("../..", "VMs/out");
    ln("../../outside.vhdx", "VMs/escape.vhdx");
    ln("/etc", "VMs/abs");
    store_fd = open(store_real, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (store_fd < 0)
        fail("cannot open the test store", store_real, NULL);
}

static bool canonical(const char *rel)
{
    if (!rel || !*rel || rel[0] == '/')
        return false;
    g_auto(GStrv) parts = g_strsplit(rel, "/", -1);
    for (char **c = parts; *c; c++)
        if (!**c || strcmp(*c, ".") == 0 || strcmp(*c, "..") == 0)
            return false;
    return true;
}

/* The child's folder as the index gives it: components joined by "/", none empty/"."/"..". */
static char *canonical_dir(const char *raw)
{
    g_auto(GStrv) parts = g_strsplit(raw, "/", -1);
    GPtrArray *keep = g_ptr_array_new();
    for (char **c = parts; *c; c++)
        if (**c && strcmp(*c, ".") != 0 && strcmp(*c, "..") != 0)
            g_ptr_array_add(keep, *c);
    g_ptr_array_add(keep, NULL);
    char *dir = g_strjoinv("/", (char **)keep->pdata);
    g_ptr_array_free(keep, TRUE);
    return dir;
}

static void check_parse(const char *stored)
{
    vh_winpath p;
    if (!vh_winpath_parse(stored, &p))
        return;
    for (char **c = p.parts; *c; c++) {
        if (!**c || strcmp(*c, ".") == 0)
            fail("parsed component empty or \".\"", stored, *c);
        if (p.kind != VH_WP_RELATIVE && strcmp(*c, "..") == 0)
            fail("\"..\" left in an absolute path", stored, *c);
    }
    vh_winpath_clear(&p);
}

static void check_lookup(const char *rel)
{
    g_autofree char *found = NULL;
    if (vh_winpath_lookup(store_fd, store_real, rel, &found) != 0)
        return;
    if (!canonical(found))
        fail("lookup found a non-canonical path", rel, found);
    g_autofree char *joined = g_build_filename(store_real, found, NULL);
    g_autofree char *real = realpath(joined, NULL);
    size_t n = strlen(store_real);
    if (!real || strncmp(real, store_real, n) != 0 || real[n] != '/')
        fail("lookup found a file outside the store", rel, real);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    store_init();
    /* fields; a copy with a final NUL so that every field is a C string */
    g_autofree char *buf = g_malloc(size + 1);
    memcpy(buf, data, size);
    buf[size] = '\0';
    const char *field[4] = {NULL, NULL, NULL, NULL};
    size_t nf = 0;
    for (char *p = buf; nf < 4 && p <= buf + size; p += strlen(p) + 1)
        field[nf++] = p;
    g_autofree char *stored = g_utf8_make_valid(field[0], -1);
    g_autofree char *child_dir = canonical_dir(field[1] ? field[1] : "");
    g_autofree char *winroot = field[2] ? g_utf8_make_valid(field[2], -1) : NULL;
    const char *store_abs = field[3];

    check_parse(stored);
    if (winroot)
        check_parse(winroot);
    if (field[1] && vh_winpath_component_equal(field[0], field[1]) !=
                        vh_winpath_component_equal(field[1], field[0]))
        fail("component comparison is not symmetric", field[0], field[1]);

    g_autoptr(GPtrArray) cands = vh_winpath_candidates(stored, child_dir, winroot, store_abs);
    for (guint i = 0; i < cands->len; i++) {
        const vh_wp_candidate *c = cands->pdata[i];
        if (c->outside)
            continue;
        if (!canonical(c->rel))
            fail("candidate is not a canonical store-relative path", stored, c->rel);
        if (i < 6)
            check_lookup(c->rel);
    }
    g_free(vh_winpath_relative(field[0], field[1] ? field[1] : ""));
    if (*child_dir) {
        g_autofree char *w = vh_winpath_to_windows(child_dir, winroot ? winroot : "D:\\VMs");
        g_autofree char *back = vh_winpath_from_posix(child_dir);
        (void)w;
        (void)back;
    }
    return 0;
}
