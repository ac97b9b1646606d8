// SPDX-License-Identifier: GPL-2.0-or-later
/* snapshot.c - the model of the @raw and @chains views (see snapshot.h). */
#include "snapshot.h"

#include "report.h"

/* What a chain top shows in @chains. */
struct top {
    GPtrArray *members; /* char*: store-relative paths, the top first */
    char *status;       /* the status file's text */
};

struct vh_snap {
    gint ref;
    vh_resolver *resolver;
    GPtrArray *list;        /* vh_disk_info*: every disk, readable or not, sorted by path */
    GHashTable *disks;      /* path -> vh_disk_info* (borrowed from list) */
    GHashTable *raw_dirs;   /* folder -> GPtrArray of vh_view_entry*, sorted by name */
    GHashTable *chain_dirs; /* folder -> GPtrArray of vh_view_entry*, sorted by name */
    GHashTable *tops;       /* top path -> struct top* */
    GMutex lock;            /* guards chains and logged */
    GHashTable *chains;     /* disk path -> vh_chain* (NULL value: cannot be resolved) */
    GHashTable *logged;     /* disk paths whose failure was logged */
};

/* ---------------------------------------------------------------------------------------- */
/* Paths */

static guint components(const char *path)
{
    guint n = 1;
    for (const char *p = path; *p; p++)
        n += *p == '/';
    return n;
}

char *vh_view_link_target(const char *top, const char *member)
{
    GString *t = g_string_new(NULL);
    for (guint k = components(top) + 1; k > 0; k--)
        g_string_append(t, "../");
    g_string_append(t, member);
    return g_string_free(t, FALSE);
}

size_t vh_view_link_target_len(const char *top, const char *member)
{
    return 3 * (components(top) + 1) + strlen(member);
}

char *vh_view_link_name(guint index, const char *member)
{
    return g_strdup_printf("%u-%s", index, vh_relpath_base(member));
}

char *vh_view_raw_disk(const char *folder, const char *name)
{
    size_t n = strlen(name), k = strlen(VH_VIEW_RAW_SUFFIX);
    if (n <= k || strcmp(name + n - k, VH_VIEW_RAW_SUFFIX) != 0)
        return NULL;
    g_autofree char *disk = g_strndup(name, n - k);
    return *folder ? g_strdup_printf("%s/%s", folder, disk) : g_steal_pointer(&disk);
}

/* ---------------------------------------------------------------------------------------- */
/* Folder listings */

static void entry_free(vh_view_entry *e)
{
    g_free(e->name);
    g_free(e->path);
    g_free(e);
}

static vh_view_entry *entry_new(char *name, vh_view_kind kind, const char *path, guint index)
{
    vh_view_entry *e = g_new0(vh_view_entry, 1);
    e->name = name;
    e->kind = kind;
    e->path = g_strdup(path);
    e->index = index;
    return e;
}

static GPtrArray *entries_new(void)
{
    return g_ptr_array_new_with_free_func((GDestroyNotify)entry_free);
}

/* The listing of `folder`, made (with an entry in each folder above) when missing. */
static GPtrArray *tree_dir(GHashTable *dirs, const char *folder, vh_view_kind dir_kind)
{
    GPtrArray *a = g_hash_table_lookup(dirs, folder);
    if (a)
        return a;
    a = entries_new();
    g_hash_table_insert(dirs, g_strdup(folder), a);
    if (*folder) {
        g_autofree char *up = vh_relpath_dir(folder);
        GPtrArray *parent = tree_dir(dirs, up, dir_kind);
        g_ptr_array_add(parent, entry_new(g_strdup(vh_relpath_base(folder)), dir_kind, folder, 0));
    }
    return a;
}

static void tree_add(GHashTable *dirs, vh_view_kind dir_kind, char *name, vh_view_kind kind,
                     const char *path)
{
    g_autofree char *folder = vh_relpath_dir(path);
    g_ptr_array_add(tree_dir(dirs, folder, dir_kind), entry_new(name, kind, path, 0));
}

static gint entry_cmp(gconstpointer a, gconstpointer b)
{
    const vh_view_entry *x = *(vh_view_entry *const *)a, *y = *(vh_view_entry *const *)b;
    int c = strcmp(x->name, y->name);
    /* Of two equal names the file (a disk) comes first and the folder is dropped. */
    bool xd = x->kind == VH_VIEW_RAW_DIR || x->kind == VH_VIEW_CHAINS_DIR;
    bool yd = y->kind == VH_VIEW_RAW_DIR || y->kind == VH_VIEW_CHAINS_DIR;
    return c ? c : (int)xd - (int)yd;
}

/* Sorts every listing by name; where a disk's view name equals a folder's, the disk wins. */
static void tree_finish(GHashTable *dirs)
{
    GHashTableIter it;
    gpointer value;
    g_hash_table_iter_init(&it, dirs);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        GPtrArray *a = value;
        g_ptr_array_sort(a, entry_cmp);
        for (guint k = 1; k < a->len;) {
            if (strcmp(((vh_view_entry *)a->pdata[k - 1])->name,
                       ((vh_view_entry *)a->pdata[k])->name) == 0)
                g_ptr_array_remove_index(a, k);
            else
                k++;
        }
    }
}

static const vh_view_entry *entries_find(GPtrArray *a, const char *name)
{
    guint lo = 0, hi = a ? a->len : 0;
    while (lo < hi) {
        guint mid = lo + (hi - lo) / 2;
        const vh_view_entry *e = a->pdata[mid];
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

vh_snap *vh_snap_ref(vh_snap *s)
{
    g_atomic_int_inc(&s->ref);
    return s;
}

void vh_snap_unref(vh_snap *s)
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

/* Remembers a disk's chain (taking c; NULL: it cannot be resolved); returns the one kept. */
static const vh_chain *keep_chain(vh_snap *s, const char *path, vh_chain *c)
{
    gpointer value = NULL;
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

const vh_chain *vh_snap_chain(vh_snap *s, const char *path, char **why)
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
    return keep_chain(s, path, c);
}

bool vh_snap_first_failure(vh_snap *s, const char *path)
{
    g_mutex_lock(&s->lock);
    bool first = !g_hash_table_contains(s->logged, path);
    if (first)
        g_hash_table_add(s->logged, g_strdup(path));
    g_mutex_unlock(&s->lock);
    return first;
}

/* The tops (report.h), unreadable disks included, each with its chain kept for @raw. */
static void find_tops(vh_snap *s)
{
    g_autoptr(GPtrArray) tops = vh_report_tops(s->resolver, s->list, true, NULL, NULL);
    for (guint k = 0; k < tops->len; k++) {
        vh_report_top *rt = tops->pdata[k];
        struct top *t = g_new0(struct top, 1);
        t->members = g_ptr_array_new_with_free_func(g_free);
        t->status = vh_report_status(rt->disk, rt->chain, rt->why);
        const vh_chain *c = rt->disk->error ? NULL : keep_chain(s, rt->disk->path, rt->chain);
        if (rt->disk->error)
            chain_free0(rt->chain);
        rt->chain = NULL;
        for (guint i = 0; c && i < c->disks->len; i++)
            g_ptr_array_add(t->members, g_strdup(((vh_disk_info *)c->disks->pdata[i])->path));
        if (!c)
            g_ptr_array_add(t->members, g_strdup(rt->disk->path));
        g_hash_table_insert(s->tops, g_strdup(rt->disk->path), t);
        tree_add(s->chain_dirs, VH_VIEW_CHAINS_DIR, g_strdup(vh_relpath_base(rt->disk->path)),
                 VH_VIEW_CHAIN, rt->disk->path);
    }
}

vh_snap *vh_snap_new(vh_store *store, const vh_resolve_opts *ro, GPtrArray *disks)
{
    vh_snap *s = g_new0(vh_snap, 1);
    s->ref = 1;
    g_mutex_init(&s->lock);
    s->resolver = vh_resolver_new(store, ro);
    s->list = g_ptr_array_ref(disks);
    s->disks = g_hash_table_new(g_str_hash, g_str_equal);
    s->raw_dirs =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify)g_ptr_array_unref);
    s->chain_dirs =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify)g_ptr_array_unref);
    s->tops = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify)top_free);
    s->chains = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, chain_free0);
    s->logged = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    tree_dir(s->raw_dirs, "", VH_VIEW_RAW_DIR);
    tree_dir(s->chain_dirs, "", VH_VIEW_CHAINS_DIR);
    for (guint k = 0; k < disks->len; k++) {
        vh_disk_info *d = disks->pdata[k];
        g_hash_table_insert(s->disks, d->path, d);
        tree_add(s->raw_dirs, VH_VIEW_RAW_DIR,
                 g_strconcat(vh_relpath_base(d->path), VH_VIEW_RAW_SUFFIX, NULL), VH_VIEW_RAW_FILE,
                 d->path);
    }
    find_tops(s);
    tree_finish(s->raw_dirs);
    tree_finish(s->chain_dirs);
    return s;
}

bool vh_snap_same(vh_snap *s, GPtrArray *b)
{
    GPtrArray *a = s->list;
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

guint vh_snap_ndisks(vh_snap *s)
{
    return s->list->len;
}

guint vh_snap_ntops(vh_snap *s)
{
    return g_hash_table_size(s->tops);
}

const vh_disk_info *vh_snap_disk(vh_snap *s, const char *path)
{
    return g_hash_table_lookup(s->disks, path);
}

GPtrArray *vh_snap_members(vh_snap *s, const char *top)
{
    struct top *t = g_hash_table_lookup(s->tops, top);
    return t ? t->members : NULL;
}

const char *vh_snap_status(vh_snap *s, const char *top)
{
    struct top *t = g_hash_table_lookup(s->tops, top);
    return t ? t->status : NULL;
}

bool vh_snap_has(vh_snap *s, vh_view_kind kind, const char *path, guint index)
{
    GPtrArray *m;
    switch (kind) {
    case VH_VIEW_RAW_DIR:
        return g_hash_table_contains(s->raw_dirs, path);
    case VH_VIEW_CHAINS_DIR:
        return g_hash_table_contains(s->chain_dirs, path);
    case VH_VIEW_RAW_FILE:
        return g_hash_table_contains(s->disks, path);
    case VH_VIEW_CHAIN:
    case VH_VIEW_STATUS:
        return g_hash_table_contains(s->tops, path);
    case VH_VIEW_LINK:
        m = vh_snap_members(s, path);
        return m && index < m->len;
    }
    return false;
}

int vh_snap_child(vh_snap *s, vh_view_kind dir_kind, const char *dir_path, const char *name,
                  vh_view_kind *kind, const char **path, guint *index)
{
    GPtrArray *a = NULL, *m;
    switch (dir_kind) {
    case VH_VIEW_RAW_DIR:
        a = g_hash_table_lookup(s->raw_dirs, dir_path);
        break;
    case VH_VIEW_CHAINS_DIR:
        a = g_hash_table_lookup(s->chain_dirs, dir_path);
        break;
    case VH_VIEW_CHAIN:
        if (!(m = vh_snap_members(s, dir_path)))
            return -ENOENT;
        *path = dir_path;
        if (strcmp(name, VH_VIEW_STATUS_NAME) == 0) {
            *kind = VH_VIEW_STATUS;
            *index = 0;
            return 0;
        }
        for (guint k = 0; k < m->len; k++) {
            g_autofree char *ln = vh_view_link_name(k, m->pdata[k]);
            if (strcmp(ln, name) == 0) {
                *kind = VH_VIEW_LINK;
                *index = k;
                return 0;
            }
        }
        return -ENOENT;
    default:
        return -ENOTDIR;
    }
    if (!a)
        return -ENOENT;
    const vh_view_entry *e = entries_find(a, name);
    if (!e)
        return -ENOENT;
    *kind = e->kind;
    *path = e->path;
    *index = e->index;
    return 0;
}

GPtrArray *vh_snap_listing(vh_snap *s, vh_view_kind kind, const char *path)
{
    GPtrArray *a = NULL, *m;
    switch (kind) {
    case VH_VIEW_RAW_DIR:
        a = g_hash_table_lookup(s->raw_dirs, path);
        return a ? g_ptr_array_ref(a) : NULL;
    case VH_VIEW_CHAINS_DIR:
        a = g_hash_table_lookup(s->chain_dirs, path);
        return a ? g_ptr_array_ref(a) : NULL;
    case VH_VIEW_CHAIN:
        if (!(m = vh_snap_members(s, path)))
            return NULL;
        a = entries_new();
        for (guint k = 0; k < m->len; k++)
            g_ptr_array_add(a, entry_new(vh_view_link_name(k, m->pdata[k]), VH_VIEW_LINK, path, k));
        g_ptr_array_add(a, entry_new(g_strdup(VH_VIEW_STATUS_NAME), VH_VIEW_STATUS, path, 0));
        return a;
    default:
        return NULL;
    }
}
