// SPDX-License-Identifier: GPL-2.0-or-later
/* overlay.c - patch sets over a read-only base file (overlay.h). */
#include "overlay.h"

#include "io.h"

typedef struct {
    uint64_t off;
    size_t len;
    uint8_t *data;
} patch_range;

struct vh_patch {
    gatomicrefcount ref;
    uint64_t base_size; /* the base file's size when the patch set was begun */
    uint64_t visible;   /* base bytes below this show through (a truncate lowers it) */
    uint64_t size;      /* the patched file's size */
    uint64_t bytes;     /* bytes held by the ranges */
    GArray *ranges;     /* of patch_range, sorted by off, non-overlapping */
};

static void range_clear(gpointer p)
{
    g_free(((patch_range *)p)->data);
}

vh_patch *vh_patch_new(uint64_t base_size)
{
    vh_patch *p = g_new0(vh_patch, 1);
    g_atomic_ref_count_init(&p->ref);
    p->base_size = p->visible = p->size = base_size;
    p->ranges = g_array_new(FALSE, FALSE, sizeof(patch_range));
    g_array_set_clear_func(p->ranges, range_clear);
    return p;
}

vh_patch *vh_patch_ref(vh_patch *p)
{
    g_atomic_ref_count_inc(&p->ref);
    return p;
}

void vh_patch_unref(vh_patch *p)
{
    if (!p || !g_atomic_ref_count_dec(&p->ref))
        return;
    g_array_unref(p->ranges);
    g_free(p);
}

uint64_t vh_patch_base_size(const vh_patch *p)
{
    return p->base_size;
}

uint64_t vh_patch_size(const vh_patch *p)
{
    return p->size;
}

guint vh_patch_count(const vh_patch *p)
{
    return p->ranges->len;
}

uint64_t vh_patch_bytes(const vh_patch *p)
{
    return p->bytes;
}

void vh_patch_range(const vh_patch *p, guint i, uint64_t *off, size_t *len, const uint8_t **data)
{
    const patch_range *r = &g_array_index(p->ranges, patch_range, i);
    *off = r->off;
    *len = r->len;
    *data = r->data;
}

static patch_range range_copy(uint64_t off, size_t len, const uint8_t *src)
{
    return (patch_range){.off = off, .len = len, .data = g_memdup2(src, len)};
}

/* Cuts [lo, hi) out of every range: what lies outside it stays, as one or two ranges. */
static void cut(vh_patch *p, uint64_t lo, uint64_t hi)
{
    GArray *out = g_array_new(FALSE, FALSE, sizeof(patch_range));
    g_array_set_clear_func(out, range_clear);
    for (guint i = 0; i < p->ranges->len; i++) {
        patch_range *r = &g_array_index(p->ranges, patch_range, i);
        uint64_t end = r->off + r->len;
        if (end <= lo || r->off >= hi) {
            g_array_append_val(out, *r);
            r->data = NULL; /* moved */
            continue;
        }
        if (r->off < lo) {
            patch_range left = range_copy(r->off, (size_t)(lo - r->off), r->data);
            g_array_append_val(out, left);
        }
        if (end > hi) {
            patch_range right = range_copy(hi, (size_t)(end - hi), r->data + (hi - r->off));
            g_array_append_val(out, right);
        }
    }
    g_array_unref(p->ranges);
    p->ranges = out;
    p->bytes = 0;
    for (guint i = 0; i < out->len; i++)
        p->bytes += g_array_index(out, patch_range, i).len;
}

static gint cmp_range(gconstpointer a, gconstpointer b)
{
    const patch_range *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

int vh_patch_write(vh_patch *p, const void *buf, size_t len, uint64_t off, GError **err)
{
    if (len == 0)
        return 0;
    if (!vh_range_ok(off, len, UINT64_MAX - 1))
        return vh_fail(err, EINVAL, "patch at offset %" G_GUINT64_FORMAT ": range overflows", off);
    cut(p, off, off + len);
    if (p->bytes + len > VH_PATCH_MAX_BYTES)
        return vh_fail(err, EFBIG,
                       "patch at offset %" G_GUINT64_FORMAT
                       ": the overlay would hold more than %u bytes",
                       off, VH_PATCH_MAX_BYTES);
    patch_range r = range_copy(off, len, buf);
    g_array_append_val(p->ranges, r);
    g_array_sort(p->ranges, cmp_range);
    p->bytes += len;
    p->size = MAX(p->size, off + len);
    return 0;
}

void vh_patch_truncate(vh_patch *p, uint64_t size)
{
    cut(p, size, UINT64_MAX);
    p->visible = MIN(p->visible, size);
    p->size = size;
}

ssize_t vh_patch_read(const vh_patch *p, int fd, void *buf, size_t len, uint64_t off)
{
    if (off >= p->size)
        return 0;
    len = (size_t)MIN((uint64_t)len, p->size - off);
    uint8_t *b = buf;
    size_t base = off < p->visible ? (size_t)MIN((uint64_t)len, p->visible - off) : 0;
    if (base > 0) {
        ssize_t n = vh_read_full(fd, b, base, (int64_t)off);
        if (n < 0)
            return n;
        if ((size_t)n < base)
            return -EIO; /* the base file shrank under the patches */
    }
    memset(b + base, 0, len - base);
    for (guint i = 0; i < p->ranges->len; i++) {
        const patch_range *r = &g_array_index(p->ranges, patch_range, i);
        uint64_t lo = MAX(r->off, off), hi = MIN(r->off + r->len, off + len);
        if (r->off >= off + len)
            break;
        if (lo < hi)
            memcpy(b + (lo - off), r->data + (lo - r->off), (size_t)(hi - lo));
    }
    return (ssize_t)len;
}

void vh_file_attach_patch(vh_file *f, vh_patch *p)
{
    vh_patch_unref(f->patch);
    f->patch = vh_patch_ref(p);
    f->size = p->size;
    f->writable = true;
}

int vh_file_open_patched(vh_file *f, const char *path, vh_patch *p, GError **err)
{
    int r = vh_file_open(f, path, false, err);
    if (r < 0)
        return r;
    g_autoptr(vh_patch) own = p ? vh_patch_ref(p) : vh_patch_new(f->size);
    if (vh_patch_base_size(own) != f->size) {
        uint64_t was = vh_patch_base_size(own), now = f->size;
        vh_file_close(f);
        return vh_fail(err, ESTALE,
                       "%s: the file is %" G_GUINT64_FORMAT
                       " bytes, its overlay was built over %" G_GUINT64_FORMAT
                       " bytes: the file changed",
                       path, now, was);
    }
    vh_file_attach_patch(f, own);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* The table of a store's overlays */

typedef struct {
    dev_t dev;
    ino_t ino;
} ov_key;

typedef struct {
    vh_patch *patch;
    uint64_t size; /* the file's, when the patch set was built */
    int64_t mtime_ns;
} ov_entry;

struct vh_overlay {
    GMutex lock;
    GHashTable *files; /* ov_key* -> ov_entry* */
    vh_overlay_log_fn log;
    void *log_ctx;
};

static guint ov_hash(gconstpointer p)
{
    const ov_key *k = p;
    guint64 v = (guint64)k->ino ^ ((guint64)k->dev * 0x9e3779b97f4a7c15ull);
    return (guint)(v ^ (v >> 32));
}

static gboolean ov_eq(gconstpointer a, gconstpointer b)
{
    const ov_key *x = a, *y = b;
    return x->dev == y->dev && x->ino == y->ino;
}

static void ov_entry_free(gpointer p)
{
    ov_entry *e = p;
    vh_patch_unref(e->patch);
    g_free(e);
}

vh_overlay *vh_overlay_new(vh_overlay_log_fn log, void *ctx)
{
    vh_overlay *o = g_new0(vh_overlay, 1);
    g_mutex_init(&o->lock);
    o->files = g_hash_table_new_full(ov_hash, ov_eq, g_free, ov_entry_free);
    o->log = log;
    o->log_ctx = ctx;
    return o;
}

void vh_overlay_free(vh_overlay *o)
{
    if (!o)
        return;
    g_hash_table_unref(o->files);
    g_mutex_clear(&o->lock);
    g_free(o);
}

void vh_overlay_put(vh_overlay *o, const struct stat *st, vh_patch *p)
{
    ov_key *k = g_new(ov_key, 1);
    *k = (ov_key){st->st_dev, st->st_ino};
    ov_entry *e = g_new(ov_entry, 1);
    *e = (ov_entry){vh_patch_ref(p), (uint64_t)st->st_size, vh_mtime_ns(st)};
    g_mutex_lock(&o->lock);
    g_hash_table_replace(o->files, k, e);
    g_mutex_unlock(&o->lock);
}

vh_patch *vh_overlay_get(vh_overlay *o, const struct stat *st, const char *name)
{
    if (!S_ISREG(st->st_mode))
        return NULL;
    ov_key k = {st->st_dev, st->st_ino};
    vh_patch *p = NULL;
    bool stale = false;
    g_mutex_lock(&o->lock);
    ov_entry *e = g_hash_table_lookup(o->files, &k);
    if (e && e->size == (uint64_t)st->st_size && e->mtime_ns == vh_mtime_ns(st) &&
        vh_patch_base_size(e->patch) == e->size)
        p = vh_patch_ref(e->patch);
    else if (e)
        stale = g_hash_table_remove(o->files, &k);
    g_mutex_unlock(&o->lock);
    if (stale && o->log) {
        g_autofree char *who = name ? g_strdup(name)
                                    : g_strdup_printf("the disk at device %ju inode %ju",
                                                      (uintmax_t)st->st_dev, (uintmax_t)st->st_ino);
        g_autofree char *line =
            g_strdup_printf("%s: changed on the store since its overlay was built: the overlay is "
                            "dropped (the file is presented as the store has it)",
                            who);
        o->log(o->log_ctx, line);
    }
    return p;
}

vh_patch *vh_overlay_get_fd(vh_overlay *o, int fd, const char *name)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return NULL;
    return vh_overlay_get(o, &st, name);
}

guint vh_overlay_count(vh_overlay *o)
{
    g_mutex_lock(&o->lock);
    guint n = g_hash_table_size(o->files);
    g_mutex_unlock(&o->lock);
    return n;
}
