// SPDX-License-Identifier: GPL-2.0-or-later
/* tcache.c - the process-wide, byte-bounded cache of block-table pages (see tcache.h). */
#include "tcache.h"

struct vh_table {
    uint64_t bytes;
    size_t page_size;
    vh_tcache_load_fn load;
    void *ctx;
    GHashTable *pages; /* page index (uint64_t*) -> struct page* (guarded by the cache lock) */
};

struct page {
    vh_table *table;
    uint64_t index;
    size_t len;
    GList link; /* in lru, data: this page */
    uint8_t data[];
};

#define PAGE_OVERHEAD (sizeof(struct page) + 64) /* the struct and its hash-table slot */

static struct {
    GMutex lock;
    GQueue lru; /* most recently used first */
    size_t bytes;
    size_t limit;
    guint64 loads;
} cache = {.limit = VH_TCACHE_DEFAULT_LIMIT};

static size_t page_cost(const struct page *p)
{
    return p->len + PAGE_OVERHEAD;
}

/* Unlinks a page from its table and the LRU; the caller holds the lock and frees it. */
static void page_unlink(struct page *p)
{
    g_queue_unlink(&cache.lru, &p->link);
    g_hash_table_remove(p->table->pages, &p->index);
    cache.bytes -= page_cost(p);
}

/* Evicts beyond the limit; returns the evicted pages, freed by the caller outside the lock. */
static GSList *evict_locked(void)
{
    GSList *gone = NULL;
    while (cache.bytes > cache.limit && cache.lru.tail) {
        struct page *p = cache.lru.tail->data;
        page_unlink(p);
        gone = g_slist_prepend(gone, p);
    }
    return gone;
}

vh_table *vh_table_new(uint64_t bytes, size_t page_size, vh_tcache_load_fn load, void *ctx)
{
    vh_table *t = g_new0(vh_table, 1);
    t->bytes = bytes;
    t->page_size = MAX(page_size, 1);
    t->load = load;
    t->ctx = ctx;
    t->pages = g_hash_table_new(g_int64_hash, g_int64_equal);
    return t;
}

void vh_table_free(vh_table *t)
{
    if (!t)
        return;
    GSList *gone = NULL;
    g_mutex_lock(&cache.lock);
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, t->pages);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        struct page *p = v;
        g_queue_unlink(&cache.lru, &p->link);
        cache.bytes -= page_cost(p);
        gone = g_slist_prepend(gone, p);
        g_hash_table_iter_remove(&it);
    }
    g_mutex_unlock(&cache.lock);
    g_slist_free_full(gone, g_free);
    g_hash_table_unref(t->pages);
    g_free(t);
}

/* Copies from a cached page, made the most recently used; false when it is not cached. */
static bool copy_locked(vh_table *t, uint64_t index, size_t in, void *out, size_t len)
{
    struct page *p = g_hash_table_lookup(t->pages, &index);
    if (!p)
        return false;
    g_queue_unlink(&cache.lru, &p->link);
    g_queue_push_head_link(&cache.lru, &p->link);
    memcpy(out, p->data + in, len);
    return true;
}

int vh_table_read(vh_table *t, uint64_t off, void *out, size_t len, GError **err)
{
    uint64_t index = off / t->page_size;
    size_t in = (size_t)(off % t->page_size);
    if (!vh_range_ok(off, len, t->bytes) || in + len > t->page_size)
        return vh_fail(err, EINVAL,
                       "block table: range %" G_GUINT64_FORMAT "+%zu lies outside its page", off,
                       len);
    g_mutex_lock(&cache.lock);
    bool hit = copy_locked(t, index, in, out, len);
    g_mutex_unlock(&cache.lock);
    if (hit)
        return 0;
    size_t plen = (size_t)MIN((uint64_t)t->page_size, t->bytes - index * t->page_size);
    struct page *p = g_try_malloc0(sizeof(struct page) + plen);
    if (!p)
        return vh_fail(err, ENOMEM, "block table page of %zu bytes: out of memory", plen);
    p->table = t;
    p->index = index;
    p->len = plen;
    p->link.data = p;
    int r = t->load(t->ctx, index, p->data, plen, err);
    if (r < 0) {
        g_free(p);
        return r;
    }
    g_mutex_lock(&cache.lock);
    cache.loads++;
    if (!copy_locked(t, index, in, out, len)) { /* else another thread loaded it meanwhile */
        g_hash_table_insert(t->pages, &p->index, p);
        g_queue_push_head_link(&cache.lru, &p->link);
        cache.bytes += page_cost(p);
        memcpy(out, p->data + in, len);
        p = NULL;
    }
    GSList *gone = evict_locked();
    g_mutex_unlock(&cache.lock);
    g_free(p);
    g_slist_free_full(gone, g_free);
    return 0;
}

void vh_tcache_set_limit(size_t bytes)
{
    g_mutex_lock(&cache.lock);
    cache.limit = bytes;
    GSList *gone = evict_locked();
    g_mutex_unlock(&cache.lock);
    g_slist_free_full(gone, g_free);
}

size_t vh_tcache_limit(void)
{
    g_mutex_lock(&cache.lock);
    size_t n = cache.limit;
    g_mutex_unlock(&cache.lock);
    return n;
}

size_t vh_tcache_bytes(void)
{
    g_mutex_lock(&cache.lock);
    size_t n = cache.bytes;
    g_mutex_unlock(&cache.lock);
    return n;
}

guint64 vh_tcache_loads(void)
{
    g_mutex_lock(&cache.lock);
    guint64 n = cache.loads;
    g_mutex_unlock(&cache.lock);
    return n;
}
