// SPDX-License-Identifier: GPL-2.0-or-later
/* test_flat.c - the flat chain reader and its cache (flat.h): reads equal vh_disk_read through
 * the same chain (VHD and VHDX, depth 3, unaligned ranges), from several threads at once; a
 * broken link is crossed to its one heal target and only then; SEEK_DATA/SEEK_HOLE; a reader
 * goes stale when a member changes or moves; the cache reopens stale readers, keeps current
 * ones, and holds at most its bound; nothing is written. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "flat.h"
#include "overlay.h"
#include "tcache.h"
#include "winpath.h"

#define VSIZE (6 * 1024 * 1024 + 512 * 3) /* a partial last block */
#define MIB (1024 * 1024)

typedef struct {
    vh_format format;
    char *dir;
    vh_store *store;
    vh_resolver *resolver;
} fixture;

static const char *ext(vh_format f)
{
    return f == VH_FORMAT_VHD ? "vhd" : "vhdx";
}

static char *path_in(fixture *fx, const char *rel)
{
    return g_build_filename(fx->dir, rel, NULL);
}

static void random_bytes(uint8_t *buf, size_t len, guint32 seed)
{
    GRand *r = g_rand_new_with_seed(seed);
    for (size_t k = 0; k < len; k++)
        buf[k] = (uint8_t)g_rand_int(r);
    g_rand_free(r);
}

/* Writes len pseudo-random bytes (seeded) at off into the disk at store-relative rel. */
static void write_random(fixture *fx, const char *rel, uint64_t off, size_t len, guint32 seed)
{
    g_autofree char *p = path_in(fx, rel);
    g_autoptr(vh_disk) d = NULL;
    g_autoptr(GError) err = NULL;
    g_autofree uint8_t *buf = g_malloc(len);
    random_bytes(buf, len, seed);
    if (vh_disk_open(p, VH_OPEN_WRITE, &d, &err) < 0 || vh_disk_write(d, buf, off, len, &err) < 0 ||
        vh_disk_flush(d, &err) < 0)
        fail_msg("%s", err->message);
}

static void create(fixture *fx, const char *rel, const char *parent_rel, uint32_t block_size)
{
    g_autofree char *p = path_in(fx, rel);
    g_autofree char *dir = g_path_get_dirname(p);
    g_autoptr(GError) err = NULL;
    assert_int_equal(g_mkdir_with_parents(dir, 0755), 0);
    if (!parent_rel) {
        vh_create_opts o = {
            .format = fx->format, .type = VH_TYPE_DYNAMIC, .size = VSIZE, .block_size = block_size};
        if (vh_disk_create(p, &o, &err) < 0)
            fail_msg("%s", err->message);
        return;
    }
    g_autofree char *pp = path_in(fx, parent_rel);
    g_autoptr(vh_disk) parent = NULL;
    assert_int_equal(vh_disk_open(pp, VH_OPEN_READ, &parent, NULL), 0);
    g_autofree char *rel_loc = vh_winpath_relative(p, pp);
    vh_create_opts o = {.format = fx->format,
                        .type = VH_TYPE_DIFFERENCING,
                        .parent = parent,
                        .parent_relative = rel_loc};
    if (vh_disk_create(p, &o, &err) < 0)
        fail_msg("%s", err->message);
}

/* base <- vm/mid <- vm/top, every level written (a VHDX parent is written before its child
 * exists: a write changes its DataWriteGuid). */
static int setup(vh_format f, void **state)
{
    fixture *fx = g_new0(fixture, 1);
    fx->format = f;
    fx->dir = g_dir_make_tmp("test_flat_XXXXXX", NULL);
    g_autofree char *base = g_strdup_printf("base.%s", ext(f));
    g_autofree char *mid = g_strdup_printf("vm/mid.%s", ext(f));
    g_autofree char *top = g_strdup_printf("vm/top.%s", ext(f));
    create(fx, base, NULL, 1 * MIB);
    write_random(fx, base, 0, 3 * MIB + 100, 1);
    write_random(fx, base, 5 * MIB, 512 * 3, 2);
    create(fx, mid, base, 0);
    write_random(fx, mid, MIB - 7, 300000, 3);
    write_random(fx, mid, VSIZE - 4096, 4096, 4);
    create(fx, top, mid, 0);
    write_random(fx, top, 2 * MIB + 1, 70000, 5);
    write_random(fx, top, 512, 512, 6);
    fx->store = vh_store_new(fx->dir, NULL);
    assert_non_null(fx->store);
    vh_resolve_opts ro = {0};
    fx->resolver = vh_resolver_new(fx->store, &ro);
    *state = fx;
    return 0;
}

static int setup_vhd(void **state)
{
    return setup(VH_FORMAT_VHD, state);
}

static int setup_vhdx(void **state)
{
    return setup(VH_FORMAT_VHDX, state);
}

static int teardown(void **state)
{
    fixture *fx = *state;
    vh_resolver_free(fx->resolver);
    vh_store_free(fx->store);
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", fx->dir);
    assert_int_equal(system(cmd), 0);
    g_free(fx->dir);
    g_free(fx);
    return 0;
}

static char *top_rel(fixture *fx)
{
    return g_strdup_printf("vm/top.%s", ext(fx->format));
}

static vh_chain *chain_of(fixture *fx, const char *rel)
{
    vh_resolver_reset(fx->resolver);
    g_autoptr(GError) err = NULL;
    vh_chain *c = vh_resolve_chain(fx->resolver, rel, &err);
    if (!c)
        fail_msg("%s", err->message);
    return c;
}

/* The whole virtual disk as vh_chain_open (use_heal_target) reads it. */
static uint8_t *reference(fixture *fx, const char *rel)
{
    g_autofree char *p = path_in(fx, rel);
    g_autoptr(vh_disk) d = NULL;
    g_autoptr(GError) err = NULL;
    vh_chain_open_opts o = {.store = fx->dir, .use_heal_target = true};
    if (vh_chain_open(p, &o, &d, &err) < 0)
        fail_msg("%s", err->message);
    uint8_t *buf = g_malloc(d->virtual_size);
    assert_int_equal(vh_disk_read(d, buf, 0, d->virtual_size, NULL), 0);
    return buf;
}

/* The top of the fixture's chain opened flat, with what it must read. */
typedef struct {
    char *top;
    vh_chain *c;
    uint8_t *ref; /* reference(): the whole virtual disk */
    vh_flat *f;
} flat_top;

static void flat_top_clear(flat_top *t)
{
    g_clear_pointer(&t->f, vh_flat_unref);
    g_clear_pointer(&t->ref, g_free);
    g_clear_pointer(&t->c, vh_chain_free);
    g_clear_pointer(&t->top, g_free);
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(flat_top, flat_top_clear)

static void open_flat_top(fixture *fx, flat_top *t)
{
    t->top = top_rel(fx);
    t->c = chain_of(fx, t->top);
    t->ref = reference(fx, t->top);
    assert_int_equal(vh_flat_open(fx->store, t->c, &t->f, NULL), 0);
}

static GHashTable *snapshot(fixture *fx)
{
    GHashTable *h = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    g_autoptr(GPtrArray) all = vh_store_list(fx->store, NULL);
    for (guint k = 0; k < all->len; k++) {
        const vh_disk_info *i = all->pdata[k];
        g_autofree char *p = path_in(fx, i->path);
        char *data;
        gsize len;
        assert_true(g_file_get_contents(p, &data, &len, NULL));
        g_hash_table_insert(h, g_strdup(i->path),
                            g_compute_checksum_for_data(G_CHECKSUM_SHA256, (guchar *)data, len));
        g_free(data);
    }
    return h;
}

static void reads_equal_the_chain(void **state)
{
    fixture *fx = *state;
    g_autoptr(GHashTable) before = snapshot(fx);
    g_auto(flat_top) t = {0};
    open_flat_top(fx, &t);
    vh_flat *f = t.f;
    const uint8_t *ref = t.ref;
    const char *top = t.top;
    g_autoptr(GError) err = NULL;
    assert_int_equal(vh_flat_size(f), VSIZE);
    assert_int_equal(vh_flat_depth(f), 3);
    assert_string_equal(vh_flat_member(f, 0), top);
    assert_null(vh_flat_member(f, 3));
    g_autofree uint8_t *all = g_malloc(VSIZE);
    assert_int_equal(vh_flat_read(f, all, 0, VSIZE, NULL), 0);
    assert_memory_equal(all, ref, VSIZE);
    /* unaligned ranges crossing sectors, blocks and levels */
    GRand *r = g_rand_new_with_seed(7);
    for (int k = 0; k < 200; k++) {
        uint64_t off = g_rand_int_range(r, 0, VSIZE);
        size_t len = (size_t)g_rand_int_range(r, 0, (gint32)MIN(VSIZE - off, 3 * MIB) + 1);
        uint8_t *buf = g_malloc(len + 1);
        assert_int_equal(vh_flat_read(f, buf, off, len, NULL), 0);
        assert_memory_equal(buf, ref + off, len);
        g_free(buf);
    }
    g_rand_free(r);
    uint8_t b;
    assert_int_equal(vh_flat_read(f, &b, VSIZE, 1, &err), -EINVAL);
    g_autoptr(GHashTable) after = snapshot(fx);
    GHashTableIter it;
    gpointer k, v;
    g_hash_table_iter_init(&it, before);
    while (g_hash_table_iter_next(&it, &k, &v))
        assert_string_equal(v, g_hash_table_lookup(after, k)); /* never writes */
}

/* What vh_flat_pieces describes, read back (preads of its descriptors, zeros). */
static void read_pieces(GArray *pieces, uint8_t *buf, size_t len)
{
    size_t at = 0;
    for (guint k = 0; k < pieces->len; k++) {
        const vh_flat_piece *p = &g_array_index(pieces, vh_flat_piece, k);
        assert_true(p->len > 0 && at + p->len <= len);
        if (p->fd < 0)
            memset(buf + at, 0, p->len);
        else
            assert_int_equal(pread(p->fd, buf + at, p->len, (off_t)p->off), (ssize_t)p->len);
        at += p->len;
    }
    assert_int_equal(at, len);
}

/* The pieces (the splice path of the mount's @raw) read as the chain: data from several
 * members, zeros, unaligned ranges; a range past the end fails with nothing appended. */
static void pieces_equal_the_chain(void **state)
{
    fixture *fx = *state;
    g_auto(flat_top) t = {0};
    open_flat_top(fx, &t);
    g_autoptr(GArray) pieces = g_array_new(FALSE, FALSE, sizeof(vh_flat_piece));
    g_autofree uint8_t *buf = g_malloc(VSIZE);
    g_autoptr(GHashTable) fds = g_hash_table_new(NULL, NULL);
    bool zeros = false;
    assert_int_equal(vh_flat_pieces(t.f, 0, VSIZE, pieces, NULL), 0);
    read_pieces(pieces, buf, VSIZE);
    assert_memory_equal(buf, t.ref, VSIZE);
    for (guint k = 0; k < pieces->len; k++) {
        const vh_flat_piece *p = &g_array_index(pieces, vh_flat_piece, k);
        if (p->fd < 0)
            zeros = true;
        else
            g_hash_table_add(fds, GINT_TO_POINTER(p->fd));
    }
    assert_true(zeros);
    assert_int_equal(g_hash_table_size(fds), 3); /* every member holds a piece */
    GRand *r = g_rand_new_with_seed(11);
    for (int k = 0; k < 200; k++) {
        uint64_t off = g_rand_int_range(r, 0, VSIZE);
        size_t len = (size_t)g_rand_int_range(r, 0, (gint32)MIN(VSIZE - off, 3 * MIB) + 1);
        g_array_set_size(pieces, 0);
        assert_int_equal(vh_flat_pieces(t.f, off, len, pieces, NULL), 0);
        read_pieces(pieces, buf, len);
        assert_memory_equal(buf, t.ref + off, len);
    }
    g_rand_free(r);
    g_autoptr(GError) err = NULL;
    g_array_set_size(pieces, 0);
    assert_int_equal(vh_flat_pieces(t.f, VSIZE - 1, 2, pieces, &err), -EINVAL);
    assert_int_equal(pieces->len, 0);
}

/* A member read through an overlay patch (healmode=overlay) has no file range to hand out:
 * pieces that need it fail with -ENOTSUP and nothing appended, vh_flat_read serves them with
 * the patched bytes, and ranges of the other members still come as pieces. */
static void pieces_refuse_patched_members(void **state)
{
    fixture *fx = *state;
    g_auto(flat_top) t = {0};
    open_flat_top(fx, &t);
    /* [MIB, MIB + 4096) is the middle disk's (written at MIB - 7); [0, 512) the base's */
    g_autoptr(GArray) pieces = g_array_new(FALSE, FALSE, sizeof(vh_flat_piece));
    assert_int_equal(vh_flat_pieces(t.f, MIB, 4096, pieces, NULL), 0);
    assert_int_equal(pieces->len, 1);
    vh_flat_piece mid = g_array_index(pieces, vh_flat_piece, 0);
    assert_true(mid.fd >= 0);
    struct stat st;
    assert_int_equal(fstat(mid.fd, &st), 0);
    uint8_t pattern[4096];
    memset(pattern, 0xA5, sizeof pattern);
    vh_patch *patch = vh_patch_new((uint64_t)st.st_size);
    assert_int_equal(vh_patch_write(patch, pattern, sizeof pattern, mid.off, NULL), 0);
    vh_overlay *ov = vh_overlay_new(NULL, NULL);
    vh_overlay_put(ov, &st, patch, NULL);
    vh_patch_unref(patch);
    vh_store_set_overlay(fx->store, ov);
    vh_flat *f = NULL;
    assert_int_equal(vh_flat_open(fx->store, t.c, &f, NULL), 0);
    g_array_set_size(pieces, 0);
    assert_int_equal(vh_flat_pieces(f, MIB - 512, 8192, pieces, NULL), -ENOTSUP);
    assert_int_equal(pieces->len, 0);
    uint8_t buf[4096];
    assert_int_equal(vh_flat_read(f, buf, MIB, sizeof buf, NULL), 0);
    assert_memory_equal(buf, pattern, sizeof buf);
    assert_int_equal(vh_flat_pieces(f, 0, 512, pieces, NULL), 0);
    assert_int_equal(pieces->len, 1);
    vh_flat_unref(f);
    vh_store_set_overlay(fx->store, NULL);
    vh_overlay_free(ov);
}

typedef struct {
    vh_flat *f;
    const uint8_t *ref;
    guint32 seed;
    gint bad;
} reader_arg;

/* No cmocka asserts in threads: count mismatches. */
static gpointer reader(gpointer p)
{
    reader_arg *a = p;
    GRand *r = g_rand_new_with_seed(a->seed);
    uint8_t *buf = g_malloc(MIB);
    for (int k = 0; k < 300; k++) {
        uint64_t off = g_rand_int_range(r, 0, VSIZE);
        size_t len = (size_t)g_rand_int_range(r, 1, (gint32)MIN(VSIZE - off, MIB) + 1);
        if (vh_flat_read(a->f, buf, off, len, NULL) < 0 || memcmp(buf, a->ref + off, len) != 0)
            a->bad++;
    }
    g_free(buf);
    g_rand_free(r);
    return NULL;
}

static void concurrent_readers_agree(void **state)
{
    fixture *fx = *state;
    g_auto(flat_top) t = {0};
    open_flat_top(fx, &t);
    vh_flat *f = t.f;
    const uint8_t *ref = t.ref;
    reader_arg args[4];
    GThread *th[4];
    for (int k = 0; k < 4; k++) {
        args[k] = (reader_arg){.f = f, .ref = ref, .seed = 100 + (guint32)k};
        th[k] = g_thread_new("reader", reader, &args[k]);
    }
    for (int k = 0; k < 4; k++) {
        g_thread_join(th[k]);
        assert_int_equal(args[k].bad, 0);
    }
}

static void seek_finds_data_and_holes(void **state)
{
    fixture *fx = *state;
    g_auto(flat_top) t = {0};
    open_flat_top(fx, &t);
    vh_flat *f = t.f;
    const uint8_t *ref = t.ref;
    uint64_t off = 0, data, hole;
    int holes = 0;
    /* every byte outside the data ranges reads as zeros, and the ranges cover what was written */
    while (vh_flat_seek(f, off, false, &data, NULL) == 0) {
        assert_true(data >= off);
        for (uint64_t k = off; k < data; k++)
            assert_int_equal(ref[k], 0);
        holes += data > off;
        assert_int_equal(vh_flat_seek(f, data, true, &hole, NULL), 0);
        assert_true(hole > data && hole <= VSIZE);
        off = hole;
        if (off == VSIZE)
            break;
    }
    for (uint64_t k = off; k < VSIZE; k++)
        assert_int_equal(ref[k], 0);
    assert_true(holes > 0);
    assert_int_equal(vh_flat_seek(f, 0, false, &data, NULL), 0);
    assert_int_equal(data, 0); /* sector 1 of the top and the base's first MiB */
    assert_int_equal(vh_flat_seek(f, VSIZE, false, &data, NULL), -ENXIO);
    assert_int_equal(vh_flat_seek(f, VSIZE, true, &data, NULL), -ENXIO);
}

static void stale_when_a_member_changes(void **state)
{
    fixture *fx = *state;
    g_autofree char *top = top_rel(fx);
    g_autofree char *mid = g_strdup_printf("vm/mid.%s", ext(fx->format));
    g_autoptr(vh_chain) c = chain_of(fx, top);
    g_autoptr(vh_flat) f = NULL;
    assert_int_equal(vh_flat_open(fx->store, c, &f, NULL), 0);
    assert_true(vh_flat_current(f, c));
    assert_true(vh_flat_current(f, NULL));
    /* a member's mtime moves */
    g_autofree char *mp = path_in(fx, mid);
    struct timespec ts[2] = {{.tv_sec = 1000000}, {.tv_sec = 1000000}};
    assert_int_equal(utimensat(AT_FDCWD, mp, ts, 0), 0);
    assert_false(vh_flat_current(f, NULL));
    /* a chain that names other paths */
    g_autoptr(vh_chain) c2 = chain_of(fx, mid);
    g_autoptr(vh_flat) f2 = NULL;
    assert_int_equal(vh_flat_open(fx->store, c2, &f2, NULL), 0);
    assert_false(vh_flat_current(f2, c));
    assert_true(vh_flat_current(f2, c2));
    /* a member renamed away */
    g_autofree char *moved = path_in(fx, "moved-away");
    assert_int_equal(rename(mp, moved), 0);
    assert_false(vh_flat_current(f2, NULL));
    assert_int_equal(rename(moved, mp), 0);
}

static void heal_target_is_crossed_and_nothing_else(void **state)
{
    fixture *fx = *state;
    g_autofree char *top = top_rel(fx);
    g_autofree uint8_t *ref = reference(fx, top);
    g_autofree char *base = g_strdup_printf("base.%s", ext(fx->format));
    g_autofree char *from = path_in(fx, base);
    g_autofree char *dir = path_in(fx, "elsewhere");
    g_autofree char *to = g_build_filename(dir, "renamed", NULL);
    assert_int_equal(g_mkdir_with_parents(dir, 0755), 0);
    assert_int_equal(rename(from, to), 0);
    assert_int_equal(vh_store_scan(fx->store, NULL), 0);
    g_autoptr(vh_chain) c = chain_of(fx, top);
    assert_int_equal(c->broken, 1);
    g_autoptr(vh_flat) f = NULL;
    g_autoptr(GError) err = NULL;
    assert_int_equal(vh_flat_open(fx->store, c, &f, &err), 0);
    assert_string_equal(vh_flat_member(f, 2), "elsewhere/renamed");
    g_autofree uint8_t *all = g_malloc(VSIZE);
    assert_int_equal(vh_flat_read(f, all, 0, VSIZE, NULL), 0);
    assert_memory_equal(all, ref, VSIZE);
    /* a second copy: ambiguous, no heal target, no reader */
    g_autofree char *copy = g_build_filename(dir, "copy", NULL);
    g_autofree char *cmd = g_strdup_printf("cp '%s' '%s'", to, copy);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(vh_store_scan(fx->store, NULL), 0);
    g_autoptr(vh_chain) c2 = chain_of(fx, top);
    g_autoptr(vh_flat) f2 = NULL;
    assert_int_equal(vh_flat_open(fx->store, c2, &f2, &err), -EINVAL);
    assert_null(f2);
    assert_non_null(strstr(err->message, "ambiguous"));
    /* gone: parent-missing */
    assert_int_equal(unlink(to), 0);
    assert_int_equal(unlink(copy), 0);
    assert_int_equal(vh_store_scan(fx->store, NULL), 0);
    g_autoptr(vh_chain) c3 = chain_of(fx, top);
    g_clear_error(&err);
    assert_int_equal(vh_flat_open(fx->store, c3, &f2, &err), -ENOENT);
    assert_non_null(strstr(err->message, "parent-missing"));
}

static void cache_reopens_stale_and_keeps_its_bound(void **state)
{
    fixture *fx = *state;
    g_autofree char *top = top_rel(fx);
    g_autofree char *mid = g_strdup_printf("vm/mid.%s", ext(fx->format));
    g_autofree char *base = g_strdup_printf("base.%s", ext(fx->format));
    g_autoptr(vh_flat_cache) cache = vh_flat_cache_new(fx->store, 2);
    g_autoptr(vh_chain) ct = chain_of(fx, top);
    g_autoptr(vh_chain) cm = chain_of(fx, mid);
    g_autoptr(vh_chain) cb = chain_of(fx, base);
    vh_flat *a = NULL, *b = NULL;
    assert_int_equal(vh_flat_cache_get(cache, ct, &a, NULL), 0);
    assert_int_equal(vh_flat_cache_get(cache, ct, &b, NULL), 0);
    assert_ptr_equal(a, b); /* current: kept */
    assert_int_equal(vh_flat_cache_opens(cache), 1);
    vh_flat_unref(b);
    /* a change to the base makes the top's reader stale */
    write_random(fx, base, 4 * MIB, 4096, 9);
    if (fx->format == VH_FORMAT_VHDX) {
        /* the write changed the base's DataWriteGuid: the top's chain is broken now; only the
         * stat change matters here, so look at the base's own chain */
        vh_flat_unref(a);
        a = NULL;
        g_autoptr(vh_chain) cb2 = chain_of(fx, base);
        assert_int_equal(vh_flat_cache_get(cache, cb2, &a, NULL), 0);
        assert_int_equal(vh_flat_cache_opens(cache), 2);
    } else {
        assert_int_equal(vh_flat_cache_get(cache, ct, &b, NULL), 0);
        assert_ptr_not_equal(a, b);
        assert_true(vh_flat_serial(b) > vh_flat_serial(a));
        assert_int_equal(vh_flat_cache_opens(cache), 2);
        g_autofree uint8_t *ref = reference(fx, top);
        g_autofree uint8_t *buf = g_malloc(VSIZE);
        assert_int_equal(vh_flat_read(b, buf, 0, VSIZE, NULL), 0);
        assert_memory_equal(buf, ref, VSIZE);
        /* the stale reader still reads (what it had opened) until its last reference goes */
        assert_int_equal(vh_flat_read(a, buf, 0, 4096, NULL), 0);
        vh_flat_unref(b);
        assert_int_equal(vh_flat_cache_get(cache, cm, &b, NULL), 0);
        vh_flat_unref(b);
        assert_int_equal(vh_flat_cache_get(cache, cb, &b, NULL), 0);
        vh_flat_unref(b);
        assert_int_equal(vh_flat_cache_size(cache), 2); /* the bound */
    }
    vh_flat_unref(a);
    vh_flat_cache_drop(cache, base);
    assert_true(vh_flat_cache_size(cache) <= 1);
}

/* The daemon's resident memory in KiB (VmRSS). */
static long rss_kib(void)
{
    g_autofree char *status = NULL;
    assert_true(g_file_get_contents("/proc/self/status", &status, NULL, NULL));
    const char *p = strstr(status, "VmRSS:");
    assert_non_null(p);
    return strtol(p + 6, NULL, 10);
}

static vh_flat *open_flat(vh_store *store, vh_resolver *r, const char *rel)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(vh_chain) c = vh_resolve_chain(r, rel, &err);
    if (!c)
        fail_msg("%s", err->message);
    vh_flat *f = NULL;
    if (vh_flat_open(store, c, &f, &err) < 0)
        fail_msg("%s", err->message);
    return f;
}

#define RUN_LEN 70000

/* RUN_LEN random bytes at each of offs (seeds seed, seed + 1, ...) into dir/rel. */
static void write_runs(const char *dir, vh_format fmt, const char *rel, const uint64_t *offs,
                       guint n, guint32 seed)
{
    fixture fx = {.format = fmt, .dir = (char *)dir};
    for (guint k = 0; k < n; k++)
        write_random(&fx, rel, offs[k], RUN_LEN, seed + k);
}

/* f reads what write_runs wrote. */
static void expect_runs(vh_flat *f, const uint64_t *offs, guint n, guint32 seed)
{
    g_autofree uint8_t *buf = g_malloc(RUN_LEN), *want = g_malloc(RUN_LEN);
    for (guint k = 0; k < n; k++) {
        random_bytes(want, RUN_LEN, seed + k);
        assert_int_equal(vh_flat_read(f, buf, offs[k], RUN_LEN, NULL), 0);
        assert_memory_equal(buf, want, RUN_LEN);
    }
}

/* A store on dir and its resolver, the table cache bounded to limit bytes (*old: the bound
 * before, to restore). */
static vh_resolver *paged_resolver(const char *dir, size_t limit, size_t *old, vh_store **store)
{
    *old = vh_tcache_limit();
    vh_tcache_set_limit(limit);
    *store = vh_store_new(dir, NULL);
    assert_non_null(*store);
    vh_resolve_opts ro = {0};
    return vh_resolver_new(*store, &ro);
}

/* A large BAT is read by pages through the shared, bounded table cache: five readers of a
 * 64 TiB disk cost no memory in proportion to its size, reads find data in any page, and a
 * bad entry is reported by the read that needs it. */
static void large_block_tables_are_paged(void **state)
{
    (void)state;
    g_autofree char *dir = g_dir_make_tmp("test_flat_XXXXXX", NULL);
    g_autofree char *huge = g_build_filename(dir, "huge.vhdx", NULL);
    g_autofree char *big = g_build_filename(dir, "big.vhdx", NULL);
    g_autoptr(GError) err = NULL;
    vh_create_opts o = {.format = VH_FORMAT_VHDX,
                        .type = VH_TYPE_DYNAMIC,
                        .size = UINT64_C(64) << 40,
                        .block_size = MIB};
    if (vh_disk_create(huge, &o, &err) < 0)
        fail_msg("%s", err->message);
    o.size = UINT64_C(64) << 30; /* 64 Ki blocks: a 512 KiB BAT, 8 pages */
    if (vh_disk_create(big, &o, &err) < 0)
        fail_msg("%s", err->message);
    const uint64_t offs[] = {0, (UINT64_C(33) << 30) + 5, (UINT64_C(63) << 30) + 4096};
    write_runs(dir, VH_FORMAT_VHDX, "big.vhdx", offs, G_N_ELEMENTS(offs), 20);

    size_t old_limit;
    g_autoptr(vh_store) store = NULL;
    vh_resolver *r = paged_resolver(dir, 200 * 1024, &old_limit, &store); /* three pages */
    long rss0 = rss_kib();
    vh_flat *readers[5];
    g_autofree uint8_t *buf = g_malloc(70000);
    g_autofree uint8_t *zero = g_malloc0(70000);
    for (int k = 0; k < 5; k++) {
        readers[k] = open_flat(store, r, "huge.vhdx");
        const uint64_t at[] = {0, UINT64_C(32) << 40, (UINT64_C(64) << 40) - 70000};
        for (guint i = 0; i < G_N_ELEMENTS(at); i++) {
            assert_int_equal(vh_flat_read(readers[k], buf, at[i], 70000, NULL), 0);
            assert_memory_equal(buf, zero, 70000);
        }
    }
    assert_true(vh_tcache_bytes() <= vh_tcache_limit());
    long grown = rss_kib() - rss0;
    /* The whole tables would be 5 x 512 MiB. */
    if (grown > 32 * 1024)
        fail_msg("five readers of a 64 TiB disk grew the process by %ld KiB", grown);
    for (int k = 0; k < 5; k++)
        vh_flat_unref(readers[k]);

    vh_flat *f = open_flat(store, r, "big.vhdx");
    expect_runs(f, offs, G_N_ELEMENTS(offs), 20);
    assert_true(vh_tcache_bytes() <= vh_tcache_limit());
    vh_flat_unref(f);

    /* A reserved state in the entry of block 40960 (BAT at 3 MiB; 4096 blocks a chunk). */
    uint64_t blk = 40960, idx = blk + blk / 4096;
    uint8_t e[8] = {4};
    int fd = open(big, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, e, 8, 3 * MIB + 8 * idx), 8);
    close(fd);
    vh_resolver_reset(r);
    f = open_flat(store, r, "big.vhdx"); /* the open reads no page */
    assert_int_equal(vh_flat_read(f, buf, 0, 4096, NULL), 0);
    assert_int_equal(vh_flat_read(f, buf, blk * MIB, 4096, &err), -EINVAL);
    assert_non_null(strstr(err->message, "reserved payload state 4"));
    vh_flat_unref(f);
    vh_resolver_free(r);
    vh_tcache_set_limit(old_limit);
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* The same for a VHD whose BAT is larger than what is kept whole: data found in any page, an
 * entry pointing past the footer reported by the read that needs it (the open reads no page). */
static void large_vhd_tables_are_paged(void **state)
{
    (void)state;
    g_autofree char *dir = g_dir_make_tmp("test_flat_XXXXXX", NULL);
    g_autofree char *big = g_build_filename(dir, "big.vhd", NULL);
    g_autoptr(GError) err = NULL;
    /* 100 Ki blocks of 2 MiB: a 400 KiB BAT, 7 pages */
    vh_create_opts o = {
        .format = VH_FORMAT_VHD, .type = VH_TYPE_DYNAMIC, .size = UINT64_C(200) << 30};
    if (vh_disk_create(big, &o, &err) < 0)
        fail_msg("%s", err->message);
    const uint64_t offs[] = {512, (UINT64_C(150) << 30) + 4096, (UINT64_C(200) << 30) - 70000};
    write_runs(dir, VH_FORMAT_VHD, "big.vhd", offs, G_N_ELEMENTS(offs), 40);
    size_t old_limit;
    g_autoptr(vh_store) store = NULL;
    vh_resolver *r = paged_resolver(dir, 150 * 1024, &old_limit, &store); /* two pages */
    guint64 loads = vh_tcache_loads();
    vh_flat *f = open_flat(store, r, "big.vhd");
    assert_int_equal(vh_tcache_loads(), loads);
    expect_runs(f, offs, G_N_ELEMENTS(offs), 40);
    g_autofree uint8_t *buf = g_malloc(4096);
    assert_true(vh_tcache_loads() > loads);
    assert_true(vh_tcache_bytes() <= vh_tcache_limit());
    vh_flat_unref(f);

    /* Block 80000's entry (BAT at 1536, VHD's layout) points far past the footer. */
    uint8_t e[4] = {0x7f, 0, 0, 0};
    int fd = open(big, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, e, 4, 1536 + 4 * 80000), 4);
    close(fd);
    vh_resolver_reset(r);
    f = open_flat(store, r, "big.vhd");
    assert_int_equal(vh_flat_read(f, buf, 0, 4096, NULL), 0);
    assert_int_equal(vh_flat_read(f, buf, UINT64_C(80000) * 2 * MIB, 4096, &err), -EINVAL);
    assert_non_null(strstr(err->message, "BAT entry 80000"));
    vh_flat_unref(f);
    vh_resolver_free(r);
    vh_tcache_set_limit(old_limit);
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

#define TESTS(s)                                                                                   \
    cmocka_unit_test_setup_teardown(reads_equal_the_chain, s, teardown),                           \
        cmocka_unit_test_setup_teardown(pieces_equal_the_chain, s, teardown),                      \
        cmocka_unit_test_setup_teardown(pieces_refuse_patched_members, s, teardown),               \
        cmocka_unit_test_setup_teardown(concurrent_readers_agree, s, teardown),                    \
        cmocka_unit_test_setup_teardown(seek_finds_data_and_holes, s, teardown),                   \
        cmocka_unit_test_setup_teardown(stale_when_a_member_changes, s, teardown),                 \
        cmocka_unit_test_setup_teardown(heal_target_is_crossed_and_nothing_else, s, teardown),     \
        cmocka_unit_test_setup_teardown(cache_reopens_stale_and_keeps_its_bound, s, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {TESTS(setup_vhd), TESTS(setup_vhdx),
                                       cmocka_unit_test(large_block_tables_are_paged),
                                       cmocka_unit_test(large_vhd_tables_are_paged)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
