/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * reconnect.h - the reconnect engine: re-parent a differencing disk, as Hyper-V's
 * SetParentVirtualHardDisk / Set-VHD -ParentPath [-IgnoreIdMismatch] does, checking first and
 * then rewriting only the child's parent-link fields, journaled and under an OFD write lock.
 * The rewrite is a compare-and-swap: under the lock the child's link is read again and the
 * verdict re-run; a link healed meanwhile is left as it is ("already healed").
 *
 * Errors follow doc/design.md "Extended attributes": ENOENT (parent missing), EINVAL (parent not a
 * disk, identity mismatch without force, size or sector-size mismatch, format mismatch, cycle,
 * empty or overlong value), EXDEV (parent outside the store), ENOTSUP (child not a differencing
 * disk), EACCES/EROFS (child not writable), EBUSY (child locked), EIO (child corrupt).
 */
#ifndef VH_RECONNECT_H
#define VH_RECONNECT_H

#include "disk.h"
#include "overlay.h"

/*
 * Re-runs the verdict on the child's link while the reconnect holds the child's OFD write lock:
 * 1 when the link is still broken (go on), 0 when it is not (another process or host healed
 * it: nothing is written), negative errno on failure.
 */
typedef int (*vh_still_broken_fn)(void *ctx, GError **err);

/*
 * Descriptors of the very files a repair is about (any open mode, O_PATH too), -1 for none. The
 * reconnect then opens them again through /proc/self/fd, never by the path it was given, which
 * only names them (messages, the journal, the relative locator). Whoever acts for a user opens
 * them with that user's rights and passes them here, so that no rename or symlink swapped in
 * between can redirect the repair to another file.
 */
typedef struct vh_reconnect_pin {
    int child_fd;
    int parent_fd;
} vh_reconnect_pin;

typedef struct vh_reconnect_opts {
    const char *store;           /* the store: the journal lives there; nothing outside is opened */
    const char *winroot;         /* where Windows sees the store (absolute locators), or NULL */
    bool ignore_id_mismatch;     /* Set-VHD -IgnoreIdMismatch */
    bool dry_run;                /* check and describe only */
    int maxdepth;                /* 0 = VH_DEFAULT_MAXDEPTH */
    const vh_reconnect_pin *pin; /* NULL: the child and the parent are opened by their paths */
    /* A heal (repair, heal on open): the compare-and-swap also asks this; NULL for an explicit
     * reconnect, which only checks whether the child already links to exactly that parent. */
    vh_still_broken_fn still_broken;
    void *still_broken_ctx;
    /* Overlay healing (overlay.h): the same checks and the same link-writing code, but the child
     * is opened read-only and the rewrite (and a VHDX log replay before it) lands in a new patch
     * set, returned in the result; no lock, no journal: nothing in the store changes. A heal's
     * still_broken is asked before the patch set is built. */
    bool overlay;
    /* overlay: the child is presented through an earlier patch set, so its store bytes already
     * linking to the parent do not make it linked: a new patch set replaces the earlier one. */
    bool overlay_presented;
} vh_reconnect_opts;

typedef struct vh_reconnect_result {
    char *repair_id; /* journal id (NULL on a dry run) */
    char *old_link;  /* one-line descriptions */
    char *new_link;
    /* Under the lock the child was found healed already (by another process or host, or to
     * exactly this parent): nothing written, no journal record, repair_id NULL. */
    bool already_healed;
    /* opts->overlay: the child's repaired bytes over the store's (NULL when already healed) */
    vh_patch *patch;
} vh_reconnect_result;

void vh_reconnect_result_clear(vh_reconnect_result *r);

int vh_reconnect(const char *child, const char *parent, const vh_reconnect_opts *opts,
                 vh_reconnect_result *res, GError **err);

/* One line describing a disk's parent link ("parent id ...; relative_path .\\x.vhdx; ..."). */
char *vh_link_describe(const vh_disk *d);

/* The absolute Windows path of a store file under winroot (NULL without a winroot). */
char *vh_winroot_path(const char *store, const char *winroot, const char *path);

#endif
