/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * overlay_file.h - a patch set (overlay.h) as a file in an overlay folder (-o overlaydir=DIR,
 * vhdheal --overlay DIR), so that overlay healing survives a remount: doc/design.md
 * "Overlay healing" and its layout, doc/design.md "The patch file".
 *
 * A patch file names its base file by its path relative to the store and by what identifies the
 * file's state across remounts (the device number does not: it changes for loop and network
 * mounts): inode, size, modification time in ns, and the SHA-256 of the base bytes under the
 * patched ranges (the headers, footer and locators the repair replaced: a file whose link
 * structures differ is not the file the patch was built for, whatever its mtime says). It also
 * keeps when the repair was made and what it did (user.vhd.status after a remount).
 *
 * The file is untrusted input (anyone who may write DIR, or a crash, may have made it): the
 * decoder checks the magic, version, the CRC-32C over everything, every count and length against
 * the file's size and VH_PATCH_MAX_BYTES, the order of the ranges, and that the path is
 * relative without "." or ".." components. Files in DIR are opened without following symlinks.
 */
#ifndef VH_OVERLAY_FILE_H
#define VH_OVERLAY_FILE_H

#include <sys/stat.h>

#include "overlay.h"

#define VH_PATCH_FILE_MAGIC "VHPATCH\n"
#define VH_PATCH_FILE_VERSION 1u
#define VH_PATCH_FILE_SUFFIX ".vhpatch"
/* Bounds of the fields (a repair's ranges are a few dozen; a path is at most PATH_MAX). */
#define VH_PATCH_FILE_MAX_RANGES 65536u
#define VH_PATCH_FILE_MAX_PATH 4096u
#define VH_PATCH_FILE_MAX_NOTE 4096u
/* The largest patch file read: the fixed part, the strings, the range table and the bytes. */
#define VH_PATCH_FILE_MAX_SIZE                                                                     \
    (128u + VH_PATCH_FILE_MAX_PATH + VH_PATCH_FILE_MAX_NOTE + 16u * VH_PATCH_FILE_MAX_RANGES +     \
     VH_PATCH_MAX_BYTES + 4u)

/* What names and identifies a patch set's base file, and the repair that built it. */
typedef struct vh_patch_origin {
    char *rel;        /* the file's path relative to the store */
    uint64_t ino;     /* its inode number */
    int64_t mtime_ns; /* its modification time (the size is the patch set's base size) */
    uint8_t hash[32]; /* SHA-256 of the base bytes under the patched ranges */
    int64_t time;     /* when the repair was made (unix seconds) */
    char *note;       /* what it did ("parent-missing: reconnected to ..."), may be "" */
} vh_patch_origin;

void vh_patch_origin_clear(vh_patch_origin *o);

/* SHA-256 of the base bytes (of the file open as fd) under p's ranges, clipped to the bytes of
 * the base that show through (see above). */
int vh_patch_base_hash(const vh_patch *p, int fd, uint8_t out[32], GError **err);

/* The origin of p over the file open as fd (fstat, hash), named rel, with the repair's note. */
int vh_patch_origin_of(vh_patch_origin *o, const vh_patch *p, int fd, const char *rel,
                       const char *note, int64_t time, GError **err);

/* The patch file's bytes (g_free them); *len gets their count. NULL with *err (E2BIG) when p has
 * more ranges or o longer strings than a patch file holds. */
uint8_t *vh_patch_file_encode(const vh_patch *p, const vh_patch_origin *o, size_t *len,
                              GError **err);
/* The patch set in buf (len bytes), and its origin in *o; NULL with *err naming the field and
 * offset when buf is not a valid patch file (EINVAL). `name` names the file in messages. */
vh_patch *vh_patch_file_decode(const uint8_t *buf, size_t len, const char *name, vh_patch_origin *o,
                               GError **err);

/* Is rel a store-relative path a patch file may name (relative, no "", "." or ".." part)? */
bool vh_patch_file_rel_ok(const char *rel);
/* The name of rel's patch file in DIR ("<32 hex digits>.vhpatch"): one file per child. */
char *vh_patch_file_name(const char *rel);

/* Writes p's file into the folder open as dirfd, atomically (a temporary file, fsync, rename,
 * fsync of the folder); a file for the same rel is replaced. */
int vh_patch_file_save(int dirfd, const vh_patch *p, const vh_patch_origin *o, GError **err);
/* Removes rel's file from the folder (none there is not an error). */
int vh_patch_file_remove(int dirfd, const char *rel, GError **err);
/* Reads and decodes the file `name` in the folder, opened without following a symlink. */
vh_patch *vh_patch_file_load(int dirfd, const char *name, vh_patch_origin *o, GError **err);

/*
 * Whether the store file o names (opened strictly beneath the store folder open as store_fd,
 * passing no symlink) is the file p was built over: same inode, size (p's base size),
 * modification time and hash. 0 with *st filled in; -ESTALE with *err saying what differs
 * (-ENOENT when the file is gone).
 */
int vh_patch_file_check(int store_fd, const char *store_root, const vh_patch *p,
                        const vh_patch_origin *o, struct stat *st, GError **err);

/*
 * The marker: one overlay folder per store. Patch files name their disks by paths below the store,
 * so a folder given to two stores would find the other store's disks "gone" and remove their
 * files: DIR/VH_OVERLAY_MARKER names the one store the folder belongs to
 * (doc/design.md "The marker"). A text file, one spelling per marker:
 *
 *   vhdheal overlay folder 1\n
 *   store PATH\n          the store's canonical path; bytes below 0x20, 0x7f and '\' as \xHH
 *   device MAJOR:MINOR\n  the store folder's, when the marker was written
 *   inode N\n
 *
 * The path decides. Device and inode only explain: a store seen under another path with the same
 * device and inode was moved (or is seen through a bind mount); the same path with another inode
 * was replaced or restored (its patch files are then checked one by one, as always). The name is
 * no patch file's ("<32 hex digits>.vhpatch") and no temporary file's (".NAME.RANDOM.tmp").
 */
#define VH_OVERLAY_MARKER "vhdheal.store"
#define VH_OVERLAY_MARKER_MAGIC "vhdheal overlay folder 1\n"
/* The largest marker read: the path with every byte escaped, and the other lines. */
#define VH_OVERLAY_MARKER_MAX_SIZE (4u * VH_PATCH_FILE_MAX_PATH + 128u)

typedef struct vh_overlay_marker {
    char *store;  /* the store's canonical path */
    uint64_t dev; /* st_dev of the store folder when marked */
    uint64_t ino; /* st_ino of the store folder when marked */
} vh_overlay_marker;

void vh_overlay_marker_clear(vh_overlay_marker *m);
/* The marker's text (g_free it), *len its length. NULL with *err (EINVAL) when m->store is not an
 * absolute path shorter than VH_PATCH_FILE_MAX_PATH without NUL. */
char *vh_overlay_marker_encode(const vh_overlay_marker *m, size_t *len, GError **err);
/* The marker in buf (len bytes) into *m; -EINVAL with *err naming `name`, the line and what is
 * wrong when buf is not a marker as vh_overlay_marker_encode writes them (*m is then empty). */
int vh_overlay_marker_decode(const uint8_t *buf, size_t len, const char *name, vh_overlay_marker *m,
                             GError **err);

/*
 * Does the overlay folder open as dirfd (named dir in messages) belong to the store whose
 * canonical path is store_root? 1: its marker names the store, or (with `write`) the folder had
 * no marker and now has one naming it (written as patch files are, but never over another's:
 * two mounts marking one folder at once, one wins and the other reads its marker). 0: no marker,
 * none written (without `write`, or the write failed: logged; then write nothing into DIR).
 * Negative errno with *err, and nothing written: the marker names another store (-EXDEV, both
 * named), or (with `write`) there is none but the folder holds valid patch files of which none
 * fits a disk of the store (-EXDEV: a folder of an earlier version, maybe another store's), or the
 * marker cannot be trusted (a symlink, not a regular file, another owner, writable by others,
 * too large, not a marker). `log` (may be NULL) gets the notes: marked, a write that failed, a
 * store folder that is not the one marked.
 */
int vh_overlay_dir_claim(int dirfd, const char *dir, const char *store_root, bool write,
                         vh_overlay_log_fn log, void *ctx, GError **err);

#endif
