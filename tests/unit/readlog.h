/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * readlog.h - records the file reads the engine makes, for tests that bound what an open reads
 * (a probe of a store of 100 000 disks must read only a few sectors of each).
 *
 * The test is linked with -Wl,--wrap=pread64 (tests/unit/meson.build), so every read of the
 * engine (chain/io.c: vh_file_read) goes through __wrap_pread64 below. Between readlog_start()
 * and readlog_stop() each call is logged; include this header in one test file only.
 */
#ifndef VH_TEST_READLOG_H
#define VH_TEST_READLOG_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <glib.h>

typedef struct readlog_entry {
    uint64_t off;
    uint64_t len;
} readlog_entry;

static GArray *readlog; /* of readlog_entry while recording, else NULL */

ssize_t __real_pread64(int fd, void *buf, size_t n, off_t off);
ssize_t __wrap_pread64(int fd, void *buf, size_t n, off_t off);

ssize_t __wrap_pread64(int fd, void *buf, size_t n, off_t off)
{
    if (readlog) {
        readlog_entry e = {(uint64_t)off, n};
        g_array_append_val(readlog, e);
    }
    return __real_pread64(fd, buf, n, off);
}

static void readlog_start(void)
{
    if (readlog)
        g_array_unref(readlog);
    readlog = g_array_new(FALSE, FALSE, sizeof(readlog_entry));
}

/* Stops recording; the caller owns the array of what was read. */
static GArray *readlog_stop(void)
{
    GArray *a = readlog;
    readlog = NULL;
    return a;
}

G_GNUC_UNUSED static uint64_t readlog_bytes(const GArray *a)
{
    uint64_t n = 0;
    for (guint i = 0; i < a->len; i++)
        n += g_array_index(a, readlog_entry, i).len;
    return n;
}

/* True when some read touched [off, off + len). */
G_GNUC_UNUSED static bool readlog_touches(const GArray *a, uint64_t off, uint64_t len)
{
    for (guint i = 0; i < a->len; i++) {
        const readlog_entry *e = &g_array_index(a, readlog_entry, i);
        if (e->off < off + len && off < e->off + e->len)
            return true;
    }
    return false;
}

#endif
