// SPDX-License-Identifier: GPL-2.0-or-later
/* flat.c - a chain read as one flat virtual disk by many threads, and a bounded cache of such
 * readers (see flat.h). */
#include "flat.h"

#include <fcntl.h>
#include <sys/stat.h>

/* What a member file was when it was opened; a differing stat makes the reader stale. */
typedef struct member {
    char *path; /* store-relative */
    dev_t dev;
    ino_t ino;
    uint64_t size;
    int64_t mtime_ns;
} member;

struct vh_flat {
    gint ref;
    guint64 serial;
    vh_store *store;
    vh_disk *top;    /* owns its parents */
    member *members; /* the top first */
    guint n;
    GMutex map_lock; /* the formats' bitmap caches are not thread-safe: one mapper at a time */
};

static guint64 next_serial = 1; /* atomic (__atomic builtins: GLib has no 64-bit add) */

static bool member_matches(const member *m, const struct stat *st)
{
    return m->dev == st->st_dev && m->ino == st->st_ino && m->size == (uint64_t)st->st_size &&
           m->mtime_ns == vh_mtime_ns(st);
}

/* Every link is crossable: ok, or broken with one heal target (the opener's rule with
 * use_heal_target). */
int vh_flat_chain_ok(const vh_chain *c, GError **err)
{
    return vh_chain_usable(NULL, c, true, err);
}

/* Remembers what a member file is now (the opener checked it is the disk the index described). */
static int note_member(const vh_disk_info *i, const vh_disk *d, member *m, GError **err)
{
    struct stat st;
    if (fstat(d->file.fd, &st) < 0)
        return vh_fail(err, errno, "%s: %s", d->file.path, g_strerror(errno));
    m->path = g_strdup(i->path);
    m->dev = st.st_dev;
    m->ino = st.st_ino;
    m->size = (uint64_t)st.st_size;
    m->mtime_ns = vh_mtime_ns(&st);
    return 0;
}

int vh_flat_open(vh_store *store, const vh_chain *c, vh_flat **out, GError **err)
{
    *out = NULL;
    int r = vh_flat_chain_ok(c, err);
    if (r < 0)
        return r;
    vh_flat *f = g_new0(vh_flat, 1);
    f->ref = 1;
    f->serial = __atomic_fetch_add(&next_serial, 1, __ATOMIC_RELAXED);
    f->store = store;
    f->members = g_new0(member, c->disks->len);
    g_mutex_init(&f->map_lock);
    r = vh_chain_open_resolved(store, c, false, &f->top, err);
    guint k = 0;
    for (vh_disk *d = f->top; r == 0 && d; d = d->parent, k++) {
        r = note_member(c->disks->pdata[k], d, &f->members[k], err);
        f->n = k + 1;
    }
    if (r < 0) {
        vh_flat_unref(f);
        return r;
    }
    *out = f;
    return 0;
}

vh_flat *vh_flat_ref(vh_flat *f)
{
    if (f)
        g_atomic_int_inc(&f->ref);
    return f;
}

void vh_flat_unref(vh_flat *f)
{
    if (!f || !g_atomic_int_dec_and_test(&f->ref))
        return;
    vh_disk_close(f->top);
    for (guint k = 0; k < f->n; k++)
        g_free(f->members[k].path);
    g_free(f->members);
    g_mutex_clear(&f->map_lock);
    g_free(f);
}

uint64_t vh_flat_size(const vh_flat *f)
{
    return f->top->virtual_size;
}

guint64 vh_flat_serial(const vh_flat *f)
{
    return f->serial;
}

guint vh_flat_depth(const vh_flat *f)
{
    return f->n;
}

const char *vh_flat_member(const vh_flat *f, guint k)
{
    return k < f->n ? f->members[k].path : NULL;
}

bool vh_flat_has_member(const vh_flat *f, dev_t dev, ino_t ino)
{
    for (guint k = 0; k < f->n; k++)
        if (f->members[k].dev == dev && f->members[k].ino == ino)
            return true;
    return false;
}

bool vh_flat_current(vh_flat *f, const vh_chain *c)
{
    if (c) {
        if (c->disks->len != f->n)
            return false;
        for (guint k = 0; k < f->n; k++)
            if (strcmp(((vh_disk_info *)c->disks->pdata[k])->path, f->members[k].path) != 0)
                return false;
    }
    int root = vh_store_root_fd(f->store);
    for (guint k = 0; k < f->n; k++) {
        struct stat st;
        if (fstatat(root, f->members[k].path, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
            !member_matches(&f->members[k], &st))
            return false;
    }
    return true;
}

/* The run at off through the chain (at most max bytes); the caller holds the map lock. */
static int map_run_locked(vh_flat *f, uint64_t off, uint64_t max, vh_run *run, vh_disk **owner,
                          GError **err)
{
    int r = vh_disk_map_chain(f->top, off, max, run, owner, err);
    if (r == 0 && run->length == 0)
        r = vh_fail(err, EIO, "%s: empty run at virtual offset %" G_GUINT64_FORMAT,
                    f->members[0].path, off);
    return r;
}

/* The run at off through the chain (at most max bytes), under the map lock. */
static int map_run(vh_flat *f, uint64_t off, uint64_t max, vh_run *run, vh_disk **owner,
                   GError **err)
{
    g_mutex_lock(&f->map_lock);
    int r = map_run_locked(f, off, max, run, owner, err);
    g_mutex_unlock(&f->map_lock);
    return r;
}

#define RUN_BATCH 32 /* runs mapped under one taking of the lock */

/* Up to RUN_BATCH runs from off (at most len bytes in all), under one taking of the map lock;
 * first hints the kernel at the metadata of the whole range on every layer (flat.h). */
static int map_runs(vh_flat *f, uint64_t off, uint64_t len, bool hint, vh_run *runs,
                    vh_disk **owners, guint *n, GError **err)
{
    int r = 0;
    *n = 0;
    g_mutex_lock(&f->map_lock);
    if (hint)
        vh_disk_prefetch_chain(f->top, off, len);
    while (r == 0 && len > 0 && *n < RUN_BATCH) {
        vh_run *run = &runs[*n];
        if ((r = map_run_locked(f, off, len, run, &owners[*n], err)) < 0)
            break;
        run->length = MIN(run->length, len);
        off += run->length;
        len -= run->length;
        (*n)++;
    }
    g_mutex_unlock(&f->map_lock);
    return r;
}

/* Several data runs (from several layers, or apart in one file): the kernel reads them all at
 * once, instead of one after another as the reads that follow ask. Not the base's: its readahead
 * already streams them (vh_disk_prefetch_chain). */
static void prefetch_data(const vh_run *runs, vh_disk *const *owners, guint n)
{
    guint data = 0;
    for (guint k = 0; k < n; k++)
        data += runs[k].kind == VH_RUN_DATA;
    for (guint k = 0; data > 1 && k < n; k++)
        if (runs[k].kind == VH_RUN_DATA && owners[k]->parent)
            vh_file_prefetch(&owners[k]->file, runs[k].file_offset, runs[k].length);
}

int vh_flat_read(vh_flat *f, void *buf, uint64_t off, size_t len, GError **err)
{
    int bad = vh_virtual_range_check(f->members[0].path, off, len, vh_flat_size(f), err);
    if (bad < 0)
        return bad;
    uint8_t *p = buf;
    bool hint = true;
    while (len > 0) {
        vh_run runs[RUN_BATCH];
        vh_disk *owners[RUN_BATCH];
        guint n = 0;
        int r = map_runs(f, off, len, hint, runs, owners, &n, err);
        if (r < 0)
            return r;
        hint = false;
        prefetch_data(runs, owners, n);
        /* One read per run, outside the lock: the formats' read_data is a pread (plus, for a
         * VHDX whose log was replayed in memory, an overlay that never changes after open). */
        for (guint k = 0; k < n; k++) {
            size_t m = (size_t)runs[k].length;
            if (runs[k].kind == VH_RUN_DATA) {
                if ((r = owners[k]->ops->read_data(owners[k], p, m, runs[k].file_offset, err)) < 0)
                    return r;
            } else {
                memset(p, 0, m);
            }
            p += m;
            off += m;
            len -= m;
        }
    }
    return 0;
}

int vh_flat_pieces(vh_flat *f, uint64_t off, size_t len, GArray *pieces, GError **err)
{
    int bad = vh_virtual_range_check(f->members[0].path, off, len, vh_flat_size(f), err);
    if (bad < 0)
        return bad;
    guint first = pieces->len;
    bool hint = true;
    while (len > 0) {
        vh_run runs[RUN_BATCH];
        vh_disk *owners[RUN_BATCH];
        guint n = 0;
        int r = map_runs(f, off, len, hint, runs, owners, &n, err);
        if (r < 0) {
            g_array_set_size(pieces, first);
            return r;
        }
        hint = false;
        prefetch_data(runs, owners, n);
        for (guint k = 0; k < n; k++) {
            vh_flat_piece p = {.fd = -1, .off = runs[k].file_offset, .len = runs[k].length};
            if (runs[k].kind == VH_RUN_DATA) {
                vh_disk *o = owners[k];
                p.fd = o->ops->data_fd ? o->ops->data_fd(o) : -1;
                if (p.fd < 0 || !vh_range_ok(p.off, p.len, o->file.size)) {
                    g_array_set_size(pieces, first);
                    return -ENOTSUP;
                }
            }
            g_array_append_val(pieces, p);
            off += p.len;
            len -= p.len;
        }
    }
    return 0;
}

int vh_flat_seek(vh_flat *f, uint64_t off, bool hole, uint64_t *out, GError **err)
{
    uint64_t size = vh_flat_size(f);
    if (off >= size)
        return -ENXIO;
    while (off < size) {
        vh_run run;
        vh_disk *owner = NULL;
        int r = map_run(f, off, size - off, &run, &owner, err);
        if (r < 0)
            return r;
        if ((run.kind == VH_RUN_DATA) != hole) {
            *out = off;
            return 0;
        }
        off += MIN(run.length, size - off);
    }
    if (!hole)
        return -ENXIO;
    *out = size; /* the end of the file counts as a hole */
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* The cache */

struct vh_flat_cache {
    vh_store *store;
    guint max;
    GMutex lock;
    GHashTable *by_top; /* top path -> GList* link in lru (data: vh_flat*) */
    GQueue lru;         /* most recently used first */
    guint64 opens;
};

vh_flat_cache *vh_flat_cache_new(vh_store *store, guint max)
{
    vh_flat_cache *c = g_new0(vh_flat_cache, 1);
    c->store = store;
    c->max = MAX(max, 1);
    g_mutex_init(&c->lock);
    c->by_top = g_hash_table_new(g_str_hash, g_str_equal);
    g_queue_init(&c->lru);
    return c;
}

void vh_flat_cache_free(vh_flat_cache *c)
{
    if (!c)
        return;
    g_hash_table_destroy(c->by_top);
    g_queue_clear_full(&c->lru, (GDestroyNotify)vh_flat_unref);
    g_mutex_clear(&c->lock);
    g_free(c);
}

/* Takes the reader of `top` out of the cache (the caller gets the cache's reference). */
static vh_flat *take_locked(vh_flat_cache *c, const char *top)
{
    GList *l = g_hash_table_lookup(c->by_top, top);
    if (!l)
        return NULL;
    vh_flat *f = l->data;
    g_hash_table_remove(c->by_top, top);
    g_queue_delete_link(&c->lru, l);
    return f;
}

int vh_flat_cache_get(vh_flat_cache *c, const vh_chain *chain, vh_flat **out, GError **err)
{
    const char *top = ((vh_disk_info *)chain->disks->pdata[0])->path;
    g_mutex_lock(&c->lock);
    vh_flat *f = take_locked(c, top);
    g_mutex_unlock(&c->lock);
    /* The stat calls run outside the lock, so readers of other disks are never held up. */
    if (f && !vh_flat_current(f, chain))
        g_clear_pointer(&f, vh_flat_unref);
    if (!f) {
        int r = vh_flat_open(c->store, chain, &f, err);
        if (r < 0)
            return r;
        __atomic_fetch_add(&c->opens, 1, __ATOMIC_RELAXED);
    }
    GPtrArray *evicted = g_ptr_array_new_with_free_func((GDestroyNotify)vh_flat_unref);
    g_mutex_lock(&c->lock);
    vh_flat *other = take_locked(c, top); /* another thread opened it meanwhile */
    if (other)
        g_ptr_array_add(evicted, other);
    g_queue_push_head(&c->lru, vh_flat_ref(f));
    g_hash_table_insert(c->by_top, f->members[0].path, c->lru.head);
    while (c->lru.length > c->max) {
        vh_flat *old = g_queue_pop_tail(&c->lru);
        g_hash_table_remove(c->by_top, old->members[0].path);
        g_ptr_array_add(evicted, old);
    }
    g_mutex_unlock(&c->lock);
    g_ptr_array_unref(evicted); /* closes files outside the lock */
    *out = f;
    return 0;
}

void vh_flat_cache_drop(vh_flat_cache *c, const char *top)
{
    g_mutex_lock(&c->lock);
    vh_flat *f = take_locked(c, top);
    g_mutex_unlock(&c->lock);
    vh_flat_unref(f);
}

guint vh_flat_cache_drop_member(vh_flat_cache *c, dev_t dev, ino_t ino, GPtrArray *tops)
{
    GPtrArray *gone = g_ptr_array_new_with_free_func((GDestroyNotify)vh_flat_unref);
    g_mutex_lock(&c->lock);
    for (GList *l = c->lru.head; l;) {
        GList *next = l->next;
        vh_flat *f = l->data;
        if (vh_flat_has_member(f, dev, ino)) {
            g_hash_table_remove(c->by_top, f->members[0].path);
            g_queue_delete_link(&c->lru, l);
            g_ptr_array_add(gone, f);
            if (tops)
                g_ptr_array_add(tops, g_strdup(f->members[0].path));
        }
        l = next;
    }
    g_mutex_unlock(&c->lock);
    guint n = gone->len;
    g_ptr_array_unref(gone); /* closes files outside the lock */
    return n;
}

guint vh_flat_cache_size(vh_flat_cache *c)
{
    g_mutex_lock(&c->lock);
    guint n = c->lru.length;
    g_mutex_unlock(&c->lock);
    return n;
}

guint64 vh_flat_cache_opens(vh_flat_cache *c)
{
    return __atomic_load_n(&c->opens, __ATOMIC_RELAXED);
}
