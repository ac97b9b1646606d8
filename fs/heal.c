/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * heal.c - the mount's side of healing: starts the engine service (chain/service.h: journal
 * recovery, the store index kept warm), heals on open, relinks on rename, keeps the index
 * current with what is done through the mount, and drops the kernel's cache of what a repair
 * rewrote. It parses no disk bytes: every question about disks goes to the service.
 *
 * Overlay mode (healmode=overlay, ro, a read-only STORE): no file is ever written; heal on open
 * and user.vhd.parent build patch sets in the service (chain/overlay.h) that the pass-through
 * lays over the store's bytes (vhfs_heal_patch), and disks are not opened for writing (EROFS).
 *
 * Contract: a file is rewritten only when repairs are written (healmode=persist, not ro) and the
 * gate allows it, asked by the service with its repair lock held: not while a handle of the file
 * is open for writing through the mount (new writers take the same lock, so a writer never
 * overlaps a rewrite), and only as the user whose request set it off (open, rename, a write of
 * user.vhd.parent): the gate opens the child for writing and the new parent for reading with
 * that user's credentials beneath STORE (the child without following symlinks, and only while
 * it is the file the verdict was about), checks the trust rule on those very inodes, and the
 * repair goes through the descriptors (vh_reconnect_pin), never through a path resolved again.
 * Opens are never refused because of a chain. Cache drops: the
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

/* In overlay mode, heal on open and user.vhd.parent build patch sets instead of writing. */
static bool overlay(const struct vhfs *fs)
{
    return !vhfs_heal_writes(fs);
}

static bool heal_on_open(const struct vhfs *fs)
{
    return fs->cfg.heal == VHFS_HEAL_AUTO;
}

/* Relinking after a rename is part of the rename, not a heal: heal=manual keeps it. */
static bool relink_on_rename(const struct vhfs *fs)
{
    return vhfs_heal_writes(fs) && fs->cfg.heal != VHFS_HEAL_OFF;
}

const char *vhfs_heal_note(const struct vhfs *fs)
{
    switch (fs->cfg.heal) {
    case VHFS_HEAL_AUTO:
        return overlay(fs) ? "heals on open (overlay: the store is not written)" : "heals on open";
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
    vh_service_opts o = {.store = fs->cfg.store,
                         .winroot = fs->cfg.winroot,
                         .maxdepth = fs->cfg.maxdepth,
                         .trust = fs->cfg.trust,
                         .overlay = overlay(fs),
                         .overlay_dir = fs->cfg.overlaydir};
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
    if (overlay(fs))
        vhfs_log(LOG_NOTICE, "%s: repairs are presented by the mount, STORE is never written",
                 fs->cfg.ro ? "ro" : "healmode=overlay");
    if (fs->cfg.overlaydir != NULL) {
        /* before the first request: a remount presents the healed chains at once */
        int n = vh_service_load_overlay(fs->svc, &err);
        if (n < 0) {
            vhfs_log(LOG_ERR, "overlaydir: %s", err->message);
            g_clear_error(&err);
        } else {
            vhfs_log(LOG_NOTICE, "overlaydir %s: %d repair%s loaded, new ones are kept %s",
                     fs->cfg.overlaydir, n, n == 1 ? "" : "s",
                     vh_overlay_writes_dir(vh_service_overlay(fs->svc))
                         ? "there"
                         : "in memory only (the folder is not marked as STORE's)");
        }
    }
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

/* rel of an absolute path under root (canonical), or NULL. */
static const char *below(const char *path, const char *root)
{
    return vh_path_below(root, path);
}

char *vhfs_inode_path(struct vhfs *fs, struct vhfs_inode *inode)
{
    char proc[VHFS_PROCFD_LEN], buf[PATH_MAX];
    const char *rel;
    struct stat st;
    ssize_t n;
    int fd;

    if (inode == &fs->root)
        return g_strdup("");
    fd = vhfs_inode_pin(fs, inode);
    if (fd < 0)
        return NULL;
    vhfs_procfd(proc, fd);
    n = readlink(proc, buf, sizeof(buf) - 1);
    if (n > 0 && (size_t)n < sizeof(buf) - 1) {
        buf[n] = '\0';
        /* A removed file's link ends in " (deleted)"; so may a real name: ask the inode. */
        if (g_str_has_suffix(buf, " (deleted)") &&
            (fstatat(fd, "", &st, AT_EMPTY_PATH) < 0 || st.st_nlink == 0))
            n = -1;
    }
    vhfs_inode_unpin(fs, inode);
    if (n <= 0 || (size_t)n >= sizeof(buf) - 1)
        return NULL;
    rel = below(buf, fs->cfg.store);
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
    int res = vhfs_invalidate(fs, i->dev, i->ino, data);

    if (res < 0)
        vhfs_log(LOG_WARNING, "%s: cannot drop the kernel's cache: %s", i->path, g_strerror(-res));
}

/*
 * Who set a repair off. The gate opens the files of the repair as that user, beneath STORE, and
 * pins them: the repair then writes through exactly the inode that was checked.
 */
struct gate_ctx {
    struct vhfs *fs;
    struct vhfs_caller caller;
    int parent_fd; /* a parent already pinned for the caller (user.vhd.parent), or -1 */
};

static void gate_from_req(struct gate_ctx *g, struct vhfs *fs, fuse_req_t req)
{
    g->fs = fs;
    g->parent_fd = -1;
    vhfs_caller_from_req(&g->caller, req);
}

/*
 * Opens the child for writing as the caller (in overlay mode for reading: nothing is written),
 * without following any symlink, and checks that it is still the file the verdict was about. A
 * symlink or another file put in its place (a rename racing the repair) is refused with EBUSY,
 * never followed.
 */
static int pin_child(struct gate_ctx *g, const vh_disk_info *child, int *out, char **why)
{
    struct stat st;
    int fd = vhfs_caller_openat(g->fs, &g->caller, child->path, overlay(g->fs) ? O_RDONLY : O_RDWR,
                                true);

    if (fd == -EACCES || fd == -EPERM) {
        *why = g_strdup_printf("user %u may not %s it", (unsigned)g->caller.uid,
                               overlay(g->fs) ? "read" : "write");
        return -EACCES;
    }
    if (fd == -ELOOP || fd == -EXDEV) {
        *why = g_strdup("a symlink took its place while it was being repaired; not rewritten");
        return -EBUSY;
    }
    if (fd < 0) {
        *why = g_strdup(g_strerror(-fd));
        return fd;
    }
    *out = fd;
    if (fstat(fd, &st) < 0) {
        *why = g_strdup(g_strerror(errno));
        return -errno;
    }
    if (!S_ISREG(st.st_mode) || st.st_dev != child->dev || st.st_ino != child->ino) {
        *why = g_strdup("another file took its place while it was being repaired; not rewritten");
        return -EBUSY;
    }
    return 0;
}

/*
 * Opens the parent at absolute STORE path `abs` for reading as the caller (symlinks only inside
 * STORE). A file in a folder the caller cannot search gives EACCES whether it exists or not.
 */
static int open_parent(struct gate_ctx *g, const char *abs, int *out, GError **err)
{
    const char *rel = below(abs, g->fs->cfg.store);
    struct stat st;
    int fd =
        rel != NULL && *rel ? vhfs_caller_openat(g->fs, &g->caller, rel, O_RDONLY, false) : -EXDEV;

    switch (-fd) {
    case 0:
        break;
    case ENOENT:
    case ENOTDIR:
        return vh_fail(err, ENOENT, "%s: the parent does not exist", abs);
    case EACCES:
    case EPERM:
        return vh_fail(err, EACCES, "%s: user %u may not read the parent", abs,
                       (unsigned)g->caller.uid);
    case EXDEV:
        return vh_fail(err, EXDEV, "%s: the parent is outside the store", abs);
    default:
        if (fd < 0)
            return vh_fail(err, -fd, "%s: %s", abs, g_strerror(-fd));
    }
    *out = fd;
    if (fstat(fd, &st) < 0)
        return vh_fail(err, errno, "%s: %s", abs, g_strerror(errno));
    if (!S_ISREG(st.st_mode))
        return vh_fail(err, EINVAL, "%s: the parent is not a regular file", abs);
    return 0;
}

/* The trust rule (chain/resolve.c) on the very inodes the repair will use. */
static int check_trust(struct gate_ctx *g, int child_fd, int parent_fd, const char *parent,
                       char **why)
{
    struct stat c, p;

    if (fstat(child_fd, &c) < 0 || fstat(parent_fd, &p) < 0) {
        *why = g_strdup(g_strerror(errno));
        return -errno;
    }
    if (vh_trusted(g->fs->cfg.trust, c.st_uid, c.st_gid, p.st_uid, p.st_gid))
        return 0;
    *why = g_strdup_printf("the parent %s belongs to user %u, the child to user %u: not trusted "
                           "(trust=%s)",
                           parent, (unsigned)p.st_uid, (unsigned)c.st_uid,
                           vh_trust_name(g->fs->cfg.trust));
    return -EACCES;
}

static int gate(void *ctx, const vh_disk_info *child, const char *parent_abs, vh_reconnect_pin *pin,
                char **why)
{
    struct gate_ctx *g = ctx;
    g_autoptr(GError) err = NULL;
    int r;

    if (writers_of(g->fs, child->dev, child->ino) > 0) {
        *why = g_strdup("open for writing through the mount");
        return -EBUSY;
    }
    r = pin_child(g, child, &pin->child_fd, why);
    if (r < 0)
        return r;
    if (g->parent_fd >= 0) {
        pin->parent_fd = fcntl(g->parent_fd, F_DUPFD_CLOEXEC, 0);
        if (pin->parent_fd < 0) {
            *why = g_strdup(g_strerror(errno));
            return -errno;
        }
    } else if ((r = open_parent(g, parent_abs, &pin->parent_fd, &err)) < 0) {
        *why = g_strdup(err->message);
        return r;
    }
    return check_trust(g, pin->child_fd, pin->parent_fd, parent_abs, why);
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
    if (info != NULL && info->error != NULL) {
        /* Unreadable when last probed: that may have been a passing I/O error, and the entry
           stays while the file is unchanged. Probe again. */
        vh_service_changed(fs->svc, rel);
        vh_disk_info_unref(info);
        info = vh_service_describe(fs->svc, rel, NULL);
    }
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

/* In overlay mode the disk files are presented, not written: -EROFS for a disk (the service
 * says what the file is), 0 for any other file. */
static int overlay_may_write(struct vhfs *fs, struct vhfs_inode *inode)
{
    g_autofree char *rel = vhfs_inode_path(fs, inode);
    g_autoptr(vh_disk_info) info = rel != NULL ? vh_service_describe(fs->svc, rel, NULL) : NULL;

    if (info == NULL || info->format == VH_FORMAT_NONE)
        return 0;
    vhfs_log(LOG_NOTICE,
             "%s: not opened for writing: healmode=overlay presents the disks of "
             "STORE and never writes them",
             rel);
    return -EROFS;
}

int vhfs_heal_may_write(struct vhfs *fs, struct vhfs_inode *inode)
{
    g_autofree char *rel = NULL, *names = NULL;
    g_autoptr(GPtrArray) kids = NULL;

    if (fs->svc == NULL || !S_ISREG(inode->type))
        return 0;
    if (overlay(fs))
        return overlay_may_write(fs, inode);
    if (fs->cfg.allow_parent_writes)
        return 0;
    rel = vhfs_inode_path(fs, inode);
    if (rel == NULL)
        return 0;
    kids = vh_service_children(fs->svc, rel, NULL);
    if (kids == NULL || kids->len == 0)
        return 0;
    names = vh_children_text(kids);
    vhfs_log(LOG_WARNING,
             "%s: not opened for writing: it is the parent of %u disk%s (%s); writing it would "
             "break them (-o allow_parent_writes allows it)",
             rel, kids->len, kids->len == 1 ? "" : "s", names);
    return -EBUSY;
}

bool vhfs_heal_is_disk(struct vhfs *fs, struct vhfs_inode *inode)
{
    if (!S_ISREG(inode->type))
        return false;
    g_autofree char *rel = fs->svc != NULL ? vhfs_inode_path(fs, inode) : NULL;
    if (rel == NULL)
        return true; /* no index or no path to ask: the answer that keeps a disk safe */
    g_autoptr(vh_disk_info) info = vh_service_describe(fs->svc, rel, NULL);
    /* The name may now hold another file (this one moved or replaced behind the mount's back,
       reached through the kernel's cached entry): no answer about this one, so the same. */
    if (info == NULL || info->dev != inode->dev || info->ino != inode->ino)
        return true;
    return info->format != VH_FORMAT_NONE;
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

/* --- overlay healing: what the pass-through presents --- */

struct vh_patch *vhfs_heal_patch(struct vhfs *fs, const struct stat *st)
{
    vh_overlay *ov = fs->svc != NULL ? vh_service_overlay(fs->svc) : NULL;

    return ov != NULL ? vh_overlay_get(ov, st, NULL) : NULL;
}

void vhfs_heal_present(struct vhfs *fs, struct stat *st)
{
    g_autoptr(vh_patch) p = vhfs_heal_patch(fs, st);

    if (p != NULL)
        st->st_size = (off_t)vh_patch_size(p);
}

/* --- repairs asked for through the attributes --- */

int vhfs_heal_set_parent(struct vhfs *fs, fuse_req_t req, struct vhfs_inode *inode, const char *rel,
                         const char *value, size_t size, bool force)
{
    g_autoptr(vh_disk_info) info = NULL;
    g_autoptr(GError) err = NULL;
    g_autofree char *path = NULL, *parent = NULL;
    vh_reconnect_result res = {0};
    vh_autofd int parent_fd = -1;
    struct gate_ctx g;
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
    else if (overlay(fs) && vh_service_overlay(fs->svc) == NULL) /* never write when told not to */
        r = vh_fail(&err, EROFS, "%s: %s: repairs are not written and no overlay was started", rel,
                    fs->cfg.ro ? "read-only mount" : "healmode=overlay");
    if (r == 0)
        r = vhfs_parent_value_check(value, size, &path, &err);
    if (r == 0)
        r = vhfs_parent_value_map(fs->cfg.mountpoint, fs->cfg.store, rel, path, &parent, &err);
    gate_from_req(&g, fs, req);
    /* the parent is read for the caller: opened with the caller's rights, and pinned */
    if (r == 0)
        r = open_parent(&g, parent, &parent_fd, &err);
    g.parent_fd = parent_fd;
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
