// SPDX-License-Identifier: GPL-2.0-or-later
/* service.c - the engine as a long-lived, thread-safe service for the mount (see service.h). */
#include "service.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "journal.h"
#include "overlay_file.h"

#define DEFAULT_RESCAN_US G_USEC_PER_SEC

/* What the service remembers of one disk file, keyed by (device, inode) so renames keep it. */
typedef struct rec {
    vh_id id; /* the disk's identity when recorded: a reused inode number is not the same disk */
    vh_event_kind kind;
    int64_t time;
    int error;
    char *text;
    uint64_t size; /* the file when the event was recorded (failures hold while it is unchanged) */
    int64_t mtime_ns;
    int logged; /* 1 + the verdict last logged as detected, 0 for none */
    uint64_t logged_size;
    int64_t logged_mtime_ns;
} rec;

typedef struct {
    dev_t dev;
    ino_t ino;
} rec_key;

struct vh_service {
    vh_store *store;
    char *winroot;
    guint maxdepth;
    vh_trust trust;
    gint64 rescan_interval_us;
    GMutex lock;         /* guards records, last_scan_us */
    GHashTable *records; /* rec_key* -> rec* */
    gint64 last_scan_us; /* monotonic time the last scan began (0: never) */
    GRWLock repair_lock; /* rewrites hold it shared (gate + vh_reconnect), new writers exclusive */
    GHashTable *busy;    /* rec_key* of the children being rewritten now; guarded by lock */
    GCond busy_done;     /* a child left busy */
    vh_service_log_fn log;
    void *log_ctx;
    gint exchanges;      /* names for the index's middle step of RENAME_EXCHANGE */
    vh_overlay *overlay; /* opts.overlay: the patch sets of the children healed */
};

/* ---------------------------------------------------------------------------------------- */
/* Set-up */

static guint rec_key_hash(gconstpointer p)
{
    const rec_key *k = p;
    guint64 v = (guint64)k->ino ^ ((guint64)k->dev * 0x9e3779b97f4a7c15ull);
    return (guint)(v ^ (v >> 32));
}

static gboolean rec_key_eq(gconstpointer a, gconstpointer b)
{
    const rec_key *x = a, *y = b;
    return x->dev == y->dev && x->ino == y->ino;
}

static void rec_free(gpointer p)
{
    rec *r = p;
    g_free(r->text);
    g_free(r);
}

static void overlay_log(void *ctx, const char *line)
{
    vh_service *s = ctx;
    if (s->log)
        s->log(s->log_ctx, true, line);
}

vh_service *vh_service_new(const vh_service_opts *opts, GError **err)
{
    vh_store *store = vh_store_new(opts->store, err);
    if (!store)
        return NULL;
    vh_service *s = g_new0(vh_service, 1);
    s->store = store;
    s->winroot = g_strdup(opts->winroot);
    s->maxdepth = opts->maxdepth ? opts->maxdepth : VH_DEFAULT_MAXDEPTH;
    s->trust = opts->trust;
    s->rescan_interval_us =
        opts->rescan_interval_us > 0 ? opts->rescan_interval_us : DEFAULT_RESCAN_US;
    g_mutex_init(&s->lock);
    g_rw_lock_init(&s->repair_lock);
    g_cond_init(&s->busy_done);
    s->busy = g_hash_table_new_full(rec_key_hash, rec_key_eq, g_free, NULL);
    s->records = g_hash_table_new_full(rec_key_hash, rec_key_eq, g_free, rec_free);
    if (opts->overlay) {
        s->overlay = vh_overlay_new(overlay_log, s);
        vh_store_set_overlay(store, s->overlay);
    }
    if (s->overlay && opts->overlay_dir &&
        vh_overlay_set_dir(s->overlay, vh_store_root(store), opts->overlay_dir, true, err) < 0) {
        vh_service_free(s);
        return NULL;
    }
    return s;
}

vh_overlay *vh_service_overlay(vh_service *s)
{
    return s->overlay;
}

void vh_service_free(vh_service *s)
{
    if (!s)
        return;
    g_hash_table_unref(s->records);
    g_mutex_clear(&s->lock);
    g_rw_lock_clear(&s->repair_lock);
    g_cond_clear(&s->busy_done);
    g_hash_table_unref(s->busy);
    vh_store_free(s->store);
    vh_overlay_free(s->overlay);
    g_free(s->winroot);
    g_free(s);
}

void vh_service_set_log(vh_service *s, vh_service_log_fn fn, void *ctx)
{
    s->log = fn;
    s->log_ctx = ctx;
}

const char *vh_service_root(vh_service *s)
{
    return vh_store_root(s->store);
}

vh_store *vh_service_store(vh_service *s)
{
    return s->store;
}

static void logf_(vh_service *s, bool warning, const char *fmt, ...) G_GNUC_PRINTF(3, 4);
static void logf_(vh_service *s, bool warning, const char *fmt, ...)
{
    if (!s->log)
        return;
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *line = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    s->log(s->log_ctx, warning, line);
}

int vh_service_scan(vh_service *s, GError **err)
{
    g_mutex_lock(&s->lock);
    s->last_scan_us = g_get_monotonic_time();
    g_mutex_unlock(&s->lock);
    return vh_store_scan(s->store, err);
}

int vh_service_recover(vh_service *s, GError **err)
{
    g_autoptr(vh_journal) j = NULL;
    /* no journal: nothing was ever repaired here, and nothing is created */
    int r = vh_journal_open_existing(vh_service_root(s), &j, err);
    if (r < 0 || !j)
        return r;
    vh_recover_stats st = {0};
    r = vh_journal_recover(j, NULL, &st, err);
    if (st.rolled_back > 0)
        logf_(s, true, "journal: rolled back %d repair%s a crash interrupted", st.rolled_back,
              st.rolled_back == 1 ? "" : "s");
    for (guint k = 0; st.notes && k < st.notes->len; k++)
        logf_(s, true, "journal: %s", (char *)st.notes->pdata[k]);
    vh_recover_stats_clear(&st);
    return r;
}

/* ---------------------------------------------------------------------------------------- */
/* Records */

/* The record of a disk (created when asked); the caller holds s->lock. */
static rec *rec_of(vh_service *s, const vh_disk_info *i, bool create)
{
    rec_key key = {i->dev, i->ino};
    rec *r = g_hash_table_lookup(s->records, &key);
    if (r && !vh_id_equal(&r->id, &i->id)) {
        if (!create)
            return NULL;
        g_hash_table_remove(s->records, &key); /* another disk now has that inode */
        r = NULL;
    }
    if (!r && create) {
        r = g_new0(rec, 1);
        r->id = i->id;
        g_hash_table_insert(s->records, g_memdup2(&key, sizeof key), r);
    }
    return r;
}

/* Sets a disk's last event, made at `time`; `i` describes the file as it is after the event. */
static void record_event_at(vh_service *s, const vh_disk_info *i, vh_event_kind kind, int error,
                            const char *text, int64_t time)
{
    g_mutex_lock(&s->lock);
    rec *r = rec_of(s, i, true);
    r->kind = kind;
    r->time = time;
    r->error = error;
    g_free(r->text);
    r->text = g_strdup(text);
    r->size = i->file_size;
    r->mtime_ns = i->mtime_ns;
    g_mutex_unlock(&s->lock);
}

/* The same, made now. */
static void record_event(vh_service *s, const vh_disk_info *i, vh_event_kind kind, int error,
                         const char *text)
{
    record_event_at(s, i, kind, error, text, g_get_real_time() / G_USEC_PER_SEC);
}

void vh_event_clear(vh_event *e)
{
    g_clear_pointer(&e->text, g_free);
    e->kind = VH_EVENT_NONE;
}

void vh_service_last_event(vh_service *s, const vh_disk_info *disk, vh_event *out)
{
    memset(out, 0, sizeof *out);
    g_mutex_lock(&s->lock);
    rec *r = rec_of(s, disk, false);
    bool unchanged = r && r->size == disk->file_size && r->mtime_ns == disk->mtime_ns;
    if (r && r->kind != VH_EVENT_NONE && (r->kind == VH_EVENT_HEALED || unchanged)) {
        out->kind = r->kind;
        out->time = r->time;
        out->error = r->error;
        out->text = g_strdup(r->text);
    }
    g_mutex_unlock(&s->lock);
}

/* A patch set loaded from the overlay folder: its disk's last event is the repair it holds. */
static void overlay_loaded(void *ctx, const vh_patch_origin *o)
{
    vh_service *s = ctx;
    g_autoptr(vh_disk_info) now = vh_store_describe(s->store, o->rel, NULL);
    if (now)
        record_event_at(s, now, VH_EVENT_HEALED, 0, o->note, o->time);
}

int vh_service_load_overlay(vh_service *s, GError **err)
{
    return s->overlay ? vh_overlay_load(s->overlay, overlay_loaded, s, err) : 0;
}

/* Logs a broken link once per state of its child file (size, mtime) and verdict. */
static void note_detection(vh_service *s, const vh_disk_info *child, const vh_link *l)
{
    g_mutex_lock(&s->lock);
    rec *r = rec_of(s, child, true);
    bool seen = r->logged == (int)l->verdict + 1 && r->logged_size == child->file_size &&
                r->logged_mtime_ns == child->mtime_ns;
    r->logged = (int)l->verdict + 1;
    r->logged_size = child->file_size;
    r->logged_mtime_ns = child->mtime_ns;
    g_mutex_unlock(&s->lock);
    if (!seen)
        logf_(s, false, "detected %s: %s: %s", child->path, vh_verdict_name(l->verdict), l->detail);
}

/* ---------------------------------------------------------------------------------------- */
/* Questions */

vh_disk_info *vh_service_describe(vh_service *s, const char *rel, GError **err)
{
    return vh_store_describe(s->store, rel, err);
}

bool vh_disk_info_is_child(const vh_disk_info *i)
{
    return vh_disk_info_is_disk(i) && i->type == VH_TYPE_DIFFERENCING;
}

static vh_chain *resolve_fresh(vh_service *s, const char *rel, GError **err)
{
    vh_resolve_opts o = {.winroot = s->winroot, .maxdepth = s->maxdepth, .trust = s->trust};
    g_autoptr(vh_resolver) r = vh_resolver_new(s->store, &o);
    return vh_resolve_chain(r, rel, err);
}

static vh_link *link_fresh(vh_service *s, const char *rel, GError **err)
{
    vh_resolve_opts o = {.winroot = s->winroot, .maxdepth = s->maxdepth, .trust = s->trust};
    g_autoptr(vh_resolver) r = vh_resolver_new(s->store, &o);
    return vh_resolve_link(r, rel, err);
}

/* Does the child expect this identity of its parent? */
static bool expects(const vh_disk_info *c, const vh_id *id)
{
    return vh_id_equal(id, &c->link.parent_id) ||
           (c->link.has_parent_id2 && !vh_id_is_zero(&c->link.parent_id2) &&
            vh_id_equal(id, &c->link.parent_id2));
}

/* Does a heal target (or candidate) the index gave still hold the expected identity? */
static bool still_there(vh_service *s, const char *rel, const vh_disk_info *child)
{
    g_autoptr(vh_disk_info) i = vh_store_describe(s->store, rel, NULL);
    return vh_disk_info_is_disk(i) && expects(child, &i->id);
}

/*
 * What a rescan could change: 2 when the index proved stale (a heal target or candidate it gave
 * is gone or changed), 1 when a broken link has no target (its parent may have moved behind our
 * back), 0 when a rescan would not help.
 */
static int rescan_need(vh_service *s, const vh_chain *c)
{
    int need = 0;
    for (guint k = 0; k < c->links->len; k++) {
        const vh_link *l = c->links->pdata[k];
        const vh_disk_info *child = c->disks->pdata[k];
        if (l->verdict == VH_VERDICT_OK || l->verdict == VH_VERDICT_CYCLE ||
            l->verdict == VH_VERDICT_TOO_DEEP)
            continue;
        if ((l->heal_target && !still_there(s, l->heal_target, child)) || l->index_stale)
            return 2;
        for (guint j = 0; l->verdict == VH_VERDICT_AMBIGUOUS && j < l->candidates->len; j++)
            if (!still_there(s, l->candidates->pdata[j], child))
                return 2;
        if (!l->heal_target)
            need = 1;
    }
    return need;
}

/* Claims the next rescan when the last one began long enough ago. */
static bool rescan_due(vh_service *s)
{
    gint64 now = g_get_monotonic_time();
    g_mutex_lock(&s->lock);
    bool due = s->last_scan_us == 0 || now - s->last_scan_us >= s->rescan_interval_us;
    if (due)
        s->last_scan_us = now;
    g_mutex_unlock(&s->lock);
    return due;
}

vh_chain *vh_service_chain(vh_service *s, const char *rel, GError **err)
{
    vh_chain *c = resolve_fresh(s, rel, err);
    int need = c && c->broken > 0 ? rescan_need(s, c) : 0;
    if ((need == 2 || (need == 1 && rescan_due(s))) && vh_service_scan(s, NULL) == 0) {
        vh_chain_free(c);
        c = resolve_fresh(s, rel, err);
    }
    for (guint k = 0; c && k < c->links->len; k++) {
        const vh_link *l = c->links->pdata[k];
        if (l->verdict != VH_VERDICT_OK)
            note_detection(s, c->disks->pdata[k], l);
    }
    return c;
}

char *vh_link_parent_place(const vh_link *l, bool *in_store)
{
    *in_store = true;
    if (l->verdict == VH_VERDICT_OK && l->parent)
        return g_strdup(l->parent);
    for (guint k = 0; k < l->tries->len; k++) {
        const vh_locator_try *t = l->tries->pdata[k];
        if (t->target)
            return g_strdup(t->target);
    }
    *in_store = false;
    if (l->tries->len > 0)
        return g_strdup(((const vh_locator_try *)l->tries->pdata[0])->stored);
    return NULL;
}

static char *iso_time(int64_t t)
{
    g_autoptr(GDateTime) dt = g_date_time_new_from_unix_utc(t);
    return dt ? g_date_time_format_iso8601(dt) : g_strdup("?");
}

/* "broken <reason>: [<child>: ]<detail>[ (candidates)][; note]" for link k of a chain. */
static char *broken_status(vh_service *s, const vh_chain *c, guint k, const char *note)
{
    const vh_link *l = c->links->pdata[k];
    const vh_disk_info *child = c->disks->pdata[k];
    GString *st = g_string_new("broken ");
    g_string_append_printf(st, "%s: ", vh_verdict_name(l->verdict));
    if (k > 0)
        g_string_append_printf(st, "%s: ", child->path);
    g_string_append(st, l->detail ? l->detail : vh_verdict_name(l->verdict));
    if (l->verdict == VH_VERDICT_AMBIGUOUS && l->candidates->len > 0) {
        g_string_append(st, " (");
        for (guint j = 0; j < l->candidates->len; j++)
            g_string_append_printf(st, "%s%s", j ? ", " : "", (char *)l->candidates->pdata[j]);
        g_string_append(st, ")");
    }
    vh_event ev;
    vh_service_last_event(s, child, &ev);
    if (ev.kind == VH_EVENT_HEAL_FAILED)
        g_string_append_printf(st, "; not healed: %s", ev.text);
    else if (l->heal_target && note)
        g_string_append_printf(st, "; %s", note);
    vh_event_clear(&ev);
    return g_string_free(st, FALSE);
}

char *vh_service_status(vh_service *s, const vh_disk_info *disk, const vh_chain *chain,
                        const char *note)
{
    vh_event ev;
    vh_service_last_event(s, disk, &ev);
    if (ev.kind == VH_EVENT_FAILED)
        return g_steal_pointer(&ev.text);
    g_autofree char *evtext = g_steal_pointer(&ev.text);
    if (disk->error)
        return g_strdup_printf("broken corrupt: %s", disk->error);
    g_autoptr(vh_chain) own = NULL;
    if (!chain) {
        g_autoptr(GError) err = NULL;
        own = vh_service_chain(s, disk->path, &err);
        if (!own)
            return g_strdup_printf("broken corrupt: %s", err ? err->message : "unreadable");
        chain = own;
    }
    for (guint k = 0; k < chain->links->len; k++)
        if (((const vh_link *)chain->links->pdata[k])->verdict != VH_VERDICT_OK)
            return broken_status(s, chain, k, note);
    if (ev.kind == VH_EVENT_HEALED) {
        g_autofree char *when = iso_time(ev.time);
        return g_strdup_printf("healed %s%s: %s", s->overlay ? "(overlay) " : "", when, evtext);
    }
    return g_strdup("ok");
}

/* ---------------------------------------------------------------------------------------- */
/* Repairs */

void vh_service_lock_repairs(vh_service *s)
{
    g_rw_lock_writer_lock(&s->repair_lock);
}

void vh_service_unlock_repairs(vh_service *s)
{
    g_rw_lock_writer_unlock(&s->repair_lock);
}

/*
 * Rewrites of different children run side by side (a folder's relink waits on the disk's
 * flushes, not on the processor); two of one child never do: the second waits for the first
 * (and then finds the link healed), as one repair lock made every repair wait before.
 */
static void claim_child(vh_service *s, const vh_disk_info *child)
{
    rec_key key = {child->dev, child->ino};
    g_mutex_lock(&s->lock);
    while (g_hash_table_contains(s->busy, &key))
        g_cond_wait(&s->busy_done, &s->lock);
    g_hash_table_add(s->busy, g_memdup2(&key, sizeof key));
    g_mutex_unlock(&s->lock);
}

static void release_child(vh_service *s, const vh_disk_info *child)
{
    rec_key key = {child->dev, child->ino};
    g_mutex_lock(&s->lock);
    g_hash_table_remove(s->busy, &key);
    g_cond_broadcast(&s->busy_done);
    g_mutex_unlock(&s->lock);
}

typedef struct {
    vh_service *s;
    const char *rel;
} heal_cas;

/* The verdict re-run under the child's lock (the compare of a heal's compare-and-swap): the
 * child is probed again, so a link another process or host healed reads as ok. */
static int heal_still_broken(void *ctx, GError **err)
{
    heal_cas *c = ctx;
    vh_store_note_changed(c->s->store, c->rel);
    g_autoptr(GError) e = NULL;
    g_autoptr(vh_link) l = link_fresh(c->s, c->rel, &e);
    if (!l) {
        int code = vh_error_errno(e);
        g_propagate_error(err, g_steal_pointer(&e));
        return -code;
    }
    return l->verdict != VH_VERDICT_OK;
}

/* Overlay healing: the child's patch set goes into the table (and the overlay folder, with
 * `what` the repair did), for the file as it is now (the pinned descriptor's, else the path's);
 * a file that changed since the patch set was built fails the repair (EAGAIN), its patch set is
 * not kept. */
static int keep_patch(vh_service *s, const vh_disk_info *child, int child_fd, vh_patch *patch,
                      const char *what, int64_t when, GError **err)
{
    struct stat st;
    g_autofree char *abs = g_build_filename(vh_service_root(s), child->path, NULL);
    vh_file f = {.fd = -1};
    if (child_fd >= 0)
        f.fd = dup(child_fd);
    else if (vh_file_open_beneath(&f, vh_store_root_fd(s->store), child->path, abs, false, err) < 0)
        return -vh_error_errno(*err);
    vh_autofd int fd = f.fd;
    f.fd = -1;
    vh_file_close(&f);
    if (fd < 0 || fstat(fd, &st) < 0)
        return vh_fail(err, errno, "%s: %s", abs, g_strerror(errno));
    if ((uint64_t)st.st_size != vh_patch_base_size(patch) || st.st_dev != child->dev ||
        st.st_ino != child->ino)
        return vh_fail(err, EAGAIN, "%s: changed while its overlay was being built", abs);
    vh_patch_origin org;
    g_autoptr(GError) e = NULL;
    if (vh_patch_origin_of(&org, patch, fd, child->path, what, when, &e) < 0) {
        logf_(s, true, "%s: the repair is kept in memory only", e->message);
        vh_overlay_put(s->overlay, &st, patch, NULL);
        return 0;
    }
    vh_overlay_put(s->overlay, &st, patch, &org);
    vh_patch_origin_clear(&org);
    return 0;
}

/* Is the child (the pinned descriptor's file, else the path's) presented through a patch set? */
static bool presented(vh_service *s, const vh_disk_info *child, int child_fd)
{
    struct stat st;
    if (child_fd >= 0
            ? fstat(child_fd, &st) < 0
            : fstatat(vh_store_root_fd(s->store), child->path, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return false;
    g_autoptr(vh_patch) p = vh_overlay_get(s->overlay, &st, child->path);
    return p != NULL;
}

/* The gate, then vh_reconnect, under the repair lock; `heal`: a heal's compare-and-swap. */
static int rewrite(vh_service *s, const vh_disk_info *child, const char *parent_abs, bool force,
                   bool heal, const char *what, int64_t when, vh_gate_fn gate, void *ctx,
                   vh_reconnect_result *res, GError **err)
{
    g_autofree char *child_abs = g_build_filename(vh_service_root(s), child->path, NULL);
    heal_cas cas = {s, child->path};
    vh_reconnect_opts o = {.store = vh_service_root(s),
                           .winroot = s->winroot,
                           .ignore_id_mismatch = force,
                           .maxdepth = (int)s->maxdepth,
                           .still_broken = heal ? heal_still_broken : NULL,
                           .still_broken_ctx = &cas,
                           .overlay = s->overlay != NULL};
    vh_reconnect_pin pin = {-1, -1};
    int r = 0;
    memset(res, 0, sizeof *res);
    claim_child(s, child);
    g_rw_lock_reader_lock(&s->repair_lock);
    if (gate) {
        g_autofree char *why = NULL;
        r = gate(ctx, child, parent_abs, &pin, &why);
        if (r < 0)
            vh_fail(err, -r, "%s: %s", child->path, why ? why : g_strerror(-r));
    }
    o.pin = &pin;
    o.overlay_presented = r == 0 && s->overlay && presented(s, child, pin.child_fd);
    if (r == 0)
        r = vh_reconnect(child_abs, parent_abs, &o, res, err);
    if (r == 0 && res->patch)
        r = keep_patch(s, child, pin.child_fd, res->patch, what, when, err);
    g_rw_lock_reader_unlock(&s->repair_lock);
    release_child(s, child);
    if (pin.child_fd >= 0)
        close(pin.child_fd);
    if (pin.parent_fd >= 0)
        close(pin.parent_fd);
    return r;
}

/* The repair's journal id, or what stands for it in overlay healing. */
static const char *repair_name(const vh_reconnect_result *res)
{
    return res->repair_id ? res->repair_id : res->patch ? "overlay: the store is unchanged" : "-";
}

/* The index learns of a rewritten child; returns its new entry (or the old one). */
static vh_disk_info *after_rewrite(vh_service *s, const vh_disk_info *child)
{
    vh_store_note_changed(s->store, child->path);
    vh_disk_info *now = vh_store_describe(s->store, child->path, NULL);
    return now ? now : vh_disk_info_ref((vh_disk_info *)child);
}

/* A store-relative name for a path given to a repair (as given when it is outside). */
static char *store_name(vh_service *s, const char *path)
{
    char *rel = vh_store_relpath(vh_service_root(s), path);
    return rel ? rel : g_strdup(path);
}

int vh_service_reconnect(vh_service *s, const char *child_rel, const char *parent, bool force,
                         vh_gate_fn gate, void *ctx, vh_reconnect_result *res, GError **err)
{
    memset(res, 0, sizeof *res);
    g_autoptr(GError) e = NULL;
    g_autoptr(vh_disk_info) child = vh_store_describe(s->store, child_rel, &e);
    if (!child) {
        int code = vh_error_errno(e);
        g_propagate_error(err, g_steal_pointer(&e));
        return -code;
    }
    int r = 0;
    if (child->error)
        r = vh_fail(&e, EIO, "%s: the child cannot be read: %s", child_rel, child->error);
    else if (child->format == VH_FORMAT_NONE)
        r = vh_fail(&e, ENOTSUP, "%s: not a VHD or VHDX file", child_rel);
    else if (child->type != VH_TYPE_DIFFERENCING)
        r = vh_fail(&e, ENOTSUP, "%s: a %s %s disk has no parent to reconnect", child_rel,
                    vh_type_name(child->type), vh_format_name(child->format));
    g_autofree char *parent_abs = g_path_is_absolute(parent)
                                      ? g_strdup(parent)
                                      : g_build_filename(vh_service_root(s), parent, NULL);
    g_autofree char *pname = store_name(s, parent_abs);
    g_autofree char *what = g_strdup_printf("reconnected to %s on request%s", pname,
                                            force ? ", ignoring the identity" : "");
    int64_t when = g_get_real_time() / G_USEC_PER_SEC; /* the event's and its patch file's */
    if (r == 0)
        r = rewrite(s, child, parent_abs, force, false, what, when, gate, ctx, res, &e);
    if (r == 0 && res->already_healed) {
        vh_store_note_changed(s->store, child->path);
        logf_(s, false, "reconnect of %s to %s: already linked to it, nothing written", child_rel,
              pname);
        return 0;
    }
    if (r == 0) {
        g_autoptr(vh_disk_info) now = after_rewrite(s, child);
        record_event_at(s, now, VH_EVENT_HEALED, 0, what, when);
        logf_(s, false, "reconnected %s to %s on request%s (was: %s) [repair %s]", child_rel, pname,
              force ? " ignoring the identity" : "", res->old_link, repair_name(res));
        return 0;
    }
    if (child->format != VH_FORMAT_NONE) {
        /* the failure holds while the file stays as it is now */
        g_autoptr(vh_disk_info) now = vh_store_describe(s->store, child_rel, NULL);
        record_event(s, now ? now : child, VH_EVENT_FAILED, -r, e->message);
    }
    logf_(s, true, "reconnect of %s to %s refused: %s", child_rel, pname, e->message);
    g_propagate_error(err, g_steal_pointer(&e));
    return r;
}

/* Heals one link when it is broken and has a heal target; 1 when the child was rewritten. */
static int heal_link(vh_service *s, const vh_disk_info *child, const vh_link *l, const char *why,
                     vh_gate_fn gate, void *ctx, GPtrArray *changed)
{
    if (l->verdict == VH_VERDICT_OK || l->verdict == VH_VERDICT_AMBIGUOUS || !l->heal_target)
        return 0;
    g_autofree char *target = g_build_filename(vh_service_root(s), l->heal_target, NULL);
    g_autoptr(GError) e = NULL;
    vh_reconnect_result res;
    const char *reason = vh_verdict_name(l->verdict);
    g_autofree char *what = g_strdup_printf("%s: reconnected to %s%s", reason, l->heal_target, why);
    int64_t when = g_get_real_time() / G_USEC_PER_SEC; /* the event's and its patch file's */
    int r = rewrite(s, child, target, false, true, what, when, gate, ctx, &res, &e);
    if (r == 0 && res.already_healed) {
        /* another process or host healed it meanwhile: the index learns of its new link */
        vh_store_note_changed(s->store, child->path);
        vh_reconnect_result_clear(&res);
        return 0;
    }
    if (r == 0) {
        g_autoptr(vh_disk_info) now = after_rewrite(s, child);
        record_event_at(s, now, VH_EVENT_HEALED, 0, what, when);
        logf_(s, false, "healed %s: %s: reconnected to %s%s (was: %s) [repair %s]", child->path,
              reason, l->heal_target, why, res.old_link, repair_name(&res));
        if (changed)
            g_ptr_array_add(changed, g_steal_pointer(&now));
        vh_reconnect_result_clear(&res);
        return 1;
    }
    vh_reconnect_result_clear(&res);
    /* Logged once per state of the file and message, so that repeated opens stay quiet. */
    vh_event ev;
    g_autoptr(vh_disk_info) now = vh_store_describe(s->store, child->path, NULL);
    const vh_disk_info *cur = now ? now : child;
    vh_service_last_event(s, cur, &ev);
    bool seen = ev.kind == VH_EVENT_HEAL_FAILED && g_strcmp0(ev.text, e->message) == 0;
    vh_event_clear(&ev);
    record_event(s, cur, VH_EVENT_HEAL_FAILED, -r, e->message);
    if (!seen)
        logf_(s, true, "not healed %s: %s: %s", child->path, reason, e->message);
    return 0;
}

int vh_service_heal(vh_service *s, const char *rel, vh_gate_fn gate, void *ctx, GPtrArray *changed,
                    GError **err)
{
    g_autoptr(GError) e = NULL;
    g_autoptr(vh_chain) c = vh_service_chain(s, rel, &e);
    if (!c) {
        int code = vh_error_errno(e);
        g_propagate_error(err, g_steal_pointer(&e));
        return -code;
    }
    int n = 0;
    for (guint k = 0; k < c->links->len; k++)
        n += heal_link(s, c->disks->pdata[k], c->links->pdata[k], "", gate, ctx, changed);
    return n;
}

/* Store paths of the children of moved disks and of moved children, sorted, no duplicates. */
static GPtrArray *relink_candidates(vh_service *s, GPtrArray *moved)
{
    g_autoptr(GHashTable) seen = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    GPtrArray *out = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GPtrArray) all = vh_store_list(s->store, NULL);
    for (guint k = 0; k < all->len; k++) {
        const vh_disk_info *c = all->pdata[k];
        if (!vh_disk_info_is_child(c))
            continue;
        bool hit = false;
        for (guint m = 0; m < moved->len && !hit; m++) {
            const vh_disk_info *d = moved->pdata[m];
            hit = d == c || (vh_disk_info_is_disk(d) && expects(c, &d->id));
        }
        if (hit && g_hash_table_add(seen, g_strdup(c->path)))
            g_ptr_array_add(out, g_strdup(c->path));
    }
    return out;
}

/* One relink after a rename: its children, shared by the threads that work through them. */
typedef struct {
    vh_service *s;
    GPtrArray *todo; /* store paths */
    const char *why;
    vh_gate_fn gate;
    void *ctx;
    gint next;          /* the next index of todo to take (atomic) */
    GMutex lock;        /* guards the fields below */
    int n;              /* links repaired */
    GPtrArray *changed; /* vh_disk_info*: rewritten children */
} relink_job;

/* Children relinked at once: each rewrite mostly waits for its flushes (about 20 per child). */
#define RELINK_THREADS 8

/*
 * A scan that began before the rename may have put back what the rename changed (the index
 * keeps the walk it made): walk once more, once for the whole relink.
 */
static void relink_one(relink_job *job, const char *rel)
{
    vh_service *s = job->s;
    g_autoptr(vh_disk_info) child = vh_store_describe(s->store, rel, NULL);
    g_autoptr(vh_link) l = vh_disk_info_is_child(child) ? link_fresh(s, rel, NULL) : NULL;
    if (!l || l->verdict == VH_VERDICT_OK)
        return;
    note_detection(s, child, l);
    g_autoptr(GPtrArray) changed =
        g_ptr_array_new_with_free_func((GDestroyNotify)vh_disk_info_unref);
    int n = heal_link(s, child, l, job->why, job->gate, job->ctx, changed);
    g_mutex_lock(&job->lock);
    job->n += n;
    if (!job->changed)
        job->changed = g_ptr_array_new_with_free_func((GDestroyNotify)vh_disk_info_unref);
    for (guint k = 0; k < changed->len; k++)
        g_ptr_array_add(job->changed, vh_disk_info_ref(changed->pdata[k]));
    g_mutex_unlock(&job->lock);
}

static gpointer relink_thread(gpointer data)
{
    relink_job *job = data;
    for (;;) {
        guint k = (guint)g_atomic_int_add(&job->next, 1);
        if (k >= job->todo->len)
            return NULL;
        relink_one(job, job->todo->pdata[k]);
    }
}

/*
 * Works through job->todo from up to RELINK_THREADS threads (the caller's is one of them). The
 * threads start with every signal blocked: a signal meant for the caller's program must not land
 * in a thread that does not expect it.
 */
static void run_relinks(relink_job *job)
{
    guint extra = MIN(job->todo->len, (guint)RELINK_THREADS) - (job->todo->len > 0 ? 1 : 0);
    g_autoptr(GPtrArray) threads = g_ptr_array_new();
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    for (guint k = 0; k < extra; k++) {
        GThread *t = g_thread_try_new("vh-relink", relink_thread, job, NULL);
        if (!t)
            break; /* fewer threads: the work still gets done */
        g_ptr_array_add(threads, t);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    relink_thread(job);
    for (guint k = 0; k < threads->len; k++)
        g_thread_join(threads->pdata[k]);
}

int vh_service_renamed(vh_service *s, const char *from, const char *to, bool exchange, bool relink,
                       vh_gate_fn gate, void *ctx, GPtrArray *changed)
{
    if (exchange) {
        /* through a name no file of the store can have (.vhdheal/ is never indexed) */
        g_autofree char *tmp =
            g_strdup_printf(".vhdheal/exchange-%d", g_atomic_int_add(&s->exchanges, 1));
        vh_store_note_rename(s->store, from, tmp);
        vh_store_note_rename(s->store, to, from);
        vh_store_note_rename(s->store, tmp, to);
    } else {
        vh_store_note_rename(s->store, from, to);
    }
    /* A scan running now applies these notes to what it found (store.c). Relinking needs the
       whole index: wait for the first scan to finish. */
    if (relink && !vh_store_scanned(s->store))
        vh_service_scan(s, NULL);
    if (!relink)
        return 0;
    g_autoptr(GPtrArray) moved = vh_store_list(s->store, to);
    if (exchange) {
        g_autoptr(GPtrArray) back = vh_store_list(s->store, from);
        for (guint k = 0; k < back->len; k++)
            g_ptr_array_add(moved, vh_disk_info_ref(back->pdata[k]));
    }
    if (moved->len == 0)
        return 0;
    g_autoptr(GPtrArray) todo = relink_candidates(s, moved);
    g_autofree char *why = exchange ? g_strdup_printf(" after %s and %s were exchanged", from, to)
                                    : g_strdup_printf(" after %s moved to %s", from, to);
    relink_job job = {.s = s, .todo = todo, .why = why, .gate = gate, .ctx = ctx};
    g_mutex_init(&job.lock);
    run_relinks(&job);
    g_mutex_clear(&job.lock);
    if (changed && job.changed)
        for (guint k = 0; k < job.changed->len; k++)
            g_ptr_array_add(changed, vh_disk_info_ref(job.changed->pdata[k]));
    g_clear_pointer(&job.changed, g_ptr_array_unref);
    return job.n;
}

void vh_service_record_failure(vh_service *s, const vh_disk_info *disk, int error,
                               const char *message)
{
    record_event(s, disk, VH_EVENT_FAILED, error, message);
}

void vh_service_unlinked(vh_service *s, const char *rel)
{
    vh_store_note_unlink(s->store, rel);
}

void vh_service_changed(vh_service *s, const char *rel)
{
    vh_store_note_changed(s->store, rel);
}

/* ---------------------------------------------------------------------------------------- */
/* Parents in use */

/* The last component of a locator's path (Windows or POSIX separators). */
static const char *locator_base(const char *path)
{
    const char *b = path;
    for (const char *p = path; *p; p++)
        if (*p == '\\' || *p == '/')
            b = p + 1;
    return b;
}

/* Could a locator of child c name a file called `base`? (Only those are resolved.) */
static bool may_point_at(const vh_disk_info *c, const char *base)
{
    for (guint k = 0; c->link.locators && k < c->link.locators->len; k++) {
        const vh_locator *l = c->link.locators->pdata[k];
        if (g_ascii_strcasecmp(locator_base(l->path), base) == 0)
            return true;
    }
    return false;
}

GPtrArray *vh_service_children(vh_service *s, const char *rel, GError **err)
{
    g_autoptr(vh_disk_info) disk = vh_store_describe(s->store, rel, err);
    if (!disk)
        return NULL;
    GPtrArray *out = g_ptr_array_new_with_free_func(g_free);
    if (!vh_disk_info_is_disk(disk))
        return out;
    if (!vh_store_scanned(s->store))
        vh_service_scan(s, NULL);
    g_autofree char *base = g_path_get_basename(disk->path);
    vh_resolve_opts o = {.winroot = s->winroot, .maxdepth = s->maxdepth, .trust = s->trust};
    struct stat ds;
    if (fstatat(vh_store_root_fd(s->store), disk->path, &ds, AT_SYMLINK_NOFOLLOW) < 0)
        return out; /* gone meanwhile: nobody's parent */
    g_autoptr(vh_resolver) r = vh_resolver_new(s->store, &o);
    g_autoptr(GPtrArray) all = vh_store_list(s->store, NULL);
    for (guint k = 0; k < all->len; k++) {
        const vh_disk_info *c = all->pdata[k];
        if (!vh_disk_info_is_child(c) || strcmp(c->path, disk->path) == 0)
            continue;
        /* only a child that trusts the disk counts (doc/design.md "Many users on one mount"):
         * another user's child must not stop the owner from writing their own disk */
        struct stat cs;
        if (fstatat(vh_store_root_fd(s->store), c->path, &cs, AT_SYMLINK_NOFOLLOW) < 0 ||
            !vh_trusted(s->trust, cs.st_uid, cs.st_gid, ds.st_uid, ds.st_gid))
            continue;
        bool uses = expects(c, &disk->id);
        if (!uses && may_point_at(c, base)) {
            vh_link *l = vh_resolve_link(r, c->path, NULL);
            uses = l && l->verdict == VH_VERDICT_OK && g_strcmp0(l->parent, disk->path) == 0;
            if (l)
                vh_link_unref(l);
        }
        if (uses)
            g_ptr_array_add(out, g_strdup(c->path));
    }
    return out;
}

char *vh_children_text(const GPtrArray *children)
{
    enum { SHOWN = 5 };
    GString *t = g_string_new(NULL);
    guint n = MIN(children->len, SHOWN);
    for (guint k = 0; k < n; k++)
        g_string_append_printf(t, "%s%s", k ? ", " : "", (const char *)children->pdata[k]);
    if (children->len > n)
        g_string_append_printf(t, " and %u more", children->len - n);
    return g_string_free(t, FALSE);
}

int vh_parent_write_check(const char *path, const char *store_opt, bool force, GError **err)
{
    if (force)
        return 0;
    g_autoptr(GError) e = NULL;
    char *paths[] = {(char *)path};
    g_autofree char *root = vh_store_determine(store_opt, paths, 1, false, &e);
    g_autofree char *rel = root ? vh_store_relpath(root, path) : NULL;
    vh_service_opts o = {.store = root};
    g_autoptr(vh_service) s = rel ? vh_service_new(&o, &e) : NULL;
    g_autoptr(GPtrArray) kids = s ? vh_service_children(s, rel, &e) : NULL;
    if (!kids) {
        if (!e)
            vh_fail(&e, EINVAL, "%s: not inside the store %s", path, root);
        int code = vh_error_errno(e);
        g_propagate_error(err, g_steal_pointer(&e));
        return -code;
    }
    if (kids->len == 0)
        return 0;
    g_autofree char *names = vh_children_text(kids);
    return vh_fail(err, EBUSY,
                   "%s: refused: it is the parent of %u disk%s in %s (%s); writing it would break "
                   "them (--force writes anyway)",
                   path, kids->len, kids->len == 1 ? "" : "s", root, names);
}
