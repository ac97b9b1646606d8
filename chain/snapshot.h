/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * snapshot.h - the model of the mount's @raw and @chains views (README "Views"; doc/design.md
 * "Views"), without FUSE: one immutable picture of the store index, as folders of names.
 *
 *   @raw/DIR/NAME.raw      VH_VIEW_RAW_FILE of the store's disk DIR/NAME
 *   @chains/DIR/NAME/      VH_VIEW_CHAIN for each chain top (report.h) DIR/NAME, holding
 *        K-MEMBER          VH_VIEW_LINK: member K of the chain, top first
 *        status            VH_VIEW_STATUS: the chain worded as `vhdheal check` words it
 *
 * Contract: both views mirror the store's folders but hold only folders that hold, at any depth,
 * something to show; where a disk's name in @raw equals a folder's, the disk wins. A snapshot
 * is built from one listing of the index (vh_store_list) and never changes after; chains are
 * resolved once per snapshot, when first asked for (thread-safe). Reference-counted.
 */
#ifndef VH_SNAPSHOT_H
#define VH_SNAPSHOT_H

#include "resolve.h"

#define VH_VIEW_RAW_SUFFIX ".raw"
#define VH_VIEW_STATUS_NAME "status"

typedef enum {
    VH_VIEW_RAW_DIR,    /* @raw or a folder below it; path: the store folder ("" for @raw) */
    VH_VIEW_RAW_FILE,   /* @raw/.../NAME.raw; path: the disk */
    VH_VIEW_CHAINS_DIR, /* @chains or a folder below it; path: the store folder */
    VH_VIEW_CHAIN,      /* @chains/.../NAME/; path: the chain's top */
    VH_VIEW_LINK,       /* @chains/.../NAME/K-MEMBER; path: the top, index: K */
    VH_VIEW_STATUS,     /* @chains/.../NAME/status; path: the top */
} vh_view_kind;

static inline bool vh_view_is_dir(vh_view_kind k)
{
    return k == VH_VIEW_RAW_DIR || k == VH_VIEW_CHAINS_DIR || k == VH_VIEW_CHAIN;
}

/* A name in a view folder. */
typedef struct vh_view_entry {
    char *name;
    vh_view_kind kind;
    char *path;
    guint index;
} vh_view_entry;

typedef struct vh_snap vh_snap;

/* A snapshot of `disks` (vh_store_list's listing, which it keeps a reference to). */
vh_snap *vh_snap_new(vh_store *store, const vh_resolve_opts *ro, GPtrArray *disks);
vh_snap *vh_snap_ref(vh_snap *s);
void vh_snap_unref(vh_snap *s);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(vh_snap, vh_snap_unref)

/* Whether a listing of the index describes the same files (path, inode, size, mtime, kind). */
bool vh_snap_same(vh_snap *s, GPtrArray *disks);
guint vh_snap_ndisks(vh_snap *s);
guint vh_snap_ntops(vh_snap *s);
/* The index's entry of a disk the snapshot shows (borrowed), or NULL. */
const vh_disk_info *vh_snap_disk(vh_snap *s, const char *path);

/* Whether the snapshot shows node (kind, path, index); folders, tops, links, status files. */
bool vh_snap_has(vh_snap *s, vh_view_kind kind, const char *path, guint index);
/* Looks `name` up in the view folder (dir_kind, dir_path): its kind, path (borrowed), index. */
int vh_snap_child(vh_snap *s, vh_view_kind dir_kind, const char *dir_path, const char *name,
                  vh_view_kind *kind, const char **path, guint *index);
/* The names of a view folder, sorted (a new reference to a GPtrArray of vh_view_entry*). */
GPtrArray *vh_snap_listing(vh_snap *s, vh_view_kind kind, const char *path);

/* A top's chain members (store paths, top first; borrowed) and status text, or NULL. */
GPtrArray *vh_snap_members(vh_snap *s, const char *top);
const char *vh_snap_status(vh_snap *s, const char *top);

/* The chain of a disk (borrowed), resolved once per snapshot; NULL (and *why) when it fails. */
const vh_chain *vh_snap_chain(vh_snap *s, const char *path, char **why);
/* True the first time a disk's failure is reported in this snapshot (log once). */
bool vh_snap_first_failure(vh_snap *s, const char *path);

/* The text of member `index`'s symlink in @chains/TOP/: up to the mount's root, then down. */
char *vh_view_link_target(const char *top, const char *member);
size_t vh_view_link_target_len(const char *top, const char *member);
char *vh_view_link_name(guint index, const char *member);
/* The store path of the disk @raw shows as folder/name (NULL when name lacks ".raw"). */
char *vh_view_raw_disk(const char *folder, const char *name);

#endif
