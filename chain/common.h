/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * common.h - what every module of the chain engine shares: the error domain, explicit
 * little/big-endian loads and stores, and small helpers.
 *
 * Contract: functions of the engine return 0 (or a count) on success and a negative errno on
 * failure; when they fail they also set a GError (domain VH_ERROR, code = positive errno) whose
 * message names the file, the structure and the offset. Nothing here aborts on bad input.
 */
#ifndef VH_COMMON_H
#define VH_COMMON_H

#include <errno.h>
#include <glib.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>

#define VH_ERROR (vh_error_quark())
GQuark vh_error_quark(void);

/* Sets *err (if err is not NULL and not yet set) and returns -errnum. */
int vh_fail(GError **err, int errnum, const char *fmt, ...) G_GNUC_PRINTF(3, 4);

/* Prefixes an existing error's message ("context: old message"); returns -code. */
int vh_fail_prefix(GError **err, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

/* The errno carried by an error (EIO when it is not of our domain). */
int vh_error_errno(const GError *err);

/* Explicit-endian loads/stores from byte buffers (never cast a buffer to a struct). */
static inline uint16_t vh_le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}
static inline uint32_t vh_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t vh_le64(const uint8_t *p)
{
    return (uint64_t)vh_le32(p) | ((uint64_t)vh_le32(p + 4) << 32);
}
static inline uint16_t vh_be16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}
static inline uint32_t vh_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}
static inline uint64_t vh_be64(const uint8_t *p)
{
    return ((uint64_t)vh_be32(p) << 32) | (uint64_t)vh_be32(p + 4);
}
static inline void vh_put_le16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline void vh_put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline void vh_put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline void vh_put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static inline void vh_put_be32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (24 - 8 * i));
}
static inline void vh_put_be64(uint8_t *p, uint64_t v)
{
    vh_put_be32(p, (uint32_t)(v >> 32));
    vh_put_be32(p + 4, (uint32_t)v);
}

/* Overflow-safe range check: does [off, off+len) lie inside [0, limit)? */
static inline bool vh_range_ok(uint64_t off, uint64_t len, uint64_t limit)
{
    return off <= limit && len <= limit - off;
}

static inline bool vh_is_pow2(uint64_t v)
{
    return v != 0 && (v & (v - 1)) == 0;
}

static inline uint64_t vh_round_up(uint64_t v, uint64_t align)
{
    return (v + align - 1) / align * align;
}

#define VH_KIB (UINT64_C(1024))
#define VH_MIB (UINT64_C(1024) * 1024)
#define VH_GIB (UINT64_C(1024) * 1024 * 1024)
#define VH_TIB (UINT64_C(1024) * 1024 * 1024 * 1024)

/* A file's modification time in nanoseconds: how the index and the caches compare files. */
static inline int64_t vh_mtime_ns(const struct stat *st)
{
    return (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

/* The longest chain followed unless told otherwise, in disks (check, repair, the mount). */
#define VH_DEFAULT_MAXDEPTH 256

/* Store-relative paths ("dir/sub/name", "/" separators): the folder part ("" at the top; a new
 * string) and the last component (inside `rel`). */
char *vh_relpath_dir(const char *rel);
const char *vh_relpath_base(const char *rel);

/* A close-on-scope-exit file descriptor (glib 2.74 has no g_autofd). */
void vh_close_fdp(int *fdp);
#define vh_autofd __attribute__((cleanup(vh_close_fdp)))

#endif
