/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * service.h - the engine as a long-lived service for the mount: one store index kept warm for
 * the life of the service, the resolver's verdicts on demand, repairs through the reconnect
 * engine, and the last repair event of every disk (for user.vhd.status).
 *
 * Contract: every function is thread-safe. Paths are store-relative POSIX paths unless a comment
 * says otherwise. Verdicts are never cached: each query re-stats the files it looks at
 * (vh_store_describe), so changes made behind the service's back are noticed; a link that is
 * broken with no heal target makes the service rescan the store incrementally (at most once per
 * rescan interval) before it gives the verdict, so a parent moved behind its back is found.
 * Repairs of one child run one at a time; repairs of different children may run side by side
 * (a relink after a rename rewrites its children from a few threads), each through vh_reconnect
 * (journaled, under the child's OFD lock) with the repair lock held shared; a gate given by the
 * caller is asked, with the repair lock held, whether a child may be rewritten now. The service
 * writes nothing but through vh_reconnect and vh_journal_recover.
 */
#ifndef VH_SERVICE_H
#define VH_SERVICE_H

#include "reconnect.h"
#include "resolve.h"

typedef struct vh_service vh_service;

typedef struct vh_service_opts {
    const char *store;         /* the store folder */
    const char *winroot;       /* where Windows hosts see the store, or NULL */
    guint maxdepth;            /* the longest chain followed (0: VH_DEFAULT_MAXDEPTH) */
    gint64 rescan_interval_us; /* least time between rescans for a lost parent (0: 1 s) */
    vh_trust trust;            /* whose disks may be parents (resolve.h; default owner) */
    /* Overlay healing (healmode=overlay, ro): repairs build patch sets (overlay.h) kept in the
     * service's table instead of writing the store; the index and the chain opener read the
     * patched files through them. Nothing in the store is written, no journal is used. */
    bool overlay;
    /* With overlay: the overlay folder (outside the store) where every patch set is saved too,
     * and vh_service_load_overlay loads them from (overlay.h vh_overlay_set_dir). */
    const char *overlay_dir;
} vh_service_opts;

/* One line for the log: a detection, a repair, or a repair that failed (warning). */
typedef void (*vh_service_log_fn)(void *ctx, bool warning, const char *line);

vh_service *vh_service_new(const vh_service_opts *opts, GError **err);
void vh_service_free(vh_service *s);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(vh_service, vh_service_free)

void vh_service_set_log(vh_service *s, vh_service_log_fn fn, void *ctx);
const char *vh_service_root(vh_service *s); /* realpath of the store */
vh_store *vh_service_store(vh_service *s);
/* The overlays of the store (opts.overlay), or NULL when repairs are written. */
vh_overlay *vh_service_overlay(vh_service *s);
/* Loads the patch sets saved in opts.overlay_dir (after vh_service_set_log: what is dropped or
 * ignored is logged); each one's disk gets the repair it holds as its last event (HEALED, with
 * the time and text saved). Returns the number loaded (0 without a folder), or -errno. */
int vh_service_load_overlay(vh_service *s, GError **err);

/* Scans the store (incrementally after the first scan). */
int vh_service_scan(vh_service *s, GError **err);
/*
 * Rolls back every unfinished repair in STORE/.vhdheal/journal (nothing, and nothing created,
 * when there is no journal). Returns the number rolled back, or -errno.
 */
int vh_service_recover(vh_service *s, GError **err);

/* What the file at rel is (re-stated now). NULL with *err (ENOENT, ...) when it cannot be. */
vh_disk_info *vh_service_describe(vh_service *s, const char *rel, GError **err);
/* True for a readable differencing disk. */
bool vh_disk_info_is_child(const vh_disk_info *i);

/*
 * The chain of the disk at rel with a fresh verdict on every link (see the contract about
 * rescans). Each broken link is logged once per state of its child file. NULL with *err when rel
 * is not a readable disk.
 */
vh_chain *vh_service_chain(vh_service *s, const char *rel, GError **err);

/*
 * Where a link says the parent is: the resolved parent when the link holds; else where the
 * locators point (the first, in rule-1 order, that maps into the store), with *in_store true;
 * else the first locator's text as stored, with *in_store false. NULL when the child has no
 * locator at all.
 */
char *vh_link_parent_place(const vh_link *l, bool *in_store);

/* --- the last event of a disk --- */

typedef enum {
    VH_EVENT_NONE = 0,
    VH_EVENT_HEALED,      /* a repair rewrote the disk's link (automatic or asked for) */
    VH_EVENT_FAILED,      /* an asked-for repair failed: the status is its message */
    VH_EVENT_HEAL_FAILED, /* an automatic repair could not be made */
} vh_event_kind;

typedef struct vh_event {
    vh_event_kind kind;
    int64_t time; /* unix seconds */
    int error;    /* FAILED, HEAL_FAILED: the errno */
    char *text;   /* HEALED: what was done; FAILED/HEAL_FAILED: the message */
} vh_event;

void vh_event_clear(vh_event *e);
/*
 * The disk's last event, if it still applies: a failure only while the file is unchanged since,
 * a heal while the disk keeps its identity. out->kind is VH_EVENT_NONE otherwise.
 */
void vh_service_last_event(vh_service *s, const vh_disk_info *disk, vh_event *out);

/*
 * user.vhd.status for a disk: the message of a failed asked-for repair; `broken <reason>:
 * <detail>` for the first broken link of its chain (naming the child when it is an ancestor's,
 * listing the candidates of an ambiguous one, and then either why an automatic repair failed or
 * `note` when the link has a heal target); `healed <ISO time>: <what>`; else `ok`. A disk that
 * cannot be read is `broken corrupt: <message>`. `chain` may be NULL (then it is resolved).
 */
char *vh_service_status(vh_service *s, const vh_disk_info *disk, const vh_chain *chain,
                        const char *note);

/* --- repairs --- */

/*
 * May the child be rewritten now, to the parent at parent_abs? 0, or a negative errno (EBUSY,
 * EACCES, ...) with *why set to a message. Called with the repair lock held, right before the
 * rewrite. The gate may pin the files it checked (pin->child_fd, pin->parent_fd, both -1 when
 * called): the repair then uses exactly those (vh_reconnect_pin), and the service closes them.
 */
typedef int (*vh_gate_fn)(void *ctx, const vh_disk_info *child, const char *parent_abs,
                          vh_reconnect_pin *pin, char **why);

/* Exclusive against every rewrite: whoever must not overlap one (a new writer) takes it. */
void vh_service_lock_repairs(vh_service *s);
void vh_service_unlock_repairs(vh_service *s);

/*
 * Reconnects the differencing disk at child_rel to the disk at parent (an absolute path, or one
 * relative to the store), as Set-VHD -ParentPath [-IgnoreIdMismatch]: the errors of
 * reconnect.h, plus ENOTSUP for a child that is not a differencing disk and EIO for one that
 * cannot be read. The outcome becomes the child's last event (HEALED or FAILED), is logged, and
 * the index learns of the change.
 */
int vh_service_reconnect(vh_service *s, const char *child_rel, const char *parent, bool force,
                         vh_gate_fn gate, void *ctx, vh_reconnect_result *res, GError **err);

/*
 * Heals the chain of the disk at rel: every broken link of rel and of its ancestors that has a
 * heal target is reconnected to it; ambiguous links and links without a target are left alone;
 * a child the gate refuses, or whose repair fails, is left as it is (HEAL_FAILED, logged).
 * Returns the number of links repaired and adds to `changed` (if not NULL) the vh_disk_info of
 * every rewritten child; -errno when rel is not a readable disk.
 */
int vh_service_heal(vh_service *s, const char *rel, vh_gate_fn gate, void *ctx, GPtrArray *changed,
                    GError **err);

/*
 * After `from` was renamed to `to` in the store (a file or a folder; with exchange, each took
 * the other's place): tells the index, and with relink reconnects every differencing disk whose
 * expected parent is a moved disk, and every moved differencing disk, whose link is broken and
 * has a heal target (as vh_service_heal does), several of them at once (the gate
 * must be thread-safe). Returns the number of links repaired; `changed` as for vh_service_heal.
 */
int vh_service_renamed(vh_service *s, const char *from, const char *to, bool exchange, bool relink,
                       vh_gate_fn gate, void *ctx, GPtrArray *changed);

/*
 * Records the failure of an asked-for repair that the caller refused before asking the service
 * (a value it could not accept): the disk's status becomes `message`.
 */
void vh_service_record_failure(vh_service *s, const vh_disk_info *disk, int error,
                               const char *message);

/* --- parents in use --- */

/*
 * The differencing disks of the store that use the disk at rel as their parent: every child
 * that expects its identity, and every child whose link resolves to it (a VHD parent keeps its
 * identity when written, so its children would read other content and still look healthy).
 * Waits for the first scan. A sorted GPtrArray of store paths (char *), empty when rel is no
 * readable disk or has no children; NULL with *err when rel cannot be examined.
 */
GPtrArray *vh_service_children(vh_service *s, const char *rel, GError **err);
/* "a.vhdx, b.vhdx and 3 more": the first few of a list of paths, for one line. */
char *vh_children_text(const GPtrArray *children);

/*
 * For `vhdheal write`: refuses (-EBUSY, *err naming the children) to write the disk at path
 * while disks of its store use it as their parent; the store is store_opt, or determined from
 * path as for every command. 0 when no disk uses it, or when force is set.
 */
int vh_parent_write_check(const char *path, const char *store_opt, bool force, GError **err);

/* The file at rel was removed, or created or written (it is re-read now). */
void vh_service_unlinked(vh_service *s, const char *rel);
void vh_service_changed(vh_service *s, const char *rel);

#endif
