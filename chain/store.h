/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * store.h - the store index: every disk file under STORE (recognised by content, not by name),
 * what it is and where its parent link points, and identity -> paths.
 *
 * Contract: a scan walks STORE (never STORE/.vhdheal/, never through symlinks) and probes each
 * regular file with a probe function (by default vh_disk_open with VH_OPEN_PROBE, which reads
 * only identity and link structures). A refresh re-probes a file only when its device, inode,
 * size or mtime (ns) changed; a renamed file (same device and inode, size and mtime) keeps its
 * entry without a re-read. The index keeps no file buffers: per file one small vh_disk_info.
 * All functions are thread-safe (one GRWLock); entries handed out are reference-counted
 * snapshots that stay valid after the index changes.
 */
#ifndef VH_STORE_H
#define VH_STORE_H

#include <sys/types.h>

#include "disk.h"

/* What the index knows about one file. Immutable once published; reference-counted. */
typedef struct vh_disk_info {
    char *path; /* store-relative POSIX path */
    dev_t dev;
    ino_t ino;
    uint64_t file_size;
    int64_t mtime_ns;
    vh_format format; /* VH_FORMAT_NONE: not a disk (and error NULL) */
    char *error;      /* looks like a disk but cannot be read: the message; else NULL */
    vh_type type;
    uint64_t virtual_size;
    uint32_t logical_sector_size;
    vh_id id;            /* VHD unique id; VHDX DataWriteGuid */
    vh_parent_link link; /* differencing disks: the parent link (locators NULL otherwise) */
} vh_disk_info;

vh_disk_info *vh_disk_info_new(void);
vh_disk_info *vh_disk_info_ref(vh_disk_info *i);
void vh_disk_info_unref(vh_disk_info *i);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(vh_disk_info, vh_disk_info_unref)

/* True for a readable disk (format known, no error). */
static inline bool vh_disk_info_is_disk(const vh_disk_info *i)
{
    return i && i->format != VH_FORMAT_NONE && !i->error;
}

/* Fills the identity/link fields of a vh_disk_info from an opened disk. */
void vh_disk_info_fill(vh_disk_info *i, const vh_disk *d);

/*
 * Reads what a file is. `abs` is the file's absolute path, `rel` its store-relative path.
 * Fills out->format (VH_FORMAT_NONE for a file that is not a disk), and the disk fields, or sets
 * out->error for a disk that cannot be read. Returns 0, or a negative errno for an I/O error
 * (the file is then left out of the index). Called from several threads at once. out's dev, ino,
 * size and mtime are those stat'ed first: the default probe reads only that very file (EAGAIN
 * when a rename or a symlink put another one at `abs` in between).
 */
typedef int (*vh_probe_fn)(void *ctx, const char *abs, const char *rel, vh_disk_info *out);

/* The default probe: content sniffing + vh_disk_open(VH_OPEN_PROBE). With ctx a vh_store (as
 * the store sets it), the file is opened beneath the store (vh_file_open_beneath); else by abs. */
int vh_store_default_probe(void *ctx, const char *abs, const char *rel, vh_disk_info *out);

typedef struct vh_store vh_store;

/* Opens the store folder (kept open as a directory fd). */
vh_store *vh_store_new(const char *root, GError **err);
void vh_store_free(vh_store *s);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(vh_store, vh_store_free)

const char *vh_store_root(vh_store *s); /* the realpath of the store */
int vh_store_root_fd(vh_store *s);

void vh_store_set_probe(vh_store *s, vh_probe_fn fn, void *ctx);
/*
 * Overlay healing (overlay.h): the default probe and the chain opener read a file that has a
 * patch set in `o` through it (the store file is never written). NULL (the default): none. The
 * table stays the caller's; set it before the first scan.
 */
typedef struct vh_overlay vh_overlay;
void vh_store_set_overlay(vh_store *s, vh_overlay *o);
vh_overlay *vh_store_overlay(vh_store *s);
/* Probing threads for a scan (default 4; 1 probes inline). */
void vh_store_set_threads(vh_store *s, int n);
/* Called during a scan, from the scanning thread, with files probed so far and to probe. */
typedef void (*vh_progress_fn)(void *ctx, guint done, guint total);
void vh_store_set_progress(vh_store *s, vh_progress_fn fn, void *ctx);

/* Scans STORE, or refreshes the index incrementally after the first scan. */
int vh_store_scan(vh_store *s, GError **err);
bool vh_store_scanned(vh_store *s);
/* Number of probe calls made so far (tests count re-reads with it). */
guint64 vh_store_probe_count(vh_store *s);

/*
 * The entry for a store-relative path: the index's if the file's stat still matches, else a
 * fresh probe (which also updates the index). NULL with *err set when the file cannot be
 * examined (ENOENT when it does not exist). Never follows a symlink: pass canonical paths
 * (vh_winpath_lookup gives them).
 */
vh_disk_info *vh_store_describe(vh_store *s, const char *rel, GError **err);
/* The index's entry for a path without touching the file (NULL when unknown). */
vh_disk_info *vh_store_get(vh_store *s, const char *rel);

/* Every indexed disk whose identity is `id` (readable disks only), sorted by path. */
GPtrArray *vh_store_find_id(vh_store *s, const vh_id *id);
/*
 * Every indexed file that is a disk (readable or not) at or below the store-relative folder
 * `under` ("" or NULL: all), sorted by path. GPtrArray of referenced vh_disk_info*.
 */
GPtrArray *vh_store_list(vh_store *s, const char *under);
guint vh_store_count(vh_store *s); /* files indexed (disks and others) */

/*
 * Notifications from whoever changes the store (the mount): keep the index current. A note made
 * while a scan runs is applied to that scan's result too before the result replaces the index,
 * so a scan that walked a folder before the change never brings the old state back.
 */
void vh_store_note_rename(vh_store *s, const char *old_rel, const char *new_rel);
void vh_store_note_unlink(vh_store *s, const char *rel);
void vh_store_note_changed(vh_store *s, const char *rel); /* new or modified: re-probed */

/*
 * The store for a command (doc/design.md "vhdheal"): `store_opt` where given; else, when the only
 * path is a folder and folder_is_store, that folder; else the nearest folder above all the
 * paths that holds a `.vhdheal/`; else the deepest folder holding all of them. Returns the
 * realpath, or NULL with *err (EINVAL/ENOENT) when a path does not exist or lies outside.
 */
char *vh_store_determine(const char *store_opt, char **paths, int npaths, bool folder_is_store,
                         GError **err);
/* The store-relative path of an existing path under store_real (realpath), or NULL. */
char *vh_store_relpath(const char *store_real, const char *path);

#endif
