/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * tmpfix.h - what the format engines' unit tests share: a fresh temporary folder for each test
 * (cmocka setup/teardown; the teardown also disarms the fault injector and restores
 * durability, so one failed test cannot leak them into the next), paths in it, a whole file as
 * bytes, and a disk's `info` fields as a hash table. Include it in one test file only.
 */
#ifndef VH_TEST_TMPFIX_H
#define VH_TEST_TMPFIX_H

#include <stdlib.h>

#include "disk.h"

static char *tmp_dir;

static int tmp_setup(void **state)
{
    tmp_dir = g_dir_make_tmp("vh-unit-XXXXXX", NULL);
    return tmp_dir ? 0 : -1;
}

static int tmp_teardown(void **state)
{
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", tmp_dir);
    int rc = system(cmd);
    g_clear_pointer(&tmp_dir, g_free);
    vh_fault_disarm();
    vh_io_set_durable(true);
    return rc == 0 ? 0 : -1;
}

/* A path in this test's folder (new string). */
G_GNUC_UNUSED static char *tpath(const char *name)
{
    return g_build_filename(tmp_dir, name, NULL);
}

G_GNUC_UNUSED static GBytes *file_bytes(const char *path)
{
    gchar *data = NULL;
    gsize len = 0;
    if (!g_file_get_contents(path, &data, &len, NULL))
        fail_msg("cannot read %s", path);
    return g_bytes_new_take(data, len);
}

G_GNUC_UNUSED static void info_get(void *ctx, const char *key, const char *value)
{
    g_hash_table_insert(ctx, g_strdup(key), g_strdup(value));
}

/* The format's `info` fields of d: key -> value text. */
G_GNUC_UNUSED static GHashTable *info_of(vh_disk *d)
{
    GHashTable *h = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    d->ops->info(d, info_get, h);
    return h;
}

#endif
