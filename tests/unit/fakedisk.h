/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * fakedisk.h - fake disks for the store and resolver unit tests: small text files that a fake
 * probe reads instead of real VHD/VHDX structures, so the index and the resolver can be tested
 * on a real folder tree (real paths, symlinks, renames) without the format engines.
 *
 * A fake disk is a file whose first line is "fakedisk"; then "key=value" lines: format (vhd,
 * vhdx), type (fixed, dynamic, differencing), size, lss, id, parent, parent2, ts, error (the
 * probe reports the disk as unreadable with this message), and any number of
 * loc=KIND|PATH (KIND as vh_locator_kind_name prints it). Any other file is not a disk.
 */
#ifndef FAKEDISK_H
#define FAKEDISK_H

#include <stdio.h>
#include <stdlib.h>

#include "store.h"

static gint fake_probes;
static GPtrArray *fake_probed; /* when set: every absolute path probed (single-threaded use) */

static vh_locator_kind fake_kind(const char *name)
{
    for (int k = 0; k < VH_LOC_COUNT_; k++)
        if (strcmp(vh_locator_kind_name((vh_locator_kind)k), name) == 0)
            return (vh_locator_kind)k;
    return VH_LOC_COUNT_;
}

static void fake_line(vh_disk_info *out, const char *key, const char *val)
{
    if (strcmp(key, "format") == 0)
        out->format = strcmp(val, "vhdx") == 0 ? VH_FORMAT_VHDX : VH_FORMAT_VHD;
    else if (strcmp(key, "type") == 0)
        out->type = strcmp(val, "fixed") == 0     ? VH_TYPE_FIXED
                    : strcmp(val, "dynamic") == 0 ? VH_TYPE_DYNAMIC
                                                  : VH_TYPE_DIFFERENCING;
    else if (strcmp(key, "size") == 0)
        out->virtual_size = g_ascii_strtoull(val, NULL, 0);
    else if (strcmp(key, "lss") == 0)
        out->logical_sector_size = (uint32_t)g_ascii_strtoull(val, NULL, 0);
    else if (strcmp(key, "id") == 0)
        vh_id_parse(val, &out->id);
    else if (strcmp(key, "parent") == 0)
        vh_id_parse(val, &out->link.parent_id);
    else if (strcmp(key, "parent2") == 0)
        out->link.has_parent_id2 = vh_id_parse(val, &out->link.parent_id2);
    else if (strcmp(key, "ts") == 0)
        out->link.parent_timestamp = (uint32_t)g_ascii_strtoull(val, NULL, 0);
    else if (strcmp(key, "error") == 0)
        out->error = g_strdup(val);
    else if (strcmp(key, "loc") == 0) {
        const char *bar = strchr(val, '|');
        g_autofree char *kind = g_strndup(val, bar ? (gsize)(bar - val) : strlen(val));
        if (!out->link.locators)
            out->link.locators = g_ptr_array_new_with_free_func((GDestroyNotify)vh_locator_free);
        g_ptr_array_add(out->link.locators,
                        vh_locator_new(fake_kind(kind), bar ? bar + 1 : "", -1, 0, 0));
    }
}

static int fake_probe(void *ctx, const char *abs, const char *rel, vh_disk_info *out)
{
    g_atomic_int_inc(&fake_probes);
    if (fake_probed)
        g_ptr_array_add(fake_probed, g_strdup(abs));
    g_autofree char *text = NULL;
    if (!g_file_get_contents(abs, &text, NULL, NULL))
        return -EIO;
    out->format = VH_FORMAT_NONE;
    if (!g_str_has_prefix(text, "fakedisk\n"))
        return 0;
    out->logical_sector_size = 512;
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
    for (char **l = lines + 1; *l; l++) {
        const char *eq = strchr(*l, '=');
        if (!eq)
            continue;
        g_autofree char *key = g_strndup(*l, (gsize)(eq - *l));
        fake_line(out, key, eq + 1);
    }
    if (out->error) /* as the real probe: the format is known, nothing else */
        out->type = 0;
    return 0;
}

/* Writes a fake disk under dir; `lines` are "key=value" separated by newlines. */
static void fake_write(const char *dir, const char *rel, const char *lines)
{
    g_autofree char *p = g_build_filename(dir, rel, NULL);
    g_autofree char *d = g_path_get_dirname(p);
    g_mkdir_with_parents(d, 0755);
    g_autofree char *text = g_strdup_printf("fakedisk\n%s\n", lines);
    if (!g_file_set_contents(p, text, -1, NULL))
        abort();
}

static void fake_rm_rf(const char *dir)
{
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", dir);
    if (system(cmd) != 0)
        abort();
}

#endif
