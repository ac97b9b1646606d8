// SPDX-License-Identifier: GPL-2.0-or-later
/* io.c - full reads and writes with file/structure/offset errors, the fault injector, and the
 * durability switch for synthetic data (io.h). */
#include "io.h"

#include "overlay.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static struct {
    vh_fault_kind kind;
    long nth;
    size_t tear_bytes;
    long ops;
    bool fired;
    int error; /* what a fired fault reports */
} fault = {.error = EIO};

void vh_fault_arm(vh_fault_kind kind, long nth, size_t tear_bytes)
{
    fault.kind = kind;
    fault.nth = nth;
    fault.tear_bytes = tear_bytes;
    fault.ops = 0;
    fault.fired = false;
    fault.error = EIO;
}

void vh_fault_set_errno(int e)
{
    fault.error = e;
}

void vh_fault_disarm(void)
{
    vh_fault_arm(VH_FAULT_NONE, 0, 0);
}

long vh_fault_ops(void)
{
    return fault.ops;
}

bool vh_fault_fired(void)
{
    return fault.fired;
}

static bool durable = true; /* see vh_io_set_durable in io.h: synthetic data only */

void vh_io_set_durable(bool on)
{
    durable = on;
}

bool vh_io_durable(void)
{
    return durable;
}

/* Counts a mutating op; returns true when the op must not reach the file. */
static bool fault_blocks_op(void)
{
    fault.ops++;
    if (fault.kind == VH_FAULT_NONE)
        return false;
    if (fault.fired)
        return fault.kind != VH_FAULT_ONCE;
    if (fault.ops == fault.nth) {
        fault.fired = true;
        return true;
    }
    return false;
}

/* Why an fd cannot be a disk file: 0 for a regular file, else a positive errno. Sets *size. */
static int check_regular(int fd, uint64_t *size)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return errno;
    if (!S_ISREG(st.st_mode))
        return EINVAL;
    *size = (uint64_t)st.st_size;
    return 0;
}

/*
 * Takes an fd opened with O_NONBLOCK: checks that it is a regular file before anything reads it,
 * then clears O_NONBLOCK (regular files ignore it, but later I/O must not see it). An fd that
 * reopen_regular opened (`known`: its fstat) was checked before it was opened, and without
 * O_NONBLOCK: nothing is left to do. Closes fd on failure.
 */
static int adopt_fd(vh_file *f, int fd, const char *path, bool writable, const struct stat *known,
                    GError **err)
{
    uint64_t size = known ? (uint64_t)known->st_size : 0;
    int e = known ? 0 : check_regular(fd, &size);
    if (e == 0 && !known) {
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0)
            e = errno;
    }
    if (e != 0) {
        close(fd);
        if (e == EINVAL)
            return vh_fail(err, EINVAL, "%s: not a regular file", path);
        return vh_fail(err, e, "%s: %s", path, g_strerror(e));
    }
    f->fd = fd;
    f->path = g_strdup(path);
    f->writable = writable;
    f->size = size;
    return 0;
}

/* The open(2) flags of a disk file: O_NONBLOCK, so that a FIFO or a device never blocks the
 * open; O_NOATIME when reading (see open_checked). */
static int open_flags(int flags, bool writable)
{
    return flags | O_CLOEXEC | O_NONBLOCK | (writable ? 0 : O_NOATIME);
}

/*
 * Opens the file an O_PATH fd found, with `flags`, only if fstat (*st) shows a regular file: what
 * is not one (a FIFO, whose open waits for a writer; a device, whose open acts) is never opened
 * at all. The same inode is reopened through /proc/self/fd (no second lookup of the name), so
 * without O_NONBLOCK: it is known to be a regular file. Returns the fd or -errno: -EINVAL for
 * what is not a regular file, -ENOENT without /proc.
 */
static int reopen_regular(int pfd, int flags, struct stat *st)
{
    if (fstat(pfd, st) < 0)
        return -errno;
    if (!S_ISREG(st->st_mode))
        return -EINVAL;
    char p[40];
    snprintf(p, sizeof p, "/proc/self/fd/%d", pfd);
    flags &= ~O_NONBLOCK;
    int fd = open(p, flags);
    /* O_NOATIME needs the file's owner or CAP_FOWNER; without them, open as usual */
    if (fd < 0 && errno == EPERM && (flags & O_NOATIME))
        fd = open(p, flags & ~O_NOATIME);
    return fd < 0 ? -errno : fd;
}

static int open_checked(vh_file *f, const char *path, int flags, bool writable, GError **err)
{
    memset(f, 0, sizeof *f);
    f->fd = -1;
    /* Reading a disk's structures is not an access by a user: keep its atime (the mount
       probes files after every write-close, and a scan probes every file). */
    int oflags = open_flags(flags, writable);
    int fd = -ENOENT;
    struct stat st;
    bool known = false; /* fd is reopen_regular's, st its fstat */
    if (!(flags & O_CREAT)) {
        int pfd = open(path, O_PATH | O_CLOEXEC);
        if (pfd < 0)
            return vh_fail(err, errno, "%s: cannot open: %s", path, g_strerror(errno));
        fd = reopen_regular(pfd, oflags, &st);
        close(pfd);
        known = fd >= 0;
    }
    if (fd == -ENOENT) { /* creating, or no /proc: open by name (O_NONBLOCK, checked below) */
        fd = open(path, oflags, 0666);
        if (fd < 0 && errno == EPERM && (oflags & O_NOATIME))
            fd = open(path, oflags & ~O_NOATIME, 0666);
        fd = fd < 0 ? -errno : fd;
    }
    if (fd == -EINVAL)
        return vh_fail(err, EINVAL, "%s: not a regular file", path);
    if (fd < 0)
        return vh_fail(err, -fd, "%s: cannot open: %s", path, g_strerror(-fd));
    return adopt_fd(f, fd, path, writable, known ? &st : NULL, err);
}

int vh_file_open(vh_file *f, const char *path, bool writable, GError **err)
{
    return open_checked(f, path, writable ? O_RDWR : O_RDONLY, writable, err);
}

int vh_file_create(vh_file *f, const char *path, GError **err)
{
    return open_checked(f, path, O_RDWR | O_CREAT | O_EXCL, true, err);
}

/* ---------------------------------------------------------------------------------------- */
/* Opening strictly beneath a folder */

static bool have_openat2 = true;

void vh_io_test_without_openat2(bool without)
{
    have_openat2 = !without;
}

/*
 * Without openat2: walks rel one component at a time from dirfd, never following a symlink
 * (O_NOFOLLOW) and refusing "..", which is what RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS do.
 */
static int openat_walk(int dirfd, const char *rel, int flags)
{
    g_auto(GStrv) parts = g_strsplit(rel, "/", -1);
    guint n = g_strv_length(parts);
    int cur = -1;
    for (guint k = 0; k < n; k++) {
        const char *c = parts[k];
        bool last = k + 1 == n;
        if (strcmp(c, "..") == 0 || (last && (!*c || strcmp(c, ".") == 0))) {
            if (cur >= 0)
                close(cur);
            return -EXDEV;
        }
        if (!*c || strcmp(c, ".") == 0)
            continue;
        /* what RESOLVE_NO_SYMLINKS reports (O_NOFOLLOW below keeps it safe from a race) */
        struct stat st;
        if (fstatat(cur >= 0 ? cur : dirfd, c, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
            S_ISLNK(st.st_mode)) {
            if (cur >= 0)
                close(cur);
            return -EXDEV;
        }
        int fd =
            last ? openat(cur >= 0 ? cur : dirfd, c, flags | O_NOFOLLOW, 0666)
                 : openat(cur >= 0 ? cur : dirfd, c, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        int e = errno;
        if (cur >= 0)
            close(cur);
        if (fd < 0)
            return e == ELOOP ? -EXDEV : -e;
        cur = fd;
    }
    return cur >= 0 ? cur : -EINVAL;
}

int vh_openat2(int dirfd, const char *rel, uint64_t flags, uint64_t mode, uint64_t resolve)
{
    struct open_how how = {.flags = flags, .mode = mode, .resolve = resolve};
    for (int tries = 0;; tries++) {
        long fd = syscall(SYS_openat2, dirfd, rel, &how, sizeof how);
        if (fd >= 0)
            return (int)fd;
        if (errno != EAGAIN || tries == 64)
            return -errno;
    }
}

/* Opens rel beneath dirfd with no symlink and no ".." on the way; -EXDEV when it would leave. */
static int openat_beneath(int dirfd, const char *rel, int flags)
{
    if (!*rel || rel[0] == '/')
        return -EXDEV;
    if (have_openat2) {
        int fd = vh_openat2(dirfd, rel, (uint64_t)flags, (flags & O_CREAT) ? 0666 : 0,
                            RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
        if (fd >= 0)
            return fd;
        /* EPERM: O_NOATIME on another's file (the caller retries without it), or a seccomp
           filter refusing openat2 (some sandboxes): then walk instead */
        if (fd == -EPERM && (flags & O_NOATIME))
            return -EPERM;
        if (fd != -ENOSYS && fd != -EPERM)
            return fd == -ELOOP ? -EXDEV : fd;
        have_openat2 = false;
    }
    return openat_walk(dirfd, rel, flags);
}

int vh_file_open_beneath(vh_file *f, int dirfd, const char *rel, const char *path, bool writable,
                         GError **err)
{
    memset(f, 0, sizeof *f);
    f->fd = -1;
    int oflags = open_flags(writable ? O_RDWR : O_RDONLY, writable);
    int fd = openat_beneath(dirfd, rel, O_PATH | O_CLOEXEC);
    struct stat st;
    bool known = false; /* fd is reopen_regular's, st its fstat */
    if (fd >= 0) {
        int pfd = fd;
        fd = reopen_regular(pfd, oflags, &st);
        close(pfd);
        known = fd >= 0;
        if (fd == -ENOENT) /* no /proc: open by name (O_NONBLOCK, checked below) */
            fd = openat_beneath(dirfd, rel, oflags);
        if (fd == -EPERM && (oflags & O_NOATIME))
            fd = openat_beneath(dirfd, rel, oflags & ~O_NOATIME);
    }
    if (fd == -EXDEV)
        return vh_fail(err, EXDEV, "%s: not opened: the path leaves the store or passes a symlink",
                       path);
    if (fd == -EINVAL)
        return vh_fail(err, EINVAL, "%s: not a regular file", path);
    if (fd < 0)
        return vh_fail(err, -fd, "%s: cannot open: %s", path, g_strerror(-fd));
    return adopt_fd(f, fd, path, writable, known ? &st : NULL, err);
}

int vh_file_trusted(const struct stat *st, const char *name, const char *what, GError **err)
{
    if ((st->st_uid == geteuid() || st->st_uid == 0) && !(st->st_mode & (S_IWGRP | S_IWOTH)))
        return 0;
    return vh_fail(err, EPERM,
                   "%s: owned by user %u, mode %04o: refusing to read it as a %s (only files of "
                   "this user or root that others may not write are read)",
                   name, (unsigned)st->st_uid, (unsigned)(st->st_mode & 07777), what);
}

void vh_file_close(vh_file *f)
{
    if (!f)
        return;
    if (f->fd >= 0)
        close(f->fd);
    f->fd = -1;
    g_clear_pointer(&f->path, g_free);
    g_clear_pointer(&f->patch, vh_patch_unref);
}

ssize_t vh_read_full(int fd, void *buf, size_t len, int64_t off)
{
    uint8_t *p = buf;
    size_t done = 0;
    while (done < len) {
        ssize_t n = off < 0 ? read(fd, p + done, len - done)
                            : pread(fd, p + done, len - done, (off_t)(off + (int64_t)done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            break;
        done += (size_t)n;
    }
    return (ssize_t)done;
}

int vh_file_read(vh_file *f, void *buf, size_t len, uint64_t off, const char *what, GError **err)
{
    if (!vh_range_ok(off, len, f->size))
        return vh_fail(err, EIO,
                       "%s: %s at offset %" G_GUINT64_FORMAT
                       " (%zu bytes) lies past the end of the file (%" G_GUINT64_FORMAT " bytes)",
                       f->path, what, off, len, f->size);
    ssize_t n = f->patch ? vh_patch_read(f->patch, f->fd, buf, len, off)
                         : vh_read_full(f->fd, buf, len, (int64_t)off);
    if (n < 0)
        return vh_fail(err, (int)-n, "%s: reading %s at offset %" G_GUINT64_FORMAT ": %s", f->path,
                       what, off, g_strerror((int)-n));
    if ((size_t)n < len)
        return vh_fail(err, EIO, "%s: %s at offset %" G_GUINT64_FORMAT ": unexpected end of file",
                       f->path, what, off + (uint64_t)n);
    return 0;
}

void vh_file_prefetch(vh_file *f, uint64_t off, uint64_t len)
{
    if (f->fd < 0 || off >= f->size || len == 0)
        return;
    len = MIN(len, f->size - off);
    (void)posix_fadvise(f->fd, (off_t)off, (off_t)len, POSIX_FADV_WILLNEED);
}

int vh_write_full(int fd, const void *buf, size_t len, int64_t off, size_t *done)
{
    const uint8_t *p = buf;
    size_t d = 0;
    int r = 0;
    while (d < len) {
        ssize_t n = off < 0 ? write(fd, p + d, len - d)
                            : pwrite(fd, p + d, len - d, (off_t)(off + (int64_t)d));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            r = n < 0 ? -errno : -EIO;
            break;
        }
        d += (size_t)n;
    }
    if (done)
        *done = d;
    return r;
}

static int write_all(vh_file *f, const uint8_t *p, size_t len, uint64_t off, const char *what,
                     GError **err)
{
    size_t done = 0;
    int r = vh_write_full(f->fd, p, len, (int64_t)off, &done);
    if (done > 0 && off + done > f->size)
        f->size = off + done;
    if (r < 0)
        return vh_fail(err, -r, "%s: writing %s at offset %" G_GUINT64_FORMAT ": %s", f->path, what,
                       off + done, g_strerror(-r));
    return 0;
}

int vh_file_write(vh_file *f, const void *buf, size_t len, uint64_t off, const char *what,
                  GError **err)
{
    if (!f->writable)
        return vh_fail(err, EROFS, "%s: writing %s: opened read-only", f->path, what);
    if (f->patch) { /* into the overlay: the file is never written */
        int r = vh_patch_write(f->patch, buf, len, off, err);
        if (r < 0) {
            vh_fail_prefix(err, "%s: writing %s", f->path, what);
            return r;
        }
        f->size = vh_patch_size(f->patch);
        return 0;
    }
    if (f->hook) {
        int r = f->hook(f->hook_ctx, f, off, len, buf, err);
        if (r < 0)
            return r;
    }
    if (fault_blocks_op()) {
        if (fault.kind == VH_FAULT_TEAR && fault.ops == fault.nth && fault.tear_bytes > 0)
            write_all(f, buf, MIN(len, fault.tear_bytes), off, what, NULL);
        return vh_fail(err, fault.error,
                       "%s: writing %s at offset %" G_GUINT64_FORMAT ": %s (injected fault)",
                       f->path, what, off, g_strerror(fault.error));
    }
    return write_all(f, buf, len, off, what, err);
}

int vh_file_flush(vh_file *f, GError **err)
{
    if (!f->writable || f->patch)
        return 0;
    if (fault_blocks_op())
        return vh_fail(err, fault.error, "%s: flush: %s (injected fault)", f->path,
                       g_strerror(fault.error));
    if (durable && fdatasync(f->fd) < 0)
        return vh_fail(err, errno, "%s: flush: %s", f->path, g_strerror(errno));
    return 0;
}

int vh_file_truncate(vh_file *f, uint64_t size, GError **err)
{
    if (!f->writable)
        return vh_fail(err, EROFS, "%s: resizing: opened read-only", f->path);
    if (f->patch) {
        vh_patch_truncate(f->patch, size);
        f->size = size;
        return 0;
    }
    if (f->hook) {
        int r = f->hook(f->hook_ctx, f, size, 0, NULL, err);
        if (r < 0)
            return r;
    }
    if (fault_blocks_op())
        return vh_fail(err, fault.error, "%s: resizing to %" G_GUINT64_FORMAT ": injected fault",
                       f->path, size);
    if (ftruncate(f->fd, (off_t)size) < 0)
        return vh_fail(err, errno, "%s: resizing to %" G_GUINT64_FORMAT ": %s", f->path, size,
                       g_strerror(errno));
    f->size = size;
    return 0;
}
