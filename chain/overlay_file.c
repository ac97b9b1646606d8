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

#include <dirent.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/sysmacros.h>
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

/* Moves tmp to name in the folder; with noreplace, only where name does not exist (-EEXIST). */
static int publish(int dirfd, const char *tmp, const char *name, bool noreplace)
{
    if (!noreplace)
        return renameat(dirfd, tmp, dirfd, name) < 0 ? -errno : 0;
    if (renameat2(dirfd, tmp, dirfd, name, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS)
        return -errno;
    /* a file system without RENAME_NOREPLACE (some network ones): link refuses an existing name */
    if (linkat(dirfd, tmp, dirfd, name, 0) == 0) {
        unlinkat(dirfd, tmp, 0);
        return 0;
    }
    if (errno != EPERM && errno != EOPNOTSUPP)
        return -errno;
    /* nor hard links (FAT, some SMB servers): look, then rename (only a narrower race) */
    struct stat st;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0)
        return -EEXIST;
    return renameat(dirfd, tmp, dirfd, name) < 0 ? -errno : 0;
}

/*
 * Writes len bytes as the file `name` of the folder open as dirfd, atomically: a temporary
 * ".NAME.RANDOM.tmp" created O_EXCL|O_NOFOLLOW with mode 0600 (this user's, no one else may read
 * or change it), fsync, rename to NAME, fsync of the folder. With noreplace, -EEXIST when NAME
 * exists (nothing changed). `what` says whose file it is in messages.
 */
static int save_file(int dirfd, const char *name, const uint8_t *b, size_t len, bool noreplace,
                     const char *what, GError **err)
{
    g_autofree char *tmp = g_strdup_printf(".%s.%08x.tmp", name, g_random_int());
    int fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return vh_fail(err, errno, "overlay folder: %s: %s", tmp, g_strerror(errno));
    int r = vh_write_full(fd, b, len, 0, NULL);
    if (r == 0 && fsync(fd) < 0)
        r = -errno;
    close(fd);
    if (r == 0)
        r = publish(dirfd, tmp, name, noreplace);
    if (r < 0) {
        unlinkat(dirfd, tmp, 0);
        return vh_fail(err, -r, "overlay folder: writing %s (for %s): %s", name, what,
                       g_strerror(-r));
    }
    if (fsync(dirfd) < 0)
        return vh_fail(err, errno, "overlay folder: fsync: %s", g_strerror(errno));
    return 0;
}

int vh_patch_file_save(int dirfd, const vh_patch *p, const vh_patch_origin *o, GError **err)
{
    size_t len = 0;
    g_autofree uint8_t *b = vh_patch_file_encode(p, o, &len, err);
    if (!b)
        return -vh_error_errno(*err);
    g_autofree char *name = vh_patch_file_name(o->rel);
    return save_file(dirfd, name, b, len, false, o->rel, err);
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

/*
 * The bytes of the file `name` in the folder open as dirfd (`path` in messages), as untrusted
 * input: opened beneath the folder passing no symlink, a regular file, owned by this user or
 * root and writable by no one else (its checks cannot stop a forger: a patch hashing no base
 * byte, or one appended past the end, presents any disk; a marker names any store), at most max
 * bytes. NULL with *err (ENOENT when there is no such file).
 */
static uint8_t *read_trusted(int dirfd, const char *name, const char *path, const char *what,
                             uint64_t max, size_t *len, GError **err)
{
    vh_file f;
    if (vh_file_open_beneath(&f, dirfd, name, path, false, err) < 0)
        return NULL;
    struct stat st;
    int e = 0;
    if (fstat(f.fd, &st) < 0)
        e = vh_fail(err, errno, "%s: %s", path, g_strerror(errno));
    else if (vh_file_trusted(&st, path, what, err) < 0)
        e = -EPERM;
    else if (f.size > max)
        e = vh_fail(err, EFBIG,
                    "%s: %" G_GUINT64_FORMAT " bytes, more than the %" G_GUINT64_FORMAT
                    " such a file may have",
                    path, f.size, max);
    if (e < 0) {
        vh_file_close(&f);
        return NULL;
    }
    g_autofree uint8_t *buf = g_malloc(MAX(f.size, 1));
    ssize_t n = vh_read_full(f.fd, buf, (size_t)f.size, 0);
    vh_file_close(&f);
    if (n < 0) {
        vh_fail(err, (int)-n, "%s: %s", path, g_strerror((int)-n));
        return NULL;
    }
    *len = (size_t)n;
    return g_steal_pointer(&buf);
}

vh_patch *vh_patch_file_load(int dirfd, const char *name, vh_patch_origin *o, GError **err)
{
    memset(o, 0, sizeof *o);
    size_t len = 0;
    g_autofree uint8_t *buf =
        read_trusted(dirfd, name, name, "patch file", VH_PATCH_FILE_MAX_SIZE, &len, err);
    if (!buf)
        return NULL;
    return vh_patch_file_decode(buf, len, name, o, err);
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

/* ---------------------------------------------------------------------------------------- */
/* The marker: which store the folder belongs to */

void vh_overlay_marker_clear(vh_overlay_marker *m)
{
    g_clear_pointer(&m->store, g_free);
}

/* Bytes the marker writes as \xHH: the ones that would end or blur a line, and the escape. */
static bool escaped(uint8_t c)
{
    return c < 0x20 || c == 0x7f || c == '\\';
}

/* path with escaped bytes as \xHH: the form the marker and messages show. */
static char *escape_path(const char *path)
{
    GString *s = g_string_new(NULL);
    for (const uint8_t *c = (const uint8_t *)path; *c; c++)
        if (escaped(*c))
            g_string_append_printf(s, "\\x%02x", *c);
        else
            g_string_append_c(s, (char)*c);
    return g_string_free(s, FALSE);
}

char *vh_overlay_marker_encode(const vh_overlay_marker *m, size_t *len, GError **err)
{
    size_t n = m->store ? strlen(m->store) : 0;
    if (n == 0 || n >= VH_PATCH_FILE_MAX_PATH || m->store[0] != '/') {
        vh_fail(err, EINVAL,
                "overlay folder marker: the store '%s' is not an absolute path "
                "shorter than %u bytes",
                m->store ? m->store : "", VH_PATCH_FILE_MAX_PATH);
        return NULL;
    }
    g_autofree char *path = escape_path(m->store);
    char *text = g_strdup_printf(VH_OVERLAY_MARKER_MAGIC
                                 "store %s\ndevice %u:%u\ninode %" G_GUINT64_FORMAT "\n",
                                 path, major((dev_t)m->dev), minor((dev_t)m->dev), m->ino);
    *len = strlen(text);
    return text;
}

/* A number as the encoder writes it: decimal digits, no sign, no leading zero, at most max. */
static bool parse_number(const char *s, size_t n, uint64_t max, uint64_t *out)
{
    if (n == 0 || n > 20 || (n > 1 && s[0] == '0'))
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!g_ascii_isdigit(s[i]) || v > (max - (uint64_t)(s[i] - '0')) / 10)
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return true;
}

static int xdigit(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* The path of a "store" line (n bytes at s), unescaped; NULL when it is not as the encoder
 * writes it (a raw byte it escapes, an escape of a byte it does not, NUL, not absolute). */
static char *parse_path(const char *s, size_t n)
{
    g_autoptr(GString) out = g_string_new(NULL);
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)s[i];
        if (c == '\\') {
            if (i + 3 >= n || s[i + 1] != 'x' || xdigit(s[i + 2]) < 0 || xdigit(s[i + 3]) < 0)
                return NULL;
            c = (uint8_t)(xdigit(s[i + 2]) * 16 + xdigit(s[i + 3]));
            if (c == 0 || !escaped(c))
                return NULL;
            i += 3;
        } else if (escaped(c)) {
            return NULL;
        }
        g_string_append_c(out, (char)c);
    }
    if (out->len == 0 || out->len >= VH_PATCH_FILE_MAX_PATH || out->str[0] != '/')
        return NULL;
    return g_string_free(g_steal_pointer(&out), FALSE);
}

/* The value of a marker line "KEY VALUE" (n bytes at line) and its length; NULL for another key. */
static const char *line_value(const char *line, size_t n, const char *key, size_t *vlen)
{
    size_t k = strlen(key);
    if (n <= k + 1 || memcmp(line, key, k) != 0 || line[k] != ' ')
        return NULL;
    *vlen = n - k - 1;
    return line + k + 1;
}

static int bad_marker(GError **err, const char *name, int line, const char *what)
{
    return vh_fail(err, EINVAL, "%s: not an overlay folder marker: %s (line %d)", name, what, line);
}

int vh_overlay_marker_decode(const uint8_t *buf, size_t len, const char *name, vh_overlay_marker *m,
                             GError **err)
{
    memset(m, 0, sizeof *m);
    size_t magic = strlen(VH_OVERLAY_MARKER_MAGIC);
    if (len > VH_OVERLAY_MARKER_MAX_SIZE)
        return bad_marker(err, name, 1, "too large");
    if (len < magic || memcmp(buf, VH_OVERLAY_MARKER_MAGIC, magic) != 0)
        return bad_marker(err, name, 1, "no \"vhdheal overlay folder 1\" line");
    if (memchr(buf, 0, len))
        return bad_marker(err, name, 1, "a NUL byte (not text)");
    if (buf[len - 1] != '\n')
        return bad_marker(err, name, 1, "its last line does not end (truncated?)");
    /* the three lines after the magic, each ended by \n, and nothing after them */
    const char *line[3];
    size_t n[3];
    const char *at = (const char *)buf + magic, *end = (const char *)buf + len;
    for (int k = 0; k < 3; k++) {
        const char *nl = at < end ? memchr(at, '\n', (size_t)(end - at)) : NULL;
        if (!nl)
            return bad_marker(err, name, k + 2, "a line is missing");
        line[k] = at;
        n[k] = (size_t)(nl - at);
        at = nl + 1;
    }
    if (at != end)
        return bad_marker(err, name, 5, "more lines than a marker has");
    size_t vlen;
    const char *v = line_value(line[0], n[0], "store", &vlen);
    g_autofree char *store = v ? parse_path(v, vlen) : NULL;
    if (!store)
        return bad_marker(err, name, 2,
                          "not \"store\" and an absolute path as written by vhdhealfs");
    v = line_value(line[1], n[1], "device", &vlen);
    const char *colon = v ? memchr(v, ':', vlen) : NULL;
    uint64_t maj, min;
    if (!colon || !parse_number(v, (size_t)(colon - v), UINT32_MAX, &maj) ||
        !parse_number(colon + 1, vlen - (size_t)(colon - v) - 1, UINT32_MAX, &min))
        return bad_marker(err, name, 3, "not \"device MAJOR:MINOR\"");
    uint64_t ino;
    v = line_value(line[2], n[2], "inode", &vlen);
    if (!v || !parse_number(v, vlen, UINT64_MAX, &ino))
        return bad_marker(err, name, 4, "not \"inode NUMBER\"");
    m->store = g_steal_pointer(&store);
    m->dev = (uint64_t)makedev((unsigned)maj, (unsigned)min);
    m->ino = ino;
    return 0;
}

static void note(vh_overlay_log_fn log, void *ctx, const char *fmt, ...) G_GNUC_PRINTF(3, 4);
static void note(vh_overlay_log_fn log, void *ctx, const char *fmt, ...)
{
    if (!log)
        return;
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *line = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    log(ctx, line);
}

/* DIR's marker into *m: 1, or 0 when there is none, or -errno with *err (untrusted). */
static int marker_read(int dirfd, const char *dir, vh_overlay_marker *m, GError **err)
{
    g_autofree char *path = g_build_filename(dir, VH_OVERLAY_MARKER, NULL);
    g_autoptr(GError) e = NULL;
    size_t len = 0;
    g_autofree uint8_t *buf = read_trusted(dirfd, VH_OVERLAY_MARKER, path, "folder marker",
                                           VH_OVERLAY_MARKER_MAX_SIZE, &len, &e);
    int r;
    if (buf) {
        r = vh_overlay_marker_decode(buf, len, path, m, &e);
    } else {
        struct stat st; /* none, unless a name is there that does not open (a dangling symlink) */
        if (vh_error_errno(e) == ENOENT &&
            fstatat(dirfd, VH_OVERLAY_MARKER, &st, AT_SYMLINK_NOFOLLOW) < 0 && errno == ENOENT)
            return 0;
        r = -vh_error_errno(e);
    }
    if (r < 0)
        return vh_fail(err, -r,
                       "overlay folder %s: %s: which store the folder belongs to is unknown "
                       "(remove %s if the folder is this store's)",
                       dir, e->message, path);
    return 1;
}

/* Is the marker m (read from DIR) the store's? 1, or -EXDEV naming both. */
static int marker_verdict(const vh_overlay_marker *m, const char *dir, const char *store_root,
                          const struct stat *st, vh_overlay_log_fn log, void *ctx, GError **err)
{
    g_autofree char *mine = escape_path(store_root), *theirs = escape_path(m->store);
    if (strcmp(m->store, store_root) == 0) {
        if (m->ino != (uint64_t)st->st_ino)
            note(log, ctx,
                 "overlay folder %s: the store %s is another folder now (inode %ju, marked with "
                 "inode %" G_GUINT64_FORMAT ": replaced or restored): each repair kept there is "
                 "checked against its disk",
                 dir, mine, (uintmax_t)st->st_ino, m->ino);
        return 1;
    }
    bool same = m->dev == (uint64_t)st->st_dev && m->ino == (uint64_t)st->st_ino;
    return vh_fail(err, EXDEV,
                   "overlay folder %s belongs to the store %s (its marker %s says so), not to %s: "
                   "give each store its own overlay folder (nothing in %s was changed)%s%s%s",
                   dir, theirs, VH_OVERLAY_MARKER, mine, dir,
                   same ? "; it is the same folder (same device and inode) under another path: "
                          "if the store was moved, remove "
                        : "",
                   same ? dir : "",
                   same ? "/" VH_OVERLAY_MARKER " to let the folder follow it" : "");
}

/* Does the valid patch file `name` of the folder fit a disk of the store (store_fd)? Invalid
 * files count as none (*valid stays). */
static bool patch_fits(int dirfd, int store_fd, const char *store_root, const char *name,
                       int *valid)
{
    vh_patch_origin o;
    g_autoptr(GError) e = NULL;
    g_autoptr(vh_patch) p = vh_patch_file_load(dirfd, name, &o, &e);
    if (!p)
        return false;
    g_autofree char *want = vh_patch_file_name(o.rel);
    bool fits = false;
    if (strcmp(want, name) == 0) {
        struct stat st;
        (*valid)++;
        fits = vh_patch_file_check(store_fd, store_root, p, &o, &st, &e) == 0;
    }
    vh_patch_origin_clear(&o);
    return fits;
}

/*
 * A folder without a marker that holds repairs was made by an earlier version, which wrote no
 * marker: it is the store's when one of its valid patch files fits a disk of the store (or it has
 * none). Else it may be another store's, whose repairs the mount would remove as disks gone or
 * changed: -EXDEV.
 */
static int unmarked_fits(int dirfd, const char *dir, const char *store_root, GError **err)
{
    vh_autofd int store_fd = open(store_root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (store_fd < 0)
        return vh_fail(err, errno, "%s: %s", store_root, g_strerror(errno));
    int dfd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!d) {
        int e = errno;
        if (dfd >= 0)
            close(dfd);
        return vh_fail(err, e, "overlay folder %s: %s", dir, g_strerror(e));
    }
    int valid = 0;
    bool fits = false;
    struct dirent *de;
    while (!fits && (de = readdir(d)))
        if (de->d_name[0] != '.' && g_str_has_suffix(de->d_name, VH_PATCH_FILE_SUFFIX))
            fits = patch_fits(dirfd, store_fd, store_root, de->d_name, &valid);
    closedir(d);
    if (fits || valid == 0)
        return 0;
    g_autofree char *mine = escape_path(store_root);
    return vh_fail(err, EXDEV,
                   "overlay folder %s has no marker (%s) and none of the %d repair%s kept there "
                   "fits a disk of the store %s: it may be another store's folder, made by an "
                   "earlier version; give each store its own overlay folder, or remove the "
                   "folder's files if they are stale (nothing in %s was changed)",
                   dir, VH_OVERLAY_MARKER, valid, valid == 1 ? "" : "s", mine, dir);
}

int vh_overlay_dir_claim(int dirfd, const char *dir, const char *store_root, bool write,
                         vh_overlay_log_fn log, void *ctx, GError **err)
{
    struct stat st;
    if (stat(store_root, &st) < 0)
        return vh_fail(err, errno, "%s: %s", store_root, g_strerror(errno));
    for (int attempt = 0;; attempt++) {
        vh_overlay_marker m = {0};
        int r = marker_read(dirfd, dir, &m, err);
        if (r > 0) {
            r = marker_verdict(&m, dir, store_root, &st, log, ctx, err);
            vh_overlay_marker_clear(&m);
            return r;
        }
        if (r < 0 || !write)
            return r;
        if (attempt == 0 && (r = unmarked_fits(dirfd, dir, store_root, err)) < 0)
            return r;
        m = (vh_overlay_marker){(char *)store_root, (uint64_t)st.st_dev, (uint64_t)st.st_ino};
        size_t len = 0;
        g_autoptr(GError) e = NULL;
        g_autofree char *text = vh_overlay_marker_encode(&m, &len, &e);
        r = text ? save_file(dirfd, VH_OVERLAY_MARKER, (const uint8_t *)text, len, true,
                             "the marker", &e)
                 : -vh_error_errno(e);
        g_autofree char *mine = escape_path(store_root);
        if (r == 0) {
            note(log, ctx, "overlay folder %s: marked as the store %s's (%s)", dir, mine,
                 VH_OVERLAY_MARKER);
            return 1;
        }
        /* another process marked it meanwhile: its marker decides (read again) */
        if (r != -EEXIST || attempt >= 2) {
            note(log, ctx,
                 "overlay folder %s: cannot mark it as the store %s's: %s: nothing is written "
                 "into it (new repairs are kept in memory only)",
                 dir, mine, e->message);
            return 0;
        }
    }
}
