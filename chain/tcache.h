/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * tcache.h - one process-wide cache of block-table pages, bounded in bytes across every open
 * disk (README "Memory"). A format whose block table is too large to keep whole reads it here by
 * pages instead, so that opening a disk never costs memory in proportion to its virtual size.
 *
 * Contract: a table is a client of the cache with a page size and a loader (which reads, and
 * validates, one page from its file). Reads copy entries out under the cache's lock, so pages
 * may be evicted at any time by any thread; a page is loaded outside the lock (two threads may
 * load the same page once each; one copy is kept). The least recently used pages go once the
 * cache holds more than its limit. Freeing a table drops its pages. Thread-safe.
 */
#ifndef VH_TCACHE_H
#define VH_TCACHE_H

#include "util.h"

/* The default limit of the cache: 64 MiB. */
#define VH_TCACHE_DEFAULT_LIMIT (64u * 1024 * 1024)

/* Reads page `page` (len bytes, len = the table's page size or less for the last page). */
typedef int (*vh_tcache_load_fn)(void *ctx, uint64_t page, void *buf, size_t len, GError **err);

typedef struct vh_table vh_table;

/* A table of `bytes` bytes read by pages of page_size bytes through `load`. */
vh_table *vh_table_new(uint64_t bytes, size_t page_size, vh_tcache_load_fn load, void *ctx);
void vh_table_free(vh_table *t);

/* Copies len bytes at byte offset off of the table (within one page) to out. */
int vh_table_read(vh_table *t, uint64_t off, void *out, size_t len, GError **err);

/* The cache's limit and what it holds now, in bytes (pages plus their bookkeeping). */
void vh_tcache_set_limit(size_t bytes);
size_t vh_tcache_limit(void);
size_t vh_tcache_bytes(void);
/* Pages loaded so far (tests count loads with it). */
guint64 vh_tcache_loads(void);

#endif
