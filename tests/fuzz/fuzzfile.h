/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * fuzzfile.h - what the disk fuzz targets share: a fuzz input turned into a disk file in memory
 * (a memfd, handed to the engine as an open vh_file), and checksum fix-ups that let mutations
 * get past the CRCs to the checks behind them.
 *
 * A VHDX is at least a few MiB (header section, log, metadata, BAT at 1 MiB boundaries) and
 * mostly zeros, so an input is not the file itself but a sparse description of it:
 *
 *   u32le file size | u8 flags | chunks: u32le offset, u16le length, bytes[length] ...
 *
 * The file is file size bytes of zeros (at most FZ_FILE_MAX) with every chunk written at its
 * offset; a chunk reaching past the size grows the file, one past FZ_FILE_MAX is dropped; the
 * last chunk may be cut short by the end of the input. scripts/fuzz writes seeds in this form
 * from real images (their non-zero sectors).
 */
#ifndef VH_FUZZFILE_H
#define VH_FUZZFILE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "disk.h"
#include "util.h"

#define FZ_FILE_MAX (64 * VH_MIB)
#define FZ_HEAD 5

/* flags */
#define FZ_WRITE 0x01u   /* open for writing (VHDX: the log is replayed into the file) */
#define FZ_FIX_CRC 0x02u /* recompute the VHDX checksums before the engine sees the file */
#define FZ_PROBE 0x04u   /* open with VH_OPEN_PROBE */

/* The open flags an input asks for. */
static inline vh_open_flags fz_open_flags(uint8_t flags)
{
    return ((flags & FZ_WRITE) ? VH_OPEN_WRITE : 0) | ((flags & FZ_PROBE) ? VH_OPEN_PROBE : 0);
}

/* Fills f with a new in-memory file built from the input; false if the input is too short. */
static inline bool fz_file(const uint8_t *data, size_t size, const char *name, vh_file *f,
                           uint8_t *flags)
{
    if (size < FZ_HEAD)
        return false;
    uint64_t fsize = MIN(vh_le32(data), FZ_FILE_MAX);
    *flags = data[4];
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0)
        return false;
    for (size_t p = FZ_HEAD; p + 6 <= size;) {
        uint64_t off = vh_le32(data + p);
        size_t len = MIN(vh_le16(data + p + 4), size - p - 6);
        p += 6;
        if (off + len <= FZ_FILE_MAX && pwrite(fd, data + p, len, (off_t)off) == (ssize_t)len)
            fsize = MAX(fsize, off + len);
        p += len;
    }
    if (ftruncate(fd, (off_t)fsize) < 0) {
        close(fd);
        return false;
    }
    memset(f, 0, sizeof *f);
    f->fd = fd;
    f->path = g_strdup(name);
    f->writable = (*flags & FZ_WRITE) != 0;
    f->size = fsize;
    return true;
}

/* CRC-32C of len bytes at fd offset off with the 4-byte field at `field` taken as zero. */
static inline void fz_fix_crc(int fd, uint64_t off, size_t len, size_t field)
{
    g_autofree uint8_t *buf = g_malloc(len);
    if (pread(fd, buf, len, (off_t)off) != (ssize_t)len)
        return;
    memset(buf + field, 0, 4);
    vh_put_le32(buf + field, vh_crc32c(buf, len));
    if (pwrite(fd, buf + field, 4, (off_t)(off + field)) != 4)
        return;
}

/*
 * Recomputes the checksum of every log entry ("loge" at a 4 KiB slot whose length fits) in the
 * log region log[0, len), whose entries may wrap around its end.
 */
static inline void fz_fix_log_crcs(uint8_t *log, uint32_t len)
{
    for (uint32_t off = 0; len % 4096 == 0 && off < len; off += 4096) {
        uint8_t *h = log + off;
        uint32_t elen = vh_le32(h + 8);
        if (memcmp(h, "loge", 4) != 0 || elen < 4096 || elen % 4096 || elen > len)
            continue;
        uint32_t crc = 0;
        static const uint8_t zero[4];
        for (uint32_t i = 0; i < elen / 4096; i++) {
            const uint8_t *s = log + (off + (uint64_t)i * 4096) % len;
            if (i == 0) {
                crc = vh_crc32c_update(crc, s, 4);
                crc = vh_crc32c_update(crc, zero, 4);
                crc = vh_crc32c_update(crc, s + 8, 4096 - 8);
            } else {
                crc = vh_crc32c_update(crc, s, 4096);
            }
        }
        vh_put_le32(h + 4, crc);
    }
}

static inline void fz_info_sink(void *ctx, const char *key, const char *value)
{
    *(size_t *)ctx += strlen(key) + strlen(value);
}

static inline void fz_fail(const char *what, uint64_t voff, uint64_t a, uint64_t b)
{
    fprintf(stderr,
            "fuzz oracle: %s at virtual offset %" G_GUINT64_FORMAT " (%" G_GUINT64_FORMAT
            ", %" G_GUINT64_FORMAT ")\n",
            what, voff, a, b);
    abort();
}

/*
 * What is done with a disk that opened: its info fields; its first runs, each one's first bytes
 * read; the last sector; and, when opened for writing, a write at the start and the end, a
 * flush and a new parent link. A run must be non-empty and no longer than asked for (the
 * oracles here); everything else may fail, but not crash, leak or hang.
 */
static inline void fz_exercise(vh_disk *d, uint8_t flags)
{
    size_t chars = 0;
    d->ops->info(d, fz_info_sink, &chars);
    if (flags & FZ_PROBE)
        return;
    static uint8_t buf[8192];
    uint64_t voff = 0;
    for (int i = 0; i < 64 && voff < d->virtual_size; i++) {
        vh_run run;
        vh_disk *owner;
        uint64_t max = d->virtual_size - voff;
        if (vh_disk_map_chain(d, voff, max, &run, &owner, NULL) < 0)
            break;
        if (run.length == 0 || run.length > max)
            fz_fail("run length out of range", voff, run.length, max);
        vh_disk_read(d, buf, voff, (size_t)MIN(run.length, sizeof buf), NULL);
        voff += run.length;
    }
    uint32_t ss = d->logical_sector_size;
    if (ss == 0 || ss > sizeof buf || d->virtual_size < ss)
        return;
    uint64_t last = d->virtual_size / ss * ss - ss;
    vh_disk_read(d, buf, last, ss, NULL);
    if (!(flags & FZ_WRITE))
        return;
    memset(buf, 0xA5, ss);
    vh_disk_write(d, buf, 0, ss, NULL);
    vh_disk_write(d, buf, last, ss, NULL);
    vh_disk_flush(d, NULL);
    if (d->type == VH_TYPE_DIFFERENCING) {
        vh_link_update u = {
            .parent_mtime = 1,
            .relative = ".\\parent.vhdx",
            .absolute = "D:\\VMs\\parent.vhdx",
            .volume = "\\\\?\\Volume{01234567-89ab-cdef-0123-456789abcdef}\\VMs\\parent.vhdx",
            .file_name = "parent.vhdx"};
        memset(u.parent_id.b, 0x42, sizeof u.parent_id.b); /* fixed: runs must repeat */
        d->ops->set_parent_link(d, &u, NULL);
    }
}

#endif
