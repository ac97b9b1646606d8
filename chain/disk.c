// SPDX-License-Identifier: GPL-2.0-or-later
/* disk.c - the format-neutral disk handle (see disk.h). */
#include "disk.h"

#include <fcntl.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>

#include "inuse.h"
#include "vhd.h"
#include "vhdx.h"

const char *vh_format_name(vh_format f)
{
    switch (f) {
    case VH_FORMAT_VHD:
        return "vhd";
    case VH_FORMAT_VHDX:
        return "vhdx";
    default:
        return "none";
    }
}

const char *vh_type_name(vh_type t)
{
    switch (t) {
    case VH_TYPE_FIXED:
        return "fixed";
    case VH_TYPE_DYNAMIC:
        return "dynamic";
    case VH_TYPE_DIFFERENCING:
        return "differencing";
    }
    return "unknown";
}

const char *vh_locator_kind_name(vh_locator_kind k)
{
    static const char *const names[VH_LOC_COUNT_] = {
        [VH_LOC_RELATIVE_PATH] = "relative_path",
        [VH_LOC_VOLUME_PATH] = "volume_path",
        [VH_LOC_ABSOLUTE_WIN32_PATH] = "absolute_win32_path",
        [VH_LOC_W2RU] = "W2ru",
        [VH_LOC_W2KU] = "W2ku",
        [VH_LOC_PARENT_NAME] = "parent_unicode_name",
        [VH_LOC_WI2R] = "Wi2r",
        [VH_LOC_WI2K] = "Wi2k",
        [VH_LOC_MACX] = "MacX",
    };
    return (unsigned)k < VH_LOC_COUNT_ ? names[k] : "unknown";
}

vh_locator *vh_locator_new(vh_locator_kind kind, const char *path, int slot, uint64_t off,
                           uint32_t space)
{
    vh_locator *l = g_new0(vh_locator, 1);
    l->kind = kind;
    l->path = g_strdup(path ? path : "");
    l->slot = slot;
    l->data_offset = off;
    l->data_space = space;
    return l;
}

void vh_locator_free(vh_locator *l)
{
    if (!l)
        return;
    g_free(l->path);
    g_free(l);
}

vh_format vh_sniff_file(vh_file *f)
{
    if (f->size < VH_SNIFF_MIN_SIZE)
        return VH_FORMAT_NONE;
    if (vh_vhdx_sniff(f))
        return VH_FORMAT_VHDX;
    if (vh_vhd_sniff(f))
        return VH_FORMAT_VHD;
    return VH_FORMAT_NONE;
}

vh_format vh_sniff_path(const char *path)
{
    vh_file f;
    if (vh_file_open(&f, path, false, NULL) < 0)
        return VH_FORMAT_NONE;
    vh_format fmt = vh_sniff_file(&f);
    vh_file_close(&f);
    return fmt;
}

/* Opens f as the format sniffed; takes ownership of f. */
static int open_as(vh_file *f, vh_format fmt, vh_open_flags flags, vh_disk **out, GError **err)
{
    *out = NULL;
    switch (fmt) {
    case VH_FORMAT_VHDX:
        return vh_vhdx_open(f, flags, out, err);
    case VH_FORMAT_VHD:
        return vh_vhd_open(f, flags, out, err);
    default: {
        int r = vh_fail(
            err, EINVAL,
            "%s: not a VHD or VHDX file (no \"conectix\" footer, no \"vhdxfile\" identifier)",
            f->path);
        vh_file_close(f);
        return r;
    }
    }
}

int vh_disk_open_file(vh_file *f, vh_open_flags flags, vh_disk **out, GError **err)
{
    return open_as(f, vh_sniff_file(f), flags, out, err);
}

int vh_disk_open(const char *path, vh_open_flags flags, vh_disk **out, GError **err)
{
    *out = NULL;
    vh_file f;
    int r = vh_file_open(&f, path, (flags & VH_OPEN_WRITE) != 0, err);
    if (r < 0)
        return r;
    return vh_disk_open_file(&f, flags, out, err);
}

#define SETTLE_WAIT_MS 2000

/* Takes a shared OFD lock on the data range of fd (a repair's, inuse.h), waiting at most
 * SETTLE_WAIT_MS for a repair that holds it. */
static bool lock_shared_bounded(int fd)
{
    return vh_lock_data(fd, F_RDLCK, SETTLE_WAIT_MS) == 0;
}

int vh_disk_open_settled(vh_file *f, vh_open_flags flags, vh_disk **out, GError **err)
{
    return vh_disk_open_settled_as(f, vh_sniff_file(f), flags, out, err);
}

int vh_disk_open_settled_as(vh_file *f, vh_format fmt, vh_open_flags flags, vh_disk **out,
                            GError **err)
{
    *out = NULL;
    if ((flags & VH_OPEN_WRITE) || f->patch) /* an overlay is settled: it is ours */
        return open_as(f, fmt, flags, out, err);
    /* a second descriptor of the same open file (never the path again: it may name another
     * file by now), since the failed open closes the first; a dup, not a reopen through
     * /proc/self/fd: the same inode either way, and every probe of a scan pays for it */
    vh_file again = {.fd = fcntl(f->fd, F_DUPFD_CLOEXEC, 0), .path = g_strdup(f->path)};
    g_autoptr(GError) first = NULL;
    int r = open_as(f, fmt, flags, out, &first);
    struct stat st;
    if (r == 0 || r == -ENOMEM || again.fd < 0 || fstat(again.fd, &st) < 0 ||
        !S_ISREG(st.st_mode) || !lock_shared_bounded(again.fd)) {
        vh_file_close(&again);
        if (first)
            g_propagate_error(err, g_steal_pointer(&first));
        return r;
    }
    again.size = fstat(again.fd, &st) == 0 ? (uint64_t)st.st_size : 0; /* as the writer left it */
    r = vh_disk_open_file(&again, flags, out, err);
    if (r == 0)
        vh_lock_data((*out)->file.fd, F_UNLCK, 0);
    return r;
}

int vh_disk_open_settled_path(const char *path, vh_open_flags flags, vh_disk **out, GError **err)
{
    *out = NULL;
    vh_file f;
    int r = vh_file_open(&f, path, (flags & VH_OPEN_WRITE) != 0, err);
    if (r < 0)
        return r;
    return vh_disk_open_settled(&f, flags, out, err);
}

void vh_disk_close(vh_disk *d)
{
    while (d) {
        vh_disk *parent = d->parent;
        if (d->ops && d->ops->close)
            d->ops->close(d);
        if (d->link.locators)
            g_ptr_array_unref(d->link.locators);
        if (d->warnings)
            g_ptr_array_unref(d->warnings);
        vh_file_close(&d->file);
        g_free(d);
        d = parent;
    }
}

void vh_disk_set_parent(vh_disk *child, vh_disk *parent)
{
    if (child->parent)
        vh_disk_close(child->parent);
    child->parent = parent;
}

void vh_disk_warn(vh_disk *d, const char *fmt, ...)
{
    if (!d->warnings)
        d->warnings = g_ptr_array_new_with_free_func(g_free);
    va_list ap;
    va_start(ap, fmt);
    g_ptr_array_add(d->warnings, g_strdup_vprintf(fmt, ap));
    va_end(ap);
}

void vh_info_printf(vh_info_fn fn, void *ctx, const char *key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *v = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    fn(ctx, key, v);
}

int vh_virtual_range_check(const char *path, uint64_t voff, size_t len, uint64_t size, GError **err)
{
    if (!vh_range_ok(voff, len, size))
        return vh_fail(err, EINVAL,
                       "%s: virtual range %" G_GUINT64_FORMAT
                       "+%zu lies past the virtual size %" G_GUINT64_FORMAT,
                       path, voff, len, size);
    return 0;
}

static int check_range(vh_disk *d, uint64_t voff, size_t len, GError **err)
{
    return vh_virtual_range_check(d->file.path, voff, len, d->virtual_size, err);
}

static int read_from_parent(vh_disk *d, uint8_t *buf, uint64_t voff, size_t len, GError **err)
{
    vh_disk *p = d->parent;
    if (!p || voff >= p->virtual_size) {
        memset(buf, 0, len);
        return 0;
    }
    size_t in_parent = (size_t)MIN((uint64_t)len, p->virtual_size - voff);
    memset(buf + in_parent, 0, len - in_parent);
    return vh_disk_read(p, buf, voff, in_parent, err);
}

int vh_disk_read(vh_disk *d, void *buf, uint64_t voff, size_t len, GError **err)
{
    int r = check_range(d, voff, len, err);
    uint8_t *p = buf;
    while (r == 0 && len > 0) {
        vh_run run;
        r = d->ops->map(d, voff, len, &run, err);
        if (r < 0)
            break;
        size_t n = (size_t)MIN((uint64_t)len, run.length);
        if (n == 0)
            return vh_fail(err, EIO, "%s: empty run at virtual offset %" G_GUINT64_FORMAT,
                           d->file.path, voff);
        if (run.kind == VH_RUN_DATA)
            r = d->ops->read_data(d, p, n, run.file_offset, err);
        else if (run.kind == VH_RUN_PARENT)
            r = read_from_parent(d, p, voff, n, err);
        else
            memset(p, 0, n);
        p += n;
        voff += n;
        len -= n;
    }
    return r < 0 ? r : 0;
}

int vh_disk_map_chain(vh_disk *d, uint64_t voff, uint64_t max_len, vh_run *run, vh_disk **owner,
                      GError **err)
{
    for (;;) {
        int r = d->ops->map(d, voff, max_len, run, err);
        if (r < 0)
            return r;
        if (run->length > max_len)
            run->length = max_len;
        if (run->kind != VH_RUN_PARENT) {
            *owner = d;
            return 0;
        }
        if (!d->parent || voff >= d->parent->virtual_size) {
            run->kind = VH_RUN_ZERO;
            *owner = d;
            return 0;
        }
        max_len = MIN(run->length, d->parent->virtual_size - voff);
        d = d->parent;
    }
}

void vh_disk_prefetch_chain(vh_disk *d, uint64_t voff, uint64_t len)
{
    /* Not the base: it holds most of the data, read as one stream by the kernel's readahead,
     * which a hint inside its window would break (its pages come in without the marker that
     * starts the next window). */
    for (; d && d->parent && voff < d->virtual_size; d = d->parent) {
        uint64_t n = MIN(len, d->virtual_size - voff);
        if (n == 0 || (d->ops->prefetch && d->ops->prefetch(d, voff, n)))
            return;
    }
}

/* Writes a partial logical sector: the sector's current content through the chain, merged. */
static int write_partial_sector(vh_disk *d, const uint8_t *src, uint64_t voff, size_t len,
                                GError **err)
{
    uint32_t ss = d->logical_sector_size;
    uint64_t start = voff / ss * ss;
    g_autofree uint8_t *sector = g_malloc(ss);
    int r = vh_disk_read(d, sector, start, ss, err);
    if (r < 0)
        return r;
    memcpy(sector + (voff - start), src, len);
    return d->ops->write_sectors(d, sector, start, ss, err);
}

int vh_disk_write(vh_disk *d, const void *buf, uint64_t voff, size_t len, GError **err)
{
    if (!d->writable)
        return vh_fail(err, EROFS, "%s: opened read-only", d->file.path);
    int r = check_range(d, voff, len, err);
    if (r < 0)
        return r;
    const uint8_t *p = buf;
    uint32_t ss = d->logical_sector_size;
    if (len > 0 && voff % ss != 0) {
        size_t n = (size_t)MIN((uint64_t)len, ss - voff % ss);
        if ((r = write_partial_sector(d, p, voff, n, err)) < 0)
            return r;
        p += n;
        voff += n;
        len -= n;
    }
    size_t whole = len / ss * ss;
    if (whole > 0) {
        if ((r = d->ops->write_sectors(d, p, voff, whole, err)) < 0)
            return r;
        p += whole;
        voff += whole;
        len -= whole;
    }
    if (len > 0)
        r = write_partial_sector(d, p, voff, len, err);
    return r;
}

int vh_disk_flush(vh_disk *d, GError **err)
{
    if (!d->writable)
        return 0;
    return d->ops->flush(d, err);
}

int vh_disk_create(const char *path, const vh_create_opts *opts, GError **err)
{
    vh_format fmt = opts->format;
    if (opts->type == VH_TYPE_DIFFERENCING) {
        if (!opts->parent)
            return vh_fail(err, EINVAL, "%s: a differencing disk needs a parent", path);
        fmt = opts->parent->format;
    }
    switch (fmt) {
    case VH_FORMAT_VHD:
        return vh_vhd_create(path, opts, err);
    case VH_FORMAT_VHDX:
        return vh_vhdx_create(path, opts, err);
    default:
        return vh_fail(err, EINVAL, "%s: unknown format", path);
    }
}
