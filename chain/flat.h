/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * flat.h - a disk's virtual content read through its whole resolved chain, for many threads at
 * once, and a bounded cache of such readers (the mount's @raw view; doc/design.md "Views").
 *
 * Contract: a reader opens every disk of a resolved chain (vh_resolve_chain) read-only; a link
 * that is broken is crossed to its heal target when the resolver found exactly one (as
 * vh_chain_open_opts.use_heal_target does), so nothing is ever written. Reads map whole runs
 * with vh_disk_map_chain through the formats' block tables (kept whole when small, else read by
 * pages through the process-wide table cache of tcache.h, bounded in bytes; one lock per reader
 * guards the formats' caches) and read each DATA run with one call, outside the
 * lock, so concurrent readers of one disk overlap their I/O. A reader remembers each member's
 * path, device, inode, size and mtime; it is stale once any of them differs from the file now at
 * that path, or the resolver's chain for the top names other paths. The cache hands out
 * reference-counted readers, reopens stale ones, and closes the least recently used beyond its
 * bound (readers still in use stay open until their last reference goes).
 */
#ifndef VH_FLAT_H
#define VH_FLAT_H

#include "chain.h"

typedef struct vh_flat vh_flat;

/*
 * Opens the chain `c` (its first disk is the top) of `store` (which must outlive the reader; the
 * resolver gave c). Fails, naming the disk and the reason, when a link is broken with
 * no unique heal target, the chain does not reach a base disk, or a member cannot be opened or
 * is no longer the disk the index described.
 */
int vh_flat_open(vh_store *store, const vh_chain *c, vh_flat **out, GError **err);
/* Whether the chain can be opened at all: every link ok or crossable, ending at a base disk. */
int vh_flat_chain_ok(const vh_chain *c, GError **err);
vh_flat *vh_flat_ref(vh_flat *f);
void vh_flat_unref(vh_flat *f);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(vh_flat, vh_flat_unref)

uint64_t vh_flat_size(const vh_flat *f); /* the top's virtual size */
/* A number that differs for every reader opened in this process (a cache-generation tag). */
guint64 vh_flat_serial(const vh_flat *f);
/* The number of member disks, and the store-relative path of member k (0 = the top). */
guint vh_flat_depth(const vh_flat *f);
const char *vh_flat_member(const vh_flat *f, guint k);

/* Whether the file (dev, ino) is one of the reader's members. */
bool vh_flat_has_member(const vh_flat *f, dev_t dev, ino_t ino);

/* True when every member is still the file opened and `c` (if not NULL) names the same paths. */
bool vh_flat_current(vh_flat *f, const vh_chain *c);

/* Reads [off, off+len) of the virtual disk; the range must lie within vh_flat_size. */
int vh_flat_read(vh_flat *f, void *buf, uint64_t off, size_t len, GError **err);
/* A piece of a read: `len` bytes at offset `off` of the open file `fd`, or zeros when fd < 0. */
typedef struct vh_flat_piece {
    int fd;
    uint64_t off;
    size_t len;
} vh_flat_piece;
/*
 * The pieces of [off, off+len) (within vh_flat_size), in order, appended to `pieces` (of
 * vh_flat_piece), for a caller that hands the kernel the file ranges (splice) instead of reading
 * them; the descriptors stay open while the caller holds its reference. -ENOTSUP, with nothing
 * appended, when a piece cannot be read straight from its file (a log replayed in memory, an
 * overlay patch, a range past the file's end): vh_flat_read serves those.
 */
int vh_flat_pieces(vh_flat *f, uint64_t off, size_t len, GArray *pieces, GError **err);
/*
 * lseek's SEEK_DATA (hole false) / SEEK_HOLE (hole true) from off: the first offset at or after
 * off that is stored in a chain member (DATA) or reads as zeros without being stored (a hole).
 * -ENXIO when off is at or past the end, or no data follows.
 */
int vh_flat_seek(vh_flat *f, uint64_t off, bool hole, uint64_t *out, GError **err);

typedef struct vh_flat_cache vh_flat_cache;

/* A cache of at most `max` readers (at least 1) of `store`'s disks; the store outlives it. */
vh_flat_cache *vh_flat_cache_new(vh_store *store, guint max);
void vh_flat_cache_free(vh_flat_cache *c);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(vh_flat_cache, vh_flat_cache_free)

/* A current reader for chain c's top (cached, or opened now); a new reference. */
int vh_flat_cache_get(vh_flat_cache *c, const vh_chain *chain, vh_flat **out, GError **err);
/* Closes the cached reader of a top, if any (readers in use stay valid). */
void vh_flat_cache_drop(vh_flat_cache *c, const char *top);
/* Closes every cached reader that has the file (dev, ino) as a member; adds their tops (new
 * strings) to `tops` when not NULL. Returns how many were dropped. */
guint vh_flat_cache_drop_member(vh_flat_cache *c, dev_t dev, ino_t ino, GPtrArray *tops);
guint vh_flat_cache_size(vh_flat_cache *c);
/* Readers opened by the cache so far (tests count reopens with it). */
guint64 vh_flat_cache_opens(vh_flat_cache *c);

#endif
