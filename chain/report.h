/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * report.h - what `vhdheal check` and the mount's @chains view both say about a store: which
 * disks are chain tops, and how a chain and its links are worded (README "vhdheal check" and
 * "@chains/").
 *
 * Contract: a chain top is a readable disk that no listed differencing disk's link leads to (a
 * link that holds, or a broken one with a heal target); disks no top's chain covers (a cycle has
 * no top) become tops too, in path order. Nothing here reads a file: the resolver does.
 */
#ifndef VH_REPORT_H
#define VH_REPORT_H

#include "resolve.h"

typedef struct vh_report_top {
    vh_disk_info *disk; /* the top (a reference) */
    vh_chain *chain;    /* its chain, top first; NULL when it could not be resolved */
    int error;          /* chain NULL: the errno */
    char *why;          /* chain NULL: the reason (the disk's own error for an unreadable one) */
} vh_report_top;

void vh_report_top_free(vh_report_top *t);

/*
 * The tops of `disks` (vh_disk_info*, sorted by path, as vh_store_list gives them) with their
 * chains: first the disks nothing leads to, in path order, then the uncovered ones. With
 * `unreadable`, a disk that cannot be read is a top of its own (chain NULL, why its error);
 * without, it is left out. `progress` (may be NULL) is told of the disks looked at.
 * A GPtrArray of vh_report_top*.
 */
GPtrArray *vh_report_tops(vh_resolver *r, GPtrArray *disks, bool unreadable,
                          vh_progress_fn progress, void *ctx);

/* True when every link holds and the chain reaches a base disk. */
bool vh_report_healthy(const vh_chain *c);
/* "ok      TOP (N disks)" or "BROKEN  TOP (N broken links)" (no newline). */
char *vh_report_headline(const vh_chain *c);
/* "TOP -> PARENT -> ... -> BASE", ending in " -> ?" when the chain stops short (no newline). */
char *vh_report_chain_line(const vh_chain *c);
/* "CHILD: VERDICT: DETAIL" for a link (no newline). */
char *vh_report_link_line(const vh_link *l);
/*
 * The text of @chains/TOP/status: the headline, one line per link, the base, the chain; for a
 * top whose chain is NULL: "UNREADABLE  TOP" and "TOP: unreadable: WHY".
 */
char *vh_report_status(const vh_disk_info *top, const vh_chain *c, const char *why);

#endif
