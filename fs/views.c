/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * views.c - the FUSE side of the @raw and @chains folders at the root of the mount (doc/design.md
 * "Views"; what they hold is chain/snapshot.h's model):
 *
 *   @raw/DIR/NAME.raw      the virtual disk of the store's disk DIR/NAME, read through its whole
 *                          resolved chain (a broken link is crossed to its one heal target,
 *                          without writing anything), as large as the virtual size, read-only
 *   @chains/DIR/NAME/      for each chain top: 0-NAME, 1-PARENT, ... (relative symlinks to the
 *                          members, top first, into the mount) and `status`
 *
 * Contract: the views never write to STORE and parse no disk bytes (chain/flat.c reads the
 * chains). A disk that cannot be read, or whose chain is broken without a unique heal target,
 * still appears (with its virtual size, or size 0 when even that is unknown), and opening it
 * fails with EIO and one log line naming the reason. A real entry named @raw or @chains at the
 * store's root wins over the view (logged once).
 *
 * Inodes: a view's inode number has bit 63 set (VHFS_VIEWS_INO_BIT) and is never reused; the
 * pass-through's are addresses of its inode structs, which on Linux never have that bit set.
 * vhfs_views_wrap puts a wrapper in front of every operation that takes an inode: view inodes
 * are served here, all others go on to passthrough.c. The hooks inside passthrough.c list @raw
 * and @chains after the real entries of the root (vhfs_views_root_entries) and report changes
 * made through the mount (vhfs_views_changed).
 *
 * Freshness (README "What the views show, and when"): the views read the service's store index
 * (one per daemon) and show a snapshot of it, refreshed (an incremental scan) at most once a
 * second when a view is used. A lookup, stat or open of @raw/DIR/NAME.raw revalidates that one
 * disk by a stat of DIR/NAME, so a disk created, replaced or removed behind the mount's back
 * shows there at once. A change made through the mount to any member of a chain (write,
 * truncate, fallocate, copy_file_range) drops, before the change returns, the readers of every
 * chain holding it (the block maps they cached) and the kernel's pages of their @raw files;
 * open @raw files then read through a reader opened anew.
 */
#include "fs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "flat.h"
#include "inuse.h"
#include "service.h"
#include "snapshot.h"

#define VIEW_TIMEOUT 1.0            /* entry and attribute timeout of the views, seconds */
#define REFRESH_USEC G_USEC_PER_SEC /* at most one store refresh a second */
#define FLAT_CACHE_MAX 32           /* open chains kept */

static const char *const root_names[] = {"@raw", "@chains"};
static const vh_view_kind root_kinds[] = {VH_VIEW_RAW_DIR, VH_VIEW_CHAINS_DIR};

/* One inode of the views the kernel knows. */
struct vnode {
    fuse_ino_t ino;
    vh_view_kind kind;
    guint index;
    char *path;
    char *key;
    uint64_t nlookup; /* guarded by views.lock */
    guint64 served;   /* VH_VIEW_RAW_FILE: serial of the reader last opened (atomic) */
};

struct vhfs_views {
    struct vhfs *fs;
    vh_flat_cache *cache; /* made with the first snapshot (the service starts after us); atomic */
    GMutex lock;          /* guards the node tables and raw_open */
    GHashTable *by_key;   /* key -> struct vnode* */
    GHashTable *by_ino;   /* ino -> struct vnode* */
    GHashTable *raw_open; /* the open @raw handles (struct vhandle*) */
    guint64 next_ino;
    GMutex snap_lock; /* guards snap and checked; held while refreshing */
    vh_snap *snap;
    gint64 checked; /* monotonic time of the last refresh */
    gint shadow_logged[2];
    GThreadPool *notifier; /* -s: kernel notifications from another thread */
};

/* An open file or folder of the views (fi->fh). */
struct vhandle {
    vh_view_kind kind;
    fuse_ino_t ino;
    /* VH_VIEW_RAW_FILE: the reader, replaced once a member changed through the mount (gen,
       counted up by vhfs_views_changed, then differs from flat_gen, the gen it was opened at) */
    GMutex lock;   /* guards flat and flat_gen (held briefly) */
    GMutex reopen; /* one reopen at a time */
    vh_flat *flat;
    gint gen;
    gint flat_gen;
    struct vhfs_caller caller; /* who opened it: a reopen checks the chain for them again */
    char *text;                /* VH_VIEW_STATUS */
    size_t text_len;
    vh_snap *snap;      /* folders: the listing's snapshot */
    GPtrArray *entries; /* folders: vh_view_entry* */
    char *path;
    gint logged;   /* a read error of this handle was logged */
    GArray *inuse; /* VH_VIEW_RAW_FILE: the members marked in use (chain/inuse.h) */
};

/* The operations of the pass-through, called for every inode that is not ours. */
static struct fuse_lowlevel_ops base;

/* ---------------------------------------------------------------------------------------- */
/* Small helpers */

static struct vhfs *fs_of(fuse_req_t req)
{
    return fuse_req_userdata(req);
}

static struct vhfs_views *views_of(fuse_req_t req)
{
    return fs_of(req)->views;
}

static void reply_err(fuse_req_t req, const char *op, int err)
{
    vhfs_reply_err(req, "views", op, err);
}

static vh_store *store_of(struct vhfs_views *v)
{
    return vh_service_store(v->fs->svc);
}

/* ---------------------------------------------------------------------------------------- */
/* Snapshots */

/* A new snapshot of the index when it changed. Called with snap_lock held. */
static void rebuild_locked(struct vhfs_views *v)
{
    g_autoptr(GPtrArray) list = vh_store_list(store_of(v), NULL);
    if (v->snap && vh_snap_same(v->snap, list))
        return;
    vh_resolve_opts ro = {
        .winroot = v->fs->cfg.winroot, .maxdepth = v->fs->cfg.maxdepth, .trust = v->fs->cfg.trust};
    vh_snap *s = vh_snap_new(store_of(v), &ro, list);
    vh_snap_unref(v->snap);
    v->snap = s;
    vhfs_debug("views: %u disks, %u chain tops", vh_snap_ndisks(s), vh_snap_ntops(s));
}

/* Refreshes the index (an incremental scan) and the snapshot. Called with snap_lock held. */
static void refresh_locked(struct vhfs_views *v)
{
    g_autoptr(GError) err = NULL;
    if (vh_store_scan(store_of(v), &err) < 0)
        vhfs_log(LOG_WARNING, "views: scanning %s: %s", v->fs->cfg.store, err->message);
    rebuild_locked(v);
    v->checked = g_get_monotonic_time();
}

/* The current snapshot (a new reference); `force` refreshes even within the second. */
static vh_snap *snap_get(struct vhfs_views *v, bool force)
{
    g_mutex_lock(&v->snap_lock);
    if (!v->cache)
        g_atomic_pointer_set(&v->cache, vh_flat_cache_new(store_of(v), FLAT_CACHE_MAX));
    if (!v->snap || force || g_get_monotonic_time() - v->checked >= REFRESH_USEC)
        refresh_locked(v);
    vh_snap *s = vh_snap_ref(v->snap);
    g_mutex_unlock(&v->snap_lock);
    return s;
}

static bool same_stat(const vh_disk_info *d, const struct stat *st)
{
    return d->dev == st->st_dev && d->ino == st->st_ino && d->file_size == (uint64_t)st->st_size &&
           d->mtime_ns == vh_mtime_ns(st);
}

/* Whether the snapshot's entry d (NULL: none) still describes the store file at its path. */
static bool still_shown(const vh_disk_info *d, bool there, const struct stat *st)
{
    if (!there || !d)
        return !there && !d;
    /* The same file keeps its place; its content changes are the readers' concern (flat.h),
       except for a file that could not be read, which is looked at again once it changed. */
    return d->dev == st->st_dev && d->ino == st->st_ino && (!d->error || same_stat(d, st));
}

/*
 * The snapshot for a question about the disk at `path` (@raw/PATH.raw): when the store file is
 * no longer the one the snapshot shows (new, replaced, or gone; or an unreadable one changed),
 * the index learns of that one file and the snapshot is rebuilt, without a walk of the store.
 */
static vh_snap *snap_for_disk(struct vhfs_views *v, const char *path)
{
    vh_snap *s = snap_get(v, false);
    const vh_disk_info *d = vh_snap_disk(s, path);
    struct stat st;
    bool there =
        fstatat(v->fs->root.fd, path, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode);
    if (still_shown(d, there, &st))
        return s;
    vh_snap_unref(s);
    if (there)
        vh_disk_info_unref(vh_store_describe(store_of(v), path, NULL)); /* the index learns */
    else
        vh_store_note_unlink(store_of(v), path);
    g_mutex_lock(&v->snap_lock);
    rebuild_locked(v);
    s = vh_snap_ref(v->snap);
    g_mutex_unlock(&v->snap_lock);
    return s;
}

/* ---------------------------------------------------------------------------------------- */
/* Inodes */

static char *vnode_key(vh_view_kind kind, const char *path, guint index)
{
    return g_strdup_printf("%d:%u:%s", (int)kind, index, path);
}

/* Takes one lookup on the node for (kind, path, index), made when missing. */
static struct vnode *vnode_get(struct vhfs_views *v, vh_view_kind kind, const char *path,
                               guint index)
{
    g_autofree char *key = vnode_key(kind, path, index);
    g_mutex_lock(&v->lock);
    struct vnode *n = g_hash_table_lookup(v->by_key, key);
    if (!n) {
        n = g_new0(struct vnode, 1);
        n->ino = VHFS_VIEWS_INO_BIT | v->next_ino++;
        n->kind = kind;
        n->index = index;
        n->path = g_strdup(path);
        n->key = g_steal_pointer(&key);
        g_hash_table_insert(v->by_key, n->key, n);
        g_hash_table_insert(v->by_ino, &n->ino, n);
    }
    n->nlookup++;
    g_mutex_unlock(&v->lock);
    return n;
}

static void vnode_free(struct vnode *n)
{
    g_free(n->path);
    g_free(n->key);
    g_free(n);
}

static void vnode_unref(struct vhfs_views *v, fuse_ino_t ino, uint64_t count)
{
    struct vnode *gone = NULL;
    g_mutex_lock(&v->lock);
    struct vnode *n = g_hash_table_lookup(v->by_ino, &ino);
    if (n) {
        n->nlookup -= MIN(count, n->nlookup);
        if (n->nlookup == 0) {
            g_hash_table_remove(v->by_key, n->key);
            g_hash_table_remove(v->by_ino, &n->ino);
            gone = n;
        }
    } else {
        vhfs_log(LOG_ERR, "views: forget of unknown inode %" G_GUINT64_FORMAT, (guint64)ino);
    }
    g_mutex_unlock(&v->lock);
    if (gone)
        vnode_free(gone);
}

/* The node of an inode the kernel holds (it cannot be forgotten while a request uses it). */
static struct vnode *vnode_of(struct vhfs_views *v, fuse_ino_t ino)
{
    g_mutex_lock(&v->lock);
    struct vnode *n = g_hash_table_lookup(v->by_ino, &ino);
    g_mutex_unlock(&v->lock);
    return n;
}

/* The inode number of the @raw file of a disk, when the kernel knows it (else 0). */
static fuse_ino_t raw_ino(struct vhfs_views *v, const char *path)
{
    g_autofree char *key = vnode_key(VH_VIEW_RAW_FILE, path, 0);
    g_mutex_lock(&v->lock);
    struct vnode *n = g_hash_table_lookup(v->by_key, key);
    fuse_ino_t ino = n ? n->ino : 0;
    g_mutex_unlock(&v->lock);
    return ino;
}

/* The snapshot to answer a question about node n with (a new reference). */
static vh_snap *snap_for(struct vhfs_views *v, vh_view_kind kind, const char *path)
{
    return kind == VH_VIEW_RAW_FILE ? snap_for_disk(v, path) : snap_get(v, false);
}

/* ---------------------------------------------------------------------------------------- */
/* Attributes */

/* A folder of the views: the real folder's owner and times, its write bits taken away. */
static int dir_attr(struct vhfs_views *v, const char *folder, struct stat *st)
{
    int root = v->fs->root.fd;
    if (fstatat(root, *folder ? folder : "", st, *folder ? AT_SYMLINK_NOFOLLOW : AT_EMPTY_PATH) < 0)
        return -errno;
    if (!S_ISDIR(st->st_mode))
        return -ENOENT;
    st->st_mode = S_IFDIR | (st->st_mode & 0555);
    st->st_nlink = 2;
    return 0;
}

/* The store file of a disk, as a base for the attributes shown for it. */
static int disk_stat(struct vhfs_views *v, const char *path, struct stat *st)
{
    if (fstatat(v->fs->root.fd, path, st, AT_SYMLINK_NOFOLLOW) < 0)
        return -errno;
    return S_ISREG(st->st_mode) ? 0 : -ENOENT;
}

static int raw_attr(struct vhfs_views *v, vh_snap *s, const char *path, struct stat *st)
{
    const vh_disk_info *d = vh_snap_disk(s, path);
    if (!d)
        return -ENOENT;
    int r = disk_stat(v, path, st);
    if (r < 0)
        return r;
    uint64_t size = vh_disk_info_is_disk(d) ? d->virtual_size : 0;
    uint64_t stored = (uint64_t)st->st_size;
    int64_t mtime = vh_mtime_ns(st);
    const vh_chain *c = vh_disk_info_is_disk(d) ? vh_snap_chain(s, path, NULL) : NULL;
    /* The content changes when any member changes: the newest member's mtime is the file's. */
    for (guint k = 1; c && k < c->disks->len; k++) {
        const vh_disk_info *m = c->disks->pdata[k];
        stored += m->file_size;
        mtime = MAX(mtime, m->mtime_ns);
    }
    st->st_mode = S_IFREG | (st->st_mode & 0444);
    st->st_nlink = 1;
    st->st_size = (off_t)size;
    st->st_blocks = (blkcnt_t)((MIN(stored, size) + 511) / 512);
    st->st_blksize = VHFS_MAX_IO;
    st->st_mtim.tv_sec = mtime / 1000000000;
    st->st_mtim.tv_nsec = mtime % 1000000000;
    if (st->st_ctim.tv_sec < st->st_mtim.tv_sec)
        st->st_ctim = st->st_mtim;
    return 0;
}

static int node_attr(struct vhfs_views *v, vh_snap *s, const struct vnode *n, struct stat *st)
{
    GPtrArray *m;
    const char *status;
    int r;

    memset(st, 0, sizeof(*st));
    if (n->kind != VH_VIEW_RAW_FILE && !vh_snap_has(s, n->kind, n->path, n->index))
        return -ENOENT;
    switch (n->kind) {
    case VH_VIEW_RAW_DIR:
    case VH_VIEW_CHAINS_DIR:
        r = dir_attr(v, n->path, st);
        break;
    case VH_VIEW_RAW_FILE:
        r = raw_attr(v, s, n->path, st);
        break;
    case VH_VIEW_CHAIN:
        if (disk_stat(v, n->path, st) < 0)
            return -ENOENT;
        st->st_mode = S_IFDIR | (st->st_mode & 0444) | ((st->st_mode & 0444) >> 2);
        st->st_nlink = 2;
        st->st_size = 4096;
        r = 0;
        break;
    case VH_VIEW_LINK:
        m = vh_snap_members(s, n->path);
        if (disk_stat(v, n->path, st) < 0)
            return -ENOENT;
        st->st_mode = S_IFLNK | 0777;
        st->st_nlink = 1;
        st->st_size = (off_t)vh_view_link_target_len(n->path, m->pdata[n->index]);
        st->st_blocks = 0;
        r = 0;
        break;
    case VH_VIEW_STATUS:
        status = vh_snap_status(s, n->path);
        if (disk_stat(v, n->path, st) < 0)
            return -ENOENT;
        st->st_mode = S_IFREG | 0444;
        st->st_nlink = 1;
        st->st_size = (off_t)strlen(status);
        st->st_blocks = (blkcnt_t)((st->st_size + 511) / 512);
        r = 0;
        break;
    default:
        return -ENOENT;
    }
    if (r < 0)
        return r;
    st->st_ino = n->ino;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Lookups */

/* Fills e for the node (kind, path, index), taking one lookup on it. */
static int make_entry(struct vhfs_views *v, vh_snap *s, vh_view_kind kind, const char *path,
                      guint index, struct fuse_entry_param *e)
{
    memset(e, 0, sizeof(*e));
    struct vnode *n = vnode_get(v, kind, path, index);
    int r = node_attr(v, s, n, &e->attr);
    if (r < 0) {
        vnode_unref(v, n->ino, 1);
        return r;
    }
    e->ino = n->ino;
    e->attr_timeout = VIEW_TIMEOUT;
    e->entry_timeout = VIEW_TIMEOUT;
    return 0;
}

static void reply_entry(fuse_req_t req, const struct fuse_entry_param *e)
{
    if (fuse_reply_entry(req, e) != 0)
        vnode_unref(views_of(req), e->ino, 1);
}

/* Whether the store's root really holds `name` (then it wins over the view); logged once. */
static bool shadowed(struct vhfs_views *v, int which)
{
    struct stat st;
    if (fstatat(v->fs->root.fd, root_names[which], &st, AT_SYMLINK_NOFOLLOW) < 0)
        return false;
    if (g_atomic_int_compare_and_exchange(&v->shadow_logged[which], 0, 1))
        vhfs_log(LOG_NOTICE, "views: %s/%s exists: the store's entry is shown, not the view",
                 v->fs->cfg.store, root_names[which]);
    return true;
}

static int root_view(const char *name)
{
    for (int k = 0; k < 2; k++)
        if (strcmp(name, root_names[k]) == 0)
            return k;
    return -1;
}

/* Looks name up in view folder dir; a @raw name is revalidated against its store file. */
static int lookup_child(struct vhfs_views *v, const struct vnode *dir, const char *name,
                        struct fuse_entry_param *e)
{
    g_autofree char *disk = dir->kind == VH_VIEW_RAW_DIR ? vh_view_raw_disk(dir->path, name) : NULL;
    g_autoptr(vh_snap) s = disk ? snap_for_disk(v, disk) : snap_get(v, false);
    vh_view_kind kind;
    const char *path;
    guint index;
    int r = vh_snap_child(s, dir->kind, dir->path, name, &kind, &path, &index);
    if (r == 0)
        r = make_entry(v, s, kind, path, index, e);
    return r;
}

static void vw_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct vhfs_views *v = views_of(req);
    struct fuse_entry_param e;
    int r, which;

    if (!vhfs_views_ino(parent)) {
        if (parent != FUSE_ROOT_ID || (which = root_view(name)) < 0 || shadowed(v, which))
            return base.lookup(req, parent, name);
        g_autoptr(vh_snap) s = snap_get(v, false);
        r = make_entry(v, s, root_kinds[which], "", 0, &e);
        return r < 0 ? reply_err(req, "lookup", -r) : reply_entry(req, &e);
    }
    struct vnode *dir = vnode_of(v, parent);
    if (!dir)
        return reply_err(req, "lookup", ESTALE);
    r = lookup_child(v, dir, name, &e);
    if (r < 0)
        return reply_err(req, "lookup", -r);
    reply_entry(req, &e);
}

size_t vhfs_views_root_entries(fuse_req_t req, char *buf, size_t size, off_t off, bool plus,
                               unsigned *sent)
{
    struct vhfs_views *v = views_of(req);
    size_t used = 0;

    if (v == NULL)
        return 0;
    for (; *sent < 2; (*sent)++) {
        struct fuse_entry_param e;
        size_t len;

        if (shadowed(v, (int)*sent))
            continue; /* the real entry was listed */
        g_autoptr(vh_snap) s = snap_get(v, false);
        if (make_entry(v, s, root_kinds[*sent], "", 0, &e) < 0)
            continue;
        if (plus) {
            len = fuse_add_direntry_plus(req, buf + used, size - used, root_names[*sent], &e, off);
            if (len > size - used)
                vnode_unref(v, e.ino, 1);
        } else {
            vnode_unref(v, e.ino, 1);
            len = fuse_add_direntry(req, buf + used, size - used, root_names[*sent], &e.attr, off);
        }
        if (len > size - used)
            break;
        used += len;
    }
    return used;
}

static void vw_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
    if (!vhfs_views_ino(ino))
        return base.forget(req, ino, nlookup);
    vnode_unref(views_of(req), ino, nlookup);
    fuse_reply_none(req);
}

static void vw_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
    struct vhfs_views *v = views_of(req);
    size_t keep = 0;

    /* Ours are dropped here; the rest, moved to the front, go on to the pass-through. */
    for (size_t k = 0; k < count; k++) {
        if (vhfs_views_ino(forgets[k].ino))
            vnode_unref(v, forgets[k].ino, forgets[k].nlookup);
        else
            forgets[keep++] = forgets[k];
    }
    base.forget_multi(req, keep, forgets);
}

static void vw_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct vhfs_views *v = views_of(req);
    struct stat st;

    if (!vhfs_views_ino(ino))
        return base.getattr(req, ino, fi);
    struct vnode *n = vnode_of(v, ino);
    if (!n)
        return reply_err(req, "getattr", ESTALE);
    g_autoptr(vh_snap) s = snap_for(v, n->kind, n->path);
    int r = node_attr(v, s, n, &st);
    if (r < 0)
        return reply_err(req, "getattr", -r);
    fuse_reply_attr(req, &st, VIEW_TIMEOUT);
}

static void vw_readlink(fuse_req_t req, fuse_ino_t ino)
{
    struct vhfs_views *v = views_of(req);

    if (!vhfs_views_ino(ino))
        return base.readlink(req, ino);
    struct vnode *n = vnode_of(v, ino);
    if (!n)
        return reply_err(req, "readlink", ESTALE);
    if (n->kind != VH_VIEW_LINK)
        return reply_err(req, "readlink", EINVAL);
    g_autoptr(vh_snap) s = snap_get(v, false);
    if (!vh_snap_has(s, VH_VIEW_LINK, n->path, n->index))
        return reply_err(req, "readlink", ENOENT);
    GPtrArray *m = vh_snap_members(s, n->path);
    g_autofree char *target = vh_view_link_target(n->path, m->pdata[n->index]);
    fuse_reply_readlink(req, target);
}

/* ---------------------------------------------------------------------------------------- */
/* Folders */

static void handle_free(struct vhfs_views *v, struct vhandle *h)
{
    if (!h)
        return;
    if (h->kind == VH_VIEW_RAW_FILE) {
        g_mutex_lock(&v->lock);
        g_hash_table_remove(v->raw_open, h);
        g_mutex_unlock(&v->lock);
    }
    vh_flat_unref(h->flat);
    vh_inuse_release(h->inuse);
    g_mutex_clear(&h->lock);
    g_mutex_clear(&h->reopen);
    g_free(h->text);
    if (h->entries)
        g_ptr_array_unref(h->entries);
    vh_snap_unref(h->snap);
    g_free(h->path);
    g_free(h);
}

static struct vhandle *handle_new(vh_view_kind kind, fuse_ino_t ino, const char *path)
{
    struct vhandle *h = g_new0(struct vhandle, 1);
    h->kind = kind;
    h->ino = ino;
    h->path = g_strdup(path);
    g_mutex_init(&h->lock);
    g_mutex_init(&h->reopen);
    return h;
}

static struct vhandle *handle_of(struct fuse_file_info *fi)
{
    return (struct vhandle *)(uintptr_t)fi->fh;
}

static void vw_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct vhfs_views *v = views_of(req);

    if (!vhfs_views_ino(ino))
        return base.opendir(req, ino, fi);
    struct vnode *n = vnode_of(v, ino);
    if (!n)
        return reply_err(req, "opendir", ESTALE);
    if (!vh_view_is_dir(n->kind))
        return reply_err(req, "opendir", ENOTDIR);
    vh_snap *s = snap_get(v, false);
    GPtrArray *a = vh_snap_listing(s, n->kind, n->path);
    if (!a) {
        vh_snap_unref(s);
        return reply_err(req, "opendir", ENOENT);
    }
    struct vhandle *h = handle_new(n->kind, ino, n->path);
    h->snap = s;
    h->entries = a;
    fi->fh = (uintptr_t)h;
    fi->cache_readdir = 0;
    if (fuse_reply_open(req, fi) != 0)
        handle_free(v, h);
}

/* Offsets: 0 is the start, entry k (0 ".", 1 "..", then the listing) is followed by k + 1. */
static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset,
                       struct fuse_file_info *fi, bool plus)
{
    struct vhfs_views *v = views_of(req);
    struct vhandle *h = handle_of(fi);
    const char *op = plus ? "readdirplus" : "readdir";
    g_autofree char *buf = g_try_malloc(size);
    size_t used = 0;

    if (buf == NULL)
        return reply_err(req, op, ENOMEM);
    for (guint64 k = offset < 0 ? 0 : (guint64)offset; k < 2 + (guint64)h->entries->len; k++) {
        struct fuse_entry_param e = {0};
        const char *name = k == 0 ? "." : "..";
        size_t len;

        if (k >= 2) {
            const vh_view_entry *ve = h->entries->pdata[k - 2];
            name = ve->name;
            if (make_entry(v, h->snap, ve->kind, ve->path, ve->index, &e) < 0)
                continue; /* gone from the store since the snapshot */
        } else {
            /* ino 0 (no lookup taken) but a number: readdir(3) skips entries whose is 0. */
            e.attr.st_mode = S_IFDIR;
            e.attr.st_ino = k == 0 ? ino : FUSE_ROOT_ID;
        }
        if (plus) {
            len = fuse_add_direntry_plus(req, buf + used, size - used, name, &e, (off_t)k + 1);
            if (len > size - used && e.ino)
                vnode_unref(v, e.ino, 1);
        } else {
            if (e.ino)
                vnode_unref(v, e.ino, 1);
            len = fuse_add_direntry(req, buf + used, size - used, name, &e.attr, (off_t)k + 1);
        }
        if (len > size - used)
            break;
        used += len;
    }
    fuse_reply_buf(req, buf, used);
}

static void vw_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset,
                       struct fuse_file_info *fi)
{
    if (!vhfs_views_ino(ino))
        return base.readdir(req, ino, size, offset, fi);
    do_readdir(req, ino, size, offset, fi, false);
}

static void vw_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset,
                           struct fuse_file_info *fi)
{
    if (!vhfs_views_ino(ino))
        return base.readdirplus(req, ino, size, offset, fi);
    do_readdir(req, ino, size, offset, fi, true);
}

static void vw_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (!vhfs_views_ino(ino))
        return base.releasedir(req, ino, fi);
    handle_free(views_of(req), handle_of(fi));
    reply_err(req, "releasedir", 0);
}

static void vw_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    if (!vhfs_views_ino(ino))
        return base.fsyncdir(req, ino, datasync, fi);
    reply_err(req, "fsyncdir", 0);
}

/* ---------------------------------------------------------------------------------------- */
/* Files */

/*
 * A current reader of a disk's chain. -EAGAIN when the snapshot looks older than the files (a
 * member gone or changed) and `retry` allows another try; else -EIO after one log line per
 * snapshot and disk.
 */
static int open_raw(struct vhfs_views *v, const struct vhfs_caller *caller, vh_snap *s,
                    const char *path, bool retry, vh_flat **out)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *why = NULL;
    const vh_disk_info *d = vh_snap_disk(s, path);
    const vh_chain *c = NULL;

    if (!d)
        return retry ? -EAGAIN : -ENOENT;
    if (d->error)
        why = g_strdup(d->error);
    else if ((c = vh_snap_chain(s, path, &why)) != NULL && vh_flat_chain_ok(c, &err) == 0) {
        /* the caller reads every disk of the chain: each must be readable by the caller */
        int r = vhfs_caller_may_read_chain(v->fs, caller, c);
        if (r < 0 && (r != -EAGAIN || !retry))
            return r == -EAGAIN ? -EIO : r;
        if (r == 0 && vh_flat_cache_get(v->cache, c, out, &err) == 0)
            return 0;
        if (retry)
            return -EAGAIN;
    }
    if (!why)
        why = g_strdup(err ? err->message : "cannot be read");
    if (vh_snap_first_failure(s, path))
        vhfs_log(LOG_ERR, "views: @raw/%s%s: %s", path, VH_VIEW_RAW_SUFFIX, why);
    return -EIO;
}

/* A reader of the disk at path, from a snapshot that is looked at again when it proves old. */
static int raw_reader(struct vhfs_views *v, const struct vhfs_caller *caller, const char *path,
                      vh_flat **out)
{
    g_autoptr(vh_snap) s = snap_for_disk(v, path);
    int r = open_raw(v, caller, s, path, true, out);
    if (r == -EAGAIN) {
        /* A member renamed or changed since the snapshot: look at the store again. */
        g_autoptr(vh_snap) fresh = snap_get(v, true);
        r = open_raw(v, caller, fresh, path, false, out);
    }
    return r;
}

/* The handle's reader (a new reference) if it is current, else NULL. */
static vh_flat *current_reader(struct vhandle *h)
{
    g_mutex_lock(&h->lock);
    vh_flat *f = h->flat_gen == g_atomic_int_get(&h->gen) ? vh_flat_ref(h->flat) : NULL;
    g_mutex_unlock(&h->lock);
    return f;
}

/* The handle's reader (a new reference), opened anew once a member changed. */
static int handle_reader(struct vhfs_views *v, struct vhandle *h, vh_flat **out)
{
    if ((*out = current_reader(h)) != NULL)
        return 0;
    g_mutex_lock(&h->reopen);
    int r = 0;
    while (r == 0 && (*out = current_reader(h)) == NULL) {
        gint gen = g_atomic_int_get(&h->gen); /* a change from now on makes the new one stale */
        vh_flat *fresh = NULL;
        if ((r = raw_reader(v, &h->caller, h->path, &fresh)) < 0)
            break;
        g_mutex_lock(&h->lock);
        vh_flat *old = h->flat;
        h->flat = fresh;
        h->flat_gen = gen;
        g_mutex_unlock(&h->lock);
        vh_flat_unref(old);
    }
    g_mutex_unlock(&h->reopen);
    return r;
}

/*
 * Marks every member of the chain @raw/path reads in use (chain/inuse.h) until the release: a
 * merge of any of them is refused while the file is open. EBUSY while a merge runs on one.
 */
static int raw_hold(struct vhfs_views *v, const char *path, GArray **out)
{
    g_autoptr(vh_snap) s = snap_for_disk(v, path);
    g_autoptr(GError) err = NULL;
    const vh_chain *c = vh_snap_chain(s, path, NULL);
    if (!c)
        return -EIO; /* gone since the reader opened */
    int r = vh_inuse_hold_chain(vh_store_root(store_of(v)), c, out, &err);
    if (r < 0)
        vhfs_log(LOG_INFO, "views: @raw/%s%s: %s", path, VH_VIEW_RAW_SUFFIX, err->message);
    return r;
}

static void vw_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct vhfs_views *v = views_of(req);

    if (!vhfs_views_ino(ino))
        return base.open(req, ino, fi);
    struct vnode *n = vnode_of(v, ino);
    if (!n)
        return reply_err(req, "open", ESTALE);
    if (n->kind != VH_VIEW_RAW_FILE && n->kind != VH_VIEW_STATUS)
        return reply_err(req, "open", n->kind == VH_VIEW_LINK ? ELOOP : EISDIR);
    if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC))
        return reply_err(req, "open", EROFS);
    struct vhandle *h = handle_new(n->kind, ino, n->path);
    if (n->kind == VH_VIEW_STATUS) {
        g_autoptr(vh_snap) s = snap_get(v, false);
        const char *status = vh_snap_status(s, n->path);
        if (!status) {
            handle_free(v, h);
            return reply_err(req, "open", ENOENT);
        }
        h->text = g_strdup(status);
        h->text_len = strlen(h->text);
        fi->direct_io = 1; /* its length may change with the store: always ask */
    } else {
        vhfs_caller_from_req(&h->caller, req); /* a reopen reads for the same caller */
        int r = raw_reader(v, &h->caller, n->path, &h->flat);
        if (r == 0)
            r = raw_hold(v, n->path, &h->inuse);
        if (r < 0) {
            handle_free(v, h);
            return reply_err(req, "open", -r);
        }
        g_mutex_lock(&v->lock);
        g_hash_table_add(v->raw_open, h);
        g_mutex_unlock(&v->lock);
        guint64 serial = vh_flat_serial(h->flat);
        /* Cached pages stay valid only while the same reader serves them. */
        fi->keep_cache = __atomic_exchange_n(&n->served, serial, __ATOMIC_RELAXED) == serial;
        if (fi->flags & O_DIRECT)
            fi->direct_io = 1;
    }
    fi->noflush = 1;
    fi->fh = (uintptr_t)h;
    if (fuse_reply_open(req, fi) != 0)
        handle_free(v, h);
}

/* What a zero piece of a spliced reply is sent from (never written: stays the zero page). */
static uint8_t zeros[VHFS_MAX_IO];

/*
 * Replies with the layers' file ranges themselves (vh_flat_pieces): with FUSE_CAP_SPLICE_WRITE
 * libfuse splices them from the page cache into the reply, one copy in the kernel instead of a
 * pread into our buffer and a write out of it (the two copies were most of the daemon's time
 * in a cold read); without it, libfuse reads them into a buffer as vh_flat_read would.
 * -ENOTSUP, with nothing sent, when a piece must be read through its format.
 */
static int reply_pieces(fuse_req_t req, struct vhandle *h, vh_flat *flat, uint64_t off, size_t n)
{
    g_autoptr(GArray) pieces = g_array_new(FALSE, FALSE, sizeof(vh_flat_piece));
    g_autoptr(GError) err = NULL;
    int r = vh_flat_pieces(flat, off, n, pieces, &err);
    if (r == -ENOTSUP)
        return r;
    if (r < 0) {
        if (g_atomic_int_compare_and_exchange(&h->logged, 0, 1))
            vhfs_log(LOG_ERR, "views: @raw/%s%s: %s", h->path, VH_VIEW_RAW_SUFFIX, err->message);
        reply_err(req, "read", EIO);
        return 0;
    }
    struct fuse_bufvec *bv = g_malloc0(sizeof *bv + MAX(pieces->len, 1) * sizeof(struct fuse_buf));
    bv->count = pieces->len;
    for (guint k = 0; k < pieces->len; k++) {
        const vh_flat_piece *p = &g_array_index(pieces, vh_flat_piece, k);
        if (p->fd < 0 && p->len > sizeof zeros) {
            g_free(bv);
            return -ENOTSUP;
        }
        bv->buf[k] =
            p->fd < 0
                ? (struct fuse_buf){.size = p->len, .mem = zeros}
                : (struct fuse_buf){.size = p->len,
                                    .flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK | FUSE_BUF_FD_RETRY,
                                    .fd = p->fd,
                                    .pos = (off_t)p->off};
    }
    fuse_reply_data(req, bv, 0); /* replies an error itself when a read fails */
    g_free(bv);
    return 0;
}

static void vw_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    if (!vhfs_views_ino(ino))
        return base.read(req, ino, size, off, fi);
    struct vhfs_views *v = views_of(req);
    struct vhandle *h = handle_of(fi);
    g_autoptr(vh_flat) flat = NULL;
    if (h->kind == VH_VIEW_RAW_FILE) {
        int r = handle_reader(v, h, &flat);
        if (r < 0)
            return reply_err(req, "read", -r);
    }
    uint64_t end = flat ? vh_flat_size(flat) : h->text_len;
    if (off < 0)
        return reply_err(req, "read", EINVAL);
    if ((uint64_t)off >= end || size == 0)
        return (void)fuse_reply_buf(req, NULL, 0);
    size_t n = (size_t)MIN((uint64_t)size, end - (uint64_t)off);
    /* Never reply from the handle's memory: once the kernel has the reply, the reader may close
       the file, and the release (on another thread) frees the handle while this thread is
       still inside fuse_reply_buf (ASan's writev check then reads freed memory). */
    if (h->text) {
        g_autofree char *copy = g_memdup2(h->text + off, n);
        return (void)fuse_reply_buf(req, copy, n);
    }
    if (reply_pieces(req, h, flat, (uint64_t)off, n) == 0)
        return;
    g_autofree char *buf = g_try_malloc(n);
    if (buf == NULL)
        return reply_err(req, "read", ENOMEM);
    g_autoptr(GError) err = NULL;
    if (vh_flat_read(flat, buf, (uint64_t)off, n, &err) < 0) {
        if (g_atomic_int_compare_and_exchange(&h->logged, 0, 1))
            vhfs_log(LOG_ERR, "views: @raw/%s%s: %s", h->path, VH_VIEW_RAW_SUFFIX, err->message);
        return reply_err(req, "read", EIO);
    }
    fuse_reply_buf(req, buf, n);
}

static void vw_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (!vhfs_views_ino(ino))
        return base.release(req, ino, fi);
    handle_free(views_of(req), handle_of(fi));
    reply_err(req, "release", 0);
}

static void vw_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
                     struct fuse_file_info *fi)
{
    if (!vhfs_views_ino(ino))
        return base.lseek(req, ino, off, whence, fi);
    struct vhandle *h = handle_of(fi);
    g_autoptr(vh_flat) flat = NULL;
    uint64_t res = 0;
    int r = 0;

    if (whence != SEEK_DATA && whence != SEEK_HOLE)
        return reply_err(req, "lseek", EINVAL);
    if (off < 0)
        return reply_err(req, "lseek", ENXIO);
    if (h->kind == VH_VIEW_RAW_FILE && (r = handle_reader(views_of(req), h, &flat)) < 0)
        return reply_err(req, "lseek", -r);
    if (flat) {
        g_autoptr(GError) err = NULL;
        r = vh_flat_seek(flat, (uint64_t)off, whence == SEEK_HOLE, &res, &err);
        if (r < 0 && r != -ENXIO)
            vhfs_log(LOG_ERR, "views: @raw/%s%s: %s", h->path, VH_VIEW_RAW_SUFFIX,
                     err ? err->message : g_strerror(-r));
        if (r < 0 && r != -ENXIO)
            r = -EIO;
    } else if ((uint64_t)off >= h->text_len) {
        r = -ENXIO;
    } else {
        res = whence == SEEK_DATA ? (uint64_t)off : h->text_len;
    }
    if (r < 0)
        return reply_err(req, "lseek", -r);
    fuse_reply_lseek(req, (off_t)res);
}

/* ---------------------------------------------------------------------------------------- */
/* Changes made through the mount */

static void notify_inval(struct vhfs *fs, fuse_ino_t ino)
{
    int r = fuse_lowlevel_notify_inval_inode(fs->se, ino, 0, 0);
    if (r < 0 && r != -ENOENT)
        vhfs_debug("views: invalidating inode %" G_GUINT64_FORMAT ": %s", (guint64)ino,
                   g_strerror(-r));
}

static void notify_task(gpointer data, gpointer user)
{
    notify_inval(user, (fuse_ino_t)(uintptr_t)data);
}

void vhfs_views_changed(struct vhfs *fs, struct vhfs_inode *inode)
{
    struct vhfs_views *v = fs->views;
    if (v == NULL || !S_ISREG(inode->type))
        return;
    g_autoptr(GPtrArray) tops = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GArray) inos = g_array_new(FALSE, FALSE, sizeof(fuse_ino_t));
    /* Open files first: their next read opens a new reader. */
    g_mutex_lock(&v->lock);
    GHashTableIter it;
    gpointer key;
    g_hash_table_iter_init(&it, v->raw_open);
    while (g_hash_table_iter_next(&it, &key, NULL)) {
        struct vhandle *h = key;
        g_mutex_lock(&h->lock);
        bool hit = h->flat && vh_flat_has_member(h->flat, inode->dev, inode->ino);
        g_mutex_unlock(&h->lock);
        if (hit) {
            g_atomic_int_inc(&h->gen);
            g_array_append_val(inos, h->ino);
        }
    }
    g_mutex_unlock(&v->lock);
    /* not under snap_lock: a refresh of the views must never hold up a write */
    vh_flat_cache *cache = g_atomic_pointer_get(&v->cache);
    if (cache)
        vh_flat_cache_drop_member(cache, inode->dev, inode->ino, tops);
    for (guint k = 0; k < tops->len; k++) {
        fuse_ino_t ino = raw_ino(v, tops->pdata[k]);
        if (ino)
            g_array_append_val(inos, ino);
    }
    if (fs->se == NULL)
        return;
    /* One thread serves everything with -s: a notification from it would wait for a read of
       the same file that waits for this thread. */
    for (guint k = 0; k < inos->len; k++) {
        fuse_ino_t ino = g_array_index(inos, fuse_ino_t, k);
        if (v->notifier)
            g_thread_pool_push(v->notifier, (gpointer)(uintptr_t)ino, NULL);
        else
            notify_inval(fs, ino);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Everything that would change a view: read-only */

static void vw_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int valid,
                       struct fuse_file_info *fi)
{
    if (!vhfs_views_ino(ino))
        return base.setattr(req, ino, attr, valid, fi);
    reply_err(req, "setattr", EROFS);
}

static void vw_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
    if (!vhfs_views_ino(parent))
        return base.mknod(req, parent, name, mode, rdev);
    reply_err(req, "mknod", EROFS);
}

static void vw_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    if (!vhfs_views_ino(parent))
        return base.mkdir(req, parent, name, mode);
    reply_err(req, "mkdir", EROFS);
}

static void vw_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    if (!vhfs_views_ino(parent))
        return base.unlink(req, parent, name);
    reply_err(req, "unlink", EROFS);
}

static void vw_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    if (!vhfs_views_ino(parent))
        return base.rmdir(req, parent, name);
    reply_err(req, "rmdir", EROFS);
}

static void vw_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
    if (!vhfs_views_ino(parent))
        return base.symlink(req, link, parent, name);
    reply_err(req, "symlink", EROFS);
}

static void vw_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned int flags)
{
    if (!vhfs_views_ino(parent) && !vhfs_views_ino(newparent))
        return base.rename(req, parent, name, newparent, newname, flags);
    reply_err(req, "rename", vhfs_views_ino(parent) != vhfs_views_ino(newparent) ? EXDEV : EROFS);
}

static void vw_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
    if (!vhfs_views_ino(ino) && !vhfs_views_ino(newparent))
        return base.link(req, ino, newparent, newname);
    reply_err(req, "link", vhfs_views_ino(newparent) ? EROFS : EXDEV);
}

static void vw_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi)
{
    if (!vhfs_views_ino(parent))
        return base.create(req, parent, name, mode, fi);
    reply_err(req, "create", EROFS);
}

static void vw_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
    if (!vhfs_views_ino(ino))
        return base.write(req, ino, buf, size, off, fi);
    reply_err(req, "write", EBADF); /* never opened for writing */
}

static void vw_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (!vhfs_views_ino(ino))
        return base.flush(req, ino, fi);
    reply_err(req, "flush", 0);
}

static void vw_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    if (!vhfs_views_ino(ino))
        return base.fsync(req, ino, datasync, fi);
    reply_err(req, "fsync", 0);
}

static void vw_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                         struct fuse_file_info *fi)
{
    if (!vhfs_views_ino(ino))
        return base.fallocate(req, ino, mode, offset, length, fi);
    reply_err(req, "fallocate", EBADF);
}

static void vw_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
                               struct fuse_file_info *fi_in, fuse_ino_t ino_out, off_t off_out,
                               struct fuse_file_info *fi_out, size_t len, int flags)
{
    if (!vhfs_views_ino(ino_in) && !vhfs_views_ino(ino_out))
        return base.copy_file_range(req, ino_in, off_in, fi_in, ino_out, off_out, fi_out, len,
                                    flags);
    /* The kernel then copies by reading and writing. */
    reply_err(req, "copy_file_range", EXDEV);
}

static void vw_statfs(fuse_req_t req, fuse_ino_t ino)
{
    base.statfs(req, vhfs_views_ino(ino) ? FUSE_ROOT_ID : ino);
}

static void vw_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
                        size_t size, int flags)
{
    if (!vhfs_views_ino(ino))
        return base.setxattr(req, ino, name, value, size, flags);
    reply_err(req, "setxattr", EROFS);
}

static void vw_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
    if (!vhfs_views_ino(ino))
        return base.getxattr(req, ino, name, size);
    reply_err(req, "getxattr", ENODATA);
}

static void vw_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
    if (!vhfs_views_ino(ino))
        return base.listxattr(req, ino, size);
    if (size == 0)
        fuse_reply_xattr(req, 0);
    else
        fuse_reply_buf(req, NULL, 0);
}

static void vw_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
    if (!vhfs_views_ino(ino))
        return base.removexattr(req, ino, name);
    reply_err(req, "removexattr", EROFS);
}

/* ---------------------------------------------------------------------------------------- */
/* Set-up */

#define WRAP(op)                                                                                   \
    do {                                                                                           \
        if (ops->op != NULL)                                                                       \
            ops->op = vw_##op;                                                                     \
    } while (0)

void vhfs_views_wrap(struct fuse_lowlevel_ops *ops)
{
    base = *ops;
    WRAP(lookup);
    WRAP(forget);
    WRAP(forget_multi);
    WRAP(getattr);
    WRAP(setattr);
    WRAP(readlink);
    WRAP(mknod);
    WRAP(mkdir);
    WRAP(unlink);
    WRAP(rmdir);
    WRAP(symlink);
    WRAP(rename);
    WRAP(link);
    WRAP(open);
    WRAP(read);
    WRAP(write);
    WRAP(flush);
    WRAP(release);
    WRAP(fsync);
    WRAP(opendir);
    WRAP(readdir);
    WRAP(readdirplus);
    WRAP(releasedir);
    WRAP(fsyncdir);
    WRAP(statfs);
    WRAP(setxattr);
    WRAP(getxattr);
    WRAP(listxattr);
    WRAP(removexattr);
    WRAP(create);
    WRAP(fallocate);
    WRAP(copy_file_range);
    WRAP(lseek);
    /* Every other operation that takes an inode must be wrapped too before it is used. */
    g_assert(ops->access == NULL && ops->getlk == NULL && ops->setlk == NULL && ops->bmap == NULL &&
             ops->ioctl == NULL && ops->poll == NULL && ops->write_buf == NULL &&
             ops->flock == NULL);
}

static guint ino_hash(gconstpointer p)
{
    guint64 k = *(const fuse_ino_t *)p;
    return (guint)(k ^ (k >> 32));
}

static gboolean ino_equal(gconstpointer a, gconstpointer b)
{
    return *(const fuse_ino_t *)a == *(const fuse_ino_t *)b;
}

int vhfs_views_init(struct vhfs *fs)
{
    struct vhfs_views *v = g_new0(struct vhfs_views, 1);

    v->fs = fs;
    g_mutex_init(&v->lock);
    g_mutex_init(&v->snap_lock);
    v->by_key = g_hash_table_new(g_str_hash, g_str_equal);
    v->by_ino = g_hash_table_new(ino_hash, ino_equal);
    v->raw_open = g_hash_table_new(NULL, NULL);
    v->next_ino = 1;
    if (fs->cfg.singlethread)
        v->notifier = g_thread_pool_new(notify_task, fs, 1, FALSE, NULL);
    fs->views = v;
    for (int k = 0; k < 2; k++)
        shadowed(v, k); /* says now which real entry wins */
    return 0;
}

void vhfs_views_fini(struct vhfs *fs)
{
    struct vhfs_views *v = fs->views;
    GHashTableIter it;
    gpointer value;

    if (v == NULL)
        return;
    if (v->notifier)
        g_thread_pool_free(v->notifier, FALSE, TRUE);
    g_hash_table_iter_init(&it, v->by_ino);
    while (g_hash_table_iter_next(&it, NULL, &value))
        vnode_free(value);
    g_hash_table_destroy(v->by_ino);
    g_hash_table_destroy(v->by_key);
    g_hash_table_destroy(v->raw_open);
    vh_snap_unref(v->snap);
    vh_flat_cache_free(v->cache);
    g_mutex_clear(&v->snap_lock);
    g_mutex_clear(&v->lock);
    g_free(v);
    fs->views = NULL;
}
