// SPDX-License-Identifier: GPL-2.0-or-later
/* chain.c - the chain opener (see chain.h and doc/chain.md). */
#include "chain.h"

#include <sys/stat.h>

#include "overlay.h"

int vh_disk_open_beneath(int store_fd, const char *root, const char *rel, vh_open_flags flags,
                         vh_disk **out, GError **err)
{
    *out = NULL;
    g_autofree char *abs = g_build_filename(root, rel, NULL);
    vh_file f;
    int r = vh_file_open_beneath(&f, store_fd, rel, abs, (flags & VH_OPEN_WRITE) != 0, err);
    if (r < 0)
        return r;
    return vh_disk_open_settled(&f, flags, out, err); /* not mid-rewrite by another process */
}

static int broken_link_error(vh_store *store, const vh_link *l, GError **err)
{
    const char *fix = vh_link_fix_parent(l);
    g_autofree char *hint = NULL;
    if (fix && store) {
        g_autofree char *c = g_build_filename(vh_store_root(store), l->child, NULL);
        g_autofree char *p = g_build_filename(vh_store_root(store), fix, NULL);
        g_autofree char *qc = g_shell_quote(c), *qp = g_shell_quote(p);
        hint = g_strdup_printf(" (fix: vhdheal reconnect %s %s)", qc, qp);
    } else if (l->verdict == VH_VERDICT_OUTSIDE_STORE && store) {
        hint = g_strdup_printf(" (the store is %s; --store DIR names a wider one)",
                               vh_store_root(store));
    }
    return vh_fail(err, vh_verdict_errno(l->verdict), "the chain is broken at %s: %s: %s%s",
                   l->child, vh_verdict_name(l->verdict), l->detail, hint ? hint : "");
}

int vh_chain_usable(vh_store *store, const vh_chain *c, bool use_heal_target, GError **err)
{
    for (guint k = 0; k < c->links->len; k++) {
        const vh_link *l = c->links->pdata[k];
        bool crossable = use_heal_target && l->heal_target && l->verdict != VH_VERDICT_CYCLE &&
                         l->verdict != VH_VERDICT_TOO_DEEP;
        if (l->verdict != VH_VERDICT_OK && !crossable)
            return broken_link_error(store, l, err);
    }
    if (!c->complete)
        return vh_fail(err, EIO, "%s: the chain does not reach a base disk",
                       ((vh_disk_info *)c->disks->pdata[0])->path);
    return 0;
}

/* A member as the store presents it: through its overlay's patch set when it has one (overlay
 * healing, read-only: a patched file is never opened for writing). */
int vh_chain_open_presented(vh_store *store, const char *rel, bool writable, vh_disk **out,
                            GError **err)
{
    vh_overlay *ov = vh_store_overlay(store);
    if (!ov)
        return vh_disk_open_beneath(vh_store_root_fd(store), vh_store_root(store), rel,
                                    writable ? VH_OPEN_WRITE : VH_OPEN_READ, out, err);
    *out = NULL;
    g_autofree char *abs = g_build_filename(vh_store_root(store), rel, NULL);
    vh_file f;
    int r = vh_file_open_beneath(&f, vh_store_root_fd(store), rel, abs, writable, err);
    if (r < 0)
        return r;
    g_autoptr(vh_patch) patch = vh_overlay_get_fd(ov, f.fd, abs);
    if (patch && writable) {
        vh_file_close(&f);
        return vh_fail(err, EROFS, "%s: healed in the overlay only: not opened for writing", abs);
    }
    if (patch)
        vh_file_attach_patch(&f, patch);
    return vh_disk_open_settled(&f, writable ? VH_OPEN_WRITE : VH_OPEN_READ, out, err);
}

/* Opens one member and checks that it is still the disk the index described. */
static int open_member(vh_store *store, const vh_disk_info *i, bool writable, vh_disk **out,
                       GError **err)
{
    g_autoptr(vh_disk) d = NULL;
    int r = vh_chain_open_presented(store, i->path, writable, &d, err);
    if (r < 0)
        return r;
    struct stat st;
    if (fstat(d->file.fd, &st) < 0)
        return vh_fail(err, errno, "%s: %s", d->file.path, g_strerror(errno));
    /* The index never follows symlinks: the same inode means the same file in the store. */
    if (st.st_dev != i->dev || st.st_ino != i->ino || d->format != i->format ||
        !vh_id_equal(&d->id, &i->id) || d->virtual_size != i->virtual_size)
        return vh_fail(err, EAGAIN, "%s changed while its chain was being opened", d->file.path);
    *out = g_steal_pointer(&d);
    return 0;
}

int vh_chain_open_resolved(vh_store *store, const vh_chain *c, bool writable, vh_disk **top,
                           GError **err)
{
    *top = NULL;
    vh_disk *child = NULL;
    for (guint k = 0; k < c->disks->len; k++) {
        vh_disk *d = NULL;
        int r = open_member(store, c->disks->pdata[k], k == 0 && writable, &d, err);
        if (r < 0) {
            g_clear_pointer(top, vh_disk_close);
            return r;
        }
        if (child)
            vh_disk_set_parent(child, d);
        else
            *top = d;
        child = d;
    }
    return 0;
}

vh_chain *vh_chain_resolve(const char *path, const vh_chain_open_opts *opts, vh_store **store,
                           GError **err)
{
    *store = NULL;
    vh_chain_open_opts none = {0};
    if (!opts)
        opts = &none;
    char *paths[] = {(char *)path};
    g_autofree char *root = vh_store_determine(opts->store, paths, 1, false, err);
    if (!root)
        return NULL;
    g_autofree char *rel = vh_store_relpath(root, path);
    if (!rel || !*rel) {
        vh_fail(err, EINVAL, "%s: not a file in the store %s", path, root);
        return NULL;
    }
    g_autoptr(vh_store) s = vh_store_new(root, err);
    if (!s)
        return NULL;
    if (opts->overlay)
        vh_store_set_overlay(s, opts->overlay);
    vh_resolve_opts ro = {
        .winroot = opts->winroot, .maxdepth = opts->maxdepth, .trust = opts->trust};
    g_autoptr(vh_resolver) r = vh_resolver_new(s, &ro);
    vh_chain *c = vh_resolve_chain(r, rel, err);
    if (c)
        *store = g_steal_pointer(&s);
    return c;
}

int vh_chain_open(const char *path, const vh_chain_open_opts *opts, vh_disk **top, GError **err)
{
    *top = NULL;
    vh_chain_open_opts none = {0};
    if (!opts)
        opts = &none;
    g_autoptr(GError) e = NULL;
    g_autoptr(vh_store) store = NULL;
    g_autoptr(vh_chain) c = vh_chain_resolve(path, opts, &store, &e);
    int r = c ? vh_chain_usable(store, c, opts->use_heal_target, &e) : -vh_error_errno(e);
    if (c && r < 0)
        vh_fail_prefix(&e, "%s", path);
    if (r == 0)
        r = vh_chain_open_resolved(store, c, opts->writable, top, &e);
    if (r < 0)
        g_propagate_error(err, g_steal_pointer(&e));
    return r;
}
