/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * resolve.h - the chain resolver: for a disk in the store, its chain with a verdict on every
 * link, following doc/design.md "Resolver rules" 1-5.
 *
 * Contract: the resolver reads disks only through the store index (vh_store_describe, which
 * probes identity and link structures) and looks paths up only with vh_winpath_lookup, so a
 * locator that leads outside STORE (by "..", an absolute path, or a symlink) is reported as
 * `outside-store` and its target is never opened. A link is `ok` when a locator, in rule 1's
 * order, leads to a disk that passes rule 3's identity check; otherwise its verdict says why
 * and, when the index holds exactly one (or one preferred) disk with the expected identity,
 * the heal target names it (rule 4). Only disks trusted for the child (vh_trusted, by the owners
 * the store gives now) count: a locator that leads to an untrusted disk is treated as not
 * leading there, an untrusted disk is never a candidate, and trusted candidates of different
 * owners are `ambiguous`. Nothing here writes.
 */
#ifndef VH_RESOLVE_H
#define VH_RESOLVE_H

#include "store.h"
#include "winpath.h"

typedef enum {
    VH_VERDICT_OK = 0,
    VH_VERDICT_PARENT_MISSING,
    VH_VERDICT_ID_MISMATCH,
    VH_VERDICT_SIZE_MISMATCH,
    VH_VERDICT_SECTOR_SIZE_MISMATCH,
    VH_VERDICT_FORMAT_MISMATCH,
    VH_VERDICT_CYCLE,
    VH_VERDICT_TOO_DEEP,
    VH_VERDICT_OUTSIDE_STORE,
    VH_VERDICT_PARENT_CORRUPT,
    VH_VERDICT_AMBIGUOUS,
    VH_VERDICT_COUNT_
} vh_verdict;

/* "ok", "parent-missing", "id-mismatch", ... (doc/design.md "Resolver rules" 5). */
const char *vh_verdict_name(vh_verdict v);
/* The errno that best describes a broken link (ENOENT, EINVAL, EXDEV, ELOOP, EIO). */
int vh_verdict_errno(vh_verdict v);

/* One parent locator of the child and where it led. */
typedef struct vh_locator_try {
    vh_locator_kind kind;
    char *stored;      /* the path as stored in the child */
    char *target;      /* store-relative path it led to (the file examined, or the first place
                        * tried); NULL when it maps to no place in the store */
    vh_wp_via via;     /* how target was derived from the stored path */
    vh_verdict result; /* OK: this locator gives the parent; otherwise why not */
    char *detail;      /* what was found there, in words */
} vh_locator_try;

typedef struct vh_link {
    char *child;           /* store-relative path of the differencing disk */
    vh_id expected_id;     /* the identity the child expects of its parent */
    vh_verdict verdict;    /* OK or the reason the link is broken */
    char *detail;          /* one line for people */
    char *parent;          /* OK: the parent the locators give */
    int via;               /* OK: index in tries of the locator that gave it; else -1 */
    bool stale;            /* OK, but an earlier locator in rule-1 order did not lead to it */
    char *heal_target;     /* broken: the one parent the index identified; else NULL */
    GPtrArray *candidates; /* char*: AMBIGUOUS: the tied disks; else every other disk of the
                            * expected identity that passed the checks */
    GPtrArray *tries;      /* vh_locator_try*, in the order tried */
    GPtrArray *warnings;   /* char*: not fatal (a VHD parent time stamp that differs) */
    bool index_stale;      /* a disk the index gave is no longer where it says (was left out,
                            * since its owner cannot be told): a rescan may find it */
} vh_link;

vh_link *vh_link_ref(vh_link *l);
void vh_link_unref(vh_link *l);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(vh_link, vh_link_unref)

typedef struct vh_chain {
    GPtrArray *disks; /* vh_disk_info*, the top first; heal targets are followed */
    GPtrArray *links; /* vh_link*: links[i] is the link of disks[i] */
    guint broken;     /* links whose verdict is not OK */
    bool complete;    /* ends at a base disk (through ok links or heal targets) */
} vh_chain;

void vh_chain_free(vh_chain *c);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(vh_chain, vh_chain_free)

/*
 * Whose disks may be a child's parent (doc/design.md "Many users on one mount"): a parent owned by
 * the child's owner or by root always; with GROUP also one whose group is the child's group;
 * with ANY every disk. OWNER (0) is the default of every caller.
 */
typedef enum {
    VH_TRUST_OWNER = 0,
    VH_TRUST_GROUP,
    VH_TRUST_ANY,
} vh_trust;

/* "owner", "group", "any"; parse gives false for anything else. */
const char *vh_trust_name(vh_trust t);
bool vh_trust_parse(const char *s, vh_trust *out);
/*
 * The one trust rule, used by the resolver (candidates and locator targets) and by the mount
 * (on the very inode it is about to use): may a disk owned by puid:pgid be the parent of a
 * child owned by cuid:cgid? It depends on the owners only, never on who asks.
 */
bool vh_trusted(vh_trust t, uid_t cuid, gid_t cgid, uid_t puid, gid_t pgid);

typedef struct vh_resolve_opts {
    const char *winroot; /* where Windows hosts see STORE, or NULL */
    guint maxdepth;      /* the longest chain followed, in disks (0: VH_DEFAULT_MAXDEPTH) */
    vh_trust trust;      /* whose disks may be parents (default: the child's owner's and root's) */
} vh_resolve_opts;

typedef struct vh_resolver vh_resolver;

/* The resolver keeps a reference-free pointer to the store: free the resolver first. */
vh_resolver *vh_resolver_new(vh_store *store, const vh_resolve_opts *opts);
void vh_resolver_free(vh_resolver *r);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(vh_resolver, vh_resolver_free)
/* Forgets memoized links (after the store changed). */
void vh_resolver_reset(vh_resolver *r);

/*
 * The link of the differencing disk at store-relative path `child` (memoized). NULL with *err
 * when the child cannot be read or is not a differencing disk.
 */
vh_link *vh_resolve_link(vh_resolver *r, const char *child, GError **err);
/*
 * The chain of the disk at store-relative path `rel`, the disk first. Heal targets are followed
 * so that one report shows every broken link; a link to a disk already in the chain becomes
 * `cycle`, and the link of the maxdepth-th disk `too-deep`. NULL with *err when `rel` itself
 * cannot be read.
 */
vh_chain *vh_resolve_chain(vh_resolver *r, const char *rel, GError **err);

/* What `vhdheal reconnect` would be given to fix a broken link (NULL when nothing would). */
const char *vh_link_fix_parent(const vh_link *l);

#endif
