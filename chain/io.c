// SPDX-License-Identifier: GPL-2.0-or-later
/* io.c - full reads and writes with file/structure/offset errors, the fault injector, and the
 * durability switch for synthetic data (io.h). */
#include "io.h"

#include <fcntl.h>
#include <sys/stat.h>
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

static int open_checked(vh_file *f, const char *path, int flags, bool writable, GError **err)
{
    memset(f, 0, sizeof *f);
    f->fd = -1;
    /* Reading a disk's structures is not an access by a user: keep its atime (the mount
       probes files after every write-close, and a scan probes every file). O_NOATIME needs
       the file's owner or CAP_FOWNER; without them, open as usual. */
    int fd = open(path, flags | O_CLOEXEC | (writable ? 0 : O_NOATIME), 0666);
    if (fd < 0 && errno == EPERM && !writable)
        fd = open(path, flags | O_CLOEXEC, 0666);
    if (fd < 0)
        return vh_fail(err, errno, "%s: cannot open: %s", path, g_strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        int e = S_ISREG(st.st_mode) ? errno : EINVAL;
        close(fd);
        return vh_fail(err, e, "%s: not a regular file", path);
    }
    f->fd = fd;
    f->path = g_strdup(path);
    f->writable = writable;
    f->size = (uint64_t)st.st_size;
    return 0;
}

int vh_file_open(vh_file *f, const char *path, bool writable, GError **err)
{
    return open_checked(f, path, writable ? O_RDWR : O_RDONLY, writable, err);
}

int vh_file_create(vh_file *f, const char *path, GError **err)
{
    return open_checked(f, path, O_RDWR | O_CREAT | O_EXCL, true, err);
}

void vh_file_close(vh_file *f)
{
    if (!f)
        return;
    if (f->fd >= 0)
        close(f->fd);
    f->fd = -1;
    g_clear_pointer(&f->path, g_free);
}

int vh_file_read(vh_file *f, void *buf, size_t len, uint64_t off, const char *what, GError **err)
{
    if (!vh_range_ok(off, len, f->size))
        return vh_fail(err, EIO,
                       "%s: %s at offset %" G_GUINT64_FORMAT
                       " (%zu bytes) lies past the end of the file (%" G_GUINT64_FORMAT " bytes)",
                       f->path, what, off, len, f->size);
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = pread(f->fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return vh_fail(err, errno, "%s: reading %s at offset %" G_GUINT64_FORMAT ": %s",
                           f->path, what, off, g_strerror(errno));
        if (n == 0)
            return vh_fail(err, EIO,
                           "%s: %s at offset %" G_GUINT64_FORMAT ": unexpected end of file",
                           f->path, what, off);
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

static int write_all(vh_file *f, const uint8_t *p, size_t len, uint64_t off, const char *what,
                     GError **err)
{
    while (len > 0) {
        ssize_t n = pwrite(f->fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return vh_fail(err, n < 0 ? errno : EIO,
                           "%s: writing %s at offset %" G_GUINT64_FORMAT ": %s", f->path, what, off,
                           g_strerror(n < 0 ? errno : EIO));
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
        if (off > f->size)
            f->size = off;
    }
    return 0;
}

int vh_file_write(vh_file *f, const void *buf, size_t len, uint64_t off, const char *what,
                  GError **err)
{
    if (!f->writable)
        return vh_fail(err, EROFS, "%s: writing %s: opened read-only", f->path, what);
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
    if (!f->writable)
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
