// SPDX-License-Identifier: GPL-2.0-or-later
/* resolve.c - the chain resolver (see resolve.h; DESIGN.md "Resolver rules"). */
#include "resolve.h"

#include <stdlib.h>

struct vh_resolver {
    vh_store *store;
    char *winroot;
    guint maxdepth;
    GMutex lock;      /* guards memo */
    GHashTable *memo; /* child path -> vh_link* */
};

const char *vh_verdict_name(vh_verdict v)
{
    static const char *const names[VH_VERDICT_COUNT_] = {
        [VH_VERDICT_OK] = "ok",
        [VH_VERDICT_PARENT_MISSING] = "parent-missing",
        [VH_VERDICT_ID_MISMATCH] = "id-mismatch",
        [VH_VERDICT_SIZE_MISMATCH] = "size-mismatch",
        [VH_VERDICT_SECTOR_SIZE_MISMATCH] = "sector-size-mismatch",
        [VH_VERDICT_FORMAT_MISMATCH] = "format-mismatch",
        [VH_VERDICT_CYCLE] = "cycle",
        [VH_VERDICT_TOO_DEEP] = "too-deep",
        [VH_VERDICT_OUTSIDE_STORE] = "outside-store",
        [VH_VERDICT_PARENT_CORRUPT] = "parent-corrupt",
        [VH_VERDICT_AMBIGUOUS] = "ambiguous",
    };
    return (unsigned)v < VH_VERDICT_COUNT_ ? names[v] : "unknown";
}

int vh_verdict_errno(vh_verdict v)
{
    switch (v) {
    case VH_VERDICT_OK:
        return 0;
    case VH_VERDICT_PARENT_MISSING:
        return ENOENT;
    case VH_VERDICT_OUTSIDE_STORE:
        return EXDEV;
    case VH_VERDICT_CYCLE:
    case VH_VERDICT_TOO_DEEP:
        return ELOOP;
    case VH_VERDICT_PARENT_CORRUPT:
        return EIO;
    default:
        return EINVAL;
    }
}

/*
 * Which failure explains a broken link best when several locators failed differently: a file
 * with the right identity that does not fit says most, a missing file least.
 */
static int verdict_rank(vh_verdict v)
{
    switch (v) {
    case VH_VERDICT_OK:
        return 100;
    case VH_VERDICT_CYCLE:
        return 9;
    case VH_VERDICT_SIZE_MISMATCH:
        return 8;
    case VH_VERDICT_SECTOR_SIZE_MISMATCH:
        return 7;
    case VH_VERDICT_FORMAT_MISMATCH:
        return 6;
    case VH_VERDICT_PARENT_CORRUPT:
        return 5;
    case VH_VERDICT_ID_MISMATCH:
        return 4;
    case VH_VERDICT_OUTSIDE_STORE:
        return 3;
    default:
        return 0;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Links and chains */

static void try_free(vh_locator_try *t)
{
    if (!t)
        return;
    g_free(t->stored);
    g_free(t->target);
    g_free(t->detail);
    g_free(t);
}

static void link_clear(gpointer p)
{
    vh_link *l = p;
    g_free(l->child);
    g_free(l->detail);
    g_free(l->parent);
    g_free(l->heal_target);
    g_ptr_array_unref(l->candidates);
    g_ptr_array_unref(l->tries);
    g_ptr_array_unref(l->warnings);
}

static vh_link *link_new(const char *child)
{
    vh_link *l = g_atomic_rc_box_new0(vh_link);
    l->child = g_strdup(child);
    l->via = -1;
    l->candidates = g_ptr_array_new_with_free_func(g_free);
    l->tries = g_ptr_array_new_with_free_func((GDestroyNotify)try_free);
    l->warnings = g_ptr_array_new_with_free_func(g_free);
    return l;
}

vh_link *vh_link_ref(vh_link *l)
{
    return l ? g_atomic_rc_box_acquire(l) : NULL;
}

void vh_link_unref(vh_link *l)
{
    if (l)
        g_atomic_rc_box_release_full(l, link_clear);
}

/* A copy of a link with a chain-level verdict (cycle, too-deep) replacing its own. */
static vh_link *link_with_verdict(const vh_link *o, const char *child, vh_verdict v, char *detail)
{
    vh_link *l = link_new(child);
    if (o) {
        l->expected_id = o->expected_id;
        for (guint k = 0; k < o->tries->len; k++) {
            const vh_locator_try *t = o->tries->pdata[k];
            vh_locator_try *c = g_new0(vh_locator_try, 1);
            *c = *t;
            c->stored = g_strdup(t->stored);
            c->target = g_strdup(t->target);
            c->detail = g_strdup(t->detail);
            g_ptr_array_add(l->tries, c);
        }
        for (guint k = 0; k < o->warnings->len; k++)
            g_ptr_array_add(l->warnings, g_strdup(o->warnings->pdata[k]));
        l->parent = g_strdup(o->parent);
    }
    l->verdict = v;
    l->detail = detail;
    return l;
}

const char *vh_link_fix_parent(const vh_link *l)
{
    return l->verdict != VH_VERDICT_OK ? l->heal_target : NULL;
}

void vh_chain_free(vh_chain *c)
{
    if (!c)
        return;
    g_ptr_array_unref(c->disks);
    g_ptr_array_unref(c->links);
    g_free(c);
}

/* ---------------------------------------------------------------------------------------- */
/* The resolver */

vh_resolver *vh_resolver_new(vh_store *store, const vh_resolve_opts *opts)
{
    vh_resolver *r = g_new0(vh_resolver, 1);
    r->store = store;
    r->winroot = g_strdup(opts ? opts->winroot : NULL);
    r->maxdepth = opts && opts->maxdepth ? opts->maxdepth : VH_DEFAULT_MAXDEPTH;
    g_mutex_init(&r->lock);
    r->memo = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify)vh_link_unref);
    return r;
}

void vh_resolver_free(vh_resolver *r)
{
    if (!r)
        return;
    g_hash_table_unref(r->memo);
    g_mutex_clear(&r->lock);
    g_free(r->winroot);
    g_free(r);
}

void vh_resolver_reset(vh_resolver *r)
{
    g_mutex_lock(&r->lock);
    g_hash_table_remove_all(r->memo);
    g_mutex_unlock(&r->lock);
}

/* Rule 1's order within a format: VHDX relative, volume, absolute; VHD W2ru, W2ku, Wi2r, Wi2k,
 * the Parent Unicode Name, MacX. */
static int locator_rank(vh_locator_kind k)
{
    switch (k) {
    case VH_LOC_RELATIVE_PATH:
        return 0;
    case VH_LOC_VOLUME_PATH:
        return 1;
    case VH_LOC_ABSOLUTE_WIN32_PATH:
        return 2;
    case VH_LOC_W2RU:
        return 10;
    case VH_LOC_W2KU:
        return 11;
    case VH_LOC_WI2R:
        return 12;
    case VH_LOC_WI2K:
        return 13;
    case VH_LOC_PARENT_NAME:
        return 14;
    case VH_LOC_MACX:
        return 15;
    default:
        return 99;
    }
}

static gint locator_cmp(gconstpointer a, gconstpointer b)
{
    const vh_locator *x = *(vh_locator *const *)a, *y = *(vh_locator *const *)b;
    return locator_rank(x->kind) - locator_rank(y->kind);
}

static bool parent_id_matches(const vh_disk_info *c, const vh_id *id)
{
    if (vh_id_equal(id, &c->link.parent_id))
        return true;
    return c->link.has_parent_id2 && !vh_id_is_zero(&c->link.parent_id2) &&
           vh_id_equal(id, &c->link.parent_id2);
}

/* Rule 3: is p the parent of c? OK, or why not, with a detail text. */
static vh_verdict evaluate(const vh_disk_info *c, const vh_disk_info *p, char **detail)
{
    char want[VH_ID_STRLEN + 1], got[VH_ID_STRLEN + 1];
    if (p->format == VH_FORMAT_NONE) {
        *detail = g_strdup_printf("%s is not a VHD or VHDX file", p->path);
        return VH_VERDICT_PARENT_CORRUPT;
    }
    if (p->error) {
        *detail = g_strdup_printf("%s cannot be read: %s", p->path, p->error);
        return VH_VERDICT_PARENT_CORRUPT;
    }
    if (p->format != c->format) {
        *detail = g_strdup_printf("%s is a %s file; a %s child needs a %s parent", p->path,
                                  vh_format_name(p->format), vh_format_name(c->format),
                                  vh_format_name(c->format));
        return VH_VERDICT_FORMAT_MISMATCH;
    }
    if (!parent_id_matches(c, &p->id)) {
        vh_id_format(&c->link.parent_id, want);
        vh_id_format(&p->id, got);
        *detail = g_strdup_printf("%s has id %s, the child expects %s", p->path, got, want);
        return VH_VERDICT_ID_MISMATCH;
    }
    if (p->virtual_size != c->virtual_size) {
        *detail = g_strdup_printf("%s has the expected id but a virtual size of %" G_GUINT64_FORMAT
                                  " bytes, the child's is %" G_GUINT64_FORMAT,
                                  p->path, p->virtual_size, c->virtual_size);
        return VH_VERDICT_SIZE_MISMATCH;
    }
    if (c->format == VH_FORMAT_VHDX && p->logical_sector_size != c->logical_sector_size) {
        *detail = g_strdup_printf("%s has the expected id but %u-byte logical sectors, the "
                                  "child's are %u bytes",
                                  p->path, p->logical_sector_size, c->logical_sector_size);
        return VH_VERDICT_SECTOR_SIZE_MISMATCH;
    }
    *detail = g_strdup_printf("%s has the expected id", p->path);
    return VH_VERDICT_OK;
}

/* Records an outcome in a try if it explains more than what the try holds. */
static void try_note(vh_locator_try *t, vh_verdict v, const char *target, vh_wp_via via,
                     char *detail)
{
    bool first = t->detail == NULL;
    if (first || verdict_rank(v) > verdict_rank(t->result)) {
        t->result = v;
        g_free(t->target);
        t->target = g_strdup(target);
        t->via = via;
        g_free(t->detail);
        t->detail = detail;
    } else {
        g_free(detail);
    }
}

static char *dir_of(const char *rel)
{
    const char *slash = strrchr(rel, '/');
    return slash ? g_strndup(rel, (gsize)(slash - rel)) : g_strdup("");
}

/* The places a locator may point to, in order (rule 2), plus the Parent Unicode Name's
 * basename in the child's folder (rule 1). */
static GPtrArray *locator_places(vh_resolver *r, const vh_locator *loc, const char *child_dir)
{
    GPtrArray *c = vh_winpath_candidates(loc->path, child_dir, r->winroot, vh_store_root(r->store));
    if (loc->kind == VH_LOC_PARENT_NAME) {
        vh_winpath p;
        if (vh_winpath_parse(loc->path, &p) && p.parts[0]) {
            const char *name[] = {p.parts[g_strv_length(p.parts) - 1], NULL};
            vh_wp_candidate *b = g_new0(vh_wp_candidate, 1);
            b->rel = vh_winpath_join(child_dir, name);
            b->via = VH_WP_VIA_TAIL;
            b->outside = b->rel == NULL;
            bool dup = false;
            for (guint k = 0; k < c->len && b->rel; k++) {
                vh_wp_candidate *o = c->pdata[k];
                dup = dup || (o->rel && strcmp(o->rel, b->rel) == 0);
            }
            if (dup || !b->rel)
                vh_wp_candidate_free(b);
            else
                g_ptr_array_add(c, b);
        }
        vh_winpath_clear(&p);
    }
    return c;
}

/* Follows one locator: fills t; returns the parent's path when it is the parent. */
static char *follow_locator(vh_resolver *r, const vh_disk_info *child, const vh_locator *loc,
                            vh_locator_try *t)
{
    g_autofree char *child_dir = dir_of(child->path);
    g_autoptr(GPtrArray) places = locator_places(r, loc, child_dir);
    t->result = VH_VERDICT_PARENT_MISSING;
    if (places->len == 0)
        t->detail = g_strdup("the stored path cannot be mapped into the store");
    for (guint k = 0; k < places->len; k++) {
        vh_wp_candidate *c = places->pdata[k];
        if (c->outside && c->via == VH_WP_VIA_WINROOT) {
            /* Windows would look outside STORE; here it names no file we could know of */
            try_note(t, VH_VERDICT_PARENT_MISSING, NULL, c->via,
                     g_strdup_printf("not under the winroot %s", r->winroot));
            continue;
        }
        if (c->outside) {
            try_note(t, VH_VERDICT_OUTSIDE_STORE, NULL, c->via,
                     g_strdup("the path lies outside the store (not opened)"));
            continue;
        }
        g_autofree char *found = NULL;
        int e =
            vh_winpath_lookup(vh_store_root_fd(r->store), vh_store_root(r->store), c->rel, &found);
        if (e == -EXDEV) {
            try_note(t, VH_VERDICT_OUTSIDE_STORE, c->rel, c->via,
                     g_strdup_printf("%s leads outside the store through a symlink (not opened)",
                                     c->rel));
            continue;
        }
        if (e == 0 && (strcmp(found, ".vhdheal") == 0 || g_str_has_prefix(found, ".vhdheal/"))) {
            e = -ENOENT; /* the journal's folder holds no disks of the store */
            g_clear_pointer(&found, g_free);
        }
        if (e < 0) {
            try_note(t, VH_VERDICT_PARENT_MISSING, c->rel, c->via,
                     g_strdup(e == -ENOENT ? "not found" : g_strerror(-e)));
            continue;
        }
        g_autoptr(GError) err = NULL;
        g_autoptr(vh_disk_info) p = vh_store_describe(r->store, found, &err);
        if (!p) {
            try_note(t, VH_VERDICT_PARENT_MISSING, found, c->via, g_strdup(err->message));
            continue;
        }
        char *detail = NULL;
        vh_verdict v = evaluate(child, p, &detail);
        if (v == VH_VERDICT_OK && strcmp(found, child->path) == 0) {
            g_free(detail);
            v = VH_VERDICT_CYCLE;
            detail = g_strdup_printf("%s points at itself", found);
        }
        /* a same-named file found by a stale path's tail says little about the link */
        if (v == VH_VERDICT_ID_MISMATCH && c->via == VH_WP_VIA_TAIL)
            v = VH_VERDICT_PARENT_MISSING;
        try_note(t, v, found, c->via, detail);
        if (v == VH_VERDICT_OK)
            return g_strdup(found);
    }
    return NULL;
}

/* Folder distance between two store-relative files: steps up plus steps down. */
static guint folder_distance(const char *a, const char *b)
{
    g_autofree char *da = dir_of(a), *db = dir_of(b);
    g_auto(GStrv) pa = g_strsplit(da, "/", -1);
    g_auto(GStrv) pb = g_strsplit(db, "/", -1);
    guint na = *da ? g_strv_length(pa) : 0, nb = *db ? g_strv_length(pb) : 0;
    guint c = 0;
    while (c < na && c < nb && strcmp(pa[c], pb[c]) == 0)
        c++;
    return (na - c) + (nb - c);
}

static bool name_in_locators(const vh_disk_info *child, const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    for (guint k = 0; child->link.locators && k < child->link.locators->len; k++) {
        const vh_locator *l = child->link.locators->pdata[k];
        vh_winpath p;
        if (!vh_winpath_parse(l->path, &p))
            continue;
        bool eq =
            p.parts[0] && vh_winpath_component_equal(p.parts[g_strv_length(p.parts) - 1], base);
        vh_winpath_clear(&p);
        if (eq)
            return true;
    }
    return false;
}

/* Keeps the candidates that are best by `score` (lower is better). */
static GPtrArray *keep_best(GPtrArray *in, guint (*score)(const vh_disk_info *, const char *),
                            const vh_disk_info *child)
{
    guint best = G_MAXUINT;
    for (guint k = 0; k < in->len; k++)
        best = MIN(best, score(child, ((vh_disk_info *)in->pdata[k])->path));
    GPtrArray *out = g_ptr_array_new_with_free_func((GDestroyNotify)vh_disk_info_unref);
    for (guint k = 0; k < in->len; k++)
        if (score(child, ((vh_disk_info *)in->pdata[k])->path) == best)
            g_ptr_array_add(out, vh_disk_info_ref(in->pdata[k]));
    return out;
}

static guint score_name(const vh_disk_info *child, const char *path)
{
    return name_in_locators(child, path) ? 0 : 1;
}

static guint score_distance(const vh_disk_info *child, const char *path)
{
    return folder_distance(child->path, path);
}

/* Every readable disk with the identity the child expects (its parent_linkage2 too). */
static GPtrArray *disks_with_expected_id(vh_resolver *r, const vh_disk_info *child)
{
    if (!vh_store_scanned(r->store))
        vh_store_scan(r->store, NULL); /* a failed scan leaves what was indexed */
    GPtrArray *all = vh_store_find_id(r->store, &child->link.parent_id);
    if (child->link.has_parent_id2 && !vh_id_is_zero(&child->link.parent_id2) &&
        !vh_id_equal(&child->link.parent_id2, &child->link.parent_id)) {
        g_autoptr(GPtrArray) more = vh_store_find_id(r->store, &child->link.parent_id2);
        for (guint k = 0; k < more->len; k++)
            g_ptr_array_add(all, vh_disk_info_ref(more->pdata[k]));
    }
    return all;
}

/* Rule 4: the index's disks of the expected identity; sets heal_target or candidates. */
static void use_index(vh_resolver *r, const vh_disk_info *child, vh_link *l, vh_verdict *why,
                      char **why_detail)
{
    g_autoptr(GPtrArray) all = disks_with_expected_id(r, child);
    g_autoptr(GPtrArray) valid = g_ptr_array_new_with_free_func((GDestroyNotify)vh_disk_info_unref);
    for (guint k = 0; k < all->len; k++) {
        vh_disk_info *p = all->pdata[k];
        if (strcmp(p->path, child->path) == 0)
            continue; /* the child itself: a cycle, never a target */
        char *detail = NULL;
        vh_verdict v = evaluate(child, p, &detail);
        if (v == VH_VERDICT_OK)
            g_ptr_array_add(valid, vh_disk_info_ref(p));
        else if (verdict_rank(v) > verdict_rank(*why)) {
            *why = v;
            g_free(*why_detail);
            *why_detail = g_steal_pointer(&detail);
        }
        g_free(detail);
    }
    if (valid->len == 0)
        return;
    g_autoptr(GPtrArray) named = keep_best(valid, score_name, child);
    g_autoptr(GPtrArray) near = keep_best(named, score_distance, child);
    if (near->len == 1) {
        vh_disk_info *t = near->pdata[0];
        l->heal_target = g_strdup(t->path);
        for (guint k = 0; k < valid->len; k++)
            if (valid->pdata[k] != t)
                g_ptr_array_add(l->candidates, g_strdup(((vh_disk_info *)valid->pdata[k])->path));
        return;
    }
    for (guint k = 0; k < near->len; k++)
        g_ptr_array_add(l->candidates, g_strdup(((vh_disk_info *)near->pdata[k])->path));
    *why = VH_VERDICT_AMBIGUOUS;
    g_free(*why_detail);
    *why_detail = g_strdup_printf("%u disks in the store have the expected id, none preferred "
                                  "by name or folder",
                                  near->len);
}

/* A VHD parent time stamp that differs from the parent's mtime: a warning (rule 3). */
static void check_timestamp(vh_resolver *r, const vh_disk_info *child, vh_link *l)
{
    if (child->format != VH_FORMAT_VHD || child->link.parent_timestamp == 0 || !l->parent)
        return;
    g_autoptr(vh_disk_info) p = vh_store_get(r->store, l->parent);
    if (!p)
        return;
    uint32_t mt = vh_vhd_time_from_unix(p->mtime_ns / 1000000000);
    if (mt != child->link.parent_timestamp)
        g_ptr_array_add(l->warnings,
                        g_strdup_printf("the parent time stamp (%u) differs from the parent's "
                                        "modification time (%u); not fatal",
                                        child->link.parent_timestamp, mt));
}

static vh_link *resolve_link(vh_resolver *r, const vh_disk_info *child)
{
    vh_link *l = link_new(child->path);
    l->expected_id = child->link.parent_id;
    g_autoptr(GPtrArray) locs = g_ptr_array_new();
    for (guint k = 0; child->link.locators && k < child->link.locators->len; k++)
        g_ptr_array_add(locs, child->link.locators->pdata[k]);
    g_ptr_array_sort(locs, locator_cmp); /* stable: equal kinds keep the file's order */
    vh_verdict why = VH_VERDICT_PARENT_MISSING;
    g_autofree char *why_detail = NULL;
    for (guint k = 0; k < locs->len && !l->parent; k++) {
        const vh_locator *loc = locs->pdata[k];
        vh_locator_try *t = g_new0(vh_locator_try, 1);
        t->kind = loc->kind;
        t->stored = g_strdup(loc->path);
        g_ptr_array_add(l->tries, t);
        l->parent = follow_locator(r, child, loc, t);
        if (l->parent) {
            l->via = (int)k;
            l->stale = k > 0;
        } else if (verdict_rank(t->result) > verdict_rank(why) || !why_detail) {
            why = t->result;
            g_free(why_detail);
            why_detail = g_strdup(t->detail);
        }
    }
    if (l->parent) {
        l->verdict = VH_VERDICT_OK;
        l->detail = g_strdup_printf(
            "parent %s (by %s)", l->parent,
            vh_locator_kind_name(((vh_locator_try *)l->tries->pdata[l->via])->kind));
        check_timestamp(r, child, l);
        return l;
    }
    if (why != VH_VERDICT_CYCLE)
        use_index(r, child, l, &why, &why_detail);
    l->verdict = why;
    char id[VH_ID_STRLEN + 1];
    vh_id_format(&child->link.parent_id, id);
    if (why == VH_VERDICT_PARENT_MISSING)
        l->detail = g_strdup_printf("no locator leads to the parent (id %s)%s%s%s", id,
                                    l->heal_target ? "; the store holds it at " : "",
                                    l->heal_target ? l->heal_target : "",
                                    l->heal_target ? "" : "; no disk in the store has that id");
    else if (l->heal_target)
        l->detail =
            g_strdup_printf("%s; the store holds the parent at %s", why_detail, l->heal_target);
    else
        l->detail = g_strdup(why_detail ? why_detail : vh_verdict_name(why));
    if (locs->len == 0 && why == VH_VERDICT_PARENT_MISSING && !l->heal_target) {
        g_free(l->detail);
        l->detail = g_strdup_printf("the child has no parent locator and no disk in the store "
                                    "has the id %s",
                                    id);
    }
    return l;
}

vh_link *vh_resolve_link(vh_resolver *r, const char *child, GError **err)
{
    g_mutex_lock(&r->lock);
    vh_link *l = vh_link_ref(g_hash_table_lookup(r->memo, child));
    g_mutex_unlock(&r->lock);
    if (l)
        return l;
    g_autoptr(vh_disk_info) c = vh_store_describe(r->store, child, err);
    if (!c)
        return NULL;
    if (c->error) {
        vh_fail(err, EIO, "%s", c->error);
        return NULL;
    }
    if (c->format == VH_FORMAT_NONE || c->type != VH_TYPE_DIFFERENCING) {
        vh_fail(err, ENOTSUP, "%s: not a differencing disk", child);
        return NULL;
    }
    l = resolve_link(r, c);
    g_mutex_lock(&r->lock);
    g_hash_table_replace(r->memo, g_strdup(child), vh_link_ref(l));
    g_mutex_unlock(&r->lock);
    return l;
}

static bool chain_has(const vh_chain *c, const char *path)
{
    for (guint k = 0; k < c->disks->len; k++)
        if (strcmp(((vh_disk_info *)c->disks->pdata[k])->path, path) == 0)
            return true;
    return false;
}

vh_chain *vh_resolve_chain(vh_resolver *r, const char *rel, GError **err)
{
    vh_disk_info *top = vh_store_describe(r->store, rel, err);
    if (!top)
        return NULL;
    if (!vh_disk_info_is_disk(top)) {
        vh_fail(err, top->error ? EIO : EINVAL, "%s: %s", rel,
                top->error ? top->error : "not a VHD or VHDX file");
        vh_disk_info_unref(top);
        return NULL;
    }
    vh_chain *c = g_new0(vh_chain, 1);
    c->disks = g_ptr_array_new_with_free_func((GDestroyNotify)vh_disk_info_unref);
    c->links = g_ptr_array_new_with_free_func((GDestroyNotify)vh_link_unref);
    g_ptr_array_add(c->disks, top);
    vh_disk_info *cur = top;
    while (cur->type == VH_TYPE_DIFFERENCING) {
        g_autoptr(GError) lerr = NULL;
        g_autoptr(vh_link) l = vh_resolve_link(r, cur->path, &lerr);
        if (!l) { /* cannot happen for a readable differencing disk, but never loop */
            g_ptr_array_add(c->links,
                            link_with_verdict(NULL, cur->path, VH_VERDICT_PARENT_CORRUPT,
                                              g_strdup(lerr ? lerr->message : "unreadable")));
            c->broken++;
            break;
        }
        if (c->disks->len >= r->maxdepth) {
            g_ptr_array_add(c->links,
                            link_with_verdict(l, cur->path, VH_VERDICT_TOO_DEEP,
                                              g_strdup_printf("the chain is longer than %u disks "
                                                              "(maxdepth)",
                                                              r->maxdepth)));
            c->broken++;
            break;
        }
        const char *next = l->parent ? l->parent : l->heal_target;
        if (next && chain_has(c, next)) {
            g_ptr_array_add(c->links,
                            link_with_verdict(l, cur->path, VH_VERDICT_CYCLE,
                                              g_strdup_printf("its parent %s is already in this "
                                                              "chain",
                                                              next)));
            c->broken++;
            break;
        }
        g_ptr_array_add(c->links, vh_link_ref(l));
        if (l->verdict != VH_VERDICT_OK)
            c->broken++;
        if (!next)
            break;
        vh_disk_info *p = vh_store_describe(r->store, next, NULL);
        if (!vh_disk_info_is_disk(p)) {
            vh_disk_info_unref(p);
            break;
        }
        g_ptr_array_add(c->disks, p);
        cur = p;
    }
    c->complete = cur->type != VH_TYPE_DIFFERENCING;
    return c;
}

/* ---------------------------------------------------------------------------------------- */
/* Opening a chain */

static int broken_link_error(vh_store *store, const vh_link *l, GError **err)
{
    const char *fix = vh_link_fix_parent(l);
    g_autofree char *hint = NULL;
    if (fix) {
        g_autofree char *c = g_build_filename(vh_store_root(store), l->child, NULL);
        g_autofree char *p = g_build_filename(vh_store_root(store), fix, NULL);
        g_autofree char *qc = g_shell_quote(c), *qp = g_shell_quote(p);
        hint = g_strdup_printf(" (fix: vhdheal reconnect %s %s)", qc, qp);
    } else if (l->verdict == VH_VERDICT_OUTSIDE_STORE) {
        hint = g_strdup_printf(" (the store is %s; --store DIR names a wider one)",
                               vh_store_root(store));
    }
    return vh_fail(err, vh_verdict_errno(l->verdict), "the chain is broken at %s: %s: %s%s",
                   l->child, vh_verdict_name(l->verdict), l->detail, hint ? hint : "");
}

static int open_resolved(vh_store *store, const vh_chain *c, bool writable, vh_disk **top,
                         GError **err)
{
    vh_disk *child = NULL;
    for (guint k = 0; k < c->disks->len; k++) {
        const vh_disk_info *i = c->disks->pdata[k];
        g_autofree char *abs = g_build_filename(vh_store_root(store), i->path, NULL);
        vh_disk *d = NULL;
        int r = vh_disk_open_settled_path(abs, k == 0 && writable ? VH_OPEN_WRITE : VH_OPEN_READ,
                                          &d, err);
        if (r == 0 && (d->format != i->format || !vh_id_equal(&d->id, &i->id))) {
            vh_disk_close(d);
            r = vh_fail(err, EAGAIN, "%s changed while its chain was being opened", abs);
        }
        if (r < 0) {
            vh_disk_close(*top);
            *top = NULL;
            return r;
        }
        if (child)
            vh_disk_set_parent(child, d);
        else
            *top = d;
        child = d;
    }
    return 0;
}

int vh_chain_open(const char *path, const vh_chain_open_opts *opts, vh_disk **top, GError **err)
{
    *top = NULL;
    vh_chain_open_opts none = {0};
    if (!opts)
        opts = &none;
    char *paths[] = {(char *)path};
    g_autofree char *root = vh_store_determine(opts->store, paths, 1, false, err);
    if (!root)
        return -vh_error_errno(*err);
    g_autoptr(vh_store) store = vh_store_new(root, err);
    if (!store)
        return -vh_error_errno(*err);
    g_autofree char *rel = vh_store_relpath(root, path);
    if (!rel || !*rel)
        return vh_fail(err, EINVAL, "%s: not a file in the store %s", path, root);
    vh_resolve_opts ro = {.winroot = opts->winroot, .maxdepth = opts->maxdepth};
    g_autoptr(vh_resolver) r = vh_resolver_new(store, &ro);
    g_autoptr(vh_chain) c = vh_resolve_chain(r, rel, err);
    if (!c)
        return -vh_error_errno(*err);
    for (guint k = 0; k < c->links->len; k++) {
        const vh_link *l = c->links->pdata[k];
        bool crossable = opts->use_heal_target && l->heal_target &&
                         l->verdict != VH_VERDICT_CYCLE && l->verdict != VH_VERDICT_TOO_DEEP;
        if (l->verdict != VH_VERDICT_OK && !crossable) {
            int e = broken_link_error(store, l, err);
            vh_fail_prefix(err, "%s", path);
            return e;
        }
    }
    if (!c->complete)
        return vh_fail(err, EIO, "%s: the chain does not reach a base disk", path);
    return open_resolved(store, c, opts->writable, top, err);
}
