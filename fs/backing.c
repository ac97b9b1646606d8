/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * backing.c - FUSE passthrough: the kernel serves an open file's reads and writes from the
 * store file itself (its "backing file"), without a round trip to the daemon and without a
 * second copy of the data in the mount's own page cache (doc/mount.md "Kernel passthrough").
 *
 * Linux offers it since 6.9 (FUSE_PASSTHROUGH); libfuse has an API for it only from 3.16, and
 * Debian 12 ships 3.14. The protocol is small, so it is spoken here, through libfuse's custom
 * I/O hooks (fuse_session_custom_io): every request still goes through libfuse, and three
 * messages are amended on their way:
 *
 *   - the kernel's FUSE_INIT request says whether the kernel offers passthrough (read hook);
 *   - our INIT reply asks for it (flags2 bit, max_stack_depth 1), when lo_init armed it;
 *   - an OPEN or CREATE reply armed by vhfs_backing_reply_* gets FOPEN_PASSTHROUGH and the
 *     backing id registered for the inode (FUSE_DEV_IOC_BACKING_OPEN on /dev/fuse).
 *
 * Arming is per thread: libfuse sends a reply from the thread that calls fuse_reply_*, and INIT's
 * reply from the thread that called lo_init, so a thread-local says which message to amend.
 *
 * The kernel keeps one I/O mode per inode: while one open file of an inode is in passthrough,
 * every other open of it must be too, and while one is cached, none may be (it answers a mixed
 * open with EIO). So the mode is chosen per inode at its first open and kept while any open file
 * lasts, with one backing id shared by them all (closed at the last release). Registering a
 * backing file takes CAP_SYS_ADMIN; without it, or on a kernel without passthrough, or when the
 * store file cannot be a backing file (ELOOP: a store on overlayfs; no O_DIRECT: ramfs, see
 * takes_direct), every open stays cached.
 *
 * What is not passed through, and why:
 *   - overlay healing (healmode=overlay, -o ro): a patched disk's bytes are not the store
 *     file's, and a patch can appear while the file is open;
 *   - a disk (a file the store index knows as VHD or VHDX), whatever its open's access. The
 *     kernel maps a file in passthrough by mapping the backing file in its place, so the open
 *     file is released at close() while the mapping lives on: the disk would no longer be in
 *     use (a merge could run under the mapping) and a writer's mapped writes would reach the
 *     store without the daemon telling the views. Served through the daemon, a mapping holds
 *     the open file (and its in-use mark) until munmap, and its writes come back as writes.
 *     A file that becomes a disk while open in passthrough keeps the mode (the kernel allows
 *     no other) until its last close; a writer joining it gets FOPEN_DIRECT_IO, so that its
 *     reads and writes go to the daemon all the same (only its mmap uses the backing file).
 * A writer of any other file in passthrough tells the views when it closes (lo_release).
 */
#include "fs.h"

#include <errno.h>
#include <linux/fuse.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

/* Linux 6.9's protocol additions (7.40), which Debian 12's <linux/fuse.h> (7.38) lacks. */
#define KPT_INIT_FLAGS2_PASSTHROUGH (1u << (37 - 32)) /* FUSE_PASSTHROUGH, in flags2 */
#define KPT_INIT_EXT (1u << 30)                       /* FUSE_INIT_EXT: flags2 is valid */
#define KPT_FOPEN_PASSTHROUGH (1u << 7)               /* FOPEN_PASSTHROUGH */
#define KPT_FOPEN_KEEP_CACHE (1u << 1)                /* FOPEN_KEEP_CACHE: not with passthrough */
#define KPT_INIT_OUT_STACK_DEPTH 36 /* fuse_init_out.max_stack_depth (was unused[0]) */
#define KPT_MIN_MINOR 40            /* the first protocol version with passthrough */

struct kpt_backing_map { /* struct fuse_backing_map */
    int32_t fd;
    uint32_t flags;
    uint64_t padding;
};
#define KPT_DEV_IOC_BACKING_OPEN _IOW(229, 1, struct kpt_backing_map)
#define KPT_DEV_IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)

_Static_assert(offsetof(struct fuse_init_out, flags2) == 32, "fuse_init_out layout");
_Static_assert(sizeof(struct fuse_init_out) >= KPT_INIT_OUT_STACK_DEPTH + 4, "fuse_init_out");
_Static_assert(sizeof(struct fuse_open_out) == 16, "fuse_open_out layout");
_Static_assert(sizeof(struct fuse_entry_out) == 128, "fuse_entry_out layout");

/* What this thread's next reply is to carry. */
static __thread bool arm_init;
static __thread int arm_backing_id = -1; /* an OPEN or CREATE reply: this backing id */
static __thread bool arm_applied;

/* Per open file (indexed by its store descriptor, as fd_owner): how the kernel serves it. */
enum { FD_NONE, FD_CACHED, FD_BACKED, FD_BACKED_WRITER };

static struct vhfs *session_fs(void *userdata)
{
    return userdata;
}

/* --- the custom I/O hooks --- */

static void note_init_request(struct vhfs *fs, const char *buf, ssize_t n)
{
    const struct fuse_in_header *in = (const void *)buf;
    const struct fuse_init_in *init = (const void *)(buf + sizeof(*in));

    if (n < (ssize_t)(sizeof(*in) + sizeof(*init)) || in->opcode != FUSE_INIT)
        return;
    fs->backing.offered = init->major == 7 && init->minor >= KPT_MIN_MINOR &&
                          (init->flags & KPT_INIT_EXT) &&
                          (init->flags2 & KPT_INIT_FLAGS2_PASSTHROUGH);
}

static ssize_t hook_read(int fd, void *buf, size_t len, void *userdata)
{
    struct vhfs *fs = session_fs(userdata);
    ssize_t n = read(fd, buf, len);

    /* INIT is the first request and comes once; nothing is parsed after it */
    if (n > 0 && !g_atomic_int_get(&fs->backing.init_seen)) {
        note_init_request(fs, buf, n);
        g_atomic_int_set(&fs->backing.init_seen, 1);
    }
    return n;
}

/* Asks for passthrough in INIT's reply (iov[1], libfuse's whole struct fuse_init_out). */
static bool amend_init(struct iovec *iov, struct fuse_init_out *copy)
{
    if (iov[1].iov_len != sizeof(*copy))
        return false;
    memcpy(copy, iov[1].iov_base, sizeof(*copy));
    copy->flags |= KPT_INIT_EXT;
    copy->flags2 |= KPT_INIT_FLAGS2_PASSTHROUGH;
    uint32_t depth = 1; /* the store's file system may not itself stack on another */
    memcpy((char *)copy + KPT_INIT_OUT_STACK_DEPTH, &depth, sizeof(depth));
    iov[1].iov_base = copy;
    return true;
}

/* Marks an OPEN reply (fuse_open_out) or a CREATE reply (fuse_entry_out, fuse_open_out). */
static bool amend_open(struct iovec *iov, int backing_id, char *copy, size_t cap)
{
    const struct fuse_out_header *out = iov[0].iov_base;
    size_t at;

    if (iov[0].iov_len != sizeof(*out) || out->error != 0)
        return false;
    if (iov[1].iov_len == sizeof(struct fuse_open_out))
        at = 0;
    else if (iov[1].iov_len == sizeof(struct fuse_entry_out) + sizeof(struct fuse_open_out))
        at = sizeof(struct fuse_entry_out);
    else
        return false;
    if (iov[1].iov_len > cap)
        return false;
    memcpy(copy, iov[1].iov_base, iov[1].iov_len);
    struct fuse_open_out *o = (struct fuse_open_out *)(copy + at);
    o->open_flags = (o->open_flags & ~KPT_FOPEN_KEEP_CACHE) | KPT_FOPEN_PASSTHROUGH;
    o->padding = (uint32_t)backing_id; /* backing_id since 7.40 */
    iov[1].iov_base = copy;
    return true;
}

static ssize_t hook_writev(int fd, struct iovec *iov, int count, void *userdata)
{
    struct vhfs *fs = session_fs(userdata);
    struct fuse_init_out init_out;
    char open_reply[sizeof(struct fuse_entry_out) + sizeof(struct fuse_open_out)];
    struct iovec amended[2];
    ssize_t n;

    bool init = arm_init;

    arm_init = false;                                /* armed for one message */
    if ((!init && arm_backing_id < 0) || count != 2) /* a header and one argument */
        return writev(fd, iov, count);
    memcpy(amended, iov, sizeof(amended));
    if (init) {
        if (!amend_init(amended, &init_out))
            return writev(fd, iov, count);
        n = writev(fd, amended, count);
        if (n >= 0)
            g_atomic_int_set(&fs->backing.active, 1);
        return n;
    }
    if (!amend_open(amended, arm_backing_id, open_reply, sizeof(open_reply)))
        return writev(fd, iov, count);
    arm_applied = true;
    return writev(fd, amended, count);
}

static ssize_t hook_splice_send(int fdin, off_t *offin, int fdout, off_t *offout, size_t len,
                                unsigned flags, void *userdata)
{
    (void)userdata;
    return splice(fdin, offin, fdout, offout, len, flags);
}

int vhfs_backing_attach(struct vhfs *fs)
{
    static const struct fuse_custom_io io = {
        .read = hook_read,
        .writev = hook_writev,
        .splice_send = hook_splice_send, /* @raw's file-range replies (views.c) */
    };

    if (!fs->cfg.passthrough || !vhfs_heal_writes(fs) || geteuid() != 0)
        return 0;
    fs->backing.fuse_fd = fuse_session_fd(fs->se);
    g_mutex_init(&fs->backing.lock);
    fs->backing.fd_mode = g_new0(guint8, fs->nfd_owner);
    return fuse_session_custom_io(fs->se, &io, fs->backing.fuse_fd) == 0 ? 0 : -EINVAL;
}

void vhfs_backing_fini(struct vhfs *fs)
{
    if (fs->backing.fd_mode == NULL)
        return;
    g_clear_pointer(&fs->backing.fd_mode, g_free);
    g_mutex_clear(&fs->backing.lock);
}

void vhfs_backing_arm_init(struct vhfs *fs)
{
    arm_init = fs->backing.fd_mode != NULL && fs->backing.offered;
}

bool vhfs_backing_active(struct vhfs *fs)
{
    return fs->backing.fd_mode != NULL && g_atomic_int_get(&fs->backing.active);
}

/* --- choosing the mode of an open --- */

static void log_refused(struct vhfs *fs, int err)
{
    if (!g_atomic_int_get(&fs->backing.refused_logged)) {
        g_atomic_int_set(&fs->backing.refused_logged, 1);
        vhfs_log(LOG_INFO,
                 "kernel passthrough: a store file was refused as backing file (%s); "
                 "such files are served through the daemon",
                 g_strerror(err));
    }
}

/*
 * The kernel opens the backing file anew for each open file in passthrough, with that open's
 * flags: one with O_DIRECT, on a file system without it (ramfs), fails there, and the caller's
 * open with it (EIO), where the daemon serves O_DIRECT opens from a plain descriptor. So a
 * store file is passed through only once it took an O_DIRECT open, asked once per inode and
 * outside the lock (an open on a network store takes its time). A refusal other than EINVAL
 * (EMFILE) is asked again at the next open.
 */
static bool takes_direct(struct vhfs *fs, struct vhfs_inode *inode, int fd)
{
    char path[VHFS_PROCFD_LEN];
    int known = g_atomic_int_get(&inode->backing_direct);

    if (known != 0)
        return known > 0;
    vhfs_procfd(path, fd);
    int dfd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC | O_NOCTTY);
    if (dfd < 0) {
        int err = errno;
        log_refused(fs, err);
        if (err == EINVAL)
            g_atomic_int_set(&inode->backing_direct, -1);
        return false;
    }
    close(dfd);
    g_atomic_int_set(&inode->backing_direct, 1);
    return true;
}

/* Registers inode's backing file (fd, an open store file); its id, or -errno. */
static int register_backing(struct vhfs *fs, int fd)
{
    struct kpt_backing_map map = {.fd = fd};
    int id = ioctl(fs->backing.fuse_fd, KPT_DEV_IOC_BACKING_OPEN, &map);

    if (id >= 0)
        return id;
    int err = errno;
    /* Not permitted (no CAP_SYS_ADMIN, or the kernel turned INIT's request down) holds for
       every file: stop trying. Other refusals are per file (ELOOP: a stacked store; EINVAL: a
       file system without read_iter/write_iter). */
    if (err == EPERM || err == ENOTTY)
        g_atomic_int_set(&fs->backing.active, 0);
    log_refused(fs, err);
    return -err;
}

/* Open files whose mode is kept: regular files, once attached. Every one of them is counted,
   also after passthrough was turned off, while an inode still has open files passed through. */
static bool counted(struct vhfs *fs, struct vhfs_inode *inode, int fd)
{
    return fs->backing.fd_mode != NULL && S_ISREG(inode->type) && vhfs_fd_in_tables(fs, fd);
}

int vhfs_backing_choose(struct vhfs *fs, struct vhfs_inode *inode, struct fuse_file_info *fi,
                        int fd, bool writer)
{
    int id = -1;

    if (!counted(fs, inode, fd))
        return -1;
    /* Once passthrough is off (or was never on), nothing new is passed through, and a writer
       joining open files passed through earlier is treated as a disk's (direct I/O). */
    bool active = vhfs_backing_active(fs);
    bool disk = active ? vhfs_heal_is_disk(fs, inode) : true;
    bool direct = active && !disk && takes_direct(fs, inode, fd);
    g_mutex_lock(&fs->backing.lock);
    guint8 mode = FD_CACHED;
    if (inode->backed_opens > 0) {
        id = inode->backing_id;
    } else if (inode->cached_opens == 0 && direct) {
        id = register_backing(fs, fd);
        if (id >= 0)
            inode->backing_id = id;
    }
    if (id >= 0) {
        inode->backed_opens++;
        mode = writer ? FD_BACKED_WRITER : FD_BACKED;
        fi->keep_cache = 0;
        /* A file that became a disk while passed through: its writers' I/O goes to the daemon
           (see the top). */
        if (disk && writer)
            fi->direct_io = 1;
    } else {
        inode->cached_opens++;
    }
    fs->backing.fd_mode[fd] = mode;
    g_mutex_unlock(&fs->backing.lock);
    return id;
}

bool vhfs_backing_release(struct vhfs *fs, struct vhfs_inode *inode, int fd)
{
    int close_id = -1;
    guint8 mode;

    if (fs->backing.fd_mode == NULL || !vhfs_fd_in_tables(fs, fd))
        return false;
    g_mutex_lock(&fs->backing.lock);
    mode = fs->backing.fd_mode[fd];
    fs->backing.fd_mode[fd] = FD_NONE;
    if (mode == FD_CACHED && inode->cached_opens > 0) {
        inode->cached_opens--;
    } else if ((mode == FD_BACKED || mode == FD_BACKED_WRITER) && inode->backed_opens > 0) {
        if (--inode->backed_opens == 0) {
            close_id = inode->backing_id;
            inode->backing_id = -1;
        }
    }
    g_mutex_unlock(&fs->backing.lock);
    /* The kernel's open files hold the backing file by themselves: the id only lets new opens
       name it, and none can now without registering it again. */
    if (close_id >= 0) {
        uint32_t id = (uint32_t)close_id;
        if (ioctl(fs->backing.fuse_fd, KPT_DEV_IOC_BACKING_CLOSE, &id) < 0)
            vhfs_log(LOG_WARNING, "kernel passthrough: closing backing id %u: %s", id,
                     g_strerror(errno));
    }
    return mode == FD_BACKED_WRITER;
}

/* --- replies --- */

/* Arms this thread's next reply with backing_id (-1: none). */
static void arm_reply(int backing_id)
{
    arm_backing_id = backing_id;
    arm_applied = false;
}

/* Disarms it; a reply sent (res 0) that was to carry an id but was not marked is logged. */
static int disarm_reply(int res, int backing_id, const char *what)
{
    arm_backing_id = -1;
    if (res == 0 && backing_id >= 0 && !arm_applied)
        vhfs_log(LOG_ERR, "kernel passthrough: %s reply was not marked", what);
    return res;
}

int vhfs_backing_reply_open(fuse_req_t req, const struct fuse_file_info *fi, int backing_id)
{
    arm_reply(backing_id);
    return disarm_reply(fuse_reply_open(req, fi), backing_id, "an open");
}

int vhfs_backing_reply_create(fuse_req_t req, const struct fuse_entry_param *e,
                              const struct fuse_file_info *fi, int backing_id)
{
    arm_reply(backing_id);
    return disarm_reply(fuse_reply_create(req, e, fi), backing_id, "a create");
}
