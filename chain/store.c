// SPDX-License-Identifier: GPL-2.0-or-later
/* store.c - the store index: identity -> paths, refreshed incrementally (see store.h). */
#include "store.h"

#include "overlay.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vhd.h"
#include "vhdx.h"
#include "winpath.h"

#define PRIVATE_DIR ".vhdheal"
#define PARALLEL_MIN 32 /* fewer files than this are probed inline */

struct vh_store {
    char *root;
    int root_fd;
    GRWLock lock;        /* guards by_path, by_id, scanned */
    GMutex scan_lock;    /* one scan at a time */
    GHashTable *by_path; /* char* (the entry's path) -> vh_disk_info* (one reference) */
    GHashTable *by_id;   /* vh_id* (owned) -> GPtrArray of vh_disk_info* (one reference each) */
    bool scanned;
    GPtrArray *pending; /* while a scan runs: the notes made since its walk began (note*) */
    vh_probe_fn probe;
    void *probe_ctx;
    int threads;
    vh_progress_fn progress;
    void *progress_ctx;
    gint probes;
    vh_overlay *overlay; /* not owned; NULL without overlay healing */
};

/* ---------------------------------------------------------------------------------------- */
/* Entries */

static void info_free(gpointer p)
{
    vh_disk_info *i = p;
    g_free(i->path);
    g_free(i->error);
    if (i->link.locators)
        g_ptr_array_unref(i->link.locators);
}

vh_disk_info *vh_disk_info_new(void)
{
    return g_atomic_rc_box_new0(vh_disk_info);
}

vh_disk_info *vh_disk_info_ref(vh_disk_info *i)
{
    return i ? g_atomic_rc_box_acquire(i) : NULL;
}

void vh_disk_info_unref(vh_disk_info *i)
{
    if (i)
        g_atomic_rc_box_release_full(i, info_free);
}

static GPtrArray *copy_locators(const GPtrArray *src)
{
    GPtrArray *a = g_ptr_array_new_with_free_func((GDestroyNotify)vh_locator_free);
    for (guint k = 0; src && k < src->len; k++) {
        const vh_locator *l = src->pdata[k];
        g_ptr_array_add(a,
                        vh_locator_new(l->kind, l->path, l->slot, l->data_offset, l->data_space));
    }
    return a;
}

void vh_disk_info_fill(vh_disk_info *i, const vh_disk *d)
{
    i->format = d->format;
    i->type = d->type;
    i->virtual_size = d->virtual_size;
    i->logical_sector_size = d->logical_sector_size;
    i->id = d->id;
    if (d->type == VH_TYPE_DIFFERENCING) {
        i->link = d->link;
        i->link.locators = copy_locators(d->link.locators);
    }
}

/* The same entry under another path (a rename: nothing about the file changed). */
static vh_disk_info *info_renamed(const vh_disk_info *o, const char *path)
{
    vh_disk_info *i = vh_disk_info_new();
    *i = *o;
    i->path = g_strdup(path);
    i->error = g_strdup(o->error);
    if (o->link.locators)
        i->link.locators = copy_locators(o->link.locators);
    return i;
}

static bool same_file(const vh_disk_info *i, const struct stat *st)
{
    return i->dev == st->st_dev && i->ino == st->st_ino && i->file_size == (uint64_t)st->st_size &&
           i->mtime_ns == vh_mtime_ns(st);
}

static void set_stat(vh_disk_info *i, const struct stat *st)
{
    i->dev = st->st_dev;
    i->ino = st->st_ino;
    i->file_size = (uint64_t)st->st_size;
    i->mtime_ns = vh_mtime_ns(st);
}

int vh_store_default_probe(void *ctx, const char *abs, const char *rel, vh_disk_info *out)
{
    g_autoptr(GError) err = NULL;
    vh_store *s = ctx; /* the store itself, by default: then the file is opened beneath it */
    vh_file f;
    int r = s ? vh_file_open_beneath(&f, s->root_fd, rel, abs, false, &err)
              : vh_file_open(&f, abs, false, &err);
    if (r < 0)
        return r;
    /* the file stat'ed (out's dev, ino) must be the one read: a symlink or another file renamed
       in between must not lend its content to this entry */
    struct stat st;
    if (fstat(f.fd, &st) < 0 || st.st_dev != out->dev || st.st_ino != out->ino) {
        vh_file_close(&f);
        return -EAGAIN;
    }
    /* overlay healing: the entry describes the file as the mount presents it */
    g_autoptr(vh_patch) patch = s && s->overlay ? vh_overlay_get(s->overlay, &st, abs) : NULL;
    if (patch)
        vh_file_attach_patch(&f, patch);
    vh_format fmt = vh_sniff_file(&f);
    out->format = fmt;
    if (fmt == VH_FORMAT_NONE) {
        vh_file_close(&f);
        return 0;
    }
    vh_disk *d = NULL;
    r = vh_disk_open_settled_as(&f, fmt, VH_OPEN_PROBE, &d, &err); /* not mid-rewrite (disk.h) */
    if (r < 0) {
        out->error = g_strdup(err ? err->message : g_strerror(-r));
        return 0;
    }
    vh_disk_info_fill(out, d);
    vh_disk_close(d);
    return 0;
}

/* Does the overlay present a patch set over the file stat'ed as st? */
static bool has_patch(vh_store *s, const struct stat *st, const char *abs)
{
    if (!s->overlay)
        return false;
    g_autoptr(vh_patch) p = vh_overlay_get(s->overlay, st, abs);
    return p != NULL;
}

/*
 * Probes one file: a new entry, or NULL when the file could not be read at all. A file too short
 * to be a disk (one just created empty through the mount, a lock file) is not a disk whatever its
 * bytes: the default probe is not called for it (no open, no read, not counted), unless an
 * overlay presents other bytes for it. It is probed once its size says it may be one.
 */
static vh_disk_info *probe_file(vh_store *s, const char *rel, const struct stat *st)
{
    g_autofree char *abs = g_build_filename(s->root, rel, NULL);
    vh_disk_info *i = vh_disk_info_new();
    i->path = g_strdup(rel);
    set_stat(i, st);
    if (s->probe == vh_store_default_probe && st->st_size < VH_SNIFF_MIN_SIZE &&
        !has_patch(s, st, abs)) {
        i->format = VH_FORMAT_NONE;
        return i;
    }
    g_atomic_int_inc(&s->probes);
    if (s->probe(s->probe_ctx, abs, rel, i) < 0) {
        vh_disk_info_unref(i);
        return NULL;
    }
    return i;
}

/* ---------------------------------------------------------------------------------------- */
/* The tables (callers hold the write lock) */

static bool path_under(const char *path, const char *under)
{
    return vh_path_below(under ? under : "", path) != NULL;
}

static guint id_hash(gconstpointer p)
{
    const uint8_t *b = p;
    guint h = 2166136261u;
    for (int k = 0; k < 16; k++)
        h = (h ^ b[k]) * 16777619u;
    return h;
}

static gboolean id_eq(gconstpointer a, gconstpointer b)
{
    return memcmp(a, b, 16) == 0;
}

static GHashTable *new_by_path(void)
{
    return g_hash_table_new_full(g_str_hash, g_str_equal, NULL, (GDestroyNotify)vh_disk_info_unref);
}

static GHashTable *new_by_id(void)
{
    return g_hash_table_new_full(id_hash, id_eq, g_free, (GDestroyNotify)g_ptr_array_unref);
}

static void id_add(GHashTable *by_id, vh_disk_info *i)
{
    if (!vh_disk_info_is_disk(i))
        return;
    GPtrArray *a = g_hash_table_lookup(by_id, &i->id);
    if (!a) {
        a = g_ptr_array_new_with_free_func((GDestroyNotify)vh_disk_info_unref);
        g_hash_table_insert(by_id, g_memdup2(&i->id, sizeof i->id), a);
    }
    g_ptr_array_add(a, vh_disk_info_ref(i));
}

static void id_remove(GHashTable *by_id, vh_disk_info *i)
{
    GPtrArray *a = g_hash_table_lookup(by_id, &i->id);
    if (!a)
        return;
    g_ptr_array_remove_fast(a, i);
    if (a->len == 0)
        g_hash_table_remove(by_id, &i->id);
}

static void tables_remove(GHashTable *by_path, GHashTable *by_id, const char *rel)
{
    vh_disk_info *old = g_hash_table_lookup(by_path, rel);
    if (!old)
        return;
    id_remove(by_id, old);
    g_hash_table_remove(by_path, rel);
}

/* Takes over the caller's reference. */
static void tables_insert(GHashTable *by_path, GHashTable *by_id, vh_disk_info *i)
{
    tables_remove(by_path, by_id, i->path);
    g_hash_table_insert(by_path, i->path, i);
    id_add(by_id, i);
}

static void index_remove(vh_store *s, const char *rel)
{
    tables_remove(s->by_path, s->by_id, rel);
}

/* Takes over the caller's reference. */
static void index_insert(vh_store *s, vh_disk_info *i)
{
    tables_insert(s->by_path, s->by_id, i);
}

/* ---------------------------------------------------------------------------------------- */
/* The store */

vh_store *vh_store_new(const char *root, GError **err)
{
    g_autofree char *real = realpath(root, NULL);
    if (!real) {
        vh_fail(err, errno, "%s: %s", root, g_strerror(errno));
        return NULL;
    }
    int fd = open(real, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        vh_fail(err, errno, "%s: cannot open the store folder: %s", root, g_strerror(errno));
        return NULL;
    }
    vh_store *s = g_new0(vh_store, 1);
    s->root = g_steal_pointer(&real);
    s->root_fd = fd;
    g_rw_lock_init(&s->lock);
    g_mutex_init(&s->scan_lock);
    s->by_path = new_by_path();
    s->by_id = new_by_id();
    s->probe = vh_store_default_probe;
    s->probe_ctx = s;
    s->threads = 4;
    return s;
}

void vh_store_free(vh_store *s)
{
    if (!s)
        return;
    g_hash_table_unref(s->by_id);
    g_hash_table_unref(s->by_path);
    g_rw_lock_clear(&s->lock);
    g_mutex_clear(&s->scan_lock);
    close(s->root_fd);
    g_free(s->root);
    g_free(s);
}

const char *vh_store_root(vh_store *s)
{
    return s->root;
}

int vh_store_root_fd(vh_store *s)
{
    return s->root_fd;
}

void vh_store_set_probe(vh_store *s, vh_probe_fn fn, void *ctx)
{
    s->probe = fn ? fn : vh_store_default_probe;
    s->probe_ctx = fn ? ctx : s;
}

void vh_store_set_overlay(vh_store *s, vh_overlay *o)
{
    s->overlay = o;
}

vh_overlay *vh_store_overlay(vh_store *s)
{
    return s->overlay;
}

void vh_store_set_threads(vh_store *s, int n)
{
    s->threads = CLAMP(n, 1, 64);
}

void vh_store_set_progress(vh_store *s, vh_progress_fn fn, void *ctx)
{
    s->progress = fn;
    s->progress_ctx = ctx;
}

guint64 vh_store_probe_count(vh_store *s)
{
    return (guint64)g_atomic_int_get(&s->probes);
}

bool vh_store_scanned(vh_store *s)
{
    g_rw_lock_reader_lock(&s->lock);
    bool r = s->scanned;
    g_rw_lock_reader_unlock(&s->lock);
    return r;
}

guint vh_store_count(vh_store *s)
{
    g_rw_lock_reader_lock(&s->lock);
    guint n = g_hash_table_size(s->by_path);
    g_rw_lock_reader_unlock(&s->lock);
    return n;
}

/* ---------------------------------------------------------------------------------------- */
/* Scanning */

typedef struct scan_item {
    char *rel;
    struct stat st;
    vh_disk_info *result;
} scan_item;

static void scan_item_free(gpointer p)
{
    scan_item *it = p;
    g_free(it->rel);
    vh_disk_info_unref(it->result);
    g_free(it);
}

static void add_file(GPtrArray *files, const char *rel, const struct stat *st)
{
    scan_item *it = g_new0(scan_item, 1);
    it->rel = g_strdup(rel);
    it->st = *st;
    g_ptr_array_add(files, it);
}

/* Lists one folder: regular files go to `files`, sub-folders to `dirs`. Symlinks are skipped. */
static int walk_dir(vh_store *s, const char *rel, GPtrArray *files, GQueue *dirs, GError **err)
{
    int fd = openat(s->root_fd, *rel ? rel : ".", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT || errno == ENOTDIR || errno == ELOOP)
            return 0; /* vanished or replaced while we walked */
        return vh_fail(err, errno, "%s/%s: %s", s->root, rel, g_strerror(errno));
    }
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return vh_fail(err, errno, "%s/%s: %s", s->root, rel, g_strerror(errno));
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *name = de->d_name;
        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
            continue;
        if (!*rel && strcmp(name, PRIVATE_DIR) == 0)
            continue;
        if (de->d_type != DT_DIR && de->d_type != DT_REG && de->d_type != DT_UNKNOWN)
            continue;
        struct stat st;
        if (fstatat(dirfd(d), name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue;
        g_autofree char *child = *rel ? g_strdup_printf("%s/%s", rel, name) : g_strdup(name);
        if (S_ISDIR(st.st_mode))
            g_queue_push_tail(dirs, g_steal_pointer(&child));
        else if (S_ISREG(st.st_mode))
            add_file(files, child, &st);
    }
    closedir(d);
    return 0;
}

static int walk(vh_store *s, GPtrArray *files, GError **err)
{
    GQueue dirs = G_QUEUE_INIT;
    g_queue_push_tail(&dirs, g_strdup(""));
    int r = 0;
    char *rel;
    while ((rel = g_queue_pop_head(&dirs)) != NULL) {
        if (r == 0)
            r = walk_dir(s, rel, files, &dirs, err);
        g_free(rel);
    }
    return r;
}

/* Entries of the current index keyed by (dev, inode), to recognise renamed files. */
typedef struct {
    dev_t dev;
    ino_t ino;
} file_key;

static guint file_key_hash(gconstpointer p)
{
    const file_key *k = p;
    return (guint)(k->ino ^ (k->ino >> 32) ^ (k->dev * 31));
}

static gboolean file_key_eq(gconstpointer a, gconstpointer b)
{
    const file_key *x = a, *y = b;
    return x->dev == y->dev && x->ino == y->ino;
}

static GHashTable *index_by_inode(vh_store *s)
{
    GHashTable *h = g_hash_table_new_full(file_key_hash, file_key_eq, g_free, NULL);
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, s->by_path);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        vh_disk_info *i = v;
        file_key *k = g_new(file_key, 1);
        *k = (file_key){i->dev, i->ino};
        g_hash_table_insert(h, k, i);
    }
    return h;
}

/* Reuses the entries of files that did not change; returns the items still to probe. */
static GPtrArray *reuse_unchanged(vh_store *s, GPtrArray *files)
{
    GPtrArray *todo = g_ptr_array_new();
    g_rw_lock_reader_lock(&s->lock);
    GHashTable *by_inode = NULL;
    for (guint k = 0; k < files->len; k++) {
        scan_item *it = files->pdata[k];
        vh_disk_info *old = g_hash_table_lookup(s->by_path, it->rel);
        if (old && same_file(old, &it->st)) {
            it->result = vh_disk_info_ref(old);
            continue;
        }
        if (g_hash_table_size(s->by_path) > 0) {
            if (!by_inode)
                by_inode = index_by_inode(s);
            file_key key = {it->st.st_dev, it->st.st_ino};
            old = g_hash_table_lookup(by_inode, &key);
            if (old && same_file(old, &it->st)) {
                it->result = info_renamed(old, it->rel);
                continue;
            }
        }
        g_ptr_array_add(todo, it);
    }
    if (by_inode)
        g_hash_table_unref(by_inode);
    g_rw_lock_reader_unlock(&s->lock);
    return todo;
}

/*
 * Parallel probing: each worker takes the next item itself (an atomic counter), so a scan of many
 * files is not one queue push and one wake-up of the scanning thread per file; the scanning
 * thread sleeps until the last probe is done (or until the next progress report).
 */
typedef struct {
    vh_store *s;
    GPtrArray *todo;
    gint next; /* the next item to take */
    gint done; /* items probed */
    GMutex lock;
    GCond cond; /* signalled when the last item is done */
} probe_pool;

static void probe_worker(gpointer data, gpointer user)
{
    probe_pool *pp = user;
    guint n = pp->todo->len;
    guint k;
    while ((k = (guint)g_atomic_int_add(&pp->next, 1)) < n) {
        scan_item *it = pp->todo->pdata[k];
        it->result = probe_file(pp->s, it->rel, &it->st);
        if ((guint)g_atomic_int_add(&pp->done, 1) + 1 == n) {
            g_mutex_lock(&pp->lock);
            g_cond_signal(&pp->cond);
            g_mutex_unlock(&pp->lock);
        }
    }
}

static void probe_all(vh_store *s, GPtrArray *todo)
{
    if (s->threads <= 1 || todo->len < PARALLEL_MIN) {
        for (guint k = 0; k < todo->len; k++) {
            scan_item *it = todo->pdata[k];
            it->result = probe_file(s, it->rel, &it->st);
            if (s->progress && (k % 256 == 0 || k + 1 == todo->len))
                s->progress(s->progress_ctx, k + 1, todo->len);
        }
        return;
    }
    probe_pool pp = {.s = s, .todo = todo};
    g_mutex_init(&pp.lock);
    g_cond_init(&pp.cond);
    GThreadPool *pool = g_thread_pool_new(probe_worker, &pp, s->threads, FALSE, NULL);
    for (int t = 0; t < s->threads; t++)
        g_thread_pool_push(pool, GINT_TO_POINTER(t + 1), NULL); /* data must not be NULL */
    g_mutex_lock(&pp.lock);
    guint done;
    while ((done = (guint)g_atomic_int_get(&pp.done)) < todo->len) {
        if (s->progress) {
            g_mutex_unlock(&pp.lock);
            s->progress(s->progress_ctx, done, todo->len);
            g_mutex_lock(&pp.lock);
            if ((guint)g_atomic_int_get(&pp.done) == todo->len)
                break;
        }
        g_cond_wait_until(&pp.cond, &pp.lock, g_get_monotonic_time() + G_TIME_SPAN_SECOND / 10);
    }
    g_mutex_unlock(&pp.lock);
    if (s->progress)
        s->progress(s->progress_ctx, todo->len, todo->len);
    g_thread_pool_free(pool, FALSE, TRUE);
    g_mutex_clear(&pp.lock);
    g_cond_clear(&pp.cond);
}

/*
 * Notes made while a scan runs. The scan's walk may have listed a folder before or after a
 * change was noted, so each note is applied to the scan's result before it is swapped in, in
 * the order noted, in a way that is right either way: a rename moves what the walk still saw
 * under the old name (nothing when the walk saw the new one), an unlink removes the file only
 * if it is the one unlinked (same device and inode), and a change puts in the entry probed.
 */
typedef enum { NOTE_RENAME, NOTE_UNLINK, NOTE_CHANGED } note_kind;

typedef struct note {
    note_kind kind;
    char *path;        /* RENAME: the old path; UNLINK, CHANGED: the path */
    char *to;          /* RENAME: the new path */
    dev_t dev;         /* UNLINK: the file the index knew (0/0: none) */
    ino_t ino;         /* UNLINK */
    vh_disk_info *now; /* CHANGED: the new entry (NULL: the file is gone) */
} note;

static void note_free(gpointer p)
{
    note *n = p;
    g_free(n->path);
    g_free(n->to);
    vh_disk_info_unref(n->now);
    g_free(n);
}

/* Remembers a note for the running scan, if any; the caller holds the write lock. */
static void pending_add(vh_store *s, note_kind kind, const char *path, const char *to,
                        const vh_disk_info *known, vh_disk_info *now)
{
    if (!s->pending)
        return;
    note *n = g_new0(note, 1);
    n->kind = kind;
    n->path = g_strdup(path);
    n->to = g_strdup(to);
    if (known) {
        n->dev = known->dev;
        n->ino = known->ino;
    }
    n->now = vh_disk_info_ref(now);
    g_ptr_array_add(s->pending, n);
}

/* Moves every entry at or below old_rel to new_rel; false when there was none. */
static bool tables_rename(GHashTable *by_path, GHashTable *by_id, const char *old_rel,
                          const char *new_rel)
{
    g_autoptr(GPtrArray) moved = g_ptr_array_new_with_free_func((GDestroyNotify)vh_disk_info_unref);
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, by_path);
    while (g_hash_table_iter_next(&it, NULL, &v))
        if (path_under(((vh_disk_info *)v)->path, old_rel))
            g_ptr_array_add(moved, vh_disk_info_ref(v));
    if (moved->len == 0)
        return false;
    tables_remove(by_path, by_id, new_rel); /* a file replaced by the rename */
    size_t n = strlen(old_rel);
    for (guint k = 0; k < moved->len; k++) {
        vh_disk_info *o = moved->pdata[k];
        g_autofree char *path = g_strconcat(new_rel, o->path + n, NULL);
        tables_remove(by_path, by_id, o->path);
        tables_insert(by_path, by_id, info_renamed(o, path));
    }
    return true;
}

static void apply_note(GHashTable *by_path, GHashTable *by_id, const note *n)
{
    vh_disk_info *seen = g_hash_table_lookup(by_path, n->path);
    switch (n->kind) {
    case NOTE_RENAME:
        tables_rename(by_path, by_id, n->path, n->to);
        break;
    case NOTE_UNLINK:
        if (seen && seen->dev == n->dev && seen->ino == n->ino)
            tables_remove(by_path, by_id, n->path);
        break;
    case NOTE_CHANGED:
        if (n->now)
            tables_insert(by_path, by_id, vh_disk_info_ref(n->now));
        else
            tables_remove(by_path, by_id, n->path);
        break;
    }
}

int vh_store_scan(vh_store *s, GError **err)
{
    g_mutex_lock(&s->scan_lock);
    g_rw_lock_writer_lock(&s->lock);
    s->pending = g_ptr_array_new_with_free_func(note_free);
    g_rw_lock_writer_unlock(&s->lock);
    GPtrArray *files = g_ptr_array_new_with_free_func(scan_item_free);
    int r = walk(s, files, err);
    if (r == 0) {
        GPtrArray *todo = reuse_unchanged(s, files);
        probe_all(s, todo);
        g_ptr_array_free(todo, TRUE);
        GHashTable *by_path = new_by_path();
        GHashTable *by_id = new_by_id();
        for (guint k = 0; k < files->len; k++) {
            scan_item *it = files->pdata[k];
            if (!it->result)
                continue;
            vh_disk_info *i = g_steal_pointer(&it->result);
            g_hash_table_insert(by_path, i->path, i);
            id_add(by_id, i);
        }
        g_rw_lock_writer_lock(&s->lock);
        for (guint k = 0; k < s->pending->len; k++)
            apply_note(by_path, by_id, s->pending->pdata[k]);
        GHashTable *old_path = s->by_path, *old_id = s->by_id;
        s->by_path = by_path;
        s->by_id = by_id;
        s->scanned = true;
        g_rw_lock_writer_unlock(&s->lock);
        g_hash_table_unref(old_id);
        g_hash_table_unref(old_path);
    }
    g_rw_lock_writer_lock(&s->lock);
    g_clear_pointer(&s->pending, g_ptr_array_unref);
    g_rw_lock_writer_unlock(&s->lock);
    g_ptr_array_free(files, TRUE);
    g_mutex_unlock(&s->scan_lock);
    return r;
}

/* ---------------------------------------------------------------------------------------- */
/* Queries */

vh_disk_info *vh_store_get(vh_store *s, const char *rel)
{
    g_rw_lock_reader_lock(&s->lock);
    vh_disk_info *i = vh_disk_info_ref(g_hash_table_lookup(s->by_path, rel));
    g_rw_lock_reader_unlock(&s->lock);
    return i;
}

vh_disk_info *vh_store_describe(vh_store *s, const char *rel, GError **err)
{
    struct stat st;
    if (fstatat(s->root_fd, rel, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        vh_fail(err, errno, "%s/%s: %s", s->root, rel, g_strerror(errno));
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        vh_fail(err, ENOENT, "%s/%s: not a regular file", s->root, rel);
        return NULL;
    }
    vh_disk_info *i = vh_store_get(s, rel);
    if (i && same_file(i, &st))
        return i;
    vh_disk_info_unref(i);
    i = probe_file(s, rel, &st);
    if (!i) {
        vh_fail(err, EIO, "%s/%s: cannot be read", s->root, rel);
        return NULL;
    }
    g_rw_lock_writer_lock(&s->lock);
    pending_add(s, NOTE_CHANGED, rel, NULL, NULL, i);
    index_insert(s, vh_disk_info_ref(i));
    g_rw_lock_writer_unlock(&s->lock);
    return i;
}

static gint by_path_cmp(gconstpointer a, gconstpointer b)
{
    const vh_disk_info *x = *(vh_disk_info *const *)a, *y = *(vh_disk_info *const *)b;
    return strcmp(x->path, y->path);
}

GPtrArray *vh_store_find_id(vh_store *s, const vh_id *id)
{
    GPtrArray *out = g_ptr_array_new_with_free_func((GDestroyNotify)vh_disk_info_unref);
    g_rw_lock_reader_lock(&s->lock);
    GPtrArray *a = g_hash_table_lookup(s->by_id, id);
    for (guint k = 0; a && k < a->len; k++)
        g_ptr_array_add(out, vh_disk_info_ref(a->pdata[k]));
    g_rw_lock_reader_unlock(&s->lock);
    g_ptr_array_sort(out, by_path_cmp);
    return out;
}

GPtrArray *vh_store_list(vh_store *s, const char *under)
{
    GPtrArray *out = g_ptr_array_new_with_free_func((GDestroyNotify)vh_disk_info_unref);
    g_rw_lock_reader_lock(&s->lock);
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, s->by_path);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        vh_disk_info *i = v;
        if (i->format != VH_FORMAT_NONE && path_under(i->path, under))
            g_ptr_array_add(out, vh_disk_info_ref(i));
    }
    g_rw_lock_reader_unlock(&s->lock);
    g_ptr_array_sort(out, by_path_cmp);
    return out;
}

/* ---------------------------------------------------------------------------------------- */
/* Notifications */

void vh_store_note_rename(vh_store *s, const char *old_rel, const char *new_rel)
{
    g_rw_lock_writer_lock(&s->lock);
    if (!tables_rename(s->by_path, s->by_id, old_rel, new_rel))
        tables_remove(s->by_path, s->by_id, new_rel); /* an unknown file replaced new_rel */
    pending_add(s, NOTE_RENAME, old_rel, new_rel, NULL, NULL);
    g_rw_lock_writer_unlock(&s->lock);
}

void vh_store_note_unlink(vh_store *s, const char *rel)
{
    g_rw_lock_writer_lock(&s->lock);
    pending_add(s, NOTE_UNLINK, rel, NULL, g_hash_table_lookup(s->by_path, rel), NULL);
    index_remove(s, rel);
    g_rw_lock_writer_unlock(&s->lock);
}

void vh_store_note_changed(vh_store *s, const char *rel)
{
    struct stat st;
    vh_disk_info *i = NULL;
    if (fstatat(s->root_fd, rel, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode))
        i = probe_file(s, rel, &st);
    g_rw_lock_writer_lock(&s->lock);
    pending_add(s, NOTE_CHANGED, rel, NULL, NULL, i);
    if (i)
        index_insert(s, i);
    else
        index_remove(s, rel);
    g_rw_lock_writer_unlock(&s->lock);
}

/* ---------------------------------------------------------------------------------------- */
/* Which folder is the store */

char *vh_store_relpath(const char *store_real, const char *path)
{
    g_autofree char *real = realpath(path, NULL);
    return real ? g_strdup(vh_path_below(store_real, real)) : NULL;
}

static bool is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The deepest common folder of absolute canonical paths. */
static char *common_folder(GPtrArray *dirs)
{
    g_autofree char *c = g_strdup(dirs->pdata[0]);
    for (guint k = 1; k < dirs->len; k++) {
        const char *d = dirs->pdata[k];
        while (strcmp(c, "/") != 0 && !path_under(d, c)) {
            char *up = g_path_get_dirname(c);
            g_free(c);
            c = up;
        }
    }
    return g_steal_pointer(&c);
}

char *vh_store_determine(const char *store_opt, char **paths, int npaths, bool folder_is_store,
                         GError **err)
{
    if (store_opt) {
        char *real = realpath(store_opt, NULL);
        if (!real || !is_dir(real)) {
            vh_fail(err, real ? ENOTDIR : errno, "--store %s: not a folder", store_opt);
            free(real);
            return NULL;
        }
        for (int k = 0; k < npaths; k++) {
            g_autofree char *rel = vh_store_relpath(real, paths[k]);
            if (!rel) {
                vh_fail(err, EINVAL, "%s: %s", paths[k],
                        access(paths[k], F_OK) == 0 ? "lies outside the store" : g_strerror(errno));
                free(real);
                return NULL;
            }
        }
        return real;
    }
    g_autoptr(GPtrArray) dirs = g_ptr_array_new_with_free_func(g_free);
    for (int k = 0; k < npaths; k++) {
        char *real = realpath(paths[k], NULL);
        if (!real) {
            vh_fail(err, errno, "%s: %s", paths[k], g_strerror(errno));
            return NULL;
        }
        if (is_dir(real)) {
            g_ptr_array_add(dirs, real);
        } else {
            g_ptr_array_add(dirs, g_path_get_dirname(real));
            free(real);
        }
    }
    if (dirs->len == 0) {
        vh_fail(err, EINVAL, "no path given");
        return NULL;
    }
    if (folder_is_store && npaths == 1 && is_dir(paths[0]))
        return g_strdup(dirs->pdata[0]);
    g_autofree char *common = common_folder(dirs);
    for (g_autofree char *c = g_strdup(common);;) {
        g_autofree char *marker = g_build_filename(c, PRIVATE_DIR, NULL);
        if (is_dir(marker))
            return g_steal_pointer(&c);
        if (strcmp(c, "/") == 0)
            break;
        char *up = g_path_get_dirname(c);
        g_free(c);
        c = up;
    }
    return g_steal_pointer(&common);
}
