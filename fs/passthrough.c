/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * passthrough.c - the mount's low-level FUSE operations: STORE served unchanged and writable.
 *
 * Contract: each lo_* handler sends exactly one fuse_reply_* (forget: fuse_reply_none); errors go
 * through reply_err, which logs the operation and errno at debug level. Every object the kernel
 * knows is a struct vhfs_inode holding an O_PATH descriptor, found by (dev, ino) and counted by
 * the kernel's lookups; the kernel's forget drops it. Open files and folders carry their own
 * descriptor in fi->fh. Permission checks are the kernel's (default_permissions); the daemon,
 * when it runs as root, gives what it creates to the requesting user.
 *
 * Locks (flock, POSIX) are left to the kernel, which keeps them for this host: passing a
 * blocking lock through would park one of the few worker threads until it is granted, and with
 * all of them parked the unlock could never be served.
 *
 * Modelled on libfuse's example/passthrough_ll.c and passthrough_hp.cc.
 */
#include "fs.h"
#include "inuse.h"
#include "io.h"
#include "overlay.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>

_Static_assert(sizeof(fuse_ino_t) >= sizeof(uintptr_t), "fuse_ino_t must hold a pointer");

/* An open folder. */
struct vhfs_dir {
    DIR *dp;
    struct dirent *entry; /* read but not yet sent */
    off_t offset;         /* where dp stands, as the kernel counts */
    unsigned views_sent;  /* root: view folders listed after the real entries (views.c) */
};

/* --- helpers --- */

static struct vhfs *vhfs_of(fuse_req_t req)
{
    return fuse_req_userdata(req);
}

static struct vhfs_inode *inode_by_ino(struct vhfs *fs, fuse_ino_t ino)
{
    if (ino == FUSE_ROOT_ID)
        return &fs->root;
    return (struct vhfs_inode *)(uintptr_t)ino;
}

static struct vhfs_inode *inode_of(fuse_req_t req, fuse_ino_t ino)
{
    return inode_by_ino(vhfs_of(req), ino);
}

static fuse_ino_t ino_of(struct vhfs *fs, struct vhfs_inode *inode)
{
    return inode == &fs->root ? FUSE_ROOT_ID : (fuse_ino_t)(uintptr_t)inode;
}

static struct vhfs_dir *dir_of(struct fuse_file_info *fi)
{
    return (struct vhfs_dir *)(uintptr_t)fi->fh;
}

/* Errors go to FUSE through vhfs_reply_err (util.c). */
static void reply_err(fuse_req_t req, const char *op, int err)
{
    vhfs_reply_err(req, "", op, err);
}

static bool is_dot_or_dotdot(const char *name)
{
    return name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'));
}

static bool writable(int flags)
{
    return (flags & O_ACCMODE) != O_RDONLY;
}

/* An open that may change the file's bytes: writable, or truncating (O_RDONLY|O_TRUNC truncates
 * too: the kernel passes O_TRUNC to the open with FUSE_CAP_ATOMIC_O_TRUNC). */
static bool changes_content(int flags)
{
    return writable(flags) || (flags & O_TRUNC) != 0;
}

/* --- the inode table --- */

static guint inode_hash(gconstpointer p)
{
    const struct vhfs_inode *inode = p;
    guint64 k = (guint64)inode->ino ^ ((guint64)inode->dev * 0x9e3779b97f4a7c15ull);

    return (guint)(k ^ (k >> 32));
}

static gboolean inode_equal(gconstpointer a, gconstpointer b)
{
    const struct vhfs_inode *x = a, *y = b;

    return x->dev == y->dev && x->ino == y->ino;
}

/* --- the descriptor cache (see struct vhfs_inode); fs->lock is held by every helper here --- */

#define VHFS_HANDLE_MAX 128 /* MAX_HANDLE_SZ */

/* The file handle of an O_PATH descriptor, for a file or folder of STORE's mount; else NULL. */
static struct file_handle *handle_of(struct vhfs *fs, int fd, mode_t type)
{
    struct file_handle *h;
    int mount_id;

    if (!S_ISREG(type) && !S_ISDIR(type))
        return NULL; /* symlinks and devices keep their descriptor: they are few */
    h = g_malloc(sizeof(*h) + VHFS_HANDLE_MAX);
    h->handle_bytes = VHFS_HANDLE_MAX;
    if (name_to_handle_at(fd, "", h, &mount_id, AT_EMPTY_PATH) < 0 || mount_id != fs->mount_id) {
        g_free(h);
        return NULL;
    }
    return g_realloc(h, sizeof(*h) + h->handle_bytes);
}

static struct file_handle *handle_dup(const struct file_handle *h)
{
    return h != NULL ? g_memdup2(h, sizeof(*h) + h->handle_bytes) : NULL;
}

static bool same_handle(const struct file_handle *a, const struct file_handle *b)
{
    return a != NULL && b != NULL && a->handle_type == b->handle_type &&
           a->handle_bytes == b->handle_bytes &&
           memcmp(a->f_handle, b->f_handle, a->handle_bytes) == 0;
}

/* Where the inode was last looked up (or renamed to through the mount): dir/name. */
static void set_place(struct vhfs *fs, struct vhfs_inode *inode, struct vhfs_inode *dir,
                      const char *name)
{
    g_clear_pointer(&inode->name, g_free);
    g_clear_pointer(&inode->dir_handle, g_free);
    if (dir != &fs->root && dir->handle == NULL)
        return; /* a folder that cannot be reopened: by handle only */
    inode->name = g_strdup(name);
    inode->dir_handle = handle_dup(dir->handle);
}

/*
 * Reopens an evicted inode: through its folder and name first, so that the descriptor's path
 * (/proc/self/fd, which says where a disk is) is connected even when the store's file system has
 * dropped the dentry, checking that the very same object is found (its handle); else by handle.
 */
static int reopen(struct vhfs *fs, struct vhfs_inode *inode, const struct file_handle *dirh,
                  const char *name)
{
    int dfd = dirh != NULL ? open_by_handle_at(fs->mount_fd, (struct file_handle *)dirh,
                                               O_PATH | O_DIRECTORY | O_CLOEXEC)
                           : fs->root.fd;
    int fd = -1;

    if (name != NULL && dfd >= 0) {
        fd = openat(dfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0) {
            g_autofree struct file_handle *h = handle_of(fs, fd, inode->type);

            if (!same_handle(h, inode->handle)) {
                close(fd);
                fd = -1;
            }
        }
    }
    if (dirh != NULL && dfd >= 0)
        close(dfd);
    if (fd >= 0)
        return fd;
    return open_by_handle_at(fs->mount_fd, inode->handle, O_PATH | O_NOFOLLOW | O_CLOEXEC);
}

static void lru_drop(struct vhfs *fs, struct vhfs_inode *inode)
{
    if (inode->lru.data != NULL) {
        g_queue_unlink(&fs->lru, &inode->lru);
        inode->lru.data = NULL;
    }
}

static void lru_push(struct vhfs *fs, struct vhfs_inode *inode)
{
    if (inode->fd >= 0 && inode->pins == 0 && inode->lru.data == NULL) {
        inode->lru.data = inode;
        g_queue_push_head_link(&fs->lru, &inode->lru);
    }
}

/* Closes the descriptors of the least recently used unpinned inodes while more than `keep`. */
static void evict_to(struct vhfs *fs, unsigned keep)
{
    GList *l = fs->lru.tail;

    while (fs->nfds > keep && l != NULL) {
        struct vhfs_inode *inode = l->data;
        GList *prev = l->prev;

        if (inode->handle != NULL) {
            lru_drop(fs, inode);
            close(inode->fd);
            inode->fd = -1;
            fs->nfds--;
        }
        l = prev;
    }
}

/* A new descriptor for an inode: counted, and the cache kept within its bound. */
static void fd_adopt(struct vhfs *fs, struct vhfs_inode *inode, int fd)
{
    inode->fd = fd;
    fs->nfds++;
    lru_push(fs, inode);
    evict_to(fs, fs->max_fds);
}

static void inode_free(struct vhfs *fs, struct vhfs_inode *inode)
{
    lru_drop(fs, inode);
    if (inode->fd >= 0) {
        close(inode->fd);
        fs->nfds--;
    }
    g_free(inode->handle);
    g_free(inode->dir_handle);
    g_free(inode->name);
    g_free(inode);
}

bool vhfs_fds_shrink(struct vhfs *fs)
{
    unsigned before;
    bool closed;

    g_mutex_lock(&fs->lock);
    before = fs->nfds;
    evict_to(fs, fs->nfds / 2);
    closed = fs->nfds < before;
    g_mutex_unlock(&fs->lock);
    return closed;
}

/* Runs `expr` (an open that sets errno) again after making room, on EMFILE or ENFILE. */
#define RETRY_ON_EMFILE(fs, res, expr)                                                             \
    do {                                                                                           \
        (res) = (expr);                                                                            \
    } while ((res) < 0 && (errno == EMFILE || errno == ENFILE) && vhfs_fds_shrink(fs))

int vhfs_inode_pin(struct vhfs *fs, struct vhfs_inode *inode)
{
    int fd = -1, res;

    if (inode == &fs->root)
        return fs->root.fd;
    g_mutex_lock(&fs->lock);
    if (inode->fd < 0) {
        g_autofree struct file_handle *dirh = handle_dup(inode->dir_handle);
        g_autofree char *name = g_strdup(inode->name);

        inode->pins++; /* the inode and its handle stay while we reopen it */
        g_mutex_unlock(&fs->lock);
        RETRY_ON_EMFILE(fs, fd, reopen(fs, inode, dirh, name));
        res = fd < 0 ? -errno : 0;
        g_mutex_lock(&fs->lock);
        inode->pins--;
        if (fd >= 0 && inode->fd < 0) {
            fd_adopt(fs, inode, fd);
            fd = -1;
        }
        if (inode->fd < 0) {
            if (inode->pins == 0 && inode->dead)
                inode_free(fs, inode);
            g_mutex_unlock(&fs->lock);
            return res < 0 ? res : -ESTALE;
        }
    }
    lru_drop(fs, inode);
    inode->pins++;
    res = inode->fd;
    g_mutex_unlock(&fs->lock);
    if (fd >= 0)
        close(fd); /* another thread reopened it first */
    return res;
}

void vhfs_inode_unpin(struct vhfs *fs, struct vhfs_inode *inode)
{
    if (inode == &fs->root)
        return;
    g_mutex_lock(&fs->lock);
    inode->pins--;
    if (inode->pins == 0 && inode->dead) {
        inode_free(fs, inode);
    } else {
        lru_push(fs, inode);
        evict_to(fs, fs->max_fds);
    }
    g_mutex_unlock(&fs->lock);
}

/* A handler's pin of an inode's descriptor, let go when it goes out of scope. */
struct pinned {
    struct vhfs *fs;
    struct vhfs_inode *inode; /* NULL when the pin failed */
    int fd;                   /* the descriptor, or -errno */
};

static struct pinned pin(struct vhfs *fs, struct vhfs_inode *inode)
{
    struct pinned p = {.fs = fs, .inode = inode, .fd = vhfs_inode_pin(fs, inode)};

    if (p.fd < 0)
        p.inode = NULL;
    return p;
}

static void unpin(struct pinned *p)
{
    if (p->inode != NULL)
        vhfs_inode_unpin(p->fs, p->inode);
    p->inode = NULL;
}

#define autopin __attribute__((cleanup(unpin))) struct pinned

/*
 * Takes one lookup on the inode of st. When the table has none, a new one takes over *fd (set to
 * -1); so does an entry whose descriptor was evicted; otherwise *fd is left for the caller to
 * close. An evicted entry whose object is gone (another handle, or another type: the inode
 * number was reused) leaves the table to the new object.
 */
static struct vhfs_inode *inode_get(struct vhfs *fs, int *fd, const struct stat *st,
                                    struct vhfs_inode *dir, const char *name)
{
    struct vhfs_inode key = {.dev = st->st_dev, .ino = st->st_ino};
    mode_t type = st->st_mode & S_IFMT;
    g_autofree struct file_handle *h = handle_of(fs, *fd, type);
    struct vhfs_inode *inode;

    g_mutex_lock(&fs->lock);
    inode = g_hash_table_lookup(fs->inodes, &key);
    if (inode != NULL && inode->fd < 0) {
        if (inode->type != type || !same_handle(h, inode->handle)) {
            g_hash_table_steal(fs->inodes, inode); /* stale: its lookups end by forget */
            inode->hashed = false;
            inode = NULL;
        } else {
            fd_adopt(fs, inode, *fd);
            *fd = -1;
        }
    }
    if (inode == NULL) {
        inode = g_new0(struct vhfs_inode, 1);
        inode->fd = -1;
        inode->dev = st->st_dev;
        inode->ino = st->st_ino;
        inode->type = type;
        inode->handle = g_steal_pointer(&h);
        inode->hashed = true;
        g_hash_table_add(fs->inodes, inode);
        fd_adopt(fs, inode, *fd);
        *fd = -1;
    }
    if (inode->handle != NULL)
        set_place(fs, inode, dir, name);
    inode->nlookup++;
    g_mutex_unlock(&fs->lock);
    return inode;
}

/* After a rename through the mount: the inode now at dir/name (if the kernel knows it). */
static void moved_to(struct vhfs *fs, struct vhfs_inode *dir, int dfd, const char *name)
{
    struct stat st;
    struct vhfs_inode key, *inode;

    if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return;
    key.dev = st.st_dev;
    key.ino = st.st_ino;
    g_mutex_lock(&fs->lock);
    inode = g_hash_table_lookup(fs->inodes, &key);
    if (inode != NULL && inode->handle != NULL)
        set_place(fs, inode, dir, name);
    g_mutex_unlock(&fs->lock);
}

/* Drops n lookups; the last one frees the inode and closes its descriptor. */
static void inode_unref(struct vhfs *fs, struct vhfs_inode *inode, uint64_t n)
{
    if (inode == &fs->root)
        return;
    g_mutex_lock(&fs->lock);
    if (n > inode->nlookup) {
        vhfs_log(LOG_ERR,
                 "forget of %" G_GUINT64_FORMAT " lookups on an inode with %" G_GUINT64_FORMAT, n,
                 inode->nlookup);
        n = inode->nlookup;
    }
    inode->nlookup -= n;
    if (inode->nlookup == 0) {
        if (inode->hashed)
            g_hash_table_steal(fs->inodes, inode);
        inode->hashed = false;
        if (inode->pins > 0)
            inode->dead = true; /* the last unpin frees it */
        else
            inode_free(fs, inode);
    }
    g_mutex_unlock(&fs->lock);
}

/* How many descriptors the cache may hold, from the process's limit. */
static unsigned fd_budget(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur / 4 < VHFS_MAX_PATH_FDS)
        return rl.rlim_cur / 4 > 16 ? (unsigned)(rl.rlim_cur / 4) : 16;
    return VHFS_MAX_PATH_FDS;
}

/* --- handles per user --- */

/* The descriptor limit (main.c raised it to the hard one), bounded for the owner table. */
static unsigned fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY ||
        rl.rlim_cur > (1u << 20))
        return 1u << 20;
    return (unsigned)rl.rlim_cur;
}

static void handles_init(struct vhfs *fs)
{
    unsigned limit = fd_limit();
    unsigned rest = limit > fs->max_fds ? limit - fs->max_fds : 0;

    g_mutex_init(&fs->handles_lock);
    fs->handles = g_hash_table_new(g_direct_hash, g_direct_equal);
    fs->nfd_owner = limit;
    fs->fd_owner = g_new0(uid_t, limit);
    fs->max_user_handles = MAX(rest / 4, 64u);
}

/*
 * Counts a new handle against the caller (root: not counted): EMFILE once the caller holds its
 * share. *uid receives whom to count it against (handle_own, or handle_unclaim on failure).
 */
static int handle_claim(struct vhfs *fs, fuse_req_t req, uid_t *uid)
{
    const struct fuse_ctx *ctx = fuse_req_ctx(req);
    int res = 0;

    *uid = ctx != NULL ? ctx->uid : 0;
    if (*uid == 0)
        return 0;
    g_mutex_lock(&fs->handles_lock);
    guint n = GPOINTER_TO_UINT(g_hash_table_lookup(fs->handles, GUINT_TO_POINTER(*uid)));
    if (n >= fs->max_user_handles)
        res = -EMFILE;
    else
        g_hash_table_insert(fs->handles, GUINT_TO_POINTER(*uid), GUINT_TO_POINTER(n + 1));
    g_mutex_unlock(&fs->handles_lock);
    if (res < 0)
        vhfs_log(LOG_WARNING, "user %u holds %u open handles, its share: open refused",
                 (unsigned)*uid, n);
    return res;
}

static void handle_unclaim(struct vhfs *fs, uid_t uid)
{
    if (uid == 0)
        return;
    g_mutex_lock(&fs->handles_lock);
    guint n = GPOINTER_TO_UINT(g_hash_table_lookup(fs->handles, GUINT_TO_POINTER(uid)));
    if (n <= 1)
        g_hash_table_remove(fs->handles, GUINT_TO_POINTER(uid));
    else
        g_hash_table_insert(fs->handles, GUINT_TO_POINTER(uid), GUINT_TO_POINTER(n - 1));
    g_mutex_unlock(&fs->handles_lock);
}

/* The claimed handle is the backing descriptor fd; handle_disown gives it back at release. */
static void handle_own(struct vhfs *fs, int fd, uid_t uid)
{
    if (uid != 0 && vhfs_fd_in_tables(fs, fd))
        fs->fd_owner[fd] = uid + 1;
    else
        handle_unclaim(fs, uid);
}

static void handle_disown(struct vhfs *fs, int fd)
{
    if (!vhfs_fd_in_tables(fs, fd) || fs->fd_owner[fd] == 0)
        return;
    uid_t uid = fs->fd_owner[fd] - 1;
    fs->fd_owner[fd] = 0;
    handle_unclaim(fs, uid);
}

int vhfs_init(struct vhfs *fs)
{
    struct stat st;
    struct file_handle *h;

    fs->root.fd = open(fs->cfg.store, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fs->root.fd < 0 || fstat(fs->root.fd, &st) < 0) {
        int err = errno;

        vhfs_log(LOG_ERR, "%s: %s", fs->cfg.store, g_strerror(err));
        return -err;
    }
    fs->root.dev = st.st_dev;
    fs->root.ino = st.st_ino;
    fs->root.type = S_IFDIR;
    fs->root.nlookup = 2; /* never dropped */
    g_mutex_init(&fs->lock);
    fs->inodes = g_hash_table_new(inode_hash, inode_equal);
    g_queue_init(&fs->lru);
    fs->max_fds = fd_budget();
    handles_init(fs);
    /* Without handles (a store that cannot export them), descriptors are never evicted. */
    h = g_malloc(sizeof(*h) + VHFS_HANDLE_MAX);
    h->handle_bytes = VHFS_HANDLE_MAX;
    fs->mount_fd = open(fs->cfg.store, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fs->mount_fd < 0 ||
        name_to_handle_at(fs->root.fd, "", h, &fs->mount_id, AT_EMPTY_PATH) < 0) {
        vhfs_log(LOG_WARNING,
                 "%s: no file handles (%s): every file the kernel keeps holds a "
                 "descriptor",
                 fs->cfg.store, g_strerror(errno));
        fs->mount_id = -1;
    }
    g_free(h);
    fs->timeout = VHFS_TIMEOUT;
    fs->as_root = geteuid() == 0;
    return 0;
}

void vhfs_fini(struct vhfs *fs)
{
    GHashTableIter it;
    gpointer key;

    if (fs->inodes != NULL) {
        g_hash_table_iter_init(&it, fs->inodes);
        while (g_hash_table_iter_next(&it, &key, NULL)) {
            g_hash_table_iter_steal(&it);
            inode_free(fs, key);
        }
        g_hash_table_destroy(fs->inodes);
        fs->inodes = NULL;
        g_mutex_clear(&fs->lock);
    }
    if (fs->handles != NULL) {
        g_hash_table_destroy(fs->handles);
        fs->handles = NULL;
        g_clear_pointer(&fs->fd_owner, g_free);
        g_mutex_clear(&fs->handles_lock);
    }
    if (fs->root.fd >= 0)
        close(fs->root.fd);
    fs->root.fd = -1;
    if (fs->mount_fd >= 0)
        close(fs->mount_fd);
    fs->mount_fd = -1;
}

int vhfs_invalidate(struct vhfs *fs, dev_t dev, ino_t ino, bool data)
{
    struct vhfs_inode key = {.dev = dev, .ino = ino};
    struct vhfs_inode *inode;
    fuse_ino_t fino = 0;
    int res;

    if (dev == fs->root.dev && ino == fs->root.ino) {
        fino = FUSE_ROOT_ID;
    } else {
        g_mutex_lock(&fs->lock);
        inode = g_hash_table_lookup(fs->inodes, &key);
        if (inode != NULL)
            fino = ino_of(fs, inode);
        g_mutex_unlock(&fs->lock);
    }
    if (fino == 0 || fs->se == NULL)
        return 0; /* the kernel caches nothing of it */
    /* offset 0, length 0: attributes and all cached data; offset -1: attributes only. */
    res = fuse_lowlevel_notify_inval_inode(fs->se, fino, data ? 0 : -1, 0);
    if (res == -ENOENT)
        return 0; /* forgotten meanwhile */
    return res;
}

/* --- lookups and attributes --- */

static int do_lookup(struct vhfs *fs, struct vhfs_inode *dir, const char *name,
                     struct fuse_entry_param *e)
{
    vh_autofd int fd = -1;
    struct vhfs_inode *inode;

    /* Without export support the kernel resolves "." and ".." itself; never step out of STORE. */
    if (is_dot_or_dotdot(name))
        return -ENOENT;
    memset(e, 0, sizeof(*e));
    e->attr_timeout = fs->timeout;
    e->entry_timeout = fs->timeout;
    autopin d = pin(fs, dir);
    if (d.fd < 0)
        return d.fd;
    RETRY_ON_EMFILE(fs, fd, openat(d.fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC));
    if (fd < 0)
        return -errno;
    if (fstatat(fd, "", &e->attr, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
        return -errno;
    inode = inode_get(fs, &fd, &e->attr, dir, name);
    e->ino = ino_of(fs, inode);
    vhfs_heal_present(fs, &e->attr);
    return 0;
}

/* Replies with an entry whose lookup we took; if the kernel never got it, give the lookup back. */
static void reply_entry(fuse_req_t req, const struct fuse_entry_param *e)
{
    struct vhfs *fs = vhfs_of(req);

    if (fuse_reply_entry(req, e) != 0)
        inode_unref(fs, inode_by_ino(fs, e->ino), 1);
}

static void lo_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct fuse_entry_param e;
    int res = do_lookup(vhfs_of(req), inode_of(req, parent), name, &e);

    if (res < 0)
        return reply_err(req, "lookup", -res); /* no negative caching: STORE may change */
    reply_entry(req, &e);
}

static void lo_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
    inode_unref(vhfs_of(req), inode_of(req, ino), nlookup);
    fuse_reply_none(req);
}

static void lo_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
    struct vhfs *fs = vhfs_of(req);

    for (size_t i = 0; i < count; i++)
        inode_unref(fs, inode_by_ino(fs, forgets[i].ino), forgets[i].nlookup);
    fuse_reply_none(req);
}

static void lo_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    autopin p = pin(vhfs_of(req), inode_of(req, ino));
    struct stat st;

    if (p.fd < 0)
        return reply_err(req, "getattr", -p.fd);
    if (fstatat(p.fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
        return reply_err(req, "getattr", errno);
    vhfs_heal_present(vhfs_of(req), &st);
    fuse_reply_attr(req, &st, vhfs_of(req)->timeout);
}

static int set_times(int ifd, const struct stat *attr, int valid, struct fuse_file_info *fi)
{
    struct timespec tv[2] = {{.tv_nsec = UTIME_OMIT}, {.tv_nsec = UTIME_OMIT}};
    char path[VHFS_PROCFD_LEN];

    if (valid & FUSE_SET_ATTR_ATIME_NOW)
        tv[0].tv_nsec = UTIME_NOW;
    else if (valid & FUSE_SET_ATTR_ATIME)
        tv[0] = attr->st_atim;
    if (valid & FUSE_SET_ATTR_MTIME_NOW)
        tv[1].tv_nsec = UTIME_NOW;
    else if (valid & FUSE_SET_ATTR_MTIME)
        tv[1] = attr->st_mtim;
    if (fi != NULL)
        return futimens((int)fi->fh, tv);
    /* The magic link reaches the object itself, a symlink included. */
    vhfs_procfd(path, ifd);
    return utimensat(AT_FDCWD, path, tv, 0);
}

static void lo_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int valid,
                       struct fuse_file_info *fi)
{
    struct vhfs_inode *inode = inode_of(req, ino);
    char path[VHFS_PROCFD_LEN];
    int res, saverr;
    autopin p = pin(vhfs_of(req), inode);

    if (p.fd < 0)
        return reply_err(req, "setattr", -p.fd);
    vhfs_procfd(path, p.fd);
    if (valid & FUSE_SET_ATTR_MODE) {
        if (fi != NULL)
            res = fchmod((int)fi->fh, attr->st_mode);
        else
            res = fchmodat(AT_FDCWD, path, attr->st_mode, 0);
        if (res < 0)
            goto out_err;
    }
    if (valid & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
        uid_t uid = (valid & FUSE_SET_ATTR_UID) ? attr->st_uid : (uid_t)-1;
        gid_t gid = (valid & FUSE_SET_ATTR_GID) ? attr->st_gid : (gid_t)-1;

        if (fchownat(p.fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
            goto out_err;
    }
    if (valid & FUSE_SET_ATTR_SIZE) {
        /* An open handle passed the check when it was opened for writing. */
        if (fi == NULL && (res = vhfs_heal_may_write(vhfs_of(req), inode)) < 0)
            return reply_err(req, "setattr", -res);
        if (fi != NULL)
            res = ftruncate((int)fi->fh, attr->st_size);
        else
            res = truncate(path, attr->st_size);
        if (res < 0)
            goto out_err;
        vhfs_views_changed(vhfs_of(req), inode);
    }
    if (valid & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) {
        if (set_times(p.fd, attr, valid, fi) < 0)
            goto out_err;
    }
    return lo_getattr(req, ino, fi);

out_err:
    saverr = errno;
    reply_err(req, "setattr", saverr);
}

static void lo_readlink(fuse_req_t req, fuse_ino_t ino)
{
    char buf[PATH_MAX + 1];
    autopin p = pin(vhfs_of(req), inode_of(req, ino));
    ssize_t res = p.fd < 0 ? (errno = -p.fd, -1) : readlinkat(p.fd, "", buf, sizeof(buf));

    if (res < 0)
        return reply_err(req, "readlink", errno);
    if ((size_t)res >= sizeof(buf))
        return reply_err(req, "readlink", ENAMETOOLONG);
    buf[res] = '\0';
    fuse_reply_readlink(req, buf);
}

static void lo_statfs(fuse_req_t req, fuse_ino_t ino)
{
    struct statvfs sv;
    autopin p = pin(vhfs_of(req), inode_of(req, ino));

    if (p.fd < 0)
        return reply_err(req, "statfs", -p.fd);
    if (fstatvfs(p.fd, &sv) < 0)
        return reply_err(req, "statfs", errno);
    fuse_reply_statfs(req, &sv);
}

/* --- creating and removing names --- */

/*
 * The daemon runs as root, so what it creates is root's: give a new object to the user who asked,
 * as the kernel would have (the folder's group when it is set-group-ID). A store that cannot
 * change owners (vfat, some network shares) keeps the daemon's; that is not an error.
 */
static void give_to_caller(fuse_req_t req, struct vhfs_inode *dir, const char *name, int fd,
                           mode_t mode)
{
    struct vhfs *fs = vhfs_of(req);
    const struct fuse_ctx *ctx = fuse_req_ctx(req);
    gid_t gid = ctx->gid;
    struct stat dst;
    int res;

    if (!fs->as_root || (ctx->uid == 0 && ctx->gid == 0))
        return;
    autopin d = pin(fs, dir);
    if (d.fd < 0)
        return;
    if (fstatat(d.fd, "", &dst, AT_EMPTY_PATH) == 0 && (dst.st_mode & S_ISGID))
        gid = (gid_t)-1;
    if (fd >= 0)
        res = fchown(fd, ctx->uid, gid);
    else
        res = fchownat(d.fd, name, ctx->uid, gid, AT_SYMLINK_NOFOLLOW);
    if (res < 0) {
        vhfs_debug("chown of new %s to %u:%u: %s", name, (unsigned)ctx->uid, (unsigned)ctx->gid,
                   g_strerror(errno));
        return;
    }
    /* chown clears set-user-ID and set-group-ID on files; give back the ones asked for. */
    if (S_ISREG(mode) && (mode & (S_ISUID | S_ISGID))) {
        mode_t keep = mode & 07777;

        if (gid == (gid_t)-1)
            keep &= ~S_ISGID;
        if (fd >= 0)
            res = fchmod(fd, keep);
        else
            res = fchmodat(d.fd, name, keep, 0);
        if (res < 0)
            vhfs_debug("chmod of new %s: %s", name, g_strerror(errno));
    }
}

/* After mknod, mkdir or symlink made dir/name: own it, look it up, reply. */
static void finish_new(fuse_req_t req, const char *op, struct vhfs_inode *dir, const char *name,
                       mode_t mode)
{
    struct fuse_entry_param e;
    int res;

    give_to_caller(req, dir, name, -1, mode);
    res = do_lookup(vhfs_of(req), dir, name, &e);
    if (res < 0)
        return reply_err(req, op, -res);
    reply_entry(req, &e);
}

static void lo_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
    struct vhfs_inode *dir = inode_of(req, parent);
    autopin d = pin(vhfs_of(req), dir);

    if (d.fd < 0)
        return reply_err(req, "mknod", -d.fd);
    if (mknodat(d.fd, name, mode, rdev) < 0)
        return reply_err(req, "mknod", errno);
    unpin(&d);
    finish_new(req, "mknod", dir, name, mode);
}

static void lo_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    struct vhfs_inode *dir = inode_of(req, parent);
    autopin d = pin(vhfs_of(req), dir);

    if (d.fd < 0)
        return reply_err(req, "mkdir", -d.fd);
    if (mkdirat(d.fd, name, mode) < 0)
        return reply_err(req, "mkdir", errno);
    unpin(&d);
    finish_new(req, "mkdir", dir, name, S_IFDIR | mode);
}

static void lo_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
    struct vhfs_inode *dir = inode_of(req, parent);
    autopin d = pin(vhfs_of(req), dir);

    if (d.fd < 0)
        return reply_err(req, "symlink", -d.fd);
    if (symlinkat(link, d.fd, name) < 0)
        return reply_err(req, "symlink", errno);
    unpin(&d);
    finish_new(req, "symlink", dir, name, S_IFLNK | 0777);
}

static void lo_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
    struct vhfs *fs = vhfs_of(req);
    struct vhfs_inode *inode = inode_of(req, ino);
    struct fuse_entry_param e = {.attr_timeout = fs->timeout, .entry_timeout = fs->timeout};
    char path[VHFS_PROCFD_LEN];
    int res, saverr;
    autopin p = pin(fs, inode);
    autopin d = pin(fs, inode_of(req, newparent));

    if (p.fd < 0 || d.fd < 0)
        return reply_err(req, "link", p.fd < 0 ? -p.fd : -d.fd);
    if (fs->as_root) {
        /* Links exactly the object held, symlinks included (needs CAP_DAC_READ_SEARCH). */
        res = linkat(p.fd, "", d.fd, newname, AT_EMPTY_PATH);
    } else {
        vhfs_procfd(path, p.fd);
        res = linkat(AT_FDCWD, path, d.fd, newname, AT_SYMLINK_FOLLOW);
    }
    if (res < 0)
        goto out_err;
    if (fstatat(p.fd, "", &e.attr, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
        goto out_err;
    vhfs_heal_present(fs, &e.attr);
    g_mutex_lock(&fs->lock);
    inode->nlookup++;
    g_mutex_unlock(&fs->lock);
    e.ino = ino;
    reply_entry(req, &e);
    return;

out_err:
    saverr = errno;
    reply_err(req, "link", saverr);
}

static void lo_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    autopin d = pin(vhfs_of(req), inode_of(req, parent));
    int res = d.fd < 0 ? (errno = -d.fd, -1) : unlinkat(d.fd, name, 0);

    if (res == 0)
        vhfs_heal_unlinked(vhfs_of(req), inode_of(req, parent), name);
    reply_err(req, "unlink", res < 0 ? errno : 0);
}

static void lo_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    autopin d = pin(vhfs_of(req), inode_of(req, parent));
    int res = d.fd < 0 ? (errno = -d.fd, -1) : unlinkat(d.fd, name, AT_REMOVEDIR);

    reply_err(req, "rmdir", res < 0 ? errno : 0);
}

static int may_write_existing(struct vhfs *fs, struct vhfs_inode *dir, const char *name, int flags);

static void lo_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned int flags)
{
    int res;

    /* RENAME_WHITEOUT is for overlay file systems, not for a store. */
    if (flags & ~(unsigned)(RENAME_NOREPLACE | RENAME_EXCHANGE))
        return reply_err(req, "rename", EINVAL);
    /* A rename over a disk other disks use as parent replaces its bytes under their link, as a
     * write would (heal.c): refused the same way. An exchange moves the parent, and relink on
     * rename (below) takes its children along, as for any rename of it. */
    if (!(flags & (RENAME_NOREPLACE | RENAME_EXCHANGE)) &&
        (res = may_write_existing(vhfs_of(req), inode_of(req, newparent), newname, O_WRONLY)) < 0)
        return reply_err(req, "rename", -res);
    autopin a = pin(vhfs_of(req), inode_of(req, parent));
    autopin b = pin(vhfs_of(req), inode_of(req, newparent));
    if (a.fd < 0 || b.fd < 0)
        return reply_err(req, "rename", a.fd < 0 ? -a.fd : -b.fd);
    res = renameat2(a.fd, name, b.fd, newname, flags);
    if (res == 0) {
        moved_to(vhfs_of(req), inode_of(req, newparent), b.fd, newname);
        if (flags & RENAME_EXCHANGE)
            moved_to(vhfs_of(req), inode_of(req, parent), a.fd, name);
    }
    unpin(&a);
    unpin(&b);
    if (res == 0) /* the index follows; children of moved disks are relinked (heal.c) */
        vhfs_heal_renamed(vhfs_of(req), req, inode_of(req, parent), name, inode_of(req, newparent),
                          newname, flags);
    reply_err(req, "rename", res < 0 ? errno : 0);
}

/* --- folders --- */

static void lo_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct vhfs *fs = vhfs_of(req);
    struct vhfs_dir *d;
    int fd, saverr;
    uid_t uid;

    if ((saverr = handle_claim(fs, req, &uid)) < 0)
        return reply_err(req, "opendir", -saverr);
    autopin p = pin(fs, inode_of(req, ino));
    if (p.fd < 0) {
        handle_unclaim(fs, uid);
        return reply_err(req, "opendir", -p.fd);
    }
    RETRY_ON_EMFILE(fs, fd, openat(p.fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (fd < 0)
        goto out_err;
    d = g_new0(struct vhfs_dir, 1);
    d->dp = fdopendir(fd);
    if (d->dp == NULL) {
        saverr = errno;
        close(fd);
        g_free(d);
        handle_unclaim(fs, uid);
        return reply_err(req, "opendir", saverr);
    }
    handle_own(fs, fd, uid);
    fi->fh = (uintptr_t)d;
    if (fuse_reply_open(req, fi) != 0) { /* the kernel gave up: no releasedir will come */
        handle_disown(fs, fd);
        closedir(d->dp);
        g_free(d);
    }
    return;

out_err:
    saverr = errno;
    handle_unclaim(fs, uid);
    reply_err(req, "opendir", saverr);
}

/*
 * Fills one reply of readdir(plus). An entry that vanished between readdir and lookup is
 * skipped, as if it had been removed a moment earlier.
 */
static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset,
                       struct fuse_file_info *fi, bool plus)
{
    struct vhfs *fs = vhfs_of(req);
    struct vhfs_inode *dir = inode_of(req, ino);
    struct vhfs_dir *d = dir_of(fi);
    const char *op = plus ? "readdirplus" : "readdir";
    g_autofree char *buf = g_try_malloc(size);
    size_t used = 0;
    int err = 0;

    if (buf == NULL)
        return reply_err(req, op, ENOMEM);
    if (offset != d->offset) {
        seekdir(d->dp, offset);
        d->entry = NULL;
        d->offset = offset;
        d->views_sent = 0;
    }
    for (;;) {
        const char *name;
        off_t next;
        size_t entsize;

        if (d->entry == NULL) {
            errno = 0;
            d->entry = readdir(d->dp);
            if (d->entry == NULL) {
                err = errno; /* 0 at the end */
                if (err == 0 && ino == FUSE_ROOT_ID && fs->views != NULL)
                    used += vhfs_views_root_entries(req, buf + used, size - used, d->offset, plus,
                                                    &d->views_sent);
                break;
            }
        }
        name = d->entry->d_name;
        next = d->entry->d_off;
        if (plus && !is_dot_or_dotdot(name)) {
            struct fuse_entry_param e;
            int res = do_lookup(fs, dir, name, &e);

            if (res == -ENOENT) {
                d->entry = NULL;
                d->offset = next;
                continue;
            }
            if (res < 0) {
                err = -res;
                break;
            }
            entsize = fuse_add_direntry_plus(req, buf + used, size - used, name, &e, next);
            if (entsize > size - used) {
                inode_unref(fs, inode_by_ino(fs, e.ino), 1);
                break;
            }
        } else if (plus) {
            /* ino 0: the kernel makes no dentry of "." and "..". */
            struct fuse_entry_param e = {.attr.st_ino = d->entry->d_ino,
                                         .attr.st_mode = (mode_t)d->entry->d_type << 12};

            entsize = fuse_add_direntry_plus(req, buf + used, size - used, name, &e, next);
            if (entsize > size - used)
                break;
        } else {
            struct stat st = {.st_ino = d->entry->d_ino, .st_mode = (mode_t)d->entry->d_type << 12};

            entsize = fuse_add_direntry(req, buf + used, size - used, name, &st, next);
            if (entsize > size - used)
                break;
        }
        used += entsize;
        d->entry = NULL;
        d->offset = next;
    }
    /* Entries already gathered go out; the error shows on the next call. */
    if (err != 0 && used == 0)
        return reply_err(req, op, err);
    fuse_reply_buf(req, buf, used);
}

static void lo_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset,
                       struct fuse_file_info *fi)
{
    do_readdir(req, ino, size, offset, fi, false);
}

static void lo_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset,
                           struct fuse_file_info *fi)
{
    do_readdir(req, ino, size, offset, fi, true);
}

static void lo_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct vhfs_dir *d = dir_of(fi);

    handle_disown(vhfs_of(req), dirfd(d->dp));
    closedir(d->dp);
    g_free(d);
    reply_err(req, "releasedir", 0);
}

static void lo_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    int fd = dirfd(dir_of(fi)->dp);
    int res = datasync ? fdatasync(fd) : fsync(fd);

    reply_err(req, "fsyncdir", res < 0 ? errno : 0);
}

/* --- files --- */

/* Open flags for the store file; O_DIRECT becomes direct_io (our buffers are not aligned). */
static int backing_flags(struct fuse_file_info *fi)
{
    int flags = fi->flags & ~(O_NOFOLLOW | O_CREAT | O_EXCL | O_NOCTTY);

    if (flags & O_DIRECT) {
        flags &= ~O_DIRECT;
        fi->direct_io = 1;
    }
    return flags | O_CLOEXEC;
}

/* Fills fi for an open store file fd and counts writers. Returns the backing id the kernel is
   to serve the open from (backing.c), or -1: served through the daemon. */
static int opened(struct vhfs *fs, struct vhfs_inode *inode, struct fuse_file_info *fi, int fd)
{
    fi->fh = (uint64_t)fd;
    /* The page cache survives opens; writes go through it, changes behind our back are caught
       by auto_inval_data, and a repair calls vhfs_invalidate. */
    fi->keep_cache = 1;
    /* flush() reports write-back errors of network stores at close; a reader has none. */
    fi->noflush = !writable(fi->flags);
    if (writable(fi->flags))
        vhfs_heal_writer_opened(fs, inode); /* never while a repair rewrites the file */
    return vhfs_backing_choose(fs, inode, fi, fd, writable(fi->flags));
}

static void closed(struct vhfs *fs, struct vhfs_inode *inode, struct fuse_file_info *fi)
{
    /* a writer the kernel served wrote without telling the views: they are told now */
    if (vhfs_backing_release(fs, inode, (int)fi->fh))
        vhfs_views_changed(fs, inode);
    handle_disown(fs, (int)fi->fh);
    close((int)fi->fh);
    if (writable(fi->flags))
        g_atomic_int_dec_and_test(&inode->nwriters);
}

/*
 * Opens name under dirfd (a store file, for lo_open and lo_create), marked in use
 * (chain/inuse.h) for as long as this open file description lives: a merge is refused
 * meanwhile, and while a merge runs the open is refused (EBUSY). The mark is a read lock: a
 * write-only open is made read-write where the daemon may read. O_TRUNC is applied only once
 * the file is marked (a reopen through the marked descriptor), so a refused open changes
 * nothing. A store without locks (ENOLCK) opens unmarked. The fd, or -1 with errno set.
 */
static int open_in_use(struct vhfs *fs, int dirfd, const char *name, int flags)
{
    int fd = -1, tfd, trunc = flags & O_TRUNC;
    char path[VHFS_PROCFD_LEN];

    flags &= ~O_TRUNC;
    if ((flags & O_ACCMODE) == O_WRONLY)
        RETRY_ON_EMFILE(fs, fd, openat(dirfd, name, (flags & ~O_ACCMODE) | O_RDWR));
    if (fd < 0)
        RETRY_ON_EMFILE(fs, fd, openat(dirfd, name, flags));
    if (fd < 0)
        return -1;
    if (vh_lock_inuse(fd, F_RDLCK) == -EBUSY) {
        close(fd);
        errno = EBUSY;
        return -1;
    }
    if (!trunc)
        return fd;
    /* the same file, same access; marked before the first descriptor lets its mark go */
    vhfs_procfd(path, fd);
    flags = (flags & ~O_ACCMODE) | (fcntl(fd, F_GETFL) & O_ACCMODE);
    RETRY_ON_EMFILE(fs, tfd, open(path, flags | O_TRUNC));
    if (tfd >= 0)
        vh_lock_inuse(tfd, F_RDLCK);
    int saved = errno;
    close(fd);
    errno = saved;
    return tfd;
}

static void lo_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct vhfs_inode *inode = inode_of(req, ino);
    char path[VHFS_PROCFD_LEN];
    bool rewritten;
    int fd, res;

    /* A disk other disks use as parent is not written (heal.c). */
    if (changes_content(fi->flags) && (res = vhfs_heal_may_write(vhfs_of(req), inode)) < 0)
        return reply_err(req, "open", -res);
    /* A disk with a broken chain is healed first (heal.c); the open never fails for it. */
    rewritten = vhfs_heal_open(vhfs_of(req), req, inode);
    autopin p = pin(vhfs_of(req), inode);
    if (p.fd < 0)
        return reply_err(req, "open", -p.fd);
    uid_t uid;
    if ((res = handle_claim(vhfs_of(req), req, &uid)) < 0)
        return reply_err(req, "open", -res);
    vhfs_procfd(path, p.fd);
    fd = open_in_use(vhfs_of(req), AT_FDCWD, path, backing_flags(fi));
    if (fd < 0) {
        res = errno;
        handle_unclaim(vhfs_of(req), uid);
        return reply_err(req, "open", res);
    }
    unpin(&p);
    handle_own(vhfs_of(req), fd, uid);
    int backing_id = opened(vhfs_of(req), inode, fi, fd);
    if (rewritten)
        fi->keep_cache = 0; /* the kernel drops the pages it cached of the old bytes */
    if (vhfs_backing_reply_open(req, fi, backing_id) != 0)
        closed(vhfs_of(req), inode, fi);
}

/* An existing file that create opens for writing: the check of lo_open (before any O_TRUNC). */
static int may_write_existing(struct vhfs *fs, struct vhfs_inode *dir, const char *name, int flags)
{
    struct fuse_entry_param e;
    int res;

    if (!changes_content(flags))
        return 0;
    if (do_lookup(fs, dir, name, &e) < 0)
        return 0; /* gone meanwhile: the open says what it finds */
    res = vhfs_heal_may_write(fs, inode_by_ino(fs, e.ino));
    inode_unref(fs, inode_by_ino(fs, e.ino), 1);
    return res;
}

static void lo_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi)
{
    struct vhfs *fs = vhfs_of(req);
    struct vhfs_inode *dir = inode_of(req, parent);
    struct vhfs_inode *inode;
    struct fuse_entry_param e;
    int fd, res;

    int flags = backing_flags(fi);
    bool made;

    autopin d = pin(fs, dir);
    if (d.fd < 0)
        return reply_err(req, "create", -d.fd);
    uid_t uid;
    if ((res = handle_claim(fs, req, &uid)) < 0)
        return reply_err(req, "create", -res);
    /* Only what this call made is given to the caller, never a file that appeared meanwhile. */
    RETRY_ON_EMFILE(fs, fd, openat(d.fd, name, flags | O_CREAT | O_EXCL, mode));
    made = fd >= 0;
    if (fd < 0 && errno == EEXIST && !(fi->flags & O_EXCL)) {
        res = may_write_existing(fs, dir, name, flags);
        if (res < 0) {
            handle_unclaim(fs, uid);
            return reply_err(req, "create", -res);
        }
        fd = open_in_use(fs, d.fd, name, flags); /* an existing file: as lo_open opens it */
    }
    if (fd < 0) {
        res = errno;
        handle_unclaim(fs, uid);
        return reply_err(req, "create", res);
    }
    handle_own(fs, fd, uid);
    if (made)
        give_to_caller(req, dir, name, fd, S_IFREG | mode);
    res = do_lookup(fs, dir, name, &e);
    if (res < 0) {
        handle_disown(fs, fd);
        close(fd);
        return reply_err(req, "create", -res);
    }
    inode = inode_by_ino(fs, e.ino);
    int backing_id = opened(fs, inode, fi, fd);
    if (vhfs_backing_reply_create(req, &e, fi, backing_id) != 0) {
        closed(vhfs_of(req), inode, fi);
        inode_unref(fs, inode, 1);
    }
}

/* Overlay healing: the patch set the mount presents over the open store file, or NULL. */
static struct vh_patch *patch_of(struct vhfs *fs, int fd)
{
    struct stat st;

    if (vhfs_heal_writes(fs) || fstat(fd, &st) < 0)
        return NULL;
    return vhfs_heal_patch(fs, &st);
}

static void lo_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    g_autofree char *buf = g_try_malloc(size > 0 ? size : 1);
    g_autoptr(vh_patch) patch = patch_of(vhfs_of(req), (int)fi->fh);
    ssize_t n;

    if (buf == NULL)
        return reply_err(req, "read", ENOMEM);
    /* a healed disk in overlay mode: the store's bytes with the repaired ranges over them */
    n = patch != NULL ? vh_patch_read(patch, (int)fi->fh, buf, size, (uint64_t)off)
                      : vh_read_full((int)fi->fh, buf, size, off);
    if (n < 0)
        return reply_err(req, "read", (int)-n);
    fuse_reply_buf(req, buf, (size_t)n);
}

static void lo_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
    size_t done;
    int r = vh_write_full((int)fi->fh, buf, size, off, &done);

    /* a write that failed part way reports what it wrote, as pwrite(2) does */
    if (r < 0 && done == 0)
        return reply_err(req, "write", -r);
    vhfs_views_changed(vhfs_of(req), inode_of(req, ino));
    fuse_reply_write(req, done);
}

static void lo_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    /* Closing a duplicate makes network stores report deferred write errors now. */
    int res = close(dup((int)fi->fh));

    reply_err(req, "flush", res < 0 ? errno : 0);
}

static void lo_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    closed(vhfs_of(req), inode_of(req, ino), fi);
    vhfs_heal_released(vhfs_of(req), inode_of(req, ino), writable(fi->flags));
    reply_err(req, "release", 0);
}

static void lo_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    int fd = (int)fi->fh;
    int res = datasync ? fdatasync(fd) : fsync(fd);

    reply_err(req, "fsync", res < 0 ? errno : 0);
}

static void lo_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                         struct fuse_file_info *fi)
{
    int res = fallocate((int)fi->fh, mode, offset, length);

    if (res == 0)
        vhfs_views_changed(vhfs_of(req), inode_of(req, ino));
    reply_err(req, "fallocate", res < 0 ? errno : 0);
}

static void lo_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
                               struct fuse_file_info *fi_in, fuse_ino_t ino_out, off_t off_out,
                               struct fuse_file_info *fi_out, size_t len, int flags)
{
    g_autoptr(vh_patch) patch = patch_of(vhfs_of(req), (int)fi_in->fh);
    ssize_t res;

    /* the kernel copies a patched disk by reads instead (the store's bytes are not it) */
    if (patch != NULL)
        return reply_err(req, "copy_file_range", EOPNOTSUPP);
    res = copy_file_range((int)fi_in->fh, &off_in, (int)fi_out->fh, &off_out, len, (unsigned)flags);

    if (res < 0)
        return reply_err(req, "copy_file_range", errno);
    vhfs_views_changed(vhfs_of(req), inode_of(req, ino_out));
    fuse_reply_write(req, (size_t)res);
}

static void lo_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
                     struct fuse_file_info *fi)
{
    g_autoptr(vh_patch) patch = patch_of(vhfs_of(req), (int)fi->fh);
    off_t res;

    /* a patched disk (overlay) is all data up to its patched size: no hole hides a patch */
    if (patch != NULL && (whence == SEEK_DATA || whence == SEEK_HOLE)) {
        if (off < 0 || (uint64_t)off >= vh_patch_size(patch))
            return reply_err(req, "lseek", ENXIO);
        return (void)fuse_reply_lseek(req, whence == SEEK_DATA ? off : (off_t)vh_patch_size(patch));
    }
    res = lseek((int)fi->fh, off, whence);
    if (res < 0)
        return reply_err(req, "lseek", errno);
    fuse_reply_lseek(req, res);
}

/* --- extended attributes: ours first (xattr.c), then the store file's --- */

/*
 * The store file's attributes are reached through /proc/self/fd, which follows to the object.
 * A symlink cannot be reached that way without following it, and user.* attributes cannot be set
 * on symlinks anyway: a symlink shows none.
 */
static ssize_t store_getxattr(struct vhfs *fs, struct vhfs_inode *inode, const char *name,
                              char *buf, size_t size)
{
    char path[VHFS_PROCFD_LEN];
    ssize_t res;

    if (S_ISLNK(inode->type))
        return -ENODATA;
    autopin p = pin(fs, inode);
    if (p.fd < 0)
        return p.fd;
    vhfs_procfd(path, p.fd);
    res = getxattr(path, name, buf, size);
    return res < 0 ? -errno : res;
}

/* The store file's names without the hidden ones; the length kept, or -errno. */
static ssize_t store_listxattr(struct vhfs *fs, struct vhfs_inode *inode, char *buf, size_t size)
{
    char path[VHFS_PROCFD_LEN];
    ssize_t res;
    size_t in, out = 0;

    if (S_ISLNK(inode->type))
        return 0;
    autopin p = pin(fs, inode);
    if (p.fd < 0)
        return p.fd;
    vhfs_procfd(path, p.fd);
    res = listxattr(path, buf, size);
    if (res < 0)
        return -errno;
    if (size == 0)
        return res; /* an upper bound is enough for a size query */
    for (in = 0; in < (size_t)res;) {
        size_t len = strnlen(buf + in, (size_t)res - in) + 1;

        if (!vhfs_xattr_hidden(buf + in)) {
            memmove(buf + out, buf + in, len);
            out += len;
        }
        in += len;
    }
    return (ssize_t)out;
}

static void lo_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
    struct vhfs_inode *inode = inode_of(req, ino);
    g_autofree char *buf = NULL;
    bool ours;
    ssize_t res;

    if (size > 0 && (buf = g_try_malloc(size)) == NULL)
        return reply_err(req, "getxattr", ENOMEM);
    res = vhfs_xattr_get(vhfs_of(req), req, inode, name, buf, size, &ours);
    if (!ours)
        res = vhfs_xattr_hidden(name) ? -ENODATA
                                      : store_getxattr(vhfs_of(req), inode, name, buf, size);
    if (res < 0)
        return reply_err(req, "getxattr", (int)-res);
    if (size == 0)
        fuse_reply_xattr(req, (size_t)res);
    else
        fuse_reply_buf(req, buf, (size_t)res);
}

static void lo_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
    struct vhfs_inode *inode = inode_of(req, ino);
    g_autofree char *buf = NULL;
    ssize_t own, extra;

    if (size > 0 && (buf = g_try_malloc(size)) == NULL)
        return reply_err(req, "listxattr", ENOMEM);
    own = store_listxattr(vhfs_of(req), inode, buf, size);
    if (own < 0)
        return reply_err(req, "listxattr", (int)-own);
    extra = vhfs_xattr_list(vhfs_of(req), inode, size > 0 ? buf + own : NULL,
                            size > 0 ? size - (size_t)own : 0);
    if (size > 0 && (size_t)own == size && extra > 0)
        extra = -ERANGE; /* a full buffer left none for ours (asked with 0, we got a length) */
    if (extra < 0)
        return reply_err(req, "listxattr", (int)-extra);
    if (size == 0)
        fuse_reply_xattr(req, (size_t)(own + extra));
    else
        fuse_reply_buf(req, buf, (size_t)(own + extra));
}

static void lo_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
                        size_t size, int flags)
{
    struct vhfs_inode *inode = inode_of(req, ino);
    char path[VHFS_PROCFD_LEN];
    bool ours;
    int res = vhfs_xattr_set(vhfs_of(req), req, inode, name, value, size, flags, &ours);

    if (!ours) {
        if (vhfs_xattr_hidden(name) || S_ISLNK(inode->type)) {
            res = -EPERM; /* ours to synthesise, never stored; symlinks: as the kernel says */
        } else {
            autopin p = pin(vhfs_of(req), inode);

            vhfs_procfd(path, p.fd);
            res = p.fd < 0 ? p.fd : setxattr(path, name, value, size, flags) < 0 ? -errno : 0;
        }
    }
    reply_err(req, "setxattr", -res);
}

static void lo_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
    struct vhfs_inode *inode = inode_of(req, ino);
    char path[VHFS_PROCFD_LEN];
    bool ours;
    int res = vhfs_xattr_remove(vhfs_of(req), inode, name, &ours);

    if (!ours) {
        if (vhfs_xattr_hidden(name) || S_ISLNK(inode->type)) {
            res = -ENODATA;
        } else {
            autopin p = pin(vhfs_of(req), inode);

            vhfs_procfd(path, p.fd);
            res = p.fd < 0 ? p.fd : removexattr(path, name) < 0 ? -errno : 0;
        }
    }
    reply_err(req, "removexattr", -res);
}

/* --- the session --- */

static void want(struct fuse_conn_info *conn, unsigned cap)
{
    if (conn->capable & cap)
        conn->want |= cap;
}

static void lo_init(void *userdata, struct fuse_conn_info *conn)
{
    want(conn, FUSE_CAP_ASYNC_READ);
    want(conn, FUSE_CAP_ATOMIC_O_TRUNC);
    want(conn, FUSE_CAP_AUTO_INVAL_DATA); /* drop cached data when mtime or size moved */
    want(conn, FUSE_CAP_READDIRPLUS);
    want(conn, FUSE_CAP_READDIRPLUS_AUTO);
    want(conn, FUSE_CAP_PARALLEL_DIROPS);
    want(conn, FUSE_CAP_ASYNC_DIO);
    want(conn, FUSE_CAP_CACHE_SYMLINKS); /* a symlink's target never changes */
    /* Writeback caching stays off: measured here it sped up sequential writes by about a
       quarter (dd bs=1M: 420 -> 540 MB/s), but the kernel would then hold dirty pages of a disk
       while the healer rewrites the same file underneath, own mtime and size, and turn
       write-only opens into read-write ones. Set-ID bits must be cleared by the kernel, since
       the daemon writes as root (who keeps them). Locks stay in the kernel (see the top).
       Splice gained nothing measurable for pass-through reads (doc/mount.md "Performance"),
       which reply from memory; @raw replies with file ranges (views.c reply_pieces), which
       SPLICE_WRITE sends from the page cache without a copy through the daemon. */
    conn->want &=
        ~(unsigned)(FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_HANDLE_KILLPRIV | FUSE_CAP_POSIX_LOCKS |
                    FUSE_CAP_FLOCK_LOCKS | FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_MOVE);
    want(conn, FUSE_CAP_SPLICE_WRITE);
    conn->max_write = VHFS_MAX_IO;
    conn->max_read = VHFS_MAX_READ; /* as the max_read= mount option main.c gives */
    /* The kernel keeps the smaller of this and the bdi's readahead, which main.c raised. */
    conn->max_readahead = VHFS_READAHEAD_KB << 10;
    conn->time_gran = 1;
    vhfs_backing_arm_init(userdata); /* asks for kernel passthrough where it is offered */
    vhfs_debug("init: capable 0x%x, want 0x%x", conn->capable, conn->want);
}

const struct fuse_lowlevel_ops vhfs_ops = {
    .init = lo_init,
    .lookup = lo_lookup,
    .forget = lo_forget,
    .forget_multi = lo_forget_multi,
    .getattr = lo_getattr,
    .setattr = lo_setattr,
    .readlink = lo_readlink,
    .mknod = lo_mknod,
    .mkdir = lo_mkdir,
    .unlink = lo_unlink,
    .rmdir = lo_rmdir,
    .symlink = lo_symlink,
    .rename = lo_rename,
    .link = lo_link,
    .open = lo_open,
    .read = lo_read,
    .write = lo_write,
    .flush = lo_flush,
    .release = lo_release,
    .fsync = lo_fsync,
    .opendir = lo_opendir,
    .readdir = lo_readdir,
    .readdirplus = lo_readdirplus,
    .releasedir = lo_releasedir,
    .fsyncdir = lo_fsyncdir,
    .statfs = lo_statfs,
    .setxattr = lo_setxattr,
    .getxattr = lo_getxattr,
    .listxattr = lo_listxattr,
    .removexattr = lo_removexattr,
    .create = lo_create,
    .fallocate = lo_fallocate,
    .copy_file_range = lo_copy_file_range,
    .lseek = lo_lseek,
};
