// SPDX-License-Identifier: GPL-2.0-or-later
/* chain.c - opening a chain by following locators (see chain.h). */
#include "chain.h"

static int compare_locators(gconstpointer a, gconstpointer b)
{
    const vh_locator *la = *(vh_locator *const *)a, *lb = *(vh_locator *const *)b;
    return (int)la->kind - (int)lb->kind;
}

/* Candidate POSIX paths for one locator, relative to the child's folder. */
static void locator_candidates(const vh_locator *l, const char *child_dir, GPtrArray *out)
{
    g_autofree char *posix = g_strdup(l->path);
    for (char *p = posix; *p; p++)
        if (*p == '\\')
            *p = '/';
    const char *rel = posix;
    if (g_str_has_prefix(rel, "file://localhost"))
        rel += strlen("file://localhost");
    else if (g_str_has_prefix(rel, "file://"))
        rel += strlen("file://");
    bool relative = l->kind == VH_LOC_RELATIVE_PATH || l->kind == VH_LOC_W2RU ||
                    l->kind == VH_LOC_WI2R || !strchr(rel, '/');
    if (relative)
        g_ptr_array_add(out, g_build_filename(child_dir, rel, NULL));
    else if (rel[0] == '/')
        g_ptr_array_add(out, g_strdup(rel));
    const char *base = strrchr(rel, '/');
    if (base && base[1])
        g_ptr_array_add(out, g_build_filename(child_dir, base + 1, NULL));
}

static bool parent_matches(const vh_disk *child, const vh_disk *parent)
{
    if (parent->format != child->format || parent->virtual_size != child->virtual_size)
        return false;
    if (parent->logical_sector_size != child->logical_sector_size)
        return false;
    return vh_id_equal(&parent->id, &child->link.parent_id) ||
           (child->link.has_parent_id2 && vh_id_equal(&parent->id, &child->link.parent_id2));
}

static vh_disk *find_parent(vh_disk *child)
{
    g_autofree char *dir = g_path_get_dirname(child->file.path);
    g_autoptr(GPtrArray) locs = g_ptr_array_copy(child->link.locators, NULL, NULL);
    g_ptr_array_set_free_func(locs, NULL); /* the copy borrows the child's locators */
    g_ptr_array_sort(locs, compare_locators);
    for (guint i = 0; i < locs->len; i++) {
        g_autoptr(GPtrArray) cands = g_ptr_array_new_with_free_func(g_free);
        locator_candidates(locs->pdata[i], dir, cands);
        for (guint k = 0; k < cands->len; k++) {
            vh_disk *p = NULL;
            if (vh_disk_open(cands->pdata[k], VH_OPEN_READ, &p, NULL) < 0)
                continue;
            if (parent_matches(child, p))
                return p;
            vh_disk_close(p);
        }
    }
    return NULL;
}

int vh_chain_open_simple(const char *path, bool writable, int maxdepth, bool lenient, vh_disk **out,
                         GError **err)
{
    *out = NULL;
    vh_disk *top = NULL;
    int r = vh_disk_open(path, writable ? VH_OPEN_WRITE : VH_OPEN_READ, &top, err);
    if (r < 0)
        return r;
    vh_disk *d = top;
    for (int depth = 1; d->type == VH_TYPE_DIFFERENCING; depth++) {
        if (depth > maxdepth) {
            vh_disk_close(top);
            return vh_fail(err, ELOOP, "%s: chain deeper than %d disks (a cycle?)", path, maxdepth);
        }
        vh_disk *p = find_parent(d);
        if (!p && lenient)
            break;
        if (!p) {
            char id[VH_ID_STRLEN + 1];
            vh_id_format(&d->link.parent_id, id);
            r = vh_fail(err, ENOENT,
                        "%s: the chain is broken: no parent with id %s found where its locators "
                        "point (try `vhdheal check`)",
                        d->file.path, id);
            vh_disk_close(top);
            return r;
        }
        vh_disk_set_parent(d, p);
        d = p;
    }
    *out = top;
    return 0;
}
