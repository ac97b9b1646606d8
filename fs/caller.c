/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * caller.c - acting for the user of a request (doc/design.md "Many users on one mount"): the
 * daemon runs as root, so whatever it opens for a user (the child a repair rewrites, the parent
 * it reads) it opens with that user's credentials: fsuid, fsgid and supplementary groups of the
 * request, set on the calling thread only and restored right after.
 *
 * Contract: vhfs_caller_enter/leave bracket one operation on one thread; nothing in between may
 * block on another request. Linux keeps these credentials per thread (the raw system calls;
 * glibc's setgroups would change every thread). A daemon that is not root cannot take another
 * user's credentials: it acts only for its own user (and root), and refuses others (EACCES).
 * Files are opened beneath STORE (openat2 RESOLVE_BENEATH): the child without following any
 * symlink, the parent following only symlinks that stay inside STORE.
 */
#include "fs.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

void vhfs_caller_from_req(struct vhfs_caller *c, fuse_req_t req)
{
    const struct fuse_ctx *ctx;
    int n;

    memset(c, 0, sizeof(*c));
    if (req == NULL) {
        c->uid = geteuid();
        c->gid = getegid();
        return;
    }
    ctx = fuse_req_ctx(req);
    c->uid = ctx->uid;
    c->gid = ctx->gid;
    /* Groups beyond the array are left out: fewer rights, never more. */
    n = fuse_req_getgroups(req, G_N_ELEMENTS(c->groups), c->groups);
    c->ngroups = CLAMP(n, 0, (int)G_N_ELEMENTS(c->groups));
}

int vhfs_caller_enter(const struct vhfs *fs, const struct vhfs_caller *c, struct vhfs_as *saved)
{
    memset(saved, 0, sizeof(*saved));
    if (c->uid == 0 || (!fs->as_root && c->uid == geteuid()))
        return 0; /* already has (at least) the caller's rights for the files it may use */
    if (!fs->as_root)
        return -EACCES;
    saved->ngroups = (int)syscall(SYS_getgroups, G_N_ELEMENTS(saved->groups), saved->groups);
    if (saved->ngroups < 0)
        return -errno;
    saved->uid = (uid_t)setfsuid((uid_t)-1);
    saved->gid = (gid_t)setfsgid((gid_t)-1);
    if (syscall(SYS_setgroups, (size_t)c->ngroups, c->groups) < 0)
        return -errno;
    saved->switched = true;
    setfsgid(c->gid);
    setfsuid(c->uid);
    /* setfs[ug]id report no failure: ask what they set */
    if ((uid_t)setfsuid((uid_t)-1) != c->uid || (gid_t)setfsgid((gid_t)-1) != c->gid) {
        vhfs_caller_leave(saved);
        return -EPERM;
    }
    return 0;
}

void vhfs_caller_leave(struct vhfs_as *saved)
{
    if (!saved->switched)
        return;
    /* fsuid first: back to 0 it gives back the capabilities that setgroups needs */
    setfsuid(saved->uid);
    setfsgid(saved->gid);
    if (syscall(SYS_setgroups, (size_t)saved->ngroups, saved->groups) < 0)
        vhfs_log(LOG_ERR, "cannot restore the daemon's groups: %s", g_strerror(errno));
    saved->switched = false;
}

int vhfs_caller_openat(const struct vhfs *fs, const struct vhfs_caller *c, const char *rel,
                       int flags, bool nofollow)
{
    struct vhfs_as as;
    int r = vhfs_caller_enter(fs, c, &as);

    if (r < 0)
        return r;
    r = vh_openat2(fs->root.fd, rel, (uint64_t)(flags | O_CLOEXEC | O_NOCTTY | O_NONBLOCK), 0,
                   RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | (nofollow ? RESOLVE_NO_SYMLINKS : 0));
    vhfs_caller_leave(&as);
    return r;
}

int vhfs_caller_may_read(const struct vhfs *fs, const struct vhfs_caller *c, const char *rel,
                         dev_t dev, ino_t ino)
{
    vh_autofd int fd = vhfs_caller_openat(fs, c, rel, O_RDONLY, true);
    struct stat st;

    if (fd < 0)
        return fd == -ELOOP || fd == -ENOENT ? -EAGAIN : fd;
    if (fstat(fd, &st) < 0)
        return -errno;
    return st.st_dev == dev && st.st_ino == ino ? 0 : -EAGAIN;
}

int vhfs_caller_may_read_chain(const struct vhfs *fs, const struct vhfs_caller *c,
                               const vh_chain *chain)
{
    for (guint k = 0; k < chain->disks->len; k++) {
        const vh_disk_info *d = chain->disks->pdata[k];
        int r = vhfs_caller_may_read(fs, c, d->path, d->dev, d->ino);

        if (r < 0)
            return r;
    }
    return 0;
}
