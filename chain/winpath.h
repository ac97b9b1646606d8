/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * winpath.h - Windows paths as stored in parent locators, and their mapping to and from the
 * store's POSIX paths (doc/design.md "Resolver rules" 2, doc/formats.md §1.3, §2.5).
 *
 * Contract: the parsing and mapping functions are pure string work and never touch the file
 * system. vh_winpath_lookup is the only function here that does, and it resolves a
 * store-relative path strictly beneath the store (openat2 RESOLVE_BENEATH, or realpath where
 * openat2 is missing) BEFORE anything is opened: a path that leaves the store, also through a
 * symlink, is reported as -EXDEV and its target is never opened.
 */
#ifndef VH_WINPATH_H
#define VH_WINPATH_H

#include "common.h"

/*
 * The relative Windows path from the folder holding `child` to `parent` (both POSIX paths,
 * absolute or relative to the same directory): ".\name" in the same folder, "..\dir\name"
 * elsewhere, as Windows writes W2ru and relative_path. Returns a new string.
 */
char *vh_winpath_relative(const char *child, const char *parent);

/* POSIX -> Windows: "/" becomes "\". Returns a new string. */
char *vh_winpath_from_posix(const char *posix);

/* What kind of path a stored locator holds. */
typedef enum {
    VH_WP_RELATIVE, /* ".\x", "..\x", "x\y": from the child's folder */
    VH_WP_DRIVE,    /* "C:\x", "\\?\C:\x" */
    VH_WP_UNC,      /* "\\server\share\x", "\\?\UNC\server\share\x" */
    VH_WP_VOLUME,   /* "\\?\Volume{guid}\x" */
    VH_WP_ROOTED,   /* "\x": absolute on the current drive */
    VH_WP_POSIX,    /* "/x/y": a MacX file URL decoded to a POSIX path */
} vh_winpath_kind;

typedef struct vh_winpath {
    vh_winpath_kind kind;
    char *root;  /* "C:", "server\share", "Volume{...}", "" otherwise (as stored) */
    GStrv parts; /* components after the root; "." dropped, ".." folded for absolute paths */
} vh_winpath;

/*
 * Parses a stored path; false for an empty or unusable one. A bare root ("C:\", "\\nas\vms")
 * parses with no parts. Free with vh_winpath_clear.
 */
bool vh_winpath_parse(const char *stored, vh_winpath *out);
void vh_winpath_clear(vh_winpath *p);

/*
 * Compares one component as Windows does: case-insensitively (Unicode case folding) and
 * ignoring trailing spaces and dots.
 */
bool vh_winpath_component_equal(const char *a, const char *b);

/* How a candidate path was derived from a locator. */
typedef enum {
    VH_WP_VIA_RELATIVE, /* a relative path from the child's folder */
    VH_WP_VIA_WINROOT,  /* an absolute path under winroot, mapped to the same place */
    VH_WP_VIA_STORE,    /* a POSIX path under the store's own absolute path */
    VH_WP_VIA_TAIL,     /* the tail of another absolute path, under the child's folder or STORE */
} vh_wp_via;

const char *vh_wp_via_name(vh_wp_via v); /* "relative", "winroot", "store", "tail" */

typedef struct vh_wp_candidate {
    char *rel; /* store-relative POSIX path ("" never occurs); NULL when outside */
    vh_wp_via via;
    bool outside; /* the path leaves STORE (by ".." or as an absolute path outside it) */
} vh_wp_candidate;

void vh_wp_candidate_free(vh_wp_candidate *c);

/*
 * The store-relative paths where a stored locator path may point, in the order to try them:
 * a relative path from child_dir (store-relative folder of the child, "" for the root); an
 * absolute path under `winroot` (may be NULL) at the same place under STORE; a POSIX path under
 * store_abs (the store's absolute path, may be NULL) likewise; every other absolute path by its
 * tail: the file name, then longer suffixes, each under child_dir and then under STORE.
 * An entry with `outside` set records that the path leaves STORE (never to be opened). Returns a
 * GPtrArray of vh_wp_candidate* (empty when the path is unusable).
 */
GPtrArray *vh_winpath_candidates(const char *stored, const char *child_dir, const char *winroot,
                                 const char *store_abs);

/*
 * Lexically joins a store-relative folder and relative components, folding "." and "..".
 * Returns NULL when ".." climbs above the store. A new string, "" for the store itself.
 */
char *vh_winpath_join(const char *dir, const char *const *parts);

/*
 * The absolute Windows path of the store file `rel` (store-relative POSIX path) under
 * winroot (e.g. "\\nas\vms" or "D:\VMs"; "/" may stand for "\", a trailing separator is
 * dropped). Returns a new string.
 */
char *vh_winpath_to_windows(const char *rel, const char *winroot);

/* Is winroot usable as one: a drive ("D:", "D:\VMs"), share ("\\nas\vms") or volume path? */
bool vh_winpath_is_root(const char *winroot);

/*
 * The one "is this below the store" check, on canonical POSIX paths: the part of `path` below
 * `root` ("" when path is root itself), a pointer into path; NULL when path lies outside.
 * root "/" holds every absolute path; root "" every relative one. Pure string work.
 */
const char *vh_path_below(const char *root, const char *path);

/*
 * Finds the store-relative path `rel` strictly beneath the store whose folder is open as
 * root_fd (root_real: its realpath). Tries the exact name first and then, component by
 * component, a case-insensitive match in the folder (Windows names on a case-sensitive store).
 * Symlinks are followed only while they stay inside the store. On success *found is the
 * canonical store-relative path of the regular file it names (symlinks resolved).
 * Returns 0, -ENOENT (nothing there, or not a regular file), -EXDEV (leaves the store: nothing
 * was opened), or another -errno; never opens the file itself for reading.
 */
int vh_winpath_lookup(int root_fd, const char *root_real, const char *rel, char **found);

#endif
