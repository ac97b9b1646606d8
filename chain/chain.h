/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * chain.h - THE chain opener: the one way the engine follows parents to open a chain of disks
 * (doc/chain.md "The chain opener" states its rule).
 *
 * Contract: a chain is resolved by the resolver (resolve.h: doc/design.md "Resolver rules" 1-5, its
 * verdicts and its one locator-to-path mapping), which looks paths up only beneath the store and
 * never opens a locator's target outside it. The opener then opens each member by its
 * store-relative path strictly beneath the store's folder fd (vh_file_open_beneath: no "..", no
 * symlink, never blocking, a regular file or an error) and checks it is still the disk the index
 * described. Nothing outside the store is ever opened for a parent; only the top disk is named
 * by the caller.
 */
#ifndef VH_CHAIN_H
#define VH_CHAIN_H

#include "resolve.h"

typedef struct vh_chain_open_opts {
    const char *store;    /* NULL: determined from the path as doc/design.md "vhdheal" says */
    const char *winroot;  /* may be NULL */
    guint maxdepth;       /* 0: VH_DEFAULT_MAXDEPTH */
    bool writable;        /* open the top disk for writing (parents stay read-only) */
    bool use_heal_target; /* cross a broken link to its unique heal target (overlay healing) */
    vh_trust trust;       /* as vh_resolve_opts */
    vh_overlay *overlay;  /* patch sets the store is read through (vh_store_set_overlay), or NULL */
} vh_chain_open_opts;

/*
 * Opens the disk at `path` (a name the caller gave: it may be a symlink into the store) and its
 * parents as resolved above, attached with vh_disk_set_parent. Fails with a message naming the
 * broken link (child, reason, detail, and the fix when one is known).
 */
int vh_chain_open(const char *path, const vh_chain_open_opts *opts, vh_disk **top, GError **err);

/*
 * The first half of vh_chain_open: the store of `path` (*store, free it after the chain) and the
 * resolved chain of path in it, whatever its verdicts. Opens nothing but what the store index
 * probes. NULL with *err when path is not a readable disk in a store.
 */
vh_chain *vh_chain_resolve(const char *path, const vh_chain_open_opts *opts, vh_store **store,
                           GError **err);

/*
 * Whether a resolved chain can be opened: every link ok, or (use_heal_target) broken with a heal
 * target and not a cycle or too deep; and it ends at a base disk. `store` (may be NULL) only
 * adds a hint to the message.
 */
int vh_chain_usable(vh_store *store, const vh_chain *c, bool use_heal_target, GError **err);

/*
 * The second half: opens every disk of the resolved chain `c` beneath `store` (the top writable
 * when asked), each checked to be the file and disk the index described (device, inode, format,
 * identity, virtual size: EAGAIN otherwise). Does not judge the verdicts (vh_chain_usable does).
 */
int vh_chain_open_resolved(vh_store *store, const vh_chain *c, bool writable, vh_disk **top,
                           GError **err);

/* Opens the disk at store-relative `rel` beneath `store` as the store presents it: through its
 * overlay's patch set when it has one (overlay healing; such a disk is never opened for
 * writing: EROFS). Checks nothing against the index (vh_chain_open_resolved does). */
int vh_chain_open_presented(vh_store *store, const char *rel, bool writable, vh_disk **out,
                            GError **err);

/* Opens the disk at store-relative `rel` beneath the store folder open as store_fd (root: its
 * path, for messages), as vh_file_open_beneath does. */
int vh_disk_open_beneath(int store_fd, const char *root, const char *rel, vh_open_flags flags,
                         vh_disk **out, GError **err);

#endif
