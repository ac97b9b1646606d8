// SPDX-License-Identifier: GPL-2.0-or-later
/* convert.c - Convert-VHD (see convert.h). */
#include "convert.h"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#define CHUNK (4 * VH_MIB)     /* read at most this much at once */
#define GRANULE (4 * VH_KIB)   /* the zero test: an all-zero granule is not written */
#define MAP_STEP (64 * VH_MIB) /* map at most this much at once (progress, cancel) */

bool vh_convert_format_from_name(const char *dst, vh_format *format, bool *raw)
{
    const char *dot = strrchr(dst, '.');
    const char *slash = strrchr(dst, '/');
    if (!dot || (slash && dot < slash))
        return false;
    *raw = false;
    if (g_ascii_strcasecmp(dot, ".vhd") == 0)
        *format = VH_FORMAT_VHD;
    else if (g_ascii_strcasecmp(dot, ".vhdx") == 0)
        *format = VH_FORMAT_VHDX;
    else if (g_ascii_strcasecmp(dot, ".raw") == 0 || g_ascii_strcasecmp(dot, ".img") == 0) {
        *format = VH_FORMAT_NONE;
        *raw = true;
    } else
        return false;
    return true;
}

/* Where the content goes: a disk opened for writing, or a raw file. */
typedef struct out {
    vh_disk *disk;
    int fd;
    const char *path; /* the temporary name, for messages */
    bool created;     /* the temporary file is ours: removed on failure */
} out;

static int out_write(out *o, const uint8_t *buf, uint64_t voff, size_t len, GError **err)
{
    if (o->disk)
        return vh_disk_write(o->disk, buf, voff, len, err);
    while (len > 0) {
        ssize_t n = pwrite(o->fd, buf, len, (off_t)voff);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return vh_fail(err, n < 0 ? errno : EIO, "%s: writing at %" G_GUINT64_FORMAT ": %s",
                           o->path, voff, g_strerror(n < 0 ? errno : EIO));
        buf += n;
        voff += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

static bool all_zero(const uint8_t *p, size_t n)
{
    return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

/* Writes the parts of buf (virtual offset voff) that are not all zeros, granule by granule. */
static int write_nonzero(out *o, const uint8_t *buf, uint64_t voff, size_t len, GError **err)
{
    size_t pos = 0, start = 0;
    bool in_span = false;
    while (pos < len) {
        size_t g = (size_t)MIN((uint64_t)(len - pos), GRANULE - (voff + pos) % GRANULE);
        bool zero = all_zero(buf + pos, g);
        if (!zero && !in_span) {
            start = pos;
            in_span = true;
        } else if (zero && in_span) {
            int r = out_write(o, buf + start, voff + start, pos - start, err);
            if (r < 0)
                return r;
            in_span = false;
        }
        pos += g;
    }
    return in_span ? out_write(o, buf + start, voff + start, len - start, err) : 0;
}

/*
 * The length of the stored (DATA) data at voff through the chain, at most max: 0 when voff
 * reads as zeros without being stored (*skip then says for how long).
 */
static int stored_run(vh_disk *src, uint64_t voff, uint64_t max, uint64_t *data, uint64_t *skip,
                      GError **err)
{
    *data = *skip = 0;
    while (*data < max) {
        vh_run run;
        vh_disk *owner;
        int r = vh_disk_map_chain(src, voff + *data, max - *data, &run, &owner, err);
        if (r < 0)
            return r;
        if (run.length == 0)
            return vh_fail(err, EIO, "%s: empty run at virtual offset %" G_GUINT64_FORMAT,
                           src->file.path, voff + *data);
        if (run.kind != VH_RUN_DATA) {
            if (*data == 0)
                *skip = MIN(run.length, max);
            return 0;
        }
        *data += MIN(run.length, max - *data);
    }
    return 0;
}

/*
 * Asks the kernel to start reading what [voff, voff + len) stores (POSIX_FADV_WILLNEED) while
 * the chunk before it is read and written: a cold convert then keeps the disk busy as
 * qemu-img's parallel requests do. A hint only: a failure is no error.
 */
static void prefetch(vh_disk *src, uint64_t voff, uint64_t len)
{
    for (uint64_t end = MIN(voff + len, src->virtual_size); voff < end;) {
        vh_run run;
        vh_disk *owner = NULL;
        if (vh_disk_map_chain(src, voff, end - voff, &run, &owner, NULL) < 0 || run.length == 0)
            return;
        if (run.kind == VH_RUN_DATA && owner)
            posix_fadvise(owner->file.fd, (off_t)run.file_offset, (off_t)run.length,
                          POSIX_FADV_WILLNEED);
        voff += run.length;
    }
}

static int copy_content(vh_disk *src, out *o, const vh_convert_opts *opts, GError **err)
{
    g_autofree uint8_t *buf = g_malloc(CHUNK);
    uint64_t size = src->virtual_size, off = 0;
    while (off < size) {
        if (opts->cancel && *opts->cancel)
            return vh_fail(err, EINTR, "%s: interrupted", o->path);
        uint64_t data, skip;
        int r = stored_run(src, off, MIN(size - off, (uint64_t)CHUNK), &data, &skip, err);
        if (r < 0)
            return r;
        if (data > 0) {
            prefetch(src, off + data, CHUNK);
            if ((r = vh_disk_read(src, buf, off, (size_t)data, err)) < 0 ||
                (r = write_nonzero(o, buf, off, (size_t)data, err)) < 0)
                return r;
            off += data;
        } else {
            off += MIN(skip, (uint64_t)MAP_STEP);
        }
        if (opts->progress)
            opts->progress(opts->progress_ctx, off, size);
    }
    return 0;
}

static int create_out(vh_disk *src, const char *tmp, const vh_convert_opts *opts, out *o,
                      GError **err)
{
    if (opts->format == VH_FORMAT_NONE) {
        o->fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (o->fd < 0)
            return vh_fail(err, errno, "%s: %s", tmp, g_strerror(errno));
        o->created = true;
        if (ftruncate(o->fd, (off_t)src->virtual_size) < 0)
            return vh_fail(err, errno, "%s: setting the size: %s", tmp, g_strerror(errno));
        return 0;
    }
    vh_create_opts c = {
        .format = opts->format,
        .type = opts->type,
        .size = src->virtual_size,
        .block_size = opts->block_size,
    };
    if (opts->format == VH_FORMAT_VHDX) {
        c.logical_sector_size = src->logical_sector_size;
        c.physical_sector_size = src->physical_sector_size;
    }
    int r = vh_disk_create(tmp, &c, err);
    if (r < 0)
        return r;
    o->created = true;
    return vh_disk_open(tmp, VH_OPEN_WRITE, &o->disk, err);
}

static int finish_out(out *o, GError **err)
{
    if (o->disk)
        return vh_disk_flush(o->disk, err);
    if (fsync(o->fd) < 0)
        return vh_fail(err, errno, "%s: flushing: %s", o->path, g_strerror(errno));
    return 0;
}

/* Renames tmp to dst unless dst exists (EEXIST), then flushes the folder. */
static int publish(const char *tmp, const char *dst, GError **err)
{
    int r = renameat2(AT_FDCWD, tmp, AT_FDCWD, dst, RENAME_NOREPLACE);
    if (r < 0 && (errno == EINVAL || errno == ENOSYS)) {
        /* a file system without RENAME_NOREPLACE: link() refuses an existing name too */
        r = link(tmp, dst);
        if (r == 0)
            unlink(tmp);
    }
    if (r < 0)
        return vh_fail(err, errno, "%s: %s", dst, g_strerror(errno));
    g_autofree char *dir = g_path_get_dirname(dst);
    vh_autofd int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) < 0)
        return vh_fail(err, errno, "%s: flushing the folder: %s", dir, g_strerror(errno));
    return 0;
}

int vh_convert(vh_disk *src, const char *dst, const vh_convert_opts *opts, GError **err)
{
    struct stat st;
    if (lstat(dst, &st) == 0)
        return vh_fail(err, EEXIST, "%s: exists already (convert never overwrites)", dst);
    if (opts->format == VH_FORMAT_NONE && opts->type == VH_TYPE_FIXED)
        return vh_fail(err, EINVAL, "%s: a raw image has no type (fixed or dynamic)", dst);
    g_autofree char *tmp = g_strdup_printf("%s.partial-%08x", dst, g_random_int());
    out o = {.fd = -1, .path = tmp};
    int r = create_out(src, tmp, opts, &o, err);
    if (r == 0)
        r = copy_content(src, &o, opts, err);
    if (r == 0)
        r = finish_out(&o, err);
    g_clear_pointer(&o.disk, vh_disk_close);
    if (o.fd >= 0)
        close(o.fd);
    if (r == 0)
        r = publish(tmp, dst, err);
    if (r < 0 && o.created)
        unlink(tmp);
    return r;
}
