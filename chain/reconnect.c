// SPDX-License-Identifier: GPL-2.0-or-later
/* reconnect.c - checks, then a journaled, locked rewrite of a child's parent link (see
 * reconnect.h and doc/design.md "Reconnect rules"). */
#include "reconnect.h"

#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"
#include "inuse.h"
#include "journal.h"
#include "winpath.h"

void vh_reconnect_result_clear(vh_reconnect_result *r)
{
    g_clear_pointer(&r->repair_id, g_free);
    g_clear_pointer(&r->old_link, g_free);
    g_clear_pointer(&r->new_link, g_free);
    g_clear_pointer(&r->patch, vh_patch_unref);
}

char *vh_link_describe(const vh_disk *d)
{
    char id[VH_ID_STRLEN + 1];
    vh_id_format(&d->link.parent_id, id);
    GString *s = g_string_new(NULL);
    g_string_append_printf(s, "parent id %s", id);
    for (guint i = 0; d->link.locators && i < d->link.locators->len; i++) {
        const vh_locator *l = d->link.locators->pdata[i];
        g_string_append_printf(s, "; %s %s", vh_locator_kind_name(l->kind), l->path);
    }
    return g_string_free(s, FALSE);
}

/* The path of `path` below `store` ("" for the store itself), or NULL when outside. */
static char *path_below(const char *store_real, const char *path_real)
{
    return g_strdup(vh_path_below(store_real, path_real));
}

char *vh_winroot_path(const char *store, const char *winroot, const char *path)
{
    if (!winroot || !*winroot)
        return NULL;
    g_autofree char *store_real = realpath(store, NULL);
    g_autofree char *path_real = realpath(path, NULL);
    if (!store_real || !path_real)
        return NULL;
    g_autofree char *rel = path_below(store_real, path_real);
    if (!rel)
        return NULL;
    return vh_winpath_to_windows(rel, winroot);
}

/*
 * Would linking the child to `parent_real` make a cycle? True when the chain above the parent
 * (the parent included), as the chain opener resolves it in the store (heal targets followed:
 * a heal would make them links), holds the child, or ends at a link that expects the child.
 */
static bool makes_cycle(const char *store_real, const char *child_real, const vh_disk *child,
                        const char *parent_real, int maxdepth)
{
    if (strcmp(child_real, parent_real) == 0)
        return true;
    g_autofree char *child_rel = g_strdup(vh_path_below(store_real, child_real));
    vh_chain_open_opts o = {.store = store_real, .maxdepth = (guint)maxdepth};
    g_autoptr(vh_store) store = NULL;
    g_autoptr(vh_chain) c = vh_chain_resolve(parent_real, &o, &store, NULL);
    if (!c || !child_rel)
        return false;
    for (guint k = 0; k < c->disks->len; k++) {
        const vh_disk_info *d = c->disks->pdata[k];
        if (strcmp(d->path, child_rel) == 0)
            return true;
    }
    for (guint k = 0; k < c->links->len; k++) {
        const vh_link *l = c->links->pdata[k];
        const vh_disk_info *d = c->disks->pdata[k];
        bool unfollowed = k + 1 == c->links->len && c->disks->len == c->links->len;
        bool expects = vh_id_equal(&l->expected_id, &child->id) ||
                       (d->link.has_parent_id2 && !vh_id_is_zero(&d->link.parent_id2) &&
                        vh_id_equal(&d->link.parent_id2, &child->id));
        if (unfollowed && expects)
            return true; /* its (unfollowed) parent link expects the child */
    }
    return false;
}

typedef struct {
    char *store_real, *child_real, *parent_real;
    char *child_open, *parent_open; /* what is opened: the real path, or a pin's /proc/self/fd/N */
    bool parent_pinned;
} real_paths;

static void real_paths_clear(real_paths *p)
{
    g_free(p->store_real);
    g_free(p->child_real);
    g_free(p->parent_real);
    g_free(p->child_open);
    g_free(p->parent_open);
}

/* The path a file is opened by: its pinned descriptor's, else its path as given. */
static char *open_path(int fd, const char *given)
{
    return fd >= 0 ? g_strdup_printf("/proc/self/fd/%d", fd) : g_strdup(given);
}

/* Opens a disk by rp's open path, under its real name (messages, the journal). */
static int open_named(const char *open, const char *name, vh_open_flags flags, vh_disk **out,
                      GError **err)
{
    vh_file f;
    int r = vh_file_open(&f, open, (flags & VH_OPEN_WRITE) != 0, err);
    if (r < 0)
        return r;
    g_free(f.path);
    f.path = g_strdup(name);
    return vh_disk_open_settled(&f, flags, out, err); /* not mid-rewrite by another process */
}

static int resolve_paths(const char *child, const char *parent, const vh_reconnect_opts *o,
                         real_paths *rp, GError **err)
{
    const char *store = o->store;
    if (!parent || !*parent)
        return vh_fail(err, EINVAL, "the parent path is empty");
    if (strlen(parent) >= PATH_MAX)
        return vh_fail(err, EINVAL, "the parent path is longer than %d bytes", PATH_MAX - 1);
    rp->store_real = realpath(store, NULL);
    if (!rp->store_real)
        return vh_fail(err, errno, "%s: the store: %s", store, g_strerror(errno));
    rp->child_open = open_path(o->pin ? o->pin->child_fd : -1, child);
    rp->parent_open = open_path(o->pin ? o->pin->parent_fd : -1, parent);
    rp->parent_pinned = o->pin && o->pin->parent_fd >= 0;
    rp->child_real = realpath(rp->child_open, NULL);
    if (!rp->child_real)
        return vh_fail(err, errno, "%s: %s", child, g_strerror(errno));
    rp->parent_real = realpath(rp->parent_open, NULL);
    if (!rp->parent_real)
        return vh_fail(err, ENOENT, "%s: the parent does not exist", parent);
    g_autofree char *pb = path_below(rp->store_real, rp->parent_real);
    if (!pb)
        return vh_fail(err, EXDEV, "%s: the parent is outside the store %s", parent, store);
    g_autofree char *cb = path_below(rp->store_real, rp->child_real);
    if (!cb)
        return vh_fail(err, EXDEV, "%s: the child is outside the store %s", child, store);
    return 0;
}

/* Opens the child read-only and checks it is a differencing disk. */
static int open_child_for_checks(const char *open, const char *child, vh_disk **out, GError **err)
{
    if (vh_sniff_path(open) == VH_FORMAT_NONE) {
        if (access(open, R_OK) < 0)
            return vh_fail(err, errno, "%s: %s", child, g_strerror(errno));
        return vh_fail(err, ENOTSUP, "%s: not a VHD or VHDX file", child);
    }
    g_autoptr(GError) e = NULL;
    if (open_named(open, child, VH_OPEN_READ, out, &e) < 0)
        return vh_fail(err, e->code == EACCES ? EACCES : EIO, "%s", e->message);
    if ((*out)->type != VH_TYPE_DIFFERENCING)
        return vh_fail(err, ENOTSUP, "%s: a %s %s disk has no parent to reconnect", child,
                       vh_type_name((*out)->type), vh_format_name((*out)->format));
    return 0;
}

/* Opens the parent (inside the store: resolve_paths checked) beneath the store's folder: never
 * through a symlink, never blocking on a FIFO or device. */
static int open_parent(const real_paths *rp, vh_disk **out, GError **err)
{
    if (rp->parent_pinned) /* the caller's pin: the very inode its rights were checked on */
        return open_named(rp->parent_open, rp->parent_real, VH_OPEN_READ, out, err);
    vh_autofd int root = open(rp->store_real, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (root < 0)
        return vh_fail(err, errno, "%s: %s", rp->store_real, g_strerror(errno));
    const char *rel = vh_path_below(rp->store_real, rp->parent_real);
    if (!rel || !*rel)
        return vh_fail(err, EXDEV, "%s: the parent is outside the store", rp->parent_real);
    return vh_disk_open_beneath(root, rp->store_real, rel, VH_OPEN_READ, out, err);
}

/* The parent is a disk of the child's format, virtual size and logical sector size. */
static int check_parent(const vh_disk *c, const real_paths *rp, vh_disk **out, GError **err)
{
    const char *parent_path = rp->parent_real;
    g_autoptr(GError) e = NULL;
    if (open_parent(rp, out, &e) < 0)
        return vh_fail(err, e->code == EACCES ? EACCES : EINVAL, "the parent is not usable: %s",
                       e->message);
    const vh_disk *p = *out;
    if (p->format != c->format)
        return vh_fail(err, EINVAL, "format-mismatch: a %s child cannot have a %s parent (%s)",
                       vh_format_name(c->format), vh_format_name(p->format), parent_path);
    if (p->virtual_size != c->virtual_size)
        return vh_fail(err, EINVAL,
                       "size-mismatch: the child's virtual size is %" G_GUINT64_FORMAT
                       " bytes, the parent's %" G_GUINT64_FORMAT " (%s)",
                       c->virtual_size, p->virtual_size, parent_path);
    if (p->logical_sector_size != c->logical_sector_size)
        return vh_fail(
            err, EINVAL,
            "sector-size-mismatch: the child's logical sectors are %u bytes, the parent's %u (%s)",
            c->logical_sector_size, p->logical_sector_size, parent_path);
    return 0;
}

/* Rule 3's identity check, after the others so that a cycle is named as such. */
static int check_identity(const vh_disk *c, const vh_disk *p, const char *parent_path,
                          const vh_reconnect_opts *o, GError **err)
{
    bool id_ok = vh_id_equal(&p->id, &c->link.parent_id) ||
                 (c->link.has_parent_id2 && vh_id_equal(&p->id, &c->link.parent_id2));
    if (!id_ok && !o->ignore_id_mismatch) {
        char want[VH_ID_STRLEN + 1], have[VH_ID_STRLEN + 1];
        vh_id_format(&c->link.parent_id, want);
        vh_id_format(&p->id, have);
        return vh_fail(err, EINVAL,
                       "id-mismatch: the child expects parent id %s, %s has id %s (use the force "
                       "attribute or --ignore-id-mismatch only if their contents are identical)",
                       want, parent_path, have);
    }
    return 0;
}

/*
 * How long a repair waits for a child another process holds locked. Another repair of it takes
 * far less (a few flushes): waiting, then comparing, makes a repair that met a live one end
 * "already healed" instead of failing (a timer's `vhdheal repair` beside a mount, two hosts).
 * A holder that keeps it (a running VM, a merge) still gets EBUSY.
 */
#define LOCK_WAIT_MS 3000

/* Takes an OFD write lock on the child's data range (inuse.h: not its in-use byte, which a
 * mount holds on a file open through it): EBUSY when another holder (process or host) has one. */
static int lock_child(vh_file *f, GError **err)
{
    int r = vh_lock_data(f->fd, F_WRLCK, LOCK_WAIT_MS);
    if (r == -EAGAIN)
        return vh_fail(err, EBUSY,
                       "%s: in use: another process or host holds a lock on it (waited %d s)",
                       f->path, LOCK_WAIT_MS / 1000);
    if (r < 0)
        return vh_fail(err, -r, "%s: cannot lock: %s", f->path, g_strerror(-r));
    return 0;
}

typedef struct {
    vh_link_update u;
    char *relative, *absolute, *file_name;
} link_plan;

static void link_plan_clear(link_plan *lp)
{
    g_free(lp->relative);
    g_free(lp->absolute);
    g_free(lp->file_name);
}

static void plan_link(const real_paths *rp, const vh_disk *parent, const vh_reconnect_opts *o,
                      link_plan *lp)
{
    struct stat st;
    lp->relative = vh_winpath_relative(rp->child_real, rp->parent_real);
    lp->absolute = vh_winroot_path(rp->store_real, o->winroot, rp->parent_real);
    lp->file_name = g_path_get_basename(rp->parent_real);
    lp->u.parent_id = parent->id;
    lp->u.parent_mtime = stat(rp->parent_open, &st) == 0 ? st.st_mtime : 0;
    lp->u.relative = lp->relative;
    lp->u.absolute = lp->absolute;
    lp->u.volume = NULL;
    lp->u.file_name = lp->file_name;
}

static char *describe_plan(const link_plan *lp)
{
    char id[VH_ID_STRLEN + 1];
    vh_id_format(&lp->u.parent_id, id);
    return g_strdup_printf("parent id %s; relative %s%s%s", id, lp->relative,
                           lp->absolute ? "; absolute " : "", lp->absolute ? lp->absolute : "");
}

/* Does the child's link already say exactly what the plan would write? */
static bool link_is_plan(const vh_disk *d, const link_plan *lp)
{
    if (!vh_id_equal(&d->link.parent_id, &lp->u.parent_id))
        return false;
    bool relative = false, absolute = false;
    for (guint i = 0; d->link.locators && i < d->link.locators->len; i++) {
        const vh_locator *l = d->link.locators->pdata[i];
        switch (l->kind) {
        case VH_LOC_RELATIVE_PATH:
        case VH_LOC_W2RU:
        case VH_LOC_WI2R:
            if (strcmp(l->path, lp->relative) != 0)
                return false;
            relative = true;
            break;
        case VH_LOC_ABSOLUTE_WIN32_PATH:
        case VH_LOC_W2KU:
        case VH_LOC_WI2K:
            /* without a winroot a VHD's W2ku holds the relative path, a VHDX has none */
            if (strcmp(l->path, lp->absolute ? lp->absolute : lp->relative) != 0)
                return false;
            absolute = true;
            break;
        case VH_LOC_PARENT_NAME:
            if (strcmp(l->path, lp->absolute ? lp->absolute : lp->file_name) != 0)
                return false;
            break;
        default:
            break;
        }
    }
    return relative && (absolute || !lp->absolute); /* a winroot adds an absolute locator */
}

/* A second handle on the child's open file description: it keeps the OFD lock alive while the
 * disk engine owns (and may close) the first. */
static int hold_file(const vh_file *f, vh_file *out, bool writable, GError **err)
{
    memset(out, 0, sizeof *out);
    out->fd = fcntl(f->fd, F_DUPFD_CLOEXEC, 0);
    if (out->fd < 0)
        return vh_fail(err, errno, "%s: %s", f->path, g_strerror(errno));
    out->path = g_strdup(f->path);
    out->writable = writable;
    struct stat st;
    out->size = fstat(out->fd, &st) == 0 ? (uint64_t)st.st_size : f->size;
    return 0;
}

/*
 * The compare of the compare-and-swap, under the child's lock: 1 when the link still needs the
 * rewrite, 0 when it is healed already (to exactly this parent, or, for a heal, no longer
 * broken by the caller's verdict).
 */
static int still_needed(const vh_file *held, const link_plan *lp, const vh_reconnect_opts *o,
                        GError **err)
{
    vh_file rf;
    int r = hold_file(held, &rf, false, err);
    if (r < 0)
        return r;
    g_autoptr(vh_disk) cur = NULL;
    g_autoptr(GError) e = NULL;
    if (vh_disk_open_file(&rf, VH_OPEN_READ, &cur, &e) < 0)
        return vh_fail(err, EIO, "the child is corrupt: %s", e->message);
    if (cur->type != VH_TYPE_DIFFERENCING)
        return vh_fail(err, ENOTSUP, "%s: no longer a differencing disk", held->path);
    /* a child with damage a read forgives (warnings) goes on to the write path, which
     * refuses it (EIO) */
    bool clean = !cur->warnings || cur->warnings->len == 0;
    if (clean && link_is_plan(cur, lp))
        return 0;
    if (o->still_broken)
        return o->still_broken(o->still_broken_ctx, err) != 0 ? 1 : 0;
    return 1;
}

/* Reports what recovering the child's earlier unfinished repairs did (they are left alone
 * when the child changed since; the rewrite goes on). */
static void report_recovery(vh_recover_stats *st)
{
    for (guint k = 0; st->notes && k < st->notes->len; k++)
        g_warning("%s", (char *)st->notes->pdata[k]);
    vh_recover_stats_clear(st);
}

/* Rewrites the link of the child held (locked) in f, journaled; takes f. */
static int rewrite_locked(vh_journal *j, vh_file *f, vh_file *held, const char *rel,
                          const link_plan *lp, vh_reconnect_result *res, GError **err)
{
    vh_repair *rep = NULL;
    int r = vh_journal_begin(j, f, res->old_link, res->new_link, &rep, err);
    if (r < 0) {
        vh_fail_prefix(err, "not repaired, the child is unchanged");
        vh_file_close(f);
        return r;
    }
    res->repair_id = g_strdup(vh_repair_id(rep));
    vh_disk *d = NULL;
    r = vh_disk_open_file(f, VH_OPEN_WRITE, &d, err); /* takes f; its hook goes with it */
    if (r < 0) {
        vh_fail_prefix(err, "the child is corrupt");
        if (err && *err)
            (*err)->code = EIO;
        /* the open may have written (log replay) before failing: restore from the journal,
         * still under the lock that `held` keeps */
        vh_journal_release(rep);
        vh_recover_stats st = {0};
        vh_journal_recover_locked(j, held, rel, &st, NULL);
        report_recovery(&st);
        g_clear_pointer(&res->repair_id, g_free);
        return -EIO;
    }
    vh_repair_set_file(rep, &d->file);
    if (!d->ops->set_parent_link)
        r = vh_fail(err, ENOTSUP, "%s: the %s engine cannot rewrite parent links", d->file.path,
                    vh_format_name(d->format));
    else
        r = d->ops->set_parent_link(d, &lp->u, err);
    if (r == 0)
        r = vh_disk_flush(d, err);
    if (r == 0)
        r = vh_journal_commit(rep, err);
    else if (vh_journal_abort(rep, NULL) == 0)
        vh_fail_prefix(err, "not repaired, the child is as it was");
    if (r < 0)
        g_clear_pointer(&res->repair_id, g_free);
    vh_disk_close(d);
    return r;
}

/* The rewrite itself: lock, recover an unfinished earlier repair, compare (is the rewrite
 * still needed?), then journal, rewrite, commit; the lock is held from the compare to the
 * commit, so a healed link is never healed twice. */
static int rewrite_link(const real_paths *rp, const link_plan *lp, const vh_reconnect_opts *o,
                        vh_reconnect_result *res, GError **err)
{
    g_autoptr(vh_journal) j = NULL;
    int r = vh_journal_open(rp->store_real, &j, err);
    if (r < 0)
        return r;
    vh_file f, held;
    if ((r = vh_file_open(&f, rp->child_open, true, err)) < 0)
        return r;
    g_free(f.path); /* a pin's /proc/self/fd/N: the journal and messages want the name */
    f.path = g_strdup(rp->child_real);
    if ((r = lock_child(&f, err)) < 0 || (r = hold_file(&f, &held, true, err)) < 0) {
        vh_file_close(&f);
        return r;
    }
    g_autofree char *rel = path_below(rp->store_real, rp->child_real);
    vh_recover_stats st = {0};
    r = vh_journal_recover_locked(j, &held, rel, &st, err);
    report_recovery(&st);
    if (r >= 0)
        r = still_needed(&held, lp, o, err);
    if (r == 0) {
        res->already_healed = true;
        vh_file_close(&f);
    } else if (r > 0) {
        f.size = held.size;
        r = rewrite_locked(j, &f, &held, rel, lp, res, err);
    } else {
        vh_file_close(&f);
    }
    vh_file_close(&held); /* the last handle: drops the OFD lock */
    return r;
}

/*
 * Overlay healing: the child's link rewritten by the format's own set_parent_link, into a patch
 * set over the child opened read-only (the caller keeps one repair of a child at a time). A VHDX
 * with a pending log is replayed into the patch set by the write open, and the rewrite's own log
 * entry is flushed into the metadata before set_parent_link returns: the patched image has a clean
 * log.
 */
static int rewrite_overlay(const real_paths *rp, const link_plan *lp, const vh_reconnect_opts *o,
                           vh_reconnect_result *res, GError **err)
{
    /* a heal asks its caller first: the link as presented (through an earlier patch set) may be
     * healed already, and is then left as it is */
    int r = o->still_broken ? o->still_broken(o->still_broken_ctx, err) : 1;
    if (r <= 0) {
        res->already_healed = r == 0;
        return r;
    }
    vh_file f;
    r = vh_file_open(&f, rp->child_open, false, err);
    if (r < 0)
        return r;
    g_free(f.path);
    f.path = g_strdup(rp->child_real);
    g_autoptr(vh_patch) patch = vh_patch_new(f.size);
    vh_file_attach_patch(&f, patch);
    g_autoptr(vh_disk) d = NULL;
    r = vh_disk_open_file(&f, VH_OPEN_WRITE, &d, err); /* takes f */
    if (r < 0) {
        vh_fail_prefix(err, "the child is corrupt");
        if (err && *err)
            (*err)->code = EIO;
        return -EIO;
    }
    if (!d->ops->set_parent_link)
        return vh_fail(err, ENOTSUP, "%s: the %s engine cannot rewrite parent links", d->file.path,
                       vh_format_name(d->format));
    bool clean = !d->warnings || d->warnings->len == 0;
    if (clean && !o->overlay_presented && link_is_plan(d, lp)) {
        res->already_healed = true;
        return 0;
    }
    if ((r = d->ops->set_parent_link(d, &lp->u, err)) < 0 || (r = vh_disk_flush(d, err)) < 0)
        return r;
    res->patch = g_steal_pointer(&patch);
    return 0;
}

int vh_reconnect(const char *child, const char *parent, const vh_reconnect_opts *opts,
                 vh_reconnect_result *res, GError **err)
{
    memset(res, 0, sizeof *res);
    int maxdepth = opts->maxdepth > 0 ? opts->maxdepth : VH_DEFAULT_MAXDEPTH;
    real_paths rp = {0};
    link_plan lp = {0};
    g_autoptr(vh_disk) c = NULL;
    g_autoptr(vh_disk) p = NULL;
    int r = resolve_paths(child, parent, opts, &rp, err);
    if (r == 0)
        r = open_child_for_checks(rp.child_open, rp.child_real, &c, err);
    if (r == 0)
        r = check_parent(c, &rp, &p, err);
    if (r == 0 && makes_cycle(rp.store_real, rp.child_real, c, rp.parent_real, maxdepth))
        r = vh_fail(err, EINVAL,
                    "cycle: the link would make a cycle: %s is %s itself or its "
                    "descendant",
                    parent, child);
    if (r == 0)
        r = check_identity(c, p, parent, opts, err);
    if (r == 0) {
        plan_link(&rp, p, opts, &lp);
        res->old_link = vh_link_describe(c);
        res->new_link = describe_plan(&lp);
        if (!opts->dry_run) {
            g_clear_pointer(&c, vh_disk_close); /* no handle of ours stays open on the child */
            r = opts->overlay ? rewrite_overlay(&rp, &lp, opts, res, err)
                              : rewrite_link(&rp, &lp, opts, res, err);
        }
    }
    link_plan_clear(&lp);
    real_paths_clear(&rp);
    if (r < 0)
        vh_reconnect_result_clear(res);
    return r;
}
