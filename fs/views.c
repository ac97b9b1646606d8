/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * views.c - the @raw and @chains folders at the root of the mount (DESIGN.md "Views").
 *
 *   @raw/DIR/NAME.raw      the virtual disk of the store's disk DIR/NAME, read through its whole
 *                          resolved chain (a broken link is crossed to its one heal target,
 *                          without writing anything), as large as the virtual size, read-only
 *   @chains/DIR/NAME/      for each chain top (a disk that is no other disk's parent):
 *        0-NAME, 1-PARENT, ...   relative symlinks to the members, top first, into the mount
 *        status                  the verdict of every link, worded as `vhdheal check` words it
 *
 * Contract: the views never write to STORE and parse no disk bytes (chain/flat.c reads the
 * chains). Both views mirror the store's folders but show only folders that hold, at any depth,
 * something to show: a file manager user browsing @raw finds disks, not a copy of every empty or
 * document folder. A disk that cannot be read, or whose chain is broken without a unique heal
 * target, still appears (with its virtual size, or size 0 when even that is unknown), and
 * opening it fails with EIO and one log line naming the reason. A real entry named @raw or
 * @chains at the store's root wins over the view (logged once).
 *
 * Inodes: a view's inode number has bit 63 set (VHFS_VIEWS_INO_BIT) and is never reused; the
 * pass-through's are addresses of its inode structs, which on Linux never have that bit set
 * (user space lies in the lower half of the address space). vhfs_views_wrap puts a wrapper in
 * front of every operation that takes an inode: view inodes are served here, all others go on to
 * passthrough.c. The only hook inside passthrough.c lists @raw and @chains after the real
 * entries of the root (vhfs_views_root_entries).
 *
 * Freshness: what the views show is a snapshot of the store index, refreshed at most once a
 * second when a view is used (an incremental scan; it is rebuilt when any disk's path, inode,
 * size or mtime changed). Open chains are cached per disk (chain/flat.h, bounded LRU) and
 * reopened when a member's path, inode, size or mtime changed, which also catches a rename or a
 * repair through the mount. The kernel keeps a raw file's pages between opens only while the
 * same reader serves it.
 */
#include "fs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "flat.h"
#include "resolve.h"

#define VIEW_TIMEOUT 1.0            /* entry and attribute timeout of the views, seconds */
#define REFRESH_USEC G_USEC_PER_SEC /* at most one store refresh a second */
#define FLAT_CACHE_MAX 32           /* open chains kept */
#define RAW_SUFFIX ".raw"
#define STATUS_NAME "status"

enum vkind {
    V_RAW_DIR,    /* @raw or a folder below it; path: the store folder ("" for @raw) */
    V_RAW_FILE,   /* @raw/.../NAME.raw; path: the disk */
    V_CHAINS_DIR, /* @chains or a folder below it; path: the store folder */
    V_CHAIN,      /* @chains/.../NAME/; path: the chain's top */
    V_LINK,       /* @chains/.../NAME/K-MEMBER; path: the top, index: K */
    V_STATUS,     /* @chains/.../NAME/status; path: the top */
};

static const char *const root_names[] = {"@raw", "@chains"};
static const enum vkind root_kinds[] = {V_RAW_DIR, V_CHAINS_DIR};

/* One inode of the views the kernel knows. */
struct vnode {
    fuse_ino_t ino;
    enum vkind kind;
    guint index;
    char *path;
    char *key;
    uint64_t nlookup; /* guarded by views.lock */
    guint64 served;   /* V_RAW_FILE: serial of the reader last opened (atomic) */
};

/* A name in a view folder. */
struct ventry {
    char *name;
    enum vkind kind;
    char *path;
    guint index;
};

/* What a chain top shows in @chains. */
struct top {
    GPtrArray *members; /* char*: store-relative paths, the top first */
    char *status;       /* the status file's text */
};

/* The store as the views see it; replaced, never changed, when the store changed. */
struct snap {
    gint ref;
    vh_resolver *resolver;
    GPtrArray *list;        /* vh_disk_info*: every disk, readable or not, sorted by path */
    GHashTable *disks;      /* path -> vh_disk_info* (borrowed from list) */
    GHashTable *raw_dirs;   /* folder -> GPtrArray of ventry*, sorted by name */
    GHashTable *chain_dirs; /* folder -> GPtrArray of ventry*, sorted by name */
    GHashTable *tops;       /* top path -> struct top* */
    GMutex lock;            /* guards chains and logged */
    GHashTable *chains;     /* disk path -> vh_chain* (NULL value: cannot be resolved) */
    GHashTable *logged;     /* disk paths whose failure was logged */
};

struct vhfs_views {
    struct vhfs *fs;
    vh_store *store;
    vh_flat_cache *cache;
    GMutex lock;        /* guards the node tables */
    GHashTable *by_key; /* key -> struct vnode* */
    GHashTable *by_ino; /* ino -> struct vnode* */
    guint64 next_ino;
    GMutex snap_lock; /* guards snap and checked; held while refreshing */
    struct snap *snap;
    gint64 checked; /* monotonic time of the last refresh */
    gint shadow_logged[2];
};

/* An open file or folder of the views (fi->fh). */
struct vhandle {
    enum vkind kind;
    vh_flat *flat; /* V_RAW_FILE */
    char *text;    /* V_STATUS */
    size_t text_len;
    struct snap *snap;  /* folders: the listing's snapshot */
    GPtrArray *entries; /* folders: ventry* */
    char *path;
    gint logged; /* a read error of this handle was logged */
};

/* The operations of the pass-through, called for every inode that is not ours. */
static struct fuse_lowlevel_ops base;

/* ---------------------------------------------------------------------------------------- */
/* Small helpers */

static struct vhfs *fs_of(fuse_req_t req)
{
    return fuse_req_userdata(req);
}

static struct vhfs_views *views_of(fuse_req_t req)
{
    return fs_of(req)->views;
}

static void reply_err(fuse_req_t req, const char *op, int err)
{
    if (err != 0)
        vhfs_debug("views: %s: %s (errno %d)", op, g_strerror(err), err);
    fuse_reply_err(req, err);
}

/* The folder part of a store-relative path ("" at the top) and its last component. */
static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? g_strndup(path, (gsize)(slash - path)) : g_strdup("");
}

static const char *base_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static guint components(const char *path)
{
    guint n = 1;
    for (const char *p = path; *p; p++)
        n += *p == '/';
    return n;
}

static int64_t mtime_ns_of(const struct stat *st)
{
    return (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

/* ---------------------------------------------------------------------------------------- */
/* Folder listings */

static void ventry_free(struct ventry *e)
{
    g_free(e->name);
    g_free(e->path);
    g_free(e);
}

static struct ventry *ventry_new(char *name, enum vkind kind, const char *path, guint index)
{
    struct ventry *e = g_new0(struct ventry, 1);
    e->name = name;
    e->kind = kind;
    e->path = g_strdup(path);
    e->index = index;
    return e;
}

static GPtrArray *entries_new(void)
{
    return g_ptr_array_new_with_free_func((GDestroyNotify)ventry_free);
}

/* The listing of `folder`, made (with an entry in each folder above) when missing. */
static GPtrArray *tree_dir(GHashTable *dirs, const char *folder, enum vkind dir_kind)
{
    GPtrArray *a = g_hash_table_lookup(dirs, folder);
    if (a)
        return a;
    a = entries_new();
    g_hash_table_insert(dirs, g_strdup(folder), a);
    if (*folder) {
        g_autofree char *up = dir_of(folder);
        GPtrArray *parent = tree_dir(dirs, up, dir_kind);
        g_ptr_array_add(parent, ventry_new(g_strdup(base_of(folder)), dir_kind, folder, 0));
    }
    return a;
}

static void tree_add(GHashTable *dirs, enum vkind dir_kind, char *name, enum vkind kind,
                     const char *path)
{
    g_autofree char *folder = dir_of(path);
    g_ptr_array_add(tree_dir(dirs, folder, dir_kind), ventry_new(name, kind, path, 0));
}

static gint ventry_cmp(gconstpointer a, gconstpointer b)
{
    const struct ventry *x = *(struct ventry *const *)a, *y = *(struct ventry *const *)b;
    int c = strcmp(x->name, y->name);
    /* Of two equal names the file (a disk) comes first and the folder is dropped. */
    return c ? c
             : (int)(x->kind == V_RAW_DIR || x->kind == V_CHAINS_DIR) -
                   (int)(y->kind == V_RAW_DIR || y->kind == V_CHAINS_DIR);
}

/* Sorts every listing by name; where a disk's view name equals a folder's, the disk wins. */
static void tree_finish(GHashTable *dirs)
{
    GHashTableIter it;
    gpointer value;
    g_hash_table_iter_init(&it, dirs);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        GPtrArray *a = value;
        g_ptr_array_sort(a, ventry_cmp);
        for (guint k = 1; k < a->len;) {
            if (strcmp(((struct ventry *)a->pdata[k - 1])->name,
                       ((struct ventry *)a->pdata[k])->name) == 0)
                g_ptr_array_remove_index(a, k);
            else
                k++;
        }
    }
}

static const struct ventry *entries_find(GPtrArray *a, const char *name)
{
    guint lo = 0, hi = a ? a->len : 0;
    while (lo < hi) {
        guint mid = lo + (hi - lo) / 2;
        const struct ventry *e = a->pdata[mid];
        int c = strcmp(name, e->name);
        if (c == 0)
            return e;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* Snapshots */

static void top_free(struct top *t)
{
    g_ptr_array_unref(t->members);
    g_free(t->status);
    g_free(t);
}

static void chain_free0(gpointer p)
{
    if (p)
        vh_chain_free(p);
}

static struct snap *snap_ref(struct snap *s)
{
    g_atomic_int_inc(&s->ref);
    return s;
}

static void snap_unref(struct snap *s)
{
    if (!s || !g_atomic_int_dec_and_test(&s->ref))
        return;
    g_hash_table_destroy(s->chains);
    g_hash_table_destroy(s->logged);
    g_hash_table_destroy(s->tops);
    g_hash_table_destroy(s->chain_dirs);
    g_hash_table_destroy(s->raw_dirs);
    g_hash_table_destroy(s->disks);
    g_ptr_array_unref(s->list);
    vh_resolver_free(s->resolver);
    g_mutex_clear(&s->lock);
    g_free(s);
}
typedef struct snap snap;
G_DEFINE_AUTOPTR_CLEANUP_FUNC(snap, snap_unref)

/* The chain of a disk, resolved once per snapshot; NULL when the disk cannot be read. */
static const vh_chain *snap_chain(struct snap *s, const char *path, char **why)
{
    gpointer value = NULL;
    g_mutex_lock(&s->lock);
    bool known = g_hash_table_lookup_extended(s->chains, path, NULL, &value);
    g_mutex_unlock(&s->lock);
    if (known && (value || !why))
        return value;
    g_autoptr(GError) err = NULL;
    vh_chain *c = vh_resolve_chain(s->resolver, path, &err);
    if (!c && why)
        *why = g_strdup(err ? err->message : "cannot be read");
    g_mutex_lock(&s->lock);
    if (!g_hash_table_lookup_extended(s->chains, path, NULL, &value)) {
        g_hash_table_insert(s->chains, g_strdup(path), c);
        value = c;
    } else {
        chain_free0(c); /* another thread resolved it meanwhile */
    }
    g_mutex_unlock(&s->lock);
    return value;
}

/* True the first time a disk's failure is reported in this snapshot. */
static bool snap_first_failure(struct snap *s, const char *path)
{
    g_mutex_lock(&s->lock);
    bool first = !g_hash_table_contains(s->logged, path);
    if (first)
        g_hash_table_add(s->logged, g_strdup(path));
    g_mutex_unlock(&s->lock);
    return first;
}

static char *status_text(const vh_disk_info *top, const vh_chain *c, const char *why)
{
    GString *s = g_string_new(NULL);
    if (!c) {
        g_string_append_printf(s, "UNREADABLE  %s\n%s: unreadable: %s\n", top->path, top->path,
                               why ? why : "cannot be read");
        return g_string_free(s, FALSE);
    }
    if (c->broken == 0 && c->complete)
        g_string_append_printf(s, "ok      %s (%u disk%s)\n", top->path, c->disks->len,
                               c->disks->len == 1 ? "" : "s");
    else
        g_string_append_printf(s, "BROKEN  %s (%u broken link%s)\n", top->path, c->broken,
                               c->broken == 1 ? "" : "s");
    for (guint k = 0; k < c->links->len; k++) {
        const vh_link *l = c->links->pdata[k];
        g_string_append_printf(s, "%s: %s: %s\n", l->child, vh_verdict_name(l->verdict), l->detail);
    }
    const vh_disk_info *last = c->disks->pdata[c->disks->len - 1];
    if (c->complete)
        g_string_append_printf(s, "%s: base: %s %s, %" G_GUINT64_FORMAT " bytes\n", last->path,
                               vh_type_name(last->type), vh_format_name(last->format),
                               last->virtual_size);
    g_string_append(s, "chain: ");
    for (guint k = 0; k < c->disks->len; k++)
        g_string_append_printf(s, "%s%s", k ? " -> " : "",
                               ((vh_disk_info *)c->disks->pdata[k])->path);
    g_string_append(s, c->complete ? "\n" : " -> ?\n");
    return g_string_free(s, FALSE);
}

static void snap_add_top(struct snap *s, const vh_disk_info *d, GHashTable *covered)
{
    struct top *t = g_new0(struct top, 1);
    t->members = g_ptr_array_new_with_free_func(g_free);
    g_autofree char *why = NULL;
    const vh_chain *c = d->error ? NULL : snap_chain(s, d->path, &why);
    if (c) {
        for (guint k = 0; k < c->disks->len; k++) {
            const char *p = ((vh_disk_info *)c->disks->pdata[k])->path;
            g_ptr_array_add(t->members, g_strdup(p));
            g_hash_table_add(covered, (gpointer)p);
        }
    } else {
        g_ptr_array_add(t->members, g_strdup(d->path));
        g_hash_table_add(covered, d->path);
    }
    t->status = status_text(d, c, d->error ? d->error : why);
    g_hash_table_insert(s->tops, g_strdup(d->path), t);
    tree_add(s->chain_dirs, V_CHAINS_DIR, g_strdup(base_of(d->path)), V_CHAIN, d->path);
}

/*
 * The tops: disks that no differencing disk's link (ok, or broken with a heal target) leads to.
 * Disks that no top's chain covers (a cycle has no top) become tops too, in path order, as
 * `vhdheal check` lists them.
 */
static void snap_find_tops(struct snap *s)
{
    g_autoptr(GHashTable) parents = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    g_autoptr(GHashTable) covered = g_hash_table_new(g_str_hash, g_str_equal);
    for (guint k = 0; k < s->list->len; k++) {
        const vh_disk_info *d = s->list->pdata[k];
        if (!vh_disk_info_is_disk(d) || d->type != VH_TYPE_DIFFERENCING)
            continue;
        g_autoptr(vh_link) l = vh_resolve_link(s->resolver, d->path, NULL);
        const char *next = l ? (l->parent ? l->parent : l->heal_target) : NULL;
        if (next)
            g_hash_table_add(parents, g_strdup(next));
    }
    for (int pass = 0; pass < 2; pass++)
        for (guint k = 0; k < s->list->len; k++) {
            const vh_disk_info *d = s->list->pdata[k];
            if (g_hash_table_contains(covered, d->path) ||
                (pass == 0 && g_hash_table_contains(parents, d->path)))
                continue;
            snap_add_top(s, d, covered);
        }
}

static struct snap *snap_build(struct vhfs_views *v, GPtrArray *list)
{
    vh_resolve_opts ro = {
        .winroot = v->fs->cfg.winroot, .maxdepth = v->fs->cfg.maxdepth, .trust = v->fs->cfg.trust};
    struct snap *s = g_new0(struct snap, 1);
    s->ref = 1;
    g_mutex_init(&s->lock);
    s->resolver = vh_resolver_new(v->store, &ro);
    s->list = g_ptr_array_ref(list);
    s->disks = g_hash_table_new(g_str_hash, g_str_equal);
    s->raw_dirs =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify)g_ptr_array_unref);
    s->chain_dirs =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify)g_ptr_array_unref);
    s->tops = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify)top_free);
    s->chains = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, chain_free0);
    s->logged = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    tree_dir(s->raw_dirs, "", V_RAW_DIR);
    tree_dir(s->chain_dirs, "", V_CHAINS_DIR);
    for (guint k = 0; k < list->len; k++) {
        vh_disk_info *d = list->pdata[k];
        g_hash_table_insert(s->disks, d->path, d);
        tree_add(s->raw_dirs, V_RAW_DIR, g_strconcat(base_of(d->path), RAW_SUFFIX, NULL),
                 V_RAW_FILE, d->path);
    }
    snap_find_tops(s);
    tree_finish(s->raw_dirs);
    tree_finish(s->chain_dirs);
    return s;
}

/* Whether two listings of the index describe the same files. */
static bool same_list(GPtrArray *a, GPtrArray *b)
{
    if (a->len != b->len)
        return false;
    for (guint k = 0; k < a->len; k++) {
        const vh_disk_info *x = a->pdata[k], *y = b->pdata[k];
        if (x == y)
            continue;
        if (strcmp(x->path, y->path) != 0 || x->dev != y->dev || x->ino != y->ino ||
            x->file_size != y->file_size || x->mtime_ns != y->mtime_ns || x->format != y->format ||
            !x->error != !y->error)
            return false;
    }
    return true;
}

/* Refreshes the index and, when a disk changed, the snapshot. Called with snap_lock held. */
static void refresh_locked(struct vhfs_views *v)
{
    g_autoptr(GError) err = NULL;
    if (vh_store_scan(v->store, &err) < 0)
        vhfs_log(LOG_WARNING, "views: scanning %s: %s", v->fs->cfg.store, err->message);
    g_autoptr(GPtrArray) list = vh_store_list(v->store, NULL);
    if (v->snap && same_list(v->snap->list, list))
        return;
    struct snap *s = snap_build(v, list);
    snap_unref(v->snap);
    v->snap = s;
    vhfs_debug("views: %u disks, %u chain tops", list->len, g_hash_table_size(s->tops));
}

/* The current snapshot (a new reference); `force` refreshes even within the second. */
static struct snap *snap_get(struct vhfs_views *v, bool force)
{
    g_mutex_lock(&v->snap_lock);
    gint64 now = g_get_monotonic_time();
    if (!v->snap || force || now - v->checked >= REFRESH_USEC) {
        refresh_locked(v);
        v->checked = g_get_monotonic_time();
    }
    struct snap *s = snap_ref(v->snap);
    g_mutex_unlock(&v->snap_lock);
    return s;
}

/* ---------------------------------------------------------------------------------------- */
/* Inodes */

static char *vnode_key(enum vkind kind, const char *path, guint index)
{
    return g_strdup_printf("%d:%u:%s", (int)kind, index, path);
}

/* Takes one lookup on the node for (kind, path, index), made when missing. */
static struct vnode *vnode_get(struct vhfs_views *v, enum vkind kind, const char *path, guint index)
{
    g_autofree char *key = vnode_key(kind, path, index);
    g_mutex_lock(&v->lock);
    struct vnode *n = g_hash_table_lookup(v->by_key, key);
    if (!n) {
        n = g_new0(struct vnode, 1);
        n->ino = VHFS_VIEWS_INO_BIT | v->next_ino++;
        n->kind = kind;
        n->index = index;
        n->path = g_strdup(path);
        n->key = g_steal_pointer(&key);
        g_hash_table_insert(v->by_key, n->key, n);
        g_hash_table_insert(v->by_ino, &n->ino, n);
    }
    n->nlookup++;
    g_mutex_unlock(&v->lock);
    return n;
}

static void vnode_free(struct vnode *n)
{
    g_free(n->path);
    g_free(n->key);
    g_free(n);
}

static void vnode_unref(struct vhfs_views *v, fuse_ino_t ino, uint64_t count)
{
    struct vnode *gone = NULL;
    g_mutex_lock(&v->lock);
    struct vnode *n = g_hash_table_lookup(v->by_ino, &ino);
    if (n) {
        n->nlookup -= MIN(count, n->nlookup);
        if (n->nlookup == 0) {
            g_hash_table_remove(v->by_key, n->key);
            g_hash_table_remove(v->by_ino, &n->ino);
            gone = n;
        }
    } else {
        vhfs_log(LOG_ERR, "views: forget of unknown inode %" G_GUINT64_FORMAT, (guint64)ino);
    }
    g_mutex_unlock(&v->lock);
    if (gone)
        vnode_free(gone);
}

/* The node of an inode the kernel holds (it cannot be forgotten while a request uses it). */
static struct vnode *vnode_of(struct vhfs_views *v, fuse_ino_t ino)
{
    g_mutex_lock(&v->lock);
    struct vnode *n = g_hash_table_lookup(v->by_ino, &ino);
    g_mutex_unlock(&v->lock);
    return n;
}

/* ---------------------------------------------------------------------------------------- */
/* Attributes */

static const struct top *snap_top(struct snap *s, const char *path)
{
    return g_hash_table_lookup(s->tops, path);
}

/* The symlink text of member `index` of a top's chain: up to the mount's root, then down. */
static char *link_target(const char *top, const char *member)
{
    GString *t = g_string_new(NULL);
    for (guint k = components(top) + 1; k > 0; k--)
        g_string_append(t, "../");
    g_string_append(t, member);
    return g_string_free(t, FALSE);
}

static size_t link_target_len(const char *top, const char *member)
{
    return 3 * (components(top) + 1) + strlen(member);
}

static char *link_name(guint index, const char *member)
{
    return g_strdup_printf("%u-%s", index, base_of(member));
}

/* A folder of the views: the real folder's owner and times, its write bits taken away. */
static int dir_attr(struct vhfs_views *v, const char *folder, struct stat *st)
{
    int root = v->fs->root.fd;
    if (fstatat(root, *folder ? folder : "", st, *folder ? AT_SYMLINK_NOFOLLOW : AT_EMPTY_PATH) < 0)
        return -errno;
    if (!S_ISDIR(st->st_mode))
        return -ENOENT;
    st->st_mode = S_IFDIR | (st->st_mode & 0555);
    st->st_nlink = 2;
    return 0;
}

/* The store file of a disk, as a base for the attributes shown for it. */
static int disk_stat(struct vhfs_views *v, const char *path, struct stat *st)
{
    if (fstatat(v->fs->root.fd, path, st, AT_SYMLINK_NOFOLLOW) < 0)
        return -errno;
    return S_ISREG(st->st_mode) ? 0 : -ENOENT;
}

static int raw_attr(struct vhfs_views *v, struct snap *s, const char *path, struct stat *st)
{
    const vh_disk_info *d = g_hash_table_lookup(s->disks, path);
    if (!d)
        return -ENOENT;
    int r = disk_stat(v, path, st);
    if (r < 0)
        return r;
    uint64_t size = vh_disk_info_is_disk(d) ? d->virtual_size : 0;
    uint64_t stored = (uint64_t)st->st_size;
    int64_t mtime = mtime_ns_of(st);
    const vh_chain *c = vh_disk_info_is_disk(d) ? snap_chain(s, path, NULL) : NULL;
    /* The content changes when any member changes: the newest member's mtime is the file's. */
    for (guint k = 1; c && k < c->disks->len; k++) {
        const vh_disk_info *m = c->disks->pdata[k];
        stored += m->file_size;
        mtime = MAX(mtime, m->mtime_ns);
    }
    st->st_mode = S_IFREG | (st->st_mode & 0444);
    st->st_nlink = 1;
    st->st_size = (off_t)size;
    st->st_blocks = (blkcnt_t)((MIN(stored, size) + 511) / 512);
    st->st_blksize = VHFS_MAX_IO;
    st->st_mtim.tv_sec = mtime / 1000000000;
    st->st_mtim.tv_nsec = mtime % 1000000000;
    if (st->st_ctim.tv_sec < st->st_mtim.tv_sec)
        st->st_ctim = st->st_mtim;
    return 0;
}

static int node_attr(struct vhfs_views *v, struct snap *s, const struct vnode *n, struct stat *st)
{
    const struct top *t;
    int r;

    memset(st, 0, sizeof(*st));
    switch (n->kind) {
    case V_RAW_DIR:
        r = g_hash_table_contains(s->raw_dirs, n->path) ? dir_attr(v, n->path, st) : -ENOENT;
        break;
    case V_CHAINS_DIR:
        r = g_hash_table_contains(s->chain_dirs, n->path) ? dir_attr(v, n->path, st) : -ENOENT;
        break;
    case V_RAW_FILE:
        r = raw_attr(v, s, n->path, st);
        break;
    case V_CHAIN:
        if (!snap_top(s, n->path) || (r = disk_stat(v, n->path, st)) < 0)
            return -ENOENT;
        st->st_mode = S_IFDIR | (st->st_mode & 0444) | ((st->st_mode & 0444) >> 2);
        st->st_nlink = 2;
        st->st_size = 4096;
        break;
    case V_LINK:
        t = snap_top(s, n->path);
        if (!t || n->index >= t->members->len || (r = disk_stat(v, n->path, st)) < 0)
            return -ENOENT;
        st->st_mode = S_IFLNK | 0777;
        st->st_nlink = 1;
        st->st_size = (off_t)link_target_len(n->path, t->members->pdata[n->index]);
        st->st_blocks = 0;
        break;
    case V_STATUS:
        t = snap_top(s, n->path);
        if (!t || (r = disk_stat(v, n->path, st)) < 0)
            return -ENOENT;
        st->st_mode = S_IFREG | 0444;
        st->st_nlink = 1;
        st->st_size = (off_t)strlen(t->status);
        st->st_blocks = (blkcnt_t)((st->st_size + 511) / 512);
        break;
    default:
        return -ENOENT;
    }
    if (r < 0)
        return r;
    st->st_ino = n->ino;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Lookups */

/* Looks `name` up in view folder `dir`: its kind, path and index. */
static int child_of(struct snap *s, const struct vnode *dir, const char *name, enum vkind *kind,
                    const char **path, guint *index)
{
    GPtrArray *a = NULL;
    const struct top *t;

    switch (dir->kind) {
    case V_RAW_DIR:
        a = g_hash_table_lookup(s->raw_dirs, dir->path);
        break;
    case V_CHAINS_DIR:
        a = g_hash_table_lookup(s->chain_dirs, dir->path);
        break;
    case V_CHAIN:
        t = snap_top(s, dir->path);
        if (!t)
            return -ENOENT;
        *path = dir->path;
        if (strcmp(name, STATUS_NAME) == 0) {
            *kind = V_STATUS;
            *index = 0;
            return 0;
        }
        for (guint k = 0; k < t->members->len; k++) {
            g_autofree char *ln = link_name(k, t->members->pdata[k]);
            if (strcmp(ln, name) == 0) {
                *kind = V_LINK;
                *index = k;
                return 0;
            }
        }
        return -ENOENT;
    default:
        return -ENOTDIR;
    }
    const struct ventry *e = entries_find(a, name);
    if (!e)
        return -ENOENT;
    *kind = e->kind;
    *path = e->path;
    *index = e->index;
    return 0;
}

/* Fills e for the node (kind, path, index), taking one lookup on it. */
static int make_entry(struct vhfs_views *v, struct snap *s, enum vkind kind, const char *path,
                      guint index, struct fuse_entry_param *e)
{
    memset(e, 0, sizeof(*e));
    struct vnode *n = vnode_get(v, kind, path, index);
    int r = node_attr(v, s, n, &e->attr);
    if (r < 0) {
        vnode_unref(v, n->ino, 1);
        return r;
    }
    e->ino = n->ino;
    e->attr_timeout = VIEW_TIMEOUT;
    e->entry_timeout = VIEW_TIMEOUT;
    return 0;
}

static void reply_entry(fuse_req_t req, const struct fuse_entry_param *e)
{
    if (fuse_reply_entry(req, e) != 0)
        vnode_unref(views_of(req), e->ino, 1);
}

/* Whether the store's root really holds `name` (then it wins over the view); logged once. */
static bool shadowed(struct vhfs_views *v, int which)
{
    struct stat st;
    if (fstatat(v->fs->root.fd, root_names[which], &st, AT_SYMLINK_NOFOLLOW) < 0)
        return false;
    if (g_atomic_int_compare_and_exchange(&v->shadow_logged[which], 0, 1))
        vhfs_log(LOG_NOTICE, "views: %s/%s exists: the store's entry is shown, not the view",
                 v->fs->cfg.store, root_names[which]);
    return true;
}

static int root_view(const char *name)
{
    for (int k = 0; k < 2; k++)
        if (strcmp(name, root_names[k]) == 0)
            return k;
    return -1;
}

static void vw_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct vhfs_views *v = views_of(req);
    struct fuse_entry_param e;
    enum vkind kind;
    const char *path;
    guint index;
    int r, which;

    if (!vhfs_views_ino(parent)) {
        if (parent != FUSE_ROOT_ID || (which = root_view(name)) < 0 || shadowed(v, which))
            return base.lookup(req, parent, name);
        g_autoptr(snap) s = snap_get(v, false);
        r = make_entry(v, s, root_kinds[which], "", 0, &e);
        return r < 0 ? reply_err(req, "lookup", -r) : reply_entry(req, &e);
    }
    struct vnode *dir = vnode_of(v, parent);
    if (!dir)
        return reply_err(req, "lookup", ESTALE);
    g_autoptr(snap) s = snap_get(v, false);
    r = child_of(s, dir, name, &kind, &path, &index);
    if (r == 0)
        r = make_entry(v, s, kind, path, index, &e);
    if (r < 0)
        return reply_err(req, "lookup", -r);
    reply_entry(req, &e);
}

size_t vhfs_views_root_entries(fuse_req_t req, char *buf, size_t size, off_t off, bool plus,
                               unsigned *sent)
{
    struct vhfs_views *v = views_of(req);
    size_t used = 0;

    if (v == NULL)
        return 0;
    for (; *sent < 2; (*sent)++) {
        struct fuse_entry_param e;
        size_t len;

        if (shadowed(v, (int)*sent))
            continue; /* the real entry was listed */
        g_autoptr(snap) s = snap_get(v, false);
        if (make_entry(v, s, root_kinds[*sent], "", 0, &e) < 0)
            continue;
        if (plus) {
            len = fuse_add_direntry_plus(req, buf + used, size - used, root_names[*sent], &e, off);
            if (len > size - used)
                vnode_unref(v, e.ino, 1);
        } else {
            vnode_unref(v, e.ino, 1);
            len = fuse_add_direntry(req, buf + used, size - used, root_names[*sent], &e.attr, off);
        }
        if (len > size - used)
            break;
        used += len;
    }
    return used;
}

static void vw_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
    if (!vhfs_views_ino(ino))
        return base.forget(req, ino, nlookup);
    vnode_unref(views_of(req), ino, nlookup);
    fuse_reply_none(req);
}

static void vw_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
    struct vhfs_views *v = views_of(req);
    size_t keep = 0;

    /* Ours are dropped here; the rest, moved to the front, go on to the pass-through. */
    for (size_t k = 0; k < count; k++) {
        if (vhfs_views_ino(forgets[k].ino))
            vnode_unref(v, forgets[k].ino, forgets[k].nlookup);
        else
            forgets[keep++] = forgets[k];
    }
    base.forget_multi(req, keep, forgets);
}

static void vw_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct vhfs_views *v = views_of(req);
    struct stat st;

    if (!vhfs_views_ino(ino))
        return base.getattr(req, ino, fi);
    struct vnode *n = vnode_of(v, ino);
    if (!n)
        return reply_err(req, "getattr", ESTALE);
    g_autoptr(snap) s = snap_get(v, false);
    int r = node_attr(v, s, n, &st);
    if (r < 0)
        return reply_err(req, "getattr", -r);
    fuse_reply_attr(req, &st, VIEW_TIMEOUT);
}

static void vw_readlink(fuse_req_t req, fuse_ino_t ino)
{
    struct vhfs_views *v = views_of(req);

    if (!vhfs_views_ino(ino))
        return base.readlink(req, ino);
    struct vnode *n = vnode_of(v, ino);
    if (!n)
        return reply_err(req, "readlink", ESTALE);
    if (n->kind != V_LINK)
        return reply_err(req, "readlink", EINVAL);
    g_autoptr(snap) s = snap_get(v, false);
    const struct top *t = snap_top(s, n->path);
    if (!t || n->index >= t->members->len)
        return reply_err(req, "readlink", ENOENT);
    g_autofree char *target = link_target(n->path, t->members->pdata[n->index]);
    fuse_reply_readlink(req, target);
}

/* ---------------------------------------------------------------------------------------- */
/* Folders */

static void handle_free(struct vhandle *h)
{
    if (!h)
        return;
    vh_flat_unref(h->flat);
    g_free(h->text);
    if (h->entries)
        g_ptr_array_unref(h->entries);
    snap_unref(h->snap);
    g_free(h->path);
    g_free(h);
}

static struct vhandle *handle_of(struct fuse_file_info *fi)
{
    return (struct vhandle *)(uintptr_t)fi->fh;
}

/* The names of a view folder, fixed when it is opened. */
static GPtrArray *listing(struct snap *s, const struct vnode *n)
{
    GPtrArray *a = NULL;
    const struct top *t;

    switch (n->kind) {
    case V_RAW_DIR:
        a = g_hash_table_lookup(s->raw_dirs, n->path);
        return a ? g_ptr_array_ref(a) : NULL;
    case V_CHAINS_DIR:
        a = g_hash_table_lookup(s->chain_dirs, n->path);
        return a ? g_ptr_array_ref(a) : NULL;
    case V_CHAIN:
        t = snap_top(s, n->path);
        if (!t)
            return NULL;
        a = entries_new();
        for (guint k = 0; k < t->members->len; k++)
            g_ptr_array_add(a, ventry_new(link_name(k, t->members->pdata[k]), V_LINK, n->path, k));
        g_ptr_array_add(a, ventry_new(g_strdup(STATUS_NAME), V_STATUS, n->path, 0));
        return a;
    default:
        return NULL;
    }
}

static void vw_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct vhfs_views *v = views_of(req);

    if (!vhfs_views_ino(ino))
        return base.opendir(req, ino, fi);
    struct vnode *n = vnode_of(v, ino);
    if (!n)
        return reply_err(req, "opendir", ESTALE);
    if (n->kind != V_RAW_DIR && n->kind != V_CHAINS_DIR && n->kind != V_CHAIN)
        return reply_err(req, "opendir", ENOTDIR);
    struct snap *s = snap_get(v, false);
    GPtrArray *a = listing(s, n);
    if (!a) {
        snap_unref(s);
        return reply_err(req, "opendir", ENOENT);
    }
    struct vhandle *h = g_new0(struct vhandle, 1);
    h->kind = n->kind;
    h->snap = s;
    h->entries = a;
    fi->fh = (uintptr_t)h;
    fi->cache_readdir = 0;
    if (fuse_reply_open(req, fi) != 0)
        handle_free(h);
}

/* Offsets: 0 is the start, entry k (0 ".", 1 "..", then the listing) is followed by k + 1. */
static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset,
                       struct fuse_file_info *fi, bool plus)
{
    struct vhfs_views *v = views_of(req);
    struct vhandle *h = handle_of(fi);
    const char *op = plus ? "readdirplus" : "readdir";
    g_autofree char *buf = g_try_malloc(size);
    size_t used = 0;

    if (buf == NULL)
        return reply_err(req, op, ENOMEM);
    for (guint64 k = offset < 0 ? 0 : (guint64)offset; k < 2 + (guint64)h->entries->len; k++) {
        struct fuse_entry_param e = {0};
        const char *name = k == 0 ? "." : "..";
        size_t len;

        if (k >= 2) {
            const struct ventry *ve = h->entries->pdata[k - 2];
            name = ve->name;
            if (make_entry(v, h->snap, ve->kind, ve->path, ve->index, &e) < 0)
                continue; /* gone from the store since the snapshot */
        } else {
            /* ino 0 (no lookup taken) but a number: readdir(3) skips entries whose is 0. */
            e.attr.st_mode = S_IFDIR;
            e.attr.st_ino = k == 0 ? ino : FUSE_ROOT_ID;
        }
        if (plus) {
            len = fuse_add_direntry_plus(req, buf + used, size - used, name, &e, (off_t)k + 1);
            if (len > size - used && e.ino)
                vnode_unref(v, e.ino, 1);
        } else {
            if (e.ino)
                vnode_unref(v, e.ino, 1);
            len = fuse_add_direntry(req, buf + used, size - used, name, &e.attr, (off_t)k + 1);
        }
        if (len > size - used)
            break;
        used += len;
    }
    fuse_reply_buf(req, buf, used);
}

static void vw_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset,
                       struct fuse_file_info *fi)
{
    if (!vhfs_views_ino(ino))
        return base.readdir(req, ino, size, offset, fi);
    do_readdir(req, ino, size, offset, fi, false);
}

static void vw_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset,
                           struct fuse_file_info *fi)
{
    if (!vhfs_views_ino(ino))
        return base.readdirplus(req, ino, size, offset, fi);
    do_readdir(req, ino, size, offset, fi, true);
}

static void vw_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (!vhfs_views_ino(ino))
        return base.releasedir(req, ino, fi);
    handle_free(handle_of(fi));
    reply_err(req, "releasedir", 0);
}

static void vw_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    if (!vhfs_views_ino(ino))
        return base.fsyncdir(req, ino, datasync, fi);
    reply_err(req, "fsyncdir", 0);
}

/* ---------------------------------------------------------------------------------------- */
/* Files */

/*
 * A current reader of a disk's chain. -EAGAIN when the snapshot looks older than the files (a
 * member gone or changed) and `retry` allows another try; else -EIO after one log line per
 * snapshot and disk.
 */
static int open_raw(struct vhfs_views *v, const struct vhfs_caller *caller, struct snap *s,
                    const char *path, bool retry, vh_flat **out)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *why = NULL;
    const vh_disk_info *d = g_hash_table_lookup(s->disks, path);
    const vh_chain *c = NULL;

    if (!d)
        return retry ? -EAGAIN : -ENOENT;
    if (d->error)
        why = g_strdup(d->error);
    else if ((c = snap_chain(s, path, &why)) != NULL && vh_flat_chain_ok(c, &err) == 0) {
        /* the caller reads every disk of the chain: each must be readable by the caller */
        int r = vhfs_caller_may_read_chain(v->fs, caller, c);
        if (r < 0 && (r != -EAGAIN || !retry))
            return r == -EAGAIN ? -EIO : r;
        if (r == 0 && vh_flat_cache_get(v->cache, c, out, &err) == 0)
            return 0;
        if (retry)
            return -EAGAIN;
    }
    if (!why)
        why = g_strdup(err ? err->message : "cannot be read");
    if (snap_first_failure(s, path))
        vhfs_log(LOG_ERR, "views: @raw/%s%s: %s", path, RAW_SUFFIX, why);
    return -EIO;
}

static void vw_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct vhfs_views *v = views_of(req);

    if (!vhfs_views_ino(ino))
        return base.open(req, ino, fi);
    struct vnode *n = vnode_of(v, ino);
    if (!n)
        return reply_err(req, "open", ESTALE);
    if (n->kind != V_RAW_FILE && n->kind != V_STATUS)
        return reply_err(req, "open", n->kind == V_LINK ? ELOOP : EISDIR);
    if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC))
        return reply_err(req, "open", EROFS);
    g_autoptr(snap) s = snap_get(v, false);
    struct vhandle *h = g_new0(struct vhandle, 1);
    h->kind = n->kind;
    h->path = g_strdup(n->path);
    if (n->kind == V_STATUS) {
        const struct top *t = snap_top(s, n->path);
        if (!t) {
            handle_free(h);
            return reply_err(req, "open", ENOENT);
        }
        h->text = g_strdup(t->status);
        h->text_len = strlen(h->text);
        fi->direct_io = 1; /* its length may change with the store: always ask */
    } else {
        struct vhfs_caller caller;
        vhfs_caller_from_req(&caller, req);
        int r = open_raw(v, &caller, s, n->path, true, &h->flat);
        if (r == -EAGAIN) {
            /* A member renamed or changed since the snapshot: look at the store again. */
            g_autoptr(snap) fresh = snap_get(v, true);
            r = open_raw(v, &caller, fresh, n->path, false, &h->flat);
        }
        if (r < 0) {
            handle_free(h);
            return reply_err(req, "open", -r);
        }
        guint64 serial = vh_flat_serial(h->flat);
        /* Cached pages stay valid only while the same reader serves them. */
        fi->keep_cache = __atomic_exchange_n(&n->served, serial, __ATOMIC_RELAXED) == serial;
        if (fi->flags & O_DIRECT)
            fi->direct_io = 1;
    }
    fi->noflush = 1;
    fi->fh = (uintptr_t)h;
    if (fuse_reply_open(req, fi) != 0)
        handle_free(h);
}

static void vw_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    if (!vhfs_views_ino(ino))
        return base.read(req, ino, size, off, fi);
    struct vhandle *h = handle_of(fi);
    uint64_t end = h->flat ? vh_flat_size(h->flat) : h->text_len;
    if (off < 0)
        return reply_err(req, "read", EINVAL);
    if ((uint64_t)off >= end || size == 0)
        return (void)fuse_reply_buf(req, NULL, 0);
    size_t n = (size_t)MIN((uint64_t)size, end - (uint64_t)off);
    /* Never reply from the handle's memory: once the kernel has the reply, the reader may close
       the file, and the release (on another thread) frees the handle while this thread is
       still inside fuse_reply_buf (ASan's writev check then reads freed memory). */
    if (h->text) {
        g_autofree char *copy = g_memdup2(h->text + off, n);
        return (void)fuse_reply_buf(req, copy, n);
    }
    g_autofree char *buf = g_try_malloc(n);
    if (buf == NULL)
        return reply_err(req, "read", ENOMEM);
    g_autoptr(GError) err = NULL;
    if (vh_flat_read(h->flat, buf, (uint64_t)off, n, &err) < 0) {
        if (g_atomic_int_compare_and_exchange(&h->logged, 0, 1))
            vhfs_log(LOG_ERR, "views: @raw/%s%s: %s", h->path, RAW_SUFFIX, err->message);
        return reply_err(req, "read", EIO);
    }
    fuse_reply_buf(req, buf, n);
}

static void vw_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (!vhfs_views_ino(ino))
        return base.release(req, ino, fi);
    handle_free(handle_of(fi));
    reply_err(req, "release", 0);
}

static void vw_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
                     struct fuse_file_info *fi)
{
    if (!vhfs_views_ino(ino))
        return base.lseek(req, ino, off, whence, fi);
    struct vhandle *h = handle_of(fi);
    uint64_t end = h->flat ? vh_flat_size(h->flat) : h->text_len, res = 0;
    int r = 0;

    if (whence != SEEK_DATA && whence != SEEK_HOLE)
        return reply_err(req, "lseek", EINVAL);
    if (off < 0)
        return reply_err(req, "lseek", ENXIO);
    if (h->flat) {
        g_autoptr(GError) err = NULL;
        r = vh_flat_seek(h->flat, (uint64_t)off, whence == SEEK_HOLE, &res, &err);
        if (r < 0 && r != -ENXIO)
            vhfs_log(LOG_ERR, "views: @raw/%s%s: %s", h->path, RAW_SUFFIX,
                     err ? err->message : g_strerror(-r));
        if (r < 0 && r != -ENXIO)
            r = -EIO;
    } else if ((uint64_t)off >= end) {
        r = -ENXIO;
    } else {
        res = whence == SEEK_DATA ? (uint64_t)off : end;
    }
    if (r < 0)
        return reply_err(req, "lseek", -r);
    fuse_reply_lseek(req, (off_t)res);
}

/* ---------------------------------------------------------------------------------------- */
/* Everything that would change a view: read-only */

static void vw_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int valid,
                       struct fuse_file_info *fi)
{
    if (!vhfs_views_ino(ino))
        return base.setattr(req, ino, attr, valid, fi);
    reply_err(req, "setattr", EROFS);
}

static void vw_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
    if (!vhfs_views_ino(parent))
        return base.mknod(req, parent, name, mode, rdev);
    reply_err(req, "mknod", EROFS);
}

static void vw_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    if (!vhfs_views_ino(parent))
        return base.mkdir(req, parent, name, mode);
    reply_err(req, "mkdir", EROFS);
}

static void vw_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    if (!vhfs_views_ino(parent))
        return base.unlink(req, parent, name);
    reply_err(req, "unlink", EROFS);
}

static void vw_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    if (!vhfs_views_ino(parent))
        return base.rmdir(req, parent, name);
    reply_err(req, "rmdir", EROFS);
}

static void vw_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
    if (!vhfs_views_ino(parent))
        return base.symlink(req, link, parent, name);
    reply_err(req, "symlink", EROFS);
}

static void vw_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned int flags)
{
    if (!vhfs_views_ino(parent) && !vhfs_views_ino(newparent))
        return base.rename(req, parent, name, newparent, newname, flags);
    reply_err(req, "rename", vhfs_views_ino(parent) != vhfs_views_ino(newparent) ? EXDEV : EROFS);
}

static void vw_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
    if (!vhfs_views_ino(ino) && !vhfs_views_ino(newparent))
        return base.link(req, ino, newparent, newname);
    reply_err(req, "link", vhfs_views_ino(newparent) ? EROFS : EXDEV);
}

static void vw_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi)
{
    if (!vhfs_views_ino(parent))
        return base.create(req, parent, name, mode, fi);
    reply_err(req, "create", EROFS);
}

static void vw_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
    if (!vhfs_views_ino(ino))
        return base.write(req, ino, buf, size, off, fi);
    reply_err(req, "write", EBADF); /* never opened for writing */
}

static void vw_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (!vhfs_views_ino(ino))
        return base.flush(req, ino, fi);
    reply_err(req, "flush", 0);
}

static void vw_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    if (!vhfs_views_ino(ino))
        return base.fsync(req, ino, datasync, fi);
    reply_err(req, "fsync", 0);
}

static void vw_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                         struct fuse_file_info *fi)
{
    if (!vhfs_views_ino(ino))
        return base.fallocate(req, ino, mode, offset, length, fi);
    reply_err(req, "fallocate", EBADF);
}

static void vw_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
                               struct fuse_file_info *fi_in, fuse_ino_t ino_out, off_t off_out,
                               struct fuse_file_info *fi_out, size_t len, int flags)
{
    if (!vhfs_views_ino(ino_in) && !vhfs_views_ino(ino_out))
        return base.copy_file_range(req, ino_in, off_in, fi_in, ino_out, off_out, fi_out, len,
                                    flags);
    /* The kernel then copies by reading and writing. */
    reply_err(req, "copy_file_range", EXDEV);
}

static void vw_statfs(fuse_req_t req, fuse_ino_t ino)
{
    base.statfs(req, vhfs_views_ino(ino) ? FUSE_ROOT_ID : ino);
}

static void vw_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
                        size_t size, int flags)
{
    if (!vhfs_views_ino(ino))
        return base.setxattr(req, ino, name, value, size, flags);
    reply_err(req, "setxattr", EROFS);
}

static void vw_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
    if (!vhfs_views_ino(ino))
        return base.getxattr(req, ino, name, size);
    reply_err(req, "getxattr", ENODATA);
}

static void vw_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
    if (!vhfs_views_ino(ino))
        return base.listxattr(req, ino, size);
    if (size == 0)
        fuse_reply_xattr(req, 0);
    else
        fuse_reply_buf(req, NULL, 0);
}

static void vw_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
    if (!vhfs_views_ino(ino))
        return base.removexattr(req, ino, name);
    reply_err(req, "removexattr", EROFS);
}

/* ---------------------------------------------------------------------------------------- */
/* Set-up */

#define WRAP(op)                                                                                   \
    do {                                                                                           \
        if (ops->op != NULL)                                                                       \
            ops->op = vw_##op;                                                                     \
    } while (0)

void vhfs_views_wrap(struct fuse_lowlevel_ops *ops)
{
    base = *ops;
    WRAP(lookup);
    WRAP(forget);
    WRAP(forget_multi);
    WRAP(getattr);
    WRAP(setattr);
    WRAP(readlink);
    WRAP(mknod);
    WRAP(mkdir);
    WRAP(unlink);
    WRAP(rmdir);
    WRAP(symlink);
    WRAP(rename);
    WRAP(link);
    WRAP(open);
    WRAP(read);
    WRAP(write);
    WRAP(flush);
    WRAP(release);
    WRAP(fsync);
    WRAP(opendir);
    WRAP(readdir);
    WRAP(readdirplus);
    WRAP(releasedir);
    WRAP(fsyncdir);
    WRAP(statfs);
    WRAP(setxattr);
    WRAP(getxattr);
    WRAP(listxattr);
    WRAP(removexattr);
    WRAP(create);
    WRAP(fallocate);
    WRAP(copy_file_range);
    WRAP(lseek);
    /* Every other operation that takes an inode must be wrapped too before it is used. */
    g_assert(ops->access == NULL && ops->getlk == NULL && ops->setlk == NULL && ops->bmap == NULL &&
             ops->ioctl == NULL && ops->poll == NULL && ops->write_buf == NULL &&
             ops->flock == NULL);
}

static guint ino_hash(gconstpointer p)
{
    guint64 k = *(const fuse_ino_t *)p;
    return (guint)(k ^ (k >> 32));
}

static gboolean ino_equal(gconstpointer a, gconstpointer b)
{
    return *(const fuse_ino_t *)a == *(const fuse_ino_t *)b;
}

int vhfs_views_init(struct vhfs *fs)
{
    g_autoptr(GError) err = NULL;
    struct vhfs_views *v = g_new0(struct vhfs_views, 1);

    v->fs = fs;
    v->store = vh_store_new(fs->cfg.store, &err);
    if (v->store == NULL) {
        vhfs_log(LOG_ERR, "views: %s", err->message);
        g_free(v);
        return -EIO;
    }
    v->cache = vh_flat_cache_new(v->store, FLAT_CACHE_MAX);
    g_mutex_init(&v->lock);
    g_mutex_init(&v->snap_lock);
    v->by_key = g_hash_table_new(g_str_hash, g_str_equal);
    v->by_ino = g_hash_table_new(ino_hash, ino_equal);
    v->next_ino = 1;
    fs->views = v;
    for (int k = 0; k < 2; k++)
        shadowed(v, k); /* says now which real entry wins */
    return 0;
}

void vhfs_views_fini(struct vhfs *fs)
{
    struct vhfs_views *v = fs->views;
    GHashTableIter it;
    gpointer value;

    if (v == NULL)
        return;
    g_hash_table_iter_init(&it, v->by_ino);
    while (g_hash_table_iter_next(&it, NULL, &value))
        vnode_free(value);
    g_hash_table_destroy(v->by_ino);
    g_hash_table_destroy(v->by_key);
    snap_unref(v->snap);
    vh_flat_cache_free(v->cache);
    vh_store_free(v->store);
    g_mutex_clear(&v->snap_lock);
    g_mutex_clear(&v->lock);
    g_free(v);
    fs->views = NULL;
}
