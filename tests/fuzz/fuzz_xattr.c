// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * fuzz_xattr.c - values written to user.vhd.parent[.force] (fs/parent_value.c): checked, then
 * mapped to a STORE path. Input: one byte choosing the mount point, STORE and child (nested
 * either way, "/" roots included), then the value as setxattr(2) passes it.
 *
 * Oracles: an accepted value is non-empty valid UTF-8 without NUL or newline, shorter than
 * PATH_MAX; a mapped path is canonical, absolute and lies under STORE.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

#include "parent_value.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct {
    const char *mountpoint, *store;
} roots[] = {
    {"/mnt/vms", "/srv/vms"},  {"/srv/vms/mnt", "/srv/vms"}, /* the mount inside STORE */
    {"/mnt", "/mnt/store"},                                  /* STORE inside the mount point */
    {"/", "/srv/vms"},         {"/mnt/vms", "/"},
    {"/mnt/vms", "/mnt/vms2"}, /* a prefix that is not a parent */
};
static const char *const children[] = {"child.avhdx", "vm/child.avhdx", "a/b/c/child.vhd",
                                       "Ünï/child.avhd"};

static void fail(const char *what, const char *value, const char *out)
{
    fprintf(stderr, "fuzz oracle: %s: value \"%s\" gave \"%s\"\n", what, value, out);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned pick = data[0];
    const char *mountpoint = roots[pick % G_N_ELEMENTS(roots)].mountpoint;
    const char *store = roots[pick % G_N_ELEMENTS(roots)].store;
    const char *rel = children[(pick / G_N_ELEMENTS(roots)) % G_N_ELEMENTS(children)];
    /* a copy without the final NUL, as the kernel hands values over */
    g_autofree char *value = g_memdup2(data + 1, size - 1);
    g_autofree char *path = NULL, *parent = NULL;
    g_autoptr(GError) err = NULL;
    if (vhfs_parent_value_check(value, size - 1, &path, &err) < 0)
        return 0;
    size_t len = strlen(path);
    if (len == 0 || len >= PATH_MAX || strchr(path, '\n') || !g_utf8_validate(path, -1, NULL))
        fail("accepted value is not a usable path", path, path);
    if (vhfs_parent_value_map(mountpoint, store, rel, path, &parent, &err) < 0)
        return 0;
    g_autofree char *canon = g_canonicalize_filename(parent, "/");
    if (strcmp(canon, parent) != 0)
        fail("mapped path is not canonical", path, parent);
    if (vh_path_below(store, parent) == NULL)
        fail("mapped path lies outside STORE", path, parent);
    return 0;
}
