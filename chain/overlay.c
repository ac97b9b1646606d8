// SPDX-License-Identifier: GPL-2.0-or-later
/* overlay.c - patch sets over a read-only base file (overlay.h). */
#include "overlay.h"

#include <dirent.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include "io.h"
#include "overlay_file.h"

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

uint64_t vh_patch_visible(const vh_patch *p)
{
    return p->visible;
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
    char *rel; /* the store-relative path its patch file in the overlay folder names, or NULL */
} ov_entry;

struct vh_overlay {
    GMutex lock;
    GHashTable *files; /* ov_key* -> ov_entry* */
    vh_overlay_log_fn log;
    void *log_ctx;
    int dir_fd;       /* the overlay folder (vh_overlay_set_dir), or -1 */
    bool dir_write;   /* patch sets are saved into it, stale ones removed */
    GMutex dir_lock;  /* a file's save and its entry's put are one step for unsave */
    char *dir;        /* its path, for messages */
    char *store_root; /* the store's realpath */
};

static void ov_log(vh_overlay *o, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static void ov_log(vh_overlay *o, const char *fmt, ...)
{
    if (!o->log)
        return;
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *line = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    o->log(o->log_ctx, line);
}

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
    g_free(e->rel);
    g_free(e);
}

vh_overlay *vh_overlay_new(vh_overlay_log_fn log, void *ctx)
{
    vh_overlay *o = g_new0(vh_overlay, 1);
    g_mutex_init(&o->lock);
    g_mutex_init(&o->dir_lock);
    o->files = g_hash_table_new_full(ov_hash, ov_eq, g_free, ov_entry_free);
    o->log = log;
    o->log_ctx = ctx;
    o->dir_fd = -1;
    return o;
}

void vh_overlay_free(vh_overlay *o)
{
    if (!o)
        return;
    g_hash_table_unref(o->files);
    g_mutex_clear(&o->lock);
    g_mutex_clear(&o->dir_lock);
    if (o->dir_fd >= 0)
        close(o->dir_fd);
    g_free(o->dir);
    g_free(o->store_root);
    g_free(o);
}

int vh_overlay_set_dir(vh_overlay *o, const char *store_root, const char *dir, bool write,
                       GError **err)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return vh_fail(err, errno, "overlay folder %s: %s", dir, g_strerror(errno));
    /* another store's folder is refused; one whose marker cannot be written is only read */
    int mine = vh_overlay_dir_claim(fd, dir, store_root, write, o->log, o->log_ctx, err);
    if (mine < 0) {
        close(fd);
        return mine;
    }
    if (o->dir_fd >= 0)
        close(o->dir_fd);
    o->dir_fd = fd;
    o->dir_write = write && mine == 1;
    g_free(o->dir);
    o->dir = g_strdup(dir);
    g_free(o->store_root);
    o->store_root = g_strdup(store_root);
    return 0;
}

bool vh_overlay_writes_dir(vh_overlay *o)
{
    return o->dir_fd >= 0 && o->dir_write;
}

/* Does an entry own rel's patch file? The caller holds dir_lock. */
static bool owned(vh_overlay *o, const char *rel)
{
    bool found = false;
    GHashTableIter it;
    gpointer v;
    g_mutex_lock(&o->lock);
    g_hash_table_iter_init(&it, o->files);
    while (!found && g_hash_table_iter_next(&it, NULL, &v))
        found = g_strcmp0(((ov_entry *)v)->rel, rel) == 0;
    g_mutex_unlock(&o->lock);
    return found;
}

/* Removes rel's patch file (the overlay folder is written): its patch set is gone. Not when an
 * entry owns it again: a repair of the same path saved since (save and put hold dir_lock). */
static void unsave(vh_overlay *o, const char *rel)
{
    if (!rel || !o->dir_write)
        return;
    g_autoptr(GError) err = NULL;
    g_mutex_lock(&o->dir_lock);
    if (!owned(o, rel) && vh_patch_file_remove(o->dir_fd, rel, &err) < 0)
        ov_log(o, "%s", err->message);
    g_mutex_unlock(&o->dir_lock);
}

/* Saves p's file; false (logged: the patch set then lives in memory only) when it cannot be. */
static bool save(vh_overlay *o, vh_patch *p, const vh_patch_origin *origin)
{
    g_autoptr(GError) err = NULL;
    if (vh_patch_file_save(o->dir_fd, p, origin, &err) == 0)
        return true;
    ov_log(o, "%s: the repair of %s is kept in memory only", err->message, origin->rel);
    return false;
}

/* Puts the entry under the lock; returns the patch file another entry no longer owns. */
static char *put_entry(vh_overlay *o, const struct stat *st, vh_patch *p, const char *rel)
{
    ov_key *k = g_new(ov_key, 1);
    *k = (ov_key){st->st_dev, st->st_ino};
    ov_entry *e = g_new(ov_entry, 1);
    *e = (ov_entry){vh_patch_ref(p), (uint64_t)st->st_size, vh_mtime_ns(st), g_strdup(rel)};
    char *orphan = NULL;
    g_mutex_lock(&o->lock);
    ov_entry *old = g_hash_table_lookup(o->files, k);
    if (old && old->rel && g_strcmp0(old->rel, rel) != 0)
        orphan = g_steal_pointer(&old->rel); /* the file was renamed since: its old name goes */
    if (rel) { /* one patch file per path: an entry of another file there no longer owns it */
        GHashTableIter it;
        gpointer v;
        g_hash_table_iter_init(&it, o->files);
        while (g_hash_table_iter_next(&it, NULL, &v)) {
            ov_entry *x = v;
            if (x != old && g_strcmp0(x->rel, rel) == 0)
                g_clear_pointer(&x->rel, g_free);
        }
    }
    g_hash_table_replace(o->files, k, e);
    g_mutex_unlock(&o->lock);
    return orphan;
}

void vh_overlay_put(vh_overlay *o, const struct stat *st, vh_patch *p,
                    const vh_patch_origin *origin)
{
    bool persist = origin && o->dir_fd >= 0 && o->dir_write;
    if (persist)
        g_mutex_lock(&o->dir_lock);
    bool saved = persist && save(o, p, origin);
    g_autofree char *orphan = put_entry(o, st, p, saved ? origin->rel : NULL);
    if (persist)
        g_mutex_unlock(&o->dir_lock);
    unsave(o, orphan);
}

/* One file of the overlay folder: loaded into the table when it is valid and its store file is
 * the one it was built over; else logged (and, for a stale one, removed when we write). */
static bool load_one(vh_overlay *o, int store_fd, const char *name, vh_overlay_loaded_fn fn,
                     void *ctx)
{
    g_autoptr(GError) err = NULL;
    vh_patch_origin org;
    g_autoptr(vh_patch) p = vh_patch_file_load(o->dir_fd, name, &org, &err);
    if (!p) {
        ov_log(o, "overlay folder %s: %s: ignored", o->dir, err->message);
        return false;
    }
    g_autofree char *want = vh_patch_file_name(org.rel);
    struct stat st;
    bool ok = false;
    if (strcmp(want, name) != 0) {
        ov_log(o, "overlay folder %s: %s: its patch is for %s, whose file is %s: ignored", o->dir,
               name, org.rel, want);
    } else if (vh_patch_file_check(store_fd, o->store_root, p, &org, &st, &err) < 0) {
        if (vh_error_errno(err) == ENOENT)
            ov_log(o, "%s: not in the store %s (%s): its overlay is dropped", org.rel,
                   o->store_root, err->message);
        else
            ov_log(o,
                   "%s: changed on the store since its overlay was saved (%s): the overlay is "
                   "dropped (the disk heals again on its next open)",
                   org.rel, err->message);
        unsave(o, org.rel);
    } else {
        g_free(put_entry(o, &st, p, org.rel));
        if (fn)
            fn(ctx, &org);
        ok = true;
    }
    vh_patch_origin_clear(&org);
    return ok;
}

/* A save's temporary file (".NAME.RANDOM.tmp", NAME a patch file's or the marker's) older than
 * any save lasts was left by a daemon killed in the save: removed (and logged) when we write the
 * folder. A fresh one may be the save of another mount of the store in flight: it stays. */
#define TMP_AGE_S 600

static void remove_leftover(vh_overlay *o, const char *name)
{
    struct stat st;
    if (!o->dir_write || name[0] != '.' || !g_str_has_suffix(name, ".tmp") ||
        !(strstr(name, VH_PATCH_FILE_SUFFIX ".") ||
          g_str_has_prefix(name, "." VH_OVERLAY_MARKER ".")))
        return;
    if (fstatat(o->dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode) ||
        st.st_mtime > time(NULL) - TMP_AGE_S)
        return;
    if (unlinkat(o->dir_fd, name, 0) == 0)
        ov_log(o, "overlay folder %s: %s: removed (left by an interrupted save)", o->dir, name);
    else
        ov_log(o, "overlay folder %s: %s: cannot remove the leftover of an interrupted save: %s",
               o->dir, name, g_strerror(errno));
}

int vh_overlay_load(vh_overlay *o, vh_overlay_loaded_fn fn, void *ctx, GError **err)
{
    if (o->dir_fd < 0)
        return 0;
    vh_autofd int store_fd = open(o->store_root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (store_fd < 0)
        return vh_fail(err, errno, "%s: %s", o->store_root, g_strerror(errno));
    int dfd = openat(o->dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!d) {
        int e = errno;
        if (dfd >= 0)
            close(dfd);
        return vh_fail(err, e, "overlay folder %s: %s", o->dir, g_strerror(e));
    }
    g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GPtrArray) dots = g_ptr_array_new_with_free_func(g_free);
    struct dirent *de;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.' && g_str_has_suffix(de->d_name, VH_PATCH_FILE_SUFFIX))
            g_ptr_array_add(names, g_strdup(de->d_name));
        else if (de->d_name[0] == '.')
            g_ptr_array_add(dots, g_strdup(de->d_name));
    closedir(d);
    for (guint i = 0; i < dots->len; i++)
        remove_leftover(o, dots->pdata[i]);
    int n = 0;
    for (guint i = 0; i < names->len; i++)
        n += load_one(o, store_fd, names->pdata[i], fn, ctx);
    return n;
}
vh_patch *vh_overlay_get(vh_overlay *o, const struct stat *st, const char *name)
{
    if (!S_ISREG(st->st_mode))
        return NULL;
    ov_key k = {st->st_dev, st->st_ino};
    vh_patch *p = NULL;
    bool stale = false;
    g_autofree char *saved = NULL;
    g_mutex_lock(&o->lock);
    ov_entry *e = g_hash_table_lookup(o->files, &k);
    if (e && e->size == (uint64_t)st->st_size && e->mtime_ns == vh_mtime_ns(st) &&
        vh_patch_base_size(e->patch) == e->size)
        p = vh_patch_ref(e->patch);
    else if (e) {
        saved = g_steal_pointer(&e->rel);
        stale = g_hash_table_remove(o->files, &k);
    }
    g_mutex_unlock(&o->lock);
    unsave(o, saved);
    if (stale && o->log) {
        /* the caller's name, else the path the patch set was built for */
        g_autofree char *who = name ? g_strdup(name)
                               : saved
                                   ? g_strdup(saved)
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
