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

#include <sys/stat.h>

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

/* The size of the base file the patch set was built over, and of the patched file; the base
 * bytes below vh_patch_visible show through (a truncate lowers it). */
uint64_t vh_patch_base_size(const vh_patch *p);
uint64_t vh_patch_visible(const vh_patch *p);
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

/*
 * The overlays of a store (the mount's, in healmode=overlay): a thread-safe table of patch sets
 * keyed by the file's device and inode, each valid only while the file keeps the size and
 * modification time it had when its patch set was built. A patch set whose file changed on the
 * store is dropped (and logged) the first time it is looked up.
 */
typedef struct vh_overlay vh_overlay;
typedef struct vh_patch_origin vh_patch_origin;
typedef void (*vh_overlay_log_fn)(void *ctx, const char *line);

vh_overlay *vh_overlay_new(vh_overlay_log_fn log, void *ctx);
void vh_overlay_free(vh_overlay *o);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(vh_overlay, vh_overlay_free)

/*
 * An overlay folder (-o overlaydir=DIR, vhdheal --overlay DIR; overlay_file.h) for the store
 * whose realpath is store_root: vh_overlay_load reads its patch files into the table; with
 * `write`, every patch set put with an origin is saved there too, and the file of a patch set
 * dropped (its disk changed) or replaced is removed or replaced. Without `write` (vhdheal)
 * nothing is ever written into the folder. A folder whose marker names another store, or
 * cannot be trusted, is refused (overlay_file.h vh_overlay_dir_claim); with `write`, one without
 * a marker gets one, and is only read when it cannot get one (logged).
 */
int vh_overlay_set_dir(vh_overlay *o, const char *store_root, const char *dir, bool write,
                       GError **err);
/* Does the table write its folder (set with `write`, and marked as the store's)? */
bool vh_overlay_writes_dir(vh_overlay *o);
/* Called for each patch file loaded into the table. */
typedef void (*vh_overlay_loaded_fn)(void *ctx, const vh_patch_origin *origin);
/*
 * Loads the folder's patch files: each valid one whose store file is still the one it was built
 * over (overlay_file.h vh_patch_file_check) goes into the table. An invalid file is logged and
 * ignored; a stale one logged and dropped (removed with `write`). Returns the number loaded.
 */
int vh_overlay_load(vh_overlay *o, vh_overlay_loaded_fn fn, void *ctx, GError **err);

/* Records p for the file st describes, as it is now (replaces an earlier one); with an origin
 * and a folder written, also saves it there (a failure is logged: p is then kept in memory). */
void vh_overlay_put(vh_overlay *o, const struct stat *st, vh_patch *p,
                    const vh_patch_origin *origin);
/* The patch set of the file st describes (a new reference), or NULL; `name` names the file in
 * the log line of a dropped one. */
vh_patch *vh_overlay_get(vh_overlay *o, const struct stat *st, const char *name);
/* The patch set of the file open as fd (fstat), or NULL. */
vh_patch *vh_overlay_get_fd(vh_overlay *o, int fd, const char *name);
guint vh_overlay_count(vh_overlay *o);

#endif
