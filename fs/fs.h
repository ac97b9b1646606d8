/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * fs.h - what the modules of the mount (vhdhealfs) share: the parsed configuration, the
 * mount's state, the inode table of the pass-through, logging, and the hooks by which the xattr,
 * heal and view modules plug into the pass-through.
 *
 * Contract: fs/ never parses disk bytes; everything about disks comes from chain/. Inside, code
 * returns 0 or -errno; only the lo_* handlers of passthrough.c and the vw_* handlers of views.c
 * (for the views' own inodes) talk to FUSE, and each sends exactly one reply.
 */
#ifndef VHFS_FS_H
#define VHFS_FS_H

#define FUSE_USE_VERSION FUSE_MAKE_VERSION(3, 14)

#include <fuse_lowlevel.h>
#include <glib.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <syslog.h>

#include "common.h" /* the engine's small helpers: vh_autofd, vh_mtime_ns, VH_DEFAULT_MAXDEPTH */
#include "resolve.h"

/* heal=: when a broken chain is repaired (doc/design.md "vhdhealfs"). */
enum vhfs_heal {
    VHFS_HEAL_AUTO,   /* opening a disk with a broken, resolvable chain repairs it */
    VHFS_HEAL_MANUAL, /* only the xattr trigger repairs */
    VHFS_HEAL_OFF,    /* detect and report only */
};

/* healmode=: where a repair goes. */
enum vhfs_healmode {
    VHFS_HEALMODE_PERSIST, /* written into the child file (journaled) */
    VHFS_HEALMODE_OVERLAY, /* presented by the mount; the store file stays unchanged */
};

/* The mount's configuration, parsed and validated by main.c; read-only after start-up. */
struct vhfs_config {
    char *store;      /* canonical absolute path of STORE */
    char *mountpoint; /* absolute */
    enum vhfs_heal heal;
    enum vhfs_healmode healmode; /* overlay whenever ro is set */
    char *winroot;     /* Windows form with backslashes ("\\nas\vms", "D:\VMs"), or NULL */
    char *overlaydir;  /* realpath of overlaydir= (outside STORE; implies overlay), or NULL */
    bool views;        /* the @raw and @chains folders */
    unsigned maxdepth; /* longest chain followed, >= 1 */
    vh_trust trust;    /* whose disks may be parents (doc/design.md "Many users on one mount") */
    bool ro;
    bool allow_other;
    bool allow_parent_writes; /* a disk other disks use as parent may be opened for writing */
    bool foreground;          /* -f (or -d) */
    bool debug;               /* -d */
    bool singlethread;        /* -s */
    bool passthrough;         /* kernel passthrough where the kernel offers it (backing.c) */
};

/* The largest maxdepth= (its default is the engine's VH_DEFAULT_MAXDEPTH). */
#define VHFS_MAXDEPTH_LIMIT 65536u

/*
 * One backing object the kernel knows (it holds lookups on it). Keyed by (dev, ino). The
 * fuse_ino_t the kernel sees is the address of this struct (FUSE_ROOT_ID for the root).
 *
 * Its O_PATH descriptor is cached: at most vhfs.max_fds of them are open (the kernel may keep
 * hundreds of thousands of inodes after a large listing). Files and folders that have a file
 * handle (name_to_handle_at) give back their descriptor when the cache is full, least recently
 * used first, and are reopened the next time they are pinned: through the folder and name they
 * were last seen under when that still leads to the same object (the descriptor's path then
 * stays connected), else by handle (open_by_handle_at: the very same object, or ESTALE when it
 * is gone). Use the descriptor only between
 * vhfs_inode_pin and vhfs_inode_unpin: it is never closed while pinned.
 */
struct vhfs_inode {
    int fd; /* O_PATH | O_NOFOLLOW, owned; -1 while evicted (guarded by vhfs.lock) */
    dev_t dev;
    ino_t ino;
    mode_t type;      /* S_IFMT bits; an inode never changes its type */
    uint64_t nlookup; /* kernel lookups; guarded by vhfs.lock */
    gint nwriters;    /* handles open for writing through the mount (atomic) */
    /* the descriptor cache, guarded by vhfs.lock */
    unsigned pins;                  /* users of fd now */
    struct file_handle *handle;     /* to reopen after eviction; NULL: never evicted */
    struct file_handle *dir_handle; /* the folder it was last seen in (NULL: the root) */
    char *name;                     /* its name there (NULL: unknown, reopen by handle) */
    GList lru;                      /* in vhfs.lru while fd >= 0 and pins == 0 */
    bool hashed;                    /* in vhfs.inodes (a stale entry is not) */
    bool dead;                      /* forgotten while pinned: freed by the last unpin */
    /* kernel passthrough (backing.c), guarded by vhfs.backing.lock: open files of this inode
       the kernel serves from the store file, and the id they share; open files it caches */
    unsigned backed_opens;
    int backing_id;
    unsigned cached_opens;
    gint backing_direct; /* atomic: the store file takes O_DIRECT: 1, does not: -1, unknown: 0 */
};

/* The mount. */
struct vhfs {
    struct vhfs_config cfg;
    struct fuse_session *se;
    struct vh_service *svc; /* the engine (heal.c); NULL until vhfs_heal_start */
    GThread *scan_thread;   /* the index's first scan (heal.c) */
    struct vhfs_inode root;
    GMutex lock;        /* guards inodes and every nlookup */
    GHashTable *inodes; /* (dev, ino) -> struct vhfs_inode *, root excluded */
    GQueue lru;         /* unpinned inodes holding a descriptor, most recent first */
    unsigned nfds;      /* inodes' descriptors open (root excluded) */
    unsigned max_fds;   /* the cache's bound (VHFS_MAX_PATH_FDS or less) */
    int mount_id;       /* STORE's mount: handles of other mounts are not kept */
    int mount_fd;       /* STORE opened for open_by_handle_at (which takes no O_PATH one) */
    double timeout;     /* entry and attribute timeout, seconds */
    /* Open file and folder handles counted per user (root's are not): no user may hold more than
       max_user_handles, so that one user cannot take the descriptors every other one needs. */
    GMutex handles_lock;
    GHashTable *handles;       /* uid -> handles it holds (GUINT_TO_POINTER) */
    uid_t *fd_owner;           /* backing fd -> 1 + uid of the user it counts against; 0: none */
    unsigned nfd_owner;        /* fd_owner's length: the descriptor limit */
    unsigned max_user_handles; /* a quarter of what the limit leaves besides the inode cache */
    bool as_root;              /* the daemon runs as root: new objects are given to their creator */
    struct {                   /* kernel passthrough (backing.c) */
        int fuse_fd;           /* /dev/fuse, where backing files are registered */
        gint offered;          /* the kernel's INIT offered FUSE_PASSTHROUGH */
        gint init_seen;
        gint active; /* asked for in INIT's reply, and not refused since */
        gint refused_logged;
        GMutex lock;     /* guards fd_mode and the inodes' open counts */
        guint8 *fd_mode; /* per store descriptor: how its open file is served; NULL: off */
    } backing;

    /* views.c's state; NULL with views=off */
    struct vhfs_views *views;
};

/*
 * The inodes' O_PATH descriptors kept open at most: this, or a quarter of the descriptor limit
 * when that is lower (main.c raises the soft limit to the hard one first).
 */
#define VHFS_MAX_PATH_FDS 4096u

/*
 * Entry and attribute timeout. Long, so that with keep_cache the kernel serves repeated reads
 * from its page cache; the kernel also drops cached data when a refreshed mtime or size differs
 * (auto_inval_data), so a change made to STORE behind the mount's back shows within this time.
 */
#define VHFS_TIMEOUT 60.0
/* Largest read and write request (max_read, max_write). */
#define VHFS_MAX_IO (1u << 20)
/* Largest read request: less than VHFS_MAX_IO, so that a reply of file ranges (@raw) fits,
 * with its header and libfuse's margin of a page per piece, in a pipe of the default
 * /proc/sys/fs/pipe-max-size (1 MiB), and libfuse splices it instead of copying. */
#define VHFS_MAX_READ (VHFS_MAX_IO - (128u << 10))
/* The mount's readahead, KiB (main.c raises the kernel's 128 KiB to it when root). */
#define VHFS_READAHEAD_KB 4096u

/*
 * Kernel passthrough (backing.c): attached after the mount when -o passthrough is on, healing
 * writes into STORE and the daemon runs as root; lo_init arms INIT's reply. An open chooses
 * the inode's mode (the backing id, or -1: served through the daemon, cached) and replies
 * through vhfs_backing_reply_*; the release says whether a writer was passed through.
 */
int vhfs_backing_attach(struct vhfs *fs);
void vhfs_backing_fini(struct vhfs *fs);
void vhfs_backing_arm_init(struct vhfs *fs);
bool vhfs_backing_active(struct vhfs *fs);
int vhfs_backing_choose(struct vhfs *fs, struct vhfs_inode *inode, struct fuse_file_info *fi,
                        int fd, bool writer);
bool vhfs_backing_release(struct vhfs *fs, struct vhfs_inode *inode, int fd);
int vhfs_backing_reply_open(fuse_req_t req, const struct fuse_file_info *fi, int backing_id);
int vhfs_backing_reply_create(fuse_req_t req, const struct fuse_entry_param *e,
                              const struct fuse_file_info *fi, int backing_id);

/* Whether fd indexes the per-descriptor tables (fd_owner, backing.fd_mode). */
static inline bool vhfs_fd_in_tables(const struct vhfs *fs, int fd)
{
    return fd >= 0 && (unsigned)fd < fs->nfd_owner;
}

/* The low-level operations (passthrough.c). */
extern const struct fuse_lowlevel_ops vhfs_ops;

/*
 * The inode's O_PATH descriptor, pinned: reopened when it was evicted. -errno (ESTALE: the object
 * is gone) when it cannot be had; then nothing is pinned.
 */
int vhfs_inode_pin(struct vhfs *fs, struct vhfs_inode *inode);
void vhfs_inode_unpin(struct vhfs *fs, struct vhfs_inode *inode);
/*
 * After EMFILE/ENFILE from an open: gives back unpinned cached descriptors (half the cache);
 * true when any was closed (the open is worth retrying).
 */
bool vhfs_fds_shrink(struct vhfs *fs);

/* Sets up the root inode and the table for cfg->store; -errno on failure (logged). */
int vhfs_init(struct vhfs *fs);
/* Frees what vhfs_init and the session left (all inodes, the root descriptor). */
void vhfs_fini(struct vhfs *fs);

/*
 * Drops the kernel's cached attributes of the backing file (dev, ino), and with `data` its cached
 * pages too, if the kernel knows it: for after a repair changed a file under the mount (heal.c).
 * Returns 0, or -errno. With `data`, must not be called from a read or write handler of the same
 * inode (the kernel would wait on itself).
 */
int vhfs_invalidate(struct vhfs *fs, dev_t dev, ino_t ino, bool data);

/* --- heal.c: the engine service, heal on open, relink on rename. --- */

/*
 * Starts the engine service for cfg.store (after the daemon forked): rolls back unfinished
 * repairs of STORE/.vhdheal/journal when repairs are written (healmode=persist, not ro), and
 * scans the store in the background. Returns 0 or -errno (logged).
 */
int vhfs_heal_start(struct vhfs *fs);
/* Waits for the background scan and frees the service (also when it never started). */
void vhfs_heal_stop(struct vhfs *fs);
/* True when repairs are written into the store (healmode=persist on a writable mount). */
bool vhfs_heal_writes(const struct vhfs *fs);
/* The store-relative path of an inode ("" for the root); NULL when it was removed. */
char *vhfs_inode_path(struct vhfs *fs, struct vhfs_inode *inode);
/* The path under the mount point of a store-relative path. */
char *vhfs_mount_path(const struct vhfs *fs, const char *rel);

/*
 * Hooks of the pass-through. heal_open runs before a file is opened: for a disk whose chain is
 * broken it logs the detection and, with heal=auto, repairs every broken link with a heal target
 * in the chain above it (in overlay mode into patch sets, the store unchanged); it never fails
 * the open. It returns true when the opened file itself was rewritten or patched (the open must
 * then drop the kernel's cached pages).
 */
bool vhfs_heal_open(struct vhfs *fs, fuse_req_t req, struct vhfs_inode *inode);
/*
 * May inode be opened for writing (or truncated)? -EBUSY, logged with the children's names, for
 * a disk that other disks of the store use as their parent (unless allow_parent_writes); in
 * overlay mode -EROFS for every disk (other files keep the store's rules); else 0.
 */
int vhfs_heal_may_write(struct vhfs *fs, struct vhfs_inode *inode);
/* True when the store index knows the file as a VHD or VHDX disk, or cannot say (its name now
   holds another file, or none): what keeps a disk with the daemon (backing.c). */
bool vhfs_heal_is_disk(struct vhfs *fs, struct vhfs_inode *inode);
/* Counts a new writer of inode; never overlaps a repair (the service's repair lock). */
void vhfs_heal_writer_opened(struct vhfs *fs, struct vhfs_inode *inode);
/* A handle of inode was closed; a writer's close re-reads the file into the index. */
void vhfs_heal_released(struct vhfs *fs, struct vhfs_inode *inode, bool writer);
/* After a successful rename: the index follows; in persist mode children are relinked. */
void vhfs_heal_renamed(struct vhfs *fs, fuse_req_t req, struct vhfs_inode *olddir,
                       const char *oldname, struct vhfs_inode *newdir, const char *newname,
                       unsigned flags);
/* After a successful unlink of dir/name. */
void vhfs_heal_unlinked(struct vhfs *fs, struct vhfs_inode *dir, const char *name);
/*
 * Repairs asked for through user.vhd.parent[.force] (xattr.c): maps `value` (a path under the
 * mount point, under STORE, or relative to the child's folder) and reconnects; on success the
 * kernel's cache of the child is dropped. 0 or -errno; the message goes to user.vhd.status.
 * The caller of req (NULL: the daemon itself) must be able to write the child and read the
 * parent, and the parent must be trusted for the child (the gate).
 */
int vhfs_heal_set_parent(struct vhfs *fs, fuse_req_t req, struct vhfs_inode *inode, const char *rel,
                         const char *value, size_t size, bool force);
/* What user.vhd.status adds to a broken link that has a heal target, by the mount's mode. */
const char *vhfs_heal_note(const struct vhfs *fs);
/*
 * Overlay healing (healmode=overlay, ro): the patch set the mount presents over the store file
 * st describes (a reference, drop it with vh_patch_unref), or NULL (none, or not overlay mode).
 * The pass-through reads such a file with vh_patch_read and shows its patched size.
 */
struct vh_patch *vhfs_heal_patch(struct vhfs *fs, const struct stat *st);
/* The attributes the mount shows for a store file: st_size the patched size where it has one. */
void vhfs_heal_present(struct vhfs *fs, struct stat *st);
/* A status or message with STORE's paths shown under the mount point. */
char *vhfs_heal_show_paths(const struct vhfs *fs, const char *text);

/* The synthesised attributes, one table (xattr.c); the unit test walks it. */
struct vhfs_xq; /* one request's view of a file (xattr.c) */
enum vhfs_xattr_need {
    VHFS_NEED_DISK,     /* any disk, even one that cannot be read */
    VHFS_NEED_READABLE, /* a readable disk */
    VHFS_NEED_CHILD,    /* a readable differencing disk */
};
struct vhfs_xattr_key {
    const char *name;
    enum vhfs_xattr_need need;
    int (*read)(struct vhfs_xq *q, GString *out);                /* NULL: write-only */
    int (*write)(struct vhfs_xq *q, const char *v, size_t size); /* NULL: read-only */
    bool listed;                                                 /* shown by listxattr */
};
extern const struct vhfs_xattr_key vhfs_xattr_keys[];
extern const size_t vhfs_xattr_nkeys;

/* --- xattr.c: the synthesised attributes (user.vhd.*). --- */

/*
 * Each hook is called by the pass-through before it touches the store file. A hook sets *ours
 * to false when the name is not one it serves; the pass-through then uses the store file. When
 * *ours is true the hook's result is the answer: get returns the value's length (with size 0:
 * the length needed; a short buffer: -ERANGE) or -errno; set/remove return 0 or -errno. req
 * names the caller the hook acts for (NULL: the daemon itself).
 */
ssize_t vhfs_xattr_get(struct vhfs *fs, fuse_req_t req, struct vhfs_inode *inode, const char *name,
                       char *buf, size_t size, bool *ours);
int vhfs_xattr_set(struct vhfs *fs, fuse_req_t req, struct vhfs_inode *inode, const char *name,
                   const char *value, size_t size, int flags, bool *ours);
int vhfs_xattr_remove(struct vhfs *fs, struct vhfs_inode *inode, const char *name, bool *ours);
/*
 * The synthesised names to list after the store file's own (NUL-terminated each): their total
 * length (with size 0: the length needed; too small a buffer: -ERANGE), or -errno.
 */
ssize_t vhfs_xattr_list(struct vhfs *fs, struct vhfs_inode *inode, char *buf, size_t size);
/* True when a name the store file carries must not be shown (it is ours to synthesise). */
bool vhfs_xattr_hidden(const char *name);

/* --- views.c: the @raw and @chains folders. --- */

struct vhfs_views;

/*
 * The views' inode numbers have this bit set; the pass-through's (addresses of struct
 * vhfs_inode) never do, since user space lies in the lower half of the address space.
 */
#define VHFS_VIEWS_INO_BIT (UINT64_C(1) << 63)

static inline bool vhfs_views_ino(fuse_ino_t ino)
{
    return (ino & VHFS_VIEWS_INO_BIT) != 0;
}

/*
 * Sets up the views' state (fs->views); -errno on failure (logged). The views read the store
 * index of the service (fs->svc), which vhfs_heal_start starts before the session runs.
 */
int vhfs_views_init(struct vhfs *fs);
void vhfs_views_fini(struct vhfs *fs);
/*
 * Puts the views in front of ops (a copy of vhfs_ops): operations on the views' inodes, and
 * lookups of @raw and @chains at the root, are served by views.c; everything else goes on to
 * the operations ops held. An operation that takes an inode must be wrapped there before
 * vhfs_ops may define it.
 */
void vhfs_views_wrap(struct fuse_lowlevel_ops *ops);
/*
 * For the root's readdir(plus), once the real entries are exhausted: adds @raw and @chains
 * (those the store's root does not hold itself) to buf, each with the offset off; *sent counts
 * the ones handled (0 after a seek). Returns the bytes added.
 */
size_t vhfs_views_root_entries(fuse_req_t req, char *buf, size_t size, off_t off, bool plus,
                               unsigned *sent);
/*
 * After a change to the data of a regular file made through the mount (write, truncate,
 * fallocate, copy_file_range), before the change is answered: every chain holding the file is
 * read anew by the @raw files open on it, and the kernel drops their cached pages.
 */
void vhfs_views_changed(struct vhfs *fs, struct vhfs_inode *inode);

/* --- caller.c: acting with the rights of a request's user. --- */

/* Who a request acts for (fuse_req_ctx and the groups of its process). */
struct vhfs_caller {
    uid_t uid;
    gid_t gid;
    int ngroups;
    gid_t groups[256];
};
/* The daemon thread's own credentials while it acts for a caller. */
struct vhfs_as {
    bool switched;
    uid_t uid;
    gid_t gid;
    int ngroups;
    gid_t groups[256];
};

/* The caller of req; NULL: the daemon itself (its own uid and gid, no groups). */
void vhfs_caller_from_req(struct vhfs_caller *c, fuse_req_t req);
/*
 * Takes the caller's fsuid, fsgid and groups on this thread (no change for root, or for the
 * daemon's own user when it is not root). 0, or -errno (EACCES: a daemon that is not root
 * cannot act for another user); vhfs_caller_leave restores them.
 */
int vhfs_caller_enter(const struct vhfs *fs, const struct vhfs_caller *c, struct vhfs_as *saved);
void vhfs_caller_leave(struct vhfs_as *saved);
/*
 * Opens the store-relative path rel as the caller, beneath STORE (flags as open(2), plus
 * O_CLOEXEC, O_NOCTTY and O_NONBLOCK); with nofollow no symlink is followed at all. The
 * descriptor, or -errno (EACCES for a file in a folder the caller cannot search, whether it
 * exists or not; EXDEV for a path leading outside STORE; ELOOP for a symlink with nofollow).
 */
int vhfs_caller_openat(const struct vhfs *fs, const struct vhfs_caller *c, const char *rel,
                       int flags, bool nofollow);
/*
 * May the caller read the file at rel, which must still be (dev, ino)? 0; -EACCES when not (also
 * for a file in a folder the caller cannot search); -EAGAIN when rel names another file now.
 */
int vhfs_caller_may_read(const struct vhfs *fs, const struct vhfs_caller *c, const char *rel,
                         dev_t dev, ino_t ino);
/* The same for every disk of a chain (what @raw reads for the caller). */
int vhfs_caller_may_read_chain(const struct vhfs *fs, const struct vhfs_caller *c,
                               const vh_chain *chain);

/* --- util.c: logging and small helpers. --- */

/* Logs to stderr when foreground, to syslog (daemon facility) otherwise. */
void vhfs_log_init(bool foreground, bool debug);
void vhfs_log(int priority, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
bool vhfs_log_debug_enabled(void);
#define vhfs_debug(...)                                                                            \
    do {                                                                                           \
        if (vhfs_log_debug_enabled())                                                              \
            vhfs_log(LOG_DEBUG, __VA_ARGS__);                                                      \
    } while (0)
/* Routes libfuse's own messages through vhfs_log. */
void vhfs_fuse_log(enum fuse_log_level level, const char *fmt, va_list ap) G_GNUC_PRINTF(2, 0);

/* "/proc/self/fd/N": a path that reaches what an O_PATH descriptor refers to. */
#define VHFS_PROCFD_LEN 32
void vhfs_procfd(char buf[VHFS_PROCFD_LEN], int fd);

/*
 * The one way an error goes to FUSE: err is a positive errno, or 0 for success; an error is
 * logged at debug level as "who: op: message" (who: "" for the store's files).
 */
void vhfs_reply_err(fuse_req_t req, const char *who, const char *op, int err);

#endif
