/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * overlay.h - patch sets: a disk file's repaired bytes kept beside the file, never in it
 * (healmode=overlay, ro; doc/design.md "Overlay healing").
 *
 * A patch set is a list of byte ranges (offset -> bytes) over a base file, and the size the
 * patched file has. A vh_file with a patch set attached (vh_file_attach_patch) reads the base
 * file with the patches over it and writes into the patch set, never into the file: the engine's
 * own write paths (the reconnect's set_parent_link, VHDX log replay on open) run unchanged and
 * their output lands here. Once built, a patch set is read-only and may be shared between threads
 * (reference counted); the mount overlays it on the store's bytes with vh_patch_read.
 */
#ifndef VH_OVERLAY_H
#define VH_OVERLAY_H

#include "common.h"

typedef struct vh_file vh_file;
typedef struct vh_patch vh_patch;

/* The most bytes one patch set holds: a repair patches a few headers, the locator space and a
 * log entry; a write beyond this fails with EFBIG (memory is bounded). */
#define VH_PATCH_MAX_BYTES (64u * 1024 * 1024)

/* A patch set over a base file of base_size bytes, with no patches yet (reference count 1). */
vh_patch *vh_patch_new(uint64_t base_size);
vh_patch *vh_patch_ref(vh_patch *p);
void vh_patch_unref(vh_patch *p);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(vh_patch, vh_patch_unref)

/* The size of the base file the patch set was built over, and of the patched file. */
uint64_t vh_patch_base_size(const vh_patch *p);
uint64_t vh_patch_size(const vh_patch *p);
/* The number of ranges and the bytes they hold. */
guint vh_patch_count(const vh_patch *p);
uint64_t vh_patch_bytes(const vh_patch *p);
/* The i-th range (in offset order, non-overlapping). */
void vh_patch_range(const vh_patch *p, guint i, uint64_t *off, size_t *len, const uint8_t **data);

/* Records a write of len bytes at off (may extend the patched file). -EFBIG past the bound. */
int vh_patch_write(vh_patch *p, const void *buf, size_t len, uint64_t off, GError **err);
/* Records a truncate: bytes at and past size are gone (the base's too), the file has size. */
void vh_patch_truncate(vh_patch *p, uint64_t size);

/*
 * Reads up to len bytes at off of the patched file whose base is open as fd: the base's bytes
 * (zeros where the base was truncated away or the file grew) with the patches over them. Returns
 * the count (less than len only at the patched file's end), or -errno; a base file shorter than
 * the patch set was built over is -EIO (the store file changed).
 */
ssize_t vh_patch_read(const vh_patch *p, int fd, void *buf, size_t len, uint64_t off);

/*
 * Makes f (opened read-only) read through p and write into it: f->size becomes the patched size,
 * f->writable true (the file descriptor stays read-only: nothing reaches the file). Takes a
 * reference; vh_file_close drops it.
 */
void vh_file_attach_patch(vh_file *f, vh_patch *p);

/* Opens path read-only with p attached (a new empty patch set over the file when p is NULL). */
int vh_file_open_patched(vh_file *f, const char *path, vh_patch *p, GError **err);

#endif
