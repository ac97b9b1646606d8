/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * heal.c - the mount's side of healing: starts the engine service (chain/service.h: journal
 * recovery, the store index kept warm), heals on open, relinks on rename, keeps the index
 * current with what is done through the mount, and drops the kernel's cache of what a repair
 * rewrote. It parses no disk bytes: every question about disks goes to the service.
 *
 * Contract: a file is rewritten only when repairs are written (healmode=persist, not ro) and the
 * gate allows it, asked by the service with its repair lock held: not while a handle of the file
 * is open for writing through the mount (new writers take the same lock, so a writer never
 * overlaps a rewrite), and, for repairs a request of a user sets off (open, rename), only when
 * that user may write the file. Opens are never refused because of a chain. Cache drops: the
 * file being opened has only its attributes dropped here (its pages are dropped by the open,
 * keep_cache = 0), since a notify from a request of the same inode could wait for pages that
 * the kernel locked for that very request; other files get a full drop.
 */
#include "fs.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "parent_value.h"
#include "service.h"

/* --- start and stop --- */

bool vhfs_heal_writes(const struct vhfs *fs)
{
    return fs->cfg.healmode == VHFS_HEALMODE_PERSIST && !fs->cfg.ro;
}

static bool heal_on_open(const struct vhfs *fs)
{
    return vhfs_heal_writes(fs) && fs->cfg.heal == VHFS_HEAL_AUTO;
}

/* Relinking after a rename is part of the rename, not a heal: heal=manual keeps it. */
static bool relink_on_rename(const struct vhfs *fs)
{
    return vhfs_heal_writes(fs) && fs->cfg.heal != VHFS_HEAL_OFF;
}

const char *vhfs_heal_note(const struct vhfs *fs)
{
    if (!vhfs_heal_writes(fs))
        return fs->cfg.ro ? "not healed: read-only mount (detection only)"
                          : "not healed: healmode=overlay (detection only)";
    switch (fs->cfg.heal) {
    case VHFS_HEAL_AUTO:
        return "heals on open";
    case VHFS_HEAL_MANUAL:
        return "not healed: heal=manual (write the parent's path to user.vhd.parent)";
    case VHFS_HEAL_OFF:
        break;
    }
    return "not healed: heal=off";
}

static void service_log(void *ctx, bool warning, const char *line)
{
    vhfs_log(warning ? LOG_WARNING : LOG_NOTICE, "%s", line);
}

static gpointer scan_main(gpointer data)
{
    struct vhfs *fs = data;
    g_autoptr(GError) err = NULL;
    gint64 t0 = g_get_monotonic_time();

    if (vh_service_scan(fs->svc, &err) < 0) {
        vhfs_log(LOG_ERR, "index: scan of %s: %s", fs->cfg.store, err->message);
        return NULL;
    }
    vhfs_log(LOG_INFO, "index: %u files scanned in %.2f s",
             vh_store_count(vh_service_store(fs->svc)),
             (double)(g_get_monotonic_time() - t0) / G_USEC_PER_SEC);
    return NULL;
}

int vhfs_heal_start(struct vhfs *fs)
{
    vh_service_opts o = {
        .store = fs->cfg.store, .winroot = fs->cfg.winroot, .maxdepth = fs->cfg.maxdepth};
    g_autoptr(GError) err = NULL;

    fs->svc = vh_service_new(&o, &err);
    if (fs->svc == NULL) {
        vhfs_log(LOG_ERR, "%s", err->message);
        return -vh_error_errno(err);
    }
    vh_service_set_log(fs->svc, service_log, fs);
    if (vhfs_heal_writes(fs) && vh_service_recover(fs->svc, &err) < 0) {
        /* Serving the store is still better than not: the unfinished repair stays journaled. */
        vhfs_log(LOG_ERR, "journal: recovery failed: %s", err->message);
        g_clear_error(&err);
    }
    if (!vhfs_heal_writes(fs))
        vhfs_log(LOG_NOTICE, "%s: broken chains are detected and reported, never written",
                 fs->cfg.ro ? "ro" : "healmode=overlay");
    fs->scan_thread = g_thread_new("vhfs-scan", scan_main, fs);
    return 0;
}

void vhfs_heal_stop(struct vhfs *fs)
{
    if (fs->scan_thread != NULL)
        g_thread_join(fs->scan_thread);
    fs->scan_thread = NULL;
    vh_service_free(fs->svc);
    fs->svc = NULL;
}

/* --- paths --- */

char *vhfs_inode_path(struct vhfs *fs, struct vhfs_inode *inode)
{
    char proc[VHFS_PROCFD_LEN], buf[PATH_MAX];
    const char *rel;
    struct stat st;
    ssize_t n;

    if (inode == &fs->root)
        return g_strdup("");
    vhfs_procfd(proc, inode->fd);
    n = readlink(proc, buf, sizeof(buf) - 1);
    if (n <= 0 || (size_t)n >= sizeof(buf) - 1)
        return NULL;
    buf[n] = '\0';
    /* A removed file's link ends in " (deleted)"; so may a real name: ask the inode. */
    if (g_str_has_suffix(buf, " (deleted)") &&
        (fstatat(inode->fd, "", &st, AT_EMPTY_PATH) < 0 || st.st_nlink == 0))
        return NULL;
    rel = vhfs_path_below(buf, fs->cfg.store);
    return rel != NULL ? g_strdup(rel) : NULL;
}

char *vhfs_mount_path(const struct vhfs *fs, const char *rel)
{
    return g_build_filename(fs->cfg.mountpoint, rel, NULL);
}

static char *child_path(struct vhfs *fs, struct vhfs_inode *dir, const char *name)
{
    g_autofree char *d = vhfs_inode_path(fs, dir);

    if (d == NULL)
        return NULL;
    return *d ? g_strconcat(d, "/", name, NULL) : g_strdup(name);
}

char *vhfs_heal_show_paths(const struct vhfs *fs, const char *text)
{
    g_autofree char *from = g_strconcat(fs->cfg.store, "/", NULL);
    g_autofree char *to = g_strconcat(fs->cfg.mountpoint, "/", NULL);
    g_auto(GStrv) parts = NULL;

    if (strcmp(fs->cfg.store, "/") == 0)
        return g_strdup(text);
    parts = g_strsplit(text, from, -1);
    return g_strjoinv(to, parts);
}

/* --- the gate and the kernel's cache --- */

/* The inode the kernel knows for (dev, ino), or NULL; fs->lock is held by the caller. */
static struct vhfs_inode *known_inode(struct vhfs *fs, dev_t dev, ino_t ino)
{
    struct vhfs_inode key = {.dev = dev, .ino = ino};

    if (dev == fs->root.dev && ino == fs->root.ino)
        return &fs->root;
    return fs->inodes != NULL ? g_hash_table_lookup(fs->inodes, &key) : NULL;
}

static int writers_of(struct vhfs *fs, dev_t dev, ino_t ino)
{
    struct vhfs_inode *inode;
    int n = 0;

    g_mutex_lock(&fs->lock);
    inode = known_inode(fs, dev, ino);
    if (inode != NULL)
        n = g_atomic_int_get(&inode->nwriters);
    g_mutex_unlock(&fs->lock);
    return n;
}

/* Drops the kernel's cache of a rewritten file: attributes, and with data its pages too. */
static void invalidate(struct vhfs *fs, const vh_disk_info *i, bool data)
{
    struct vhfs_inode *inode;
    fuse_ino_t fino = 0;
    int res;

    g_mutex_lock(&fs->lock);
    inode = known_inode(fs, i->dev, i->ino);
    if (inode != NULL)
        fino = inode == &fs->root ? FUSE_ROOT_ID : (fuse_ino_t)(uintptr_t)inode;
    g_mutex_unlock(&fs->lock);
    if (fino == 0 || fs->se == NULL)
        return;
    res = fuse_lowlevel_notify_inval_inode(fs->se, fino, data ? 0 : -1, 0);
    if (res < 0 && res != -ENOENT)
        vhfs_log(LOG_WARNING, "%s: cannot drop the kernel's cache: %s", i->path, g_strerror(-res));
}

/* Who set a repair off: may_write is asked only when check_caller. */
struct gate_ctx {
    struct vhfs *fs;
    bool check_caller;
    uid_t uid;
    gid_t gid;
    int ngroups;
    gid_t groups[64];
};

static void gate_from_req(struct gate_ctx *g, struct vhfs *fs, fuse_req_t req)
{
    const struct fuse_ctx *ctx = fuse_req_ctx(req);
    int n;

    memset(g, 0, sizeof(*g));
    g->fs = fs;
    g->check_caller = true;
    g->uid = ctx->uid;
    g->gid = ctx->gid;
    n = fuse_req_getgroups(req, G_N_ELEMENTS(g->groups), g->groups);
    g->ngroups = CLAMP(n, 0, (int)G_N_ELEMENTS(g->groups));
}

/* As the kernel's generic permission check for writing (owner, then group, then others). */
static bool may_write(const struct gate_ctx *g, const struct stat *st)
{
    bool in_group = st->st_gid == g->gid;

    if (g->uid == 0)
        return true;
    if (st->st_uid == g->uid)
        return (st->st_mode & S_IWUSR) != 0;
    for (int k = 0; k < g->ngroups && !in_group; k++)
        in_group = g->groups[k] == st->st_gid;
    return (st->st_mode & (in_group ? S_IWGRP : S_IWOTH)) != 0;
}

static int gate(void *ctx, const vh_disk_info *child, char **why)
{
    struct gate_ctx *g = ctx;
    struct stat st;

    if (writers_of(g->fs, child->dev, child->ino) > 0) {
        *why = g_strdup("open for writing through the mount");
        return -EBUSY;
    }
    if (!g->check_caller)
        return 0;
    if (fstatat(g->fs->root.fd, child->path, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        *why = g_strdup(g_strerror(errno));
        return -errno;
    }
    if (!may_write(g, &st)) {
        *why = g_strdup_printf("user %u may not write it", (unsigned)g->uid);
        return -EACCES;
    }
    return 0;
}

/* --- hooks --- */

bool vhfs_heal_open(struct vhfs *fs, fuse_req_t req, struct vhfs_inode *inode)
{
    g_autofree char *rel = NULL;
    g_autoptr(vh_disk_info) info = NULL;
    g_autoptr(GPtrArray) changed = NULL;
    g_autoptr(vh_chain) chain = NULL;
    struct gate_ctx g;
    bool self = false;

    if (fs->svc == NULL || !S_ISREG(inode->type))
        return false;
    rel = vhfs_inode_path(fs, inode);
    if (rel == NULL)
        return false;
    /* The cheap check first: a stat and the index's entry; only differencing disks go on. */
    info = vh_service_describe(fs->svc, rel, NULL);
    if (!vh_disk_info_is_child(info))
        return false;
    if (!heal_on_open(fs)) {
        chain = vh_service_chain(fs->svc, rel, NULL); /* detection: logged by the service */
        return false;
    }
    gate_from_req(&g, fs, req);
    changed = g_ptr_array_new_with_free_func((GDestroyNotify)vh_disk_info_unref);
    if (vh_service_heal(fs->svc, rel, gate, &g, changed, NULL) <= 0)
        return false;
    for (guint k = 0; k < changed->len; k++) {
        const vh_disk_info *c = changed->pdata[k];
        bool is_self = c->dev == inode->dev && c->ino == inode->ino;

        invalidate(fs, c, !is_self);
        self = self || is_self;
    }
    return self;
}

void vhfs_heal_writer_opened(struct vhfs *fs, struct vhfs_inode *inode)
{
    if (fs->svc != NULL)
        vh_service_lock_repairs(fs->svc);
    g_atomic_int_inc(&inode->nwriters);
    if (fs->svc != NULL)
        vh_service_unlock_repairs(fs->svc);
}

void vhfs_heal_released(struct vhfs *fs, struct vhfs_inode *inode, bool writer)
{
    g_autofree char *rel = NULL;

    if (fs->svc == NULL || !writer || !S_ISREG(inode->type))
        return;
    rel = vhfs_inode_path(fs, inode);
    if (rel != NULL)
        vh_service_changed(fs->svc, rel);
}

void vhfs_heal_renamed(struct vhfs *fs, fuse_req_t req, struct vhfs_inode *olddir,
                       const char *oldname, struct vhfs_inode *newdir, const char *newname,
                       unsigned flags)
{
    g_autofree char *from = NULL, *to = NULL;
    g_autoptr(GPtrArray) changed = NULL;
    struct gate_ctx g;

    if (fs->svc == NULL)
        return;
    from = child_path(fs, olddir, oldname);
    to = child_path(fs, newdir, newname);
    if (from == NULL || to == NULL)
        return;
    gate_from_req(&g, fs, req);
    changed = g_ptr_array_new_with_free_func((GDestroyNotify)vh_disk_info_unref);
    vh_service_renamed(fs->svc, from, to, (flags & RENAME_EXCHANGE) != 0, relink_on_rename(fs),
                       gate, &g, changed);
    for (guint k = 0; k < changed->len; k++)
        invalidate(fs, changed->pdata[k], true);
}

void vhfs_heal_unlinked(struct vhfs *fs, struct vhfs_inode *dir, const char *name)
{
    g_autofree char *rel = NULL;

    if (fs->svc == NULL)
        return;
    rel = child_path(fs, dir, name);
    if (rel != NULL)
        vh_service_unlinked(fs->svc, rel);
}

/* --- repairs asked for through the attributes --- */

int vhfs_heal_set_parent(struct vhfs *fs, struct vhfs_inode *inode, const char *rel,
                         const char *value, size_t size, bool force)
{
    g_autoptr(vh_disk_info) info = NULL;
    g_autoptr(GError) err = NULL;
    g_autofree char *path = NULL, *parent = NULL;
    vh_reconnect_result res = {0};
    struct gate_ctx g = {.fs = fs};
    int r = 0;

    if (fs->svc == NULL)
        return -ENOTSUP;
    info = vh_service_describe(fs->svc, rel, &err);
    if (info == NULL)
        return -vh_error_errno(err);
    if (info->format == VH_FORMAT_NONE)
        return -ENOTSUP; /* not a disk: nothing to record (it has no status) */
    if (info->error)
        r = vh_fail(&err, EIO, "%s: the child cannot be read: %s", rel, info->error);
    else if (info->type != VH_TYPE_DIFFERENCING)
        r = vh_fail(&err, ENOTSUP, "%s: a %s %s disk has no parent to reconnect", rel,
                    vh_type_name(info->type), vh_format_name(info->format));
    else if (!vhfs_heal_writes(fs))
        r = vh_fail(&err, EROFS, "%s: %s", rel,
                    fs->cfg.ro ? "read-only mount: repairs are not written"
                               : "healmode=overlay: repairs are not written into the store");
    if (r == 0)
        r = vhfs_parent_value_check(value, size, &path, &err);
    if (r == 0)
        r = vhfs_parent_value_map(fs->cfg.mountpoint, fs->cfg.store, rel, path, &parent, &err);
    if (r < 0) {
        vh_service_record_failure(fs->svc, info, -r, err->message);
        vhfs_log(LOG_WARNING, "reconnect of %s refused: %s", rel, err->message);
        return r;
    }
    r = vh_service_reconnect(fs->svc, rel, parent, force, gate, &g, &res, &err);
    vh_reconnect_result_clear(&res);
    if (r == 0) {
        g_autoptr(vh_disk_info) now = vh_service_describe(fs->svc, rel, NULL);

        invalidate(fs, now != NULL ? now : info, true);
    }
    return r;
}
