/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * merge.h - Merge-VHD: the sectors a differencing disk and every disk between it and an ancestor
 * hold are written into the ancestor, then the disk's own children are relinked to the ancestor
 * and the merged disks removed (doc/design.md "Merge and convert").
 *
 * Contract. Planning resolves CHILD's chain with the chain opener's resolver (every link ok) and
 * refuses, naming them, while the ancestor has other children in the store (unless force) or a
 * disk between them has children of its own (always: it is removed). The plan (members, the
 * ancestor and CHILD's children, each with device, inode, format and identity) is written to
 * STORE/.vhdheal/merge-ID (mode 0600, opened beneath the store without following symlinks, replaced
 * by rename after fsync at every step) before anything else is written, once every disk involved
 * is claimed (inuse.h: its in-use byte locked exclusively, no other lock on it anywhere; EBUSY
 * naming the file while a mount has it open or qemu holds it), a claim held to the end. Then:
 *   copy   every sector the merged disks hold (read from the topmost holder) is written into the
 *          ancestor with vh_disk_write; the ancestor is flushed and the offset reached recorded
 *          every few MiB; re-copying a range gives the same result, so a resume restarts at the
 *          last recorded offset;
 *   relink each child of CHILD is reconnected to the ancestor (vh_reconnect, identity mismatch
 *          ignored: the ancestor now holds CHILD's content), each recorded when done;
 *   remove the merged files are unlinked (each checked to still be the planned inode).
 * A merge is resumed from its plan by vh_merge_resume; the members are then opened by the paths
 * the plan recorded (beneath the store, checked by device, inode and identity), since a VHDX
 * ancestor written by the copy has a new DataWriteGuid and no longer matches their link.
 * One merge runs in a store at a time (an flock on STORE/.vhdheal/).
 */
#ifndef VH_MERGE_H
#define VH_MERGE_H

#include "convert.h"

/* One line for the user: what the merge did or would do. */
typedef void (*vh_merge_log_fn)(void *ctx, const char *line);

typedef struct vh_merge_opts {
    const char *store; /* NULL: determined from CHILD as for every command */
    const char *into;  /* the ancestor (a path), or NULL for CHILD's parent */
    bool force;        /* merge although the ancestor has other children (they change) */
    bool dry_run;      /* check (a disk in use is refused, EBUSY, as by the claim: no lock is
                        * taken) and describe only: nothing is written or created */
    vh_bytes_progress_fn progress;
    void *progress_ctx;
    vh_merge_log_fn log;
    void *log_ctx;
    volatile sig_atomic_t *cancel; /* stops at the next step, EINTR: resumable */
} vh_merge_opts;

int vh_merge(const char *child, const vh_merge_opts *opts, GError **err);

/*
 * Finishes every merge an interruption left in the store (store: a realpath or a path). Returns
 * how many were finished (0 when there are none, nothing created); -EBUSY while another process
 * runs a merge in the store.
 */
int vh_merge_resume(const char *store, const vh_merge_opts *opts, GError **err);

#endif
