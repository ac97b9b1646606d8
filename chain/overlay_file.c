// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * overlay_file.c - patch sets as files in an overlay folder (overlay_file.h). The layout, all
 * integers little-endian (doc/design.md "The patch file"):
 *
 *   0   8  magic "VHPATCH\n"        8  4  version (1)          12  4  fixed part's size (128)
 *   16  8  the file's size          24 8  inode                32  8  base size
 *   40  8  mtime (ns)               48 8  visible (base bytes below it show through)
 *   56  8  patched size             64 8  repair time (unix s) 72 32  SHA-256 (base bytes)
 *   104 4  range count              108 4 path length          112 4  note length
 *   116 12 zero
 *   128    path, note, then count x {offset u64, length u64}, then the ranges' bytes in order,
 *          then CRC-32C (u32) of every byte before it.
 */
#include "overlay_file.h"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include "io.h"
#include "util.h"
#include "winpath.h"

#define FIXED 128u
#define OFF_FILE_SIZE 16
#define OFF_INO 24
#define OFF_BASE 32
#define OFF_MTIME 40
#define OFF_VISIBLE 48
#define OFF_SIZE 56
#define OFF_TIME 64
#define OFF_HASH 72
#define OFF_COUNT 104
#define OFF_PATH_LEN 108
#define OFF_NOTE_LEN 112
/* The patched size may pass the base's by at most what a patch set can hold. */
#define MAX_GROWTH ((uint64_t)VH_PATCH_MAX_BYTES)

void vh_patch_origin_clear(vh_patch_origin *o)
{
    g_clear_pointer(&o->rel, g_free);
    g_clear_pointer(&o->note, g_free);
}

int vh_patch_base_hash(const vh_patch *p, int fd, uint8_t out[32], GError **err)
{
    g_autoptr(GChecksum) sum = g_checksum_new(G_CHECKSUM_SHA256);
    g_autofree uint8_t *buf = NULL;
    size_t cap = 0;
    uint64_t visible = vh_patch_visible(p);
    for (guint i = 0; i < vh_patch_count(p); i++) {
        uint64_t off;
        size_t len;
        const uint8_t *data;
        vh_patch_range(p, i, &off, &len, &data);
        if (off >= visible)
            break; /* ranges are in offset order */
        size_t n = (size_t)MIN((uint64_t)len, visible - off);
        if (n > cap) {
            buf = g_realloc(buf, n);
            cap = n;
        }
        ssize_t got = vh_read_full(fd, buf, n, (int64_t)off);
        if (got < 0)
            return vh_fail(err, (int)-got,
                           "reading the base bytes at offset %" G_GUINT64_FORMAT ": %s", off,
                           g_strerror((int)-got));
        if ((size_t)got < n)
            return vh_fail(err, ESTALE,
                           "the file ends before offset %" G_GUINT64_FORMAT ": it was truncated",
                           off + n);
        g_checksum_update(sum, buf, n);
    }
    gsize dlen = 32;
    g_checksum_get_digest(sum, out, &dlen);
    return 0;
}

int vh_patch_origin_of(vh_patch_origin *o, const vh_patch *p, int fd, const char *rel,
                       const char *note, int64_t time, GError **err)
{
    memset(o, 0, sizeof *o);
    struct stat st;
    if (fstat(fd, &st) < 0)
        return vh_fail(err, errno, "%s: %s", rel, g_strerror(errno));
    o->ino = (uint64_t)st.st_ino;
    o->mtime_ns = vh_mtime_ns(&st);
    o->time = time;
    int r = vh_patch_base_hash(p, fd, o->hash, err);
    if (r < 0)
        return vh_fail_prefix(err, "%s", rel);
    o->rel = g_strdup(rel);
    o->note = g_strdup(note ? note : "");
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* The bytes */

bool vh_patch_file_rel_ok(const char *rel)
{
    size_t n = strlen(rel);
    if (n == 0 || n >= VH_PATCH_FILE_MAX_PATH || !vh_path_below("", rel))
        return false;
    g_auto(GStrv) parts = g_strsplit(rel, "/", -1);
    for (char **c = parts; *c; c++)
        if (!**c || strcmp(*c, ".") == 0 || strcmp(*c, "..") == 0)
            return false;
    return true;
}

char *vh_patch_file_name(const char *rel)
{
    g_autofree char *hex = g_compute_checksum_for_string(G_CHECKSUM_SHA256, rel, -1);
    hex[32] = '\0';
    return g_strconcat(hex, VH_PATCH_FILE_SUFFIX, NULL);
}

uint8_t *vh_patch_file_encode(const vh_patch *p, const vh_patch_origin *o, size_t *len,
                              GError **err)
{
    size_t plen = strlen(o->rel), nlen = strlen(o->note ? o->note : "");
    guint count = vh_patch_count(p);
    if (count > VH_PATCH_FILE_MAX_RANGES || plen >= VH_PATCH_FILE_MAX_PATH ||
        nlen >= VH_PATCH_FILE_MAX_NOTE) {
        vh_fail(err, E2BIG,
                "%s: %u ranges, a path of %zu bytes, a note of %zu bytes: more than "
                "a patch file holds",
                o->rel, count, plen, nlen);
        return NULL;
    }
    size_t total = FIXED + plen + nlen + 16 * (size_t)count + (size_t)vh_patch_bytes(p) + 4;
    uint8_t *b = g_malloc0(total);
    memcpy(b, VH_PATCH_FILE_MAGIC, 8);
    vh_put_le32(b + 8, VH_PATCH_FILE_VERSION);
    vh_put_le32(b + 12, FIXED);
    vh_put_le64(b + OFF_FILE_SIZE, total);
    vh_put_le64(b + OFF_INO, o->ino);
    vh_put_le64(b + OFF_BASE, vh_patch_base_size(p));
    vh_put_le64(b + OFF_MTIME, (uint64_t)o->mtime_ns);
    vh_put_le64(b + OFF_VISIBLE, vh_patch_visible(p));
    vh_put_le64(b + OFF_SIZE, vh_patch_size(p));
    vh_put_le64(b + OFF_TIME, (uint64_t)o->time);
    memcpy(b + OFF_HASH, o->hash, 32);
    vh_put_le32(b + OFF_COUNT, count);
    vh_put_le32(b + OFF_PATH_LEN, (uint32_t)plen);
    vh_put_le32(b + OFF_NOTE_LEN, (uint32_t)nlen);
    size_t at = FIXED;
    memcpy(b + at, o->rel, plen);
    at += plen;
    memcpy(b + at, o->note ? o->note : "", nlen);
    at += nlen;
    size_t data_at = at + 16 * (size_t)count;
    for (guint i = 0; i < count; i++) {
        uint64_t off;
        size_t rlen;
        const uint8_t *data;
        vh_patch_range(p, i, &off, &rlen, &data);
        vh_put_le64(b + at, off);
        vh_put_le64(b + at + 8, rlen);
        at += 16;
        memcpy(b + data_at, data, rlen);
        data_at += rlen;
    }
    vh_put_le32(b + data_at, vh_crc32c(b, data_at));
    *len = total;
    return b;
}

static vh_patch *bad(GError **err, const char *name, uint64_t off, const char *what)
{
    vh_fail(err, EINVAL, "%s: not a valid patch file: %s (offset %" G_GUINT64_FORMAT ")", name,
            what, off);
    return NULL;
}

/* A string field: no NUL inside, valid UTF-8. */
static char *field_string(const uint8_t *b, size_t len)
{
    if (memchr(b, 0, len) || !g_utf8_validate((const char *)b, (gssize)len, NULL))
        return NULL;
    return g_strndup((const char *)b, len);
}

/* The range table at b (count entries, the bytes following it up to end): in order, disjoint,
 * inside the patched size, their bytes adding up to exactly what follows. */
static vh_patch *decode_ranges(const uint8_t *buf, size_t table, size_t end, guint count,
                               uint64_t base, uint64_t visible, uint64_t size, const char *name,
                               GError **err)
{
    uint64_t sum = 0, prev_end = 0;
    for (guint i = 0; i < count; i++) {
        size_t at = table + 16 * (size_t)i;
        uint64_t off = vh_le64(buf + at), len = vh_le64(buf + at + 8);
        if (len == 0 || len > VH_PATCH_MAX_BYTES || !vh_range_ok(off, len, size))
            return bad(err, name, at, "a range lies outside the patched file or is empty");
        if (i > 0 && off < prev_end)
            return bad(err, name, at, "the ranges overlap or are out of order");
        prev_end = off + len;
        sum += len;
        if (sum > VH_PATCH_MAX_BYTES)
            return bad(err, name, at, "the ranges hold more than a patch set may");
    }
    size_t data = table + 16 * (size_t)count;
    if (sum != end - data)
        return bad(err, name, data, "the ranges' bytes do not fill the file");
    g_autoptr(vh_patch) p = vh_patch_new(base);
    vh_patch_truncate(p, visible);
    for (guint i = 0; i < count; i++) {
        size_t at = table + 16 * (size_t)i;
        uint64_t off = vh_le64(buf + at), len = vh_le64(buf + at + 8);
        if (vh_patch_write(p, buf + data, (size_t)len, off, err) < 0)
            return NULL;
        data += (size_t)len;
    }
    vh_patch_truncate(p, size);
    return g_steal_pointer(&p);
}

vh_patch *vh_patch_file_decode(const uint8_t *buf, size_t len, const char *name, vh_patch_origin *o,
                               GError **err)
{
    memset(o, 0, sizeof *o);
    if (len < FIXED + 4 || len > VH_PATCH_FILE_MAX_SIZE)
        return bad(err, name, 0, "its size is out of bounds");
    if (memcmp(buf, VH_PATCH_FILE_MAGIC, 8) != 0)
        return bad(err, name, 0, "no patch file magic");
    if (vh_le32(buf + 8) != VH_PATCH_FILE_VERSION)
        return bad(err, name, 8, "unknown version");
    if (vh_le32(buf + 12) != FIXED)
        return bad(err, name, 12, "unknown header size");
    if (vh_le64(buf + OFF_FILE_SIZE) != len)
        return bad(err, name, OFF_FILE_SIZE, "the recorded size is not the file's (truncated?)");
    if (vh_le32(buf + len - 4) != vh_crc32c(buf, len - 4))
        return bad(err, name, len - 4, "checksum mismatch");
    for (size_t i = 116; i < FIXED; i++)
        if (buf[i])
            return bad(err, name, i, "reserved bytes are not zero");
    uint64_t base = vh_le64(buf + OFF_BASE), visible = vh_le64(buf + OFF_VISIBLE);
    uint64_t size = vh_le64(buf + OFF_SIZE);
    if (base > (uint64_t)INT64_MAX - MAX_GROWTH || visible > base || visible > size ||
        size > base + MAX_GROWTH)
        return bad(err, name, OFF_BASE, "the sizes are inconsistent");
    uint32_t count = vh_le32(buf + OFF_COUNT), plen = vh_le32(buf + OFF_PATH_LEN);
    uint32_t nlen = vh_le32(buf + OFF_NOTE_LEN);
    if (count > VH_PATCH_FILE_MAX_RANGES)
        return bad(err, name, OFF_COUNT, "too many ranges");
    if (plen == 0 || plen >= VH_PATCH_FILE_MAX_PATH || nlen >= VH_PATCH_FILE_MAX_NOTE)
        return bad(err, name, OFF_PATH_LEN, "a string length is out of bounds");
    size_t end = len - 4, table = FIXED + (size_t)plen + nlen;
    if (table > end || 16 * (size_t)count > end - table)
        return bad(err, name, OFF_COUNT, "the counts pass the end of the file");
    g_autofree char *rel = field_string(buf + FIXED, plen);
    if (!rel || !vh_patch_file_rel_ok(rel))
        return bad(err, name, FIXED, "the path is not a relative path inside the store");
    g_autofree char *note = field_string(buf + FIXED + plen, nlen);
    if (!note)
        return bad(err, name, FIXED + plen, "the note is not text");
    vh_patch *p = decode_ranges(buf, table, end, count, base, visible, size, name, err);
    if (!p)
        return NULL;
    o->rel = g_steal_pointer(&rel);
    o->note = g_steal_pointer(&note);
    o->ino = vh_le64(buf + OFF_INO);
    o->mtime_ns = (int64_t)vh_le64(buf + OFF_MTIME);
    o->time = (int64_t)vh_le64(buf + OFF_TIME);
    memcpy(o->hash, buf + OFF_HASH, 32);
    return p;
}

/* ---------------------------------------------------------------------------------------- */
/* The folder */

int vh_patch_file_save(int dirfd, const vh_patch *p, const vh_patch_origin *o, GError **err)
{
    size_t len = 0;
    g_autofree uint8_t *b = vh_patch_file_encode(p, o, &len, err);
    if (!b)
        return -vh_error_errno(*err);
    g_autofree char *name = vh_patch_file_name(o->rel);
    g_autofree char *tmp = g_strdup_printf(".%s.%08x.tmp", name, g_random_int());
    int fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return vh_fail(err, errno, "overlay folder: %s: %s", tmp, g_strerror(errno));
    int r = vh_write_full(fd, b, len, 0, NULL);
    if (r == 0 && fsync(fd) < 0)
        r = -errno;
    close(fd);
    if (r == 0 && renameat(dirfd, tmp, dirfd, name) < 0)
        r = -errno;
    if (r < 0) {
        unlinkat(dirfd, tmp, 0);
        return vh_fail(err, -r, "overlay folder: writing %s (for %s): %s", name, o->rel,
                       g_strerror(-r));
    }
    if (fsync(dirfd) < 0)
        return vh_fail(err, errno, "overlay folder: fsync: %s", g_strerror(errno));
    return 0;
}

int vh_patch_file_remove(int dirfd, const char *rel, GError **err)
{
    g_autofree char *name = vh_patch_file_name(rel);
    if (unlinkat(dirfd, name, 0) < 0 && errno != ENOENT)
        return vh_fail(err, errno, "overlay folder: removing %s (for %s): %s", name, rel,
                       g_strerror(errno));
    if (fsync(dirfd) < 0)
        return vh_fail(err, errno, "overlay folder: fsync: %s", g_strerror(errno));
    return 0;
}

vh_patch *vh_patch_file_load(int dirfd, const char *name, vh_patch_origin *o, GError **err)
{
    memset(o, 0, sizeof *o);
    vh_file f;
    if (vh_file_open_beneath(&f, dirfd, name, name, false, err) < 0)
        return NULL;
    struct stat st;
    if (fstat(f.fd, &st) < 0) {
        int e = errno;
        vh_file_close(&f);
        vh_fail(err, e, "%s: %s", name, g_strerror(e));
        return NULL;
    }
    /* Only a file that we (or root) wrote and no one else may change: its checks cannot stop a
     * forger (a patch hashing no base byte, or one appended past the end, presents any disk). */
    if (vh_file_trusted(&st, name, "patch file", err) < 0) {
        vh_file_close(&f);
        return NULL;
    }
    if (f.size > VH_PATCH_FILE_MAX_SIZE) {
        vh_file_close(&f);
        return bad(err, name, 0, "larger than a patch file may be");
    }
    g_autofree uint8_t *buf = g_malloc(MAX(f.size, 1));
    ssize_t n = vh_read_full(f.fd, buf, (size_t)f.size, 0);
    vh_file_close(&f);
    if (n < 0) {
        vh_fail(err, (int)-n, "%s: %s", name, g_strerror((int)-n));
        return NULL;
    }
    return vh_patch_file_decode(buf, (size_t)n, name, o, err);
}

int vh_patch_file_check(int store_fd, const char *store_root, const vh_patch *p,
                        const vh_patch_origin *o, struct stat *st, GError **err)
{
    g_autofree char *abs = g_build_filename(store_root, o->rel, NULL);
    vh_file f;
    if (vh_file_open_beneath(&f, store_fd, o->rel, abs, false, err) < 0)
        return -vh_error_errno(*err);
    int r = 0;
    if (fstat(f.fd, st) < 0)
        r = vh_fail(err, errno, "%s: %s", abs, g_strerror(errno));
    else if ((uint64_t)st->st_ino != o->ino)
        r = vh_fail(err, ESTALE,
                    "%s: another file now (inode %ju, the patch's %" G_GUINT64_FORMAT ")", abs,
                    (uintmax_t)st->st_ino, o->ino);
    else if ((uint64_t)st->st_size != vh_patch_base_size(p))
        r = vh_fail(err, ESTALE,
                    "%s: its size changed (%jd bytes, the patch's %" G_GUINT64_FORMAT ")", abs,
                    (intmax_t)st->st_size, vh_patch_base_size(p));
    else if (vh_mtime_ns(st) != o->mtime_ns)
        r = vh_fail(err, ESTALE, "%s: its modification time changed", abs);
    uint8_t hash[32];
    if (r == 0 && vh_patch_base_hash(p, f.fd, hash, err) < 0)
        r = -vh_error_errno(*err);
    else if (r == 0 && memcmp(hash, o->hash, 32) != 0)
        r = vh_fail(err, ESTALE, "%s: the bytes under its patches changed", abs);
    vh_file_close(&f);
    return r;
}
