// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * test_overlay.c - overlay healing in the engine (chain/overlay.h): patch sets over a read-only
 * file, and the reconnect's link rewrite built into one. The patched image, opened by the engine
 * through the same patch set, shows the new link and the same virtual content; the store file's
 * sha256 never changes. VHD with a path needing more locator space, VHDX with a pending log.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <glib/gstdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "chain.h"
#include "overlay.h"
#include "overlay_file.h"
#include "reconnect.h"
#include "util.h"
#include "vhdx_format.h"
#include "vhdx_log.h"
#include "winpath.h"

#define VSIZE (8 * 1024 * 1024)
#define S 4096

typedef struct {
    vh_format format;
    char *store, *base, *child;
} fx_t;

static const char *ext(vh_format f)
{
    return f == VH_FORMAT_VHD ? "vhd" : "vhdx";
}

static void write_pattern(const char *path, uint64_t off, size_t len, uint8_t seed)
{
    g_autoptr(vh_disk) d = NULL;
    g_autoptr(GError) err = NULL;
    vh_chain_open_opts o = {.maxdepth = 16, .writable = true};
    if (vh_chain_open(path, &o, &d, &err) < 0)
        fail_msg("%s", err->message);
    g_autofree uint8_t *buf = g_malloc(len);
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(seed + i * 13);
    assert_int_equal(vh_disk_write(d, buf, off, len, NULL), 0);
    assert_int_equal(vh_disk_flush(d, NULL), 0);
}

/* A store with vms/child.EXT whose parent base.EXT was moved to `moved_dir` (broken link). */
static fx_t *make_store(vh_format f, const char *moved_dir)
{
    fx_t *fx = g_new0(fx_t, 1);
    fx->format = f;
    fx->store = g_dir_make_tmp("vh-overlay-XXXXXX", NULL);
    g_autofree char *vms = g_build_filename(fx->store, "vms", NULL);
    assert_int_equal(g_mkdir_with_parents(vms, 0755), 0);
    g_autofree char *base0 = g_strdup_printf("%s/base.%s", vms, ext(f));
    fx->child = g_strdup_printf("%s/child.%s", vms, ext(f));
    vh_create_opts o = {.format = f, .type = VH_TYPE_DYNAMIC, .size = VSIZE};
    g_autoptr(GError) err = NULL;
    if (vh_disk_create(base0, &o, &err) < 0)
        fail_msg("%s", err->message);
    write_pattern(base0, 0, 3 * 1024 * 1024 + 777, 1);
    {
        g_autoptr(vh_disk) parent = NULL;
        assert_int_equal(vh_disk_open(base0, VH_OPEN_READ, &parent, NULL), 0);
        g_autofree char *rel = vh_winpath_relative(fx->child, base0);
        vh_create_opts c = {.type = VH_TYPE_DIFFERENCING, .parent = parent, .parent_relative = rel};
        if (vh_disk_create(fx->child, &c, &err) < 0)
            fail_msg("%s", err->message);
    }
    write_pattern(fx->child, 1024 * 1024 + 5, 70000, 9);
    g_autofree char *dir = g_build_filename(fx->store, moved_dir, NULL);
    assert_int_equal(g_mkdir_with_parents(dir, 0755), 0);
    fx->base = g_strdup_printf("%s/base.%s", dir, ext(f));
    assert_int_equal(rename(base0, fx->base), 0);
    return fx;
}

static void free_store(fx_t *fx)
{
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", fx->store);
    assert_int_equal(system(cmd), 0);
    g_free(fx->store);
    g_free(fx->base);
    g_free(fx->child);
    g_free(fx);
}

static char *file_sha256(const char *path)
{
    g_autofree char *data = NULL;
    gsize len = 0;
    assert_true(g_file_get_contents(path, &data, &len, NULL));
    return g_compute_checksum_for_data(G_CHECKSUM_SHA256, (const guchar *)data, len);
}

/* sha256 of the child's virtual content (child opened from f) with the parent attached by hand. */
static char *content_hash_file(vh_file *f, const char *parent)
{
    g_autoptr(vh_disk) c = NULL;
    g_autoptr(GError) err = NULL;
    if (vh_disk_open_file(f, VH_OPEN_READ, &c, &err) < 0)
        fail_msg("%s", err->message);
    vh_disk *p = NULL;
    assert_int_equal(vh_disk_open(parent, VH_OPEN_READ, &p, NULL), 0);
    vh_disk_set_parent(c, p);
    g_autoptr(GChecksum) sum = g_checksum_new(G_CHECKSUM_SHA256);
    g_autofree uint8_t *buf = g_malloc(VH_MIB);
    for (uint64_t off = 0; off < c->virtual_size; off += VH_MIB) {
        assert_int_equal(vh_disk_read(c, buf, off, VH_MIB, NULL), 0);
        g_checksum_update(sum, buf, VH_MIB);
    }
    return g_strdup(g_checksum_get_string(sum));
}

static char *content_hash(const char *child, vh_patch *patch, const char *parent)
{
    vh_file f;
    if (patch)
        assert_int_equal(vh_file_open_patched(&f, child, patch, NULL), 0);
    else
        assert_int_equal(vh_file_open(&f, child, false, NULL), 0);
    return content_hash_file(&f, parent);
}

/* The disk opened through the patch set (read-only, as the mount's readers do). */
static vh_disk *open_patched(const char *child, vh_patch *patch)
{
    vh_file f;
    g_autoptr(GError) err = NULL;
    assert_int_equal(vh_file_open_patched(&f, child, patch, &err), 0);
    vh_disk *d = NULL;
    if (vh_disk_open_file(&f, VH_OPEN_READ, &d, &err) < 0)
        fail_msg("%s", err->message);
    return d;
}

static const char *relative_locator(const vh_disk *d)
{
    for (guint i = 0; d->link.locators && i < d->link.locators->len; i++) {
        const vh_locator *l = d->link.locators->pdata[i];
        if (l->kind == VH_LOC_RELATIVE_PATH || l->kind == VH_LOC_W2RU)
            return l->path;
    }
    return NULL;
}

static vh_patch *overlay_reconnect(const fx_t *fx, const char *parent)
{
    vh_reconnect_opts o = {.store = fx->store, .overlay = true};
    vh_reconnect_result res;
    g_autoptr(GError) err = NULL;
    if (vh_reconnect(fx->child, parent, &o, &res, &err) < 0)
        fail_msg("%s", err->message);
    assert_false(res.already_healed);
    assert_null(res.repair_id);
    assert_non_null(res.patch);
    vh_patch *p = g_steal_pointer(&res.patch);
    vh_reconnect_result_clear(&res);
    return p;
}

/* The whole check: broken before, healed through the patches, store unchanged. */
static vh_patch *heal_in_overlay(fx_t *fx, const char *want_rel)
{
    g_autofree char *child_sum = file_sha256(fx->child);
    g_autofree char *base_sum = file_sha256(fx->base);
    g_autofree char *want = content_hash(fx->child, NULL, fx->base);
    struct stat before;
    assert_int_equal(stat(fx->child, &before), 0);

    vh_patch *patch = overlay_reconnect(fx, fx->base);

    g_autofree char *child_after = file_sha256(fx->child);
    g_autofree char *base_after = file_sha256(fx->base);
    assert_string_equal(child_sum, child_after);
    assert_string_equal(base_sum, base_after);
    struct stat after;
    assert_int_equal(stat(fx->child, &after), 0);
    assert_int_equal(before.st_size, after.st_size);
    assert_int_equal(vh_patch_base_size(patch), (uint64_t)before.st_size);
    assert_true(vh_patch_count(patch) > 0);
    g_autofree char *private_dir = g_build_filename(fx->store, ".vhdheal", NULL);
    assert_false(g_file_test(private_dir, G_FILE_TEST_EXISTS)); /* no journal, nothing created */

    /* the store's child still links to nowhere; the patched one to the moved parent */
    {
        g_autoptr(vh_disk) store_child = NULL;
        assert_int_equal(vh_disk_open(fx->child, VH_OPEN_READ, &store_child, NULL), 0);
        assert_string_not_equal(relative_locator(store_child), want_rel);
        g_autoptr(vh_disk) d = open_patched(fx->child, patch);
        assert_non_null(relative_locator(d));
        assert_string_equal(relative_locator(d), want_rel);
        g_autoptr(vh_disk) parent = NULL;
        assert_int_equal(vh_disk_open(fx->base, VH_OPEN_READ, &parent, NULL), 0);
        assert_true(vh_id_equal(&d->link.parent_id, &parent->id));
        assert_true(vh_id_equal(&d->id, &store_child->id));
        assert_true(!d->warnings || d->warnings->len == 0);
    }
    g_autofree char *got = content_hash(fx->child, patch, fx->base);
    assert_string_equal(want, got);
    return patch;
}

static void overlay_heals(vh_format f)
{
    fx_t *fx = make_store(f, "moved/elsewhere");
    g_autofree char *want = g_strdup_printf("..\\moved\\elsewhere\\base.%s", ext(f));
    g_autoptr(vh_patch) patch = heal_in_overlay(fx, want);
    /* a short path fits the locator space the child has: the patched file keeps its size */
    assert_int_equal(vh_patch_size(patch), vh_patch_base_size(patch));
    free_store(fx);
}

static void vhd_overlay_heals(void **state)
{
    overlay_heals(VH_FORMAT_VHD);
}

static void vhdx_overlay_heals(void **state)
{
    overlay_heals(VH_FORMAT_VHDX);
}

/* A new path longer than the child's locator space: the VHD write path moves the locators to
 * the end of the file; in the overlay the patched file grows, the store file does not. */
static void vhd_locators_grow(void **state)
{
    GString *dir = g_string_new("deep");
    for (int i = 0; i < 9; i++) { /* over 2048 characters: more than the 4 KiB W2ku space */
        g_string_append_c(dir, '/');
        for (int k = 0; k < 240; k++)
            g_string_append_c(dir, (char)('a' + (i + k) % 26));
    }
    fx_t *fx = make_store(VH_FORMAT_VHD, dir->str);
    g_autofree char *rel_unix = g_strdup_printf("../%s/base.vhd", dir->str);
    g_autofree char *want = g_strdelimit(g_strdup(rel_unix), "/", '\\');
    g_string_free(dir, TRUE);
    g_autoptr(vh_patch) patch = heal_in_overlay(fx, want);
    assert_true(vh_patch_size(patch) > vh_patch_base_size(patch));
    free_store(fx);
}

/* Writes a log entry into a closed VHDX and makes the headers name it (as a crash leaves it). */
static void inject_log(const char *path, const vhdx_log_op *ops, size_t n)
{
    vh_file f;
    assert_int_equal(vh_file_open(&f, path, true, NULL), 0);
    uint8_t hb[2][VHDX_HDR_SIZE];
    vhdx_header h[2];
    for (int i = 0; i < 2; i++) {
        assert_int_equal(
            vh_file_read(&f, hb[i], VHDX_HDR_SIZE, i ? VHDX_HDR2_OFF : VHDX_HDR1_OFF, "h", NULL),
            0);
        assert_int_equal(vhdx_header_parse(hb[i], 0, f.size, &h[i], NULL), 0);
    }
    vhdx_header cur = h[1].seq > h[0].seq ? h[1] : h[0];
    vh_id guid = vh_id_random();
    vhdx_log_entry_params p = {
        .seq = 1000, .tail = 0, .guid = guid, .flushed = f.size, .last = f.size};
    uint8_t *e = NULL;
    uint32_t len = 0;
    assert_int_equal(vhdx_log_entry_build(ops, n, &p, &e, &len, NULL), 0);
    assert_int_equal(vh_file_write(&f, e, len, cur.log_offset, "log", NULL), 0);
    g_free(e);
    cur.log_guid = guid;
    for (int i = 0; i < 2; i++) {
        cur.seq++;
        uint8_t buf[VHDX_HDR_SIZE];
        vhdx_header_write(&cur, buf);
        assert_int_equal(
            vh_file_write(&f, buf, VHDX_HDR_SIZE, i ? VHDX_HDR2_OFF : VHDX_HDR1_OFF, "h", NULL), 0);
    }
    vh_file_close(&f);
}

static const char *info_value(vh_disk *d, GHashTable *h, const char *key)
{
    return g_hash_table_lookup(h, key);
}

static void info_put(void *ctx, const char *key, const char *value)
{
    g_hash_table_insert(ctx, g_strdup(key), g_strdup(value));
}

static GHashTable *info_of(vh_disk *d)
{
    GHashTable *h = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    d->ops->info(d, info_put, h);
    return h;
}

/* A child left with a pending log (a logged payload sector): the overlay replays it into the
 * patch set before the link rewrite; the patched image has an empty log and the logged data. */
static void vhdx_pending_log(void **state)
{
    fx_t *fx = make_store(VH_FORMAT_VHDX, "moved");
    uint64_t data_off;
    {
        g_autoptr(vh_disk) c = NULL;
        assert_int_equal(vh_disk_open(fx->child, VH_OPEN_READ, &c, NULL), 0);
        vh_run run;
        assert_int_equal(c->ops->map(c, 1024 * 1024 + S, S, &run, NULL), 0);
        assert_int_equal(run.kind, VH_RUN_DATA);
        data_off = run.file_offset;
    }
    g_autofree uint8_t *sector = g_malloc(S);
    for (int i = 0; i < S; i++)
        sector[i] = (uint8_t)(0x5a ^ i);
    vhdx_log_op op = {data_off, S, sector};
    inject_log(fx->child, &op, 1);
    {
        g_autoptr(vh_disk) c = NULL;
        assert_int_equal(vh_disk_open(fx->child, VH_OPEN_READ, &c, NULL), 0);
        g_autoptr(GHashTable) info = info_of(c);
        assert_string_equal(info_value(c, info, "log"), "replayed in memory");
    }
    g_autoptr(vh_patch) patch = heal_in_overlay(fx, "..\\moved\\base.vhdx");
    g_autoptr(vh_disk) d = open_patched(fx->child, patch);
    g_autoptr(GHashTable) info = info_of(d);
    assert_string_equal(info_value(d, info, "log"), "empty");
    assert_string_equal(info_value(d, info, "log_guid"), "00000000-0000-0000-0000-000000000000");
    g_autofree uint8_t *buf = g_malloc(S);
    assert_int_equal(vh_disk_read(d, buf, 1024 * 1024 + S, S, NULL), 0);
    assert_memory_equal(buf, sector, S);
    free_store(fx);
}

/* Patch sets alone: overlapping writes, growth, truncate below the base, reads over the base. */
static void patch_ranges(void **state)
{
    g_autofree char *dir = g_dir_make_tmp("vh-overlay-XXXXXX", NULL);
    g_autofree char *path = g_build_filename(dir, "f", NULL);
    uint8_t base[100];
    for (int i = 0; i < 100; i++)
        base[i] = (uint8_t)i;
    assert_true(g_file_set_contents(path, (char *)base, 100, NULL));
    g_autofree char *before = file_sha256(path);
    vh_file f;
    assert_int_equal(vh_file_open_patched(&f, path, NULL, NULL), 0);
    uint8_t a[10], b[4];
    memset(a, 0xaa, sizeof a);
    memset(b, 0xbb, sizeof b);
    assert_int_equal(vh_file_write(&f, a, 10, 20, "a", NULL), 0);
    assert_int_equal(vh_file_write(&f, b, 4, 25, "b", NULL), 0);
    assert_int_equal(vh_file_write(&f, b, 4, 118, "grow", NULL), 0);
    assert_int_equal(f.size, 122);
    assert_int_equal(vh_patch_count(f.patch), 4); /* a's left, b, a's right, the growth */
    uint8_t got[122];
    assert_int_equal(vh_file_read(&f, got, 122, 0, "all", NULL), 0);
    for (int i = 0; i < 122; i++) {
        uint8_t want = i < 20    ? (uint8_t)i
                       : i < 25  ? 0xaa
                       : i < 29  ? 0xbb
                       : i < 30  ? 0xaa
                       : i < 100 ? (uint8_t)i
                       : i < 118 ? 0
                                 : 0xbb;
        assert_int_equal(got[i], want);
    }
    assert_int_equal(vh_file_truncate(&f, 22, NULL), 0);
    assert_int_equal(vh_file_truncate(&f, 40, NULL), 0);
    assert_int_equal(vh_file_read(&f, got, 40, 0, "all", NULL), 0);
    for (int i = 0; i < 40; i++)
        assert_int_equal(got[i], i < 20 ? i : i < 22 ? 0xaa : 0);
    assert_int_equal(vh_file_flush(&f, NULL), 0);
    g_autoptr(GError) err = NULL;
    assert_int_equal(vh_file_read(&f, got, 41, 0, "past", &err), -EIO);
    vh_file_close(&f);
    g_autofree char *after = file_sha256(path);
    assert_string_equal(before, after);
    unlink(path);
    g_rmdir(dir);
}

/* A patch set never holds more than its bound. */
static void patch_bound(void **state)
{
    g_autoptr(vh_patch) p = vh_patch_new(0);
    g_autofree uint8_t *big = g_malloc0(VH_PATCH_MAX_BYTES / 2 + 1);
    assert_int_equal(vh_patch_write(p, big, VH_PATCH_MAX_BYTES / 2 + 1, 0, NULL), 0);
    g_autoptr(GError) err = NULL;
    assert_int_equal(vh_patch_write(p, big, VH_PATCH_MAX_BYTES / 2 + 1, VH_MIB * 100, &err),
                     -EFBIG);
    /* rewriting the same range does not count twice */
    assert_int_equal(vh_patch_write(p, big, VH_PATCH_MAX_BYTES / 2 + 1, 0, NULL), 0);
}

static void count_line(void *ctx, const char *line)
{
    (*(int *)ctx)++;
    assert_non_null(strstr(line, "changed on the store"));
}

static void count_any(void *ctx, const char *line)
{
    (*(int *)ctx)++;
}

/* The table: a patch set holds while its file keeps its size and mtime; then it is dropped and
 * logged once. */
static void overlay_table(void **state)
{
    int logged = 0;
    vh_overlay *o = vh_overlay_new(count_line, &logged);
    g_autoptr(vh_patch) p = vh_patch_new(1000);
    struct stat st = {.st_mode = S_IFREG, .st_dev = 7, .st_ino = 42, .st_size = 1000};
    st.st_mtim.tv_sec = 100;
    vh_overlay_put(o, &st, p, NULL);
    assert_int_equal(vh_overlay_count(o), 1);
    vh_patch *got = vh_overlay_get(o, &st, "x");
    assert_ptr_equal(got, p);
    vh_patch_unref(got);
    struct stat other = st;
    other.st_ino = 43;
    assert_null(vh_overlay_get(o, &other, "y"));
    struct stat later = st;
    later.st_mtim.tv_nsec = 1;
    assert_null(vh_overlay_get(o, &later, "x"));
    assert_int_equal(logged, 1);
    assert_int_equal(vh_overlay_count(o), 0);
    assert_null(vh_overlay_get(o, &st, "x")); /* gone for good */
    assert_int_equal(logged, 1);
    vh_overlay_put(o, &st, p, NULL);
    struct stat bigger = st;
    bigger.st_size = 1001;
    assert_null(vh_overlay_get(o, &bigger, NULL));
    assert_int_equal(logged, 2);
    vh_overlay_free(o);
}

/* ---------------------------------------------------------------------------------------- */
/* Patch files (overlay_file.h) */

/* A patch set with a truncate, two ranges and a growth over a 100-byte base. */
static vh_patch *sample_patch(void)
{
    vh_patch *p = vh_patch_new(100);
    uint8_t a[10], b[4];
    memset(a, 0xaa, sizeof a);
    memset(b, 0xbb, sizeof b);
    vh_patch_truncate(p, 90);
    assert_int_equal(vh_patch_write(p, a, 10, 20, NULL), 0);
    assert_int_equal(vh_patch_write(p, b, 4, 85, NULL), 0);
    assert_int_equal(vh_patch_write(p, b, 4, 118, NULL), 0);
    return p;
}

static void sample_origin(vh_patch_origin *o)
{
    memset(o, 0, sizeof *o);
    o->rel = g_strdup("vm/child.avhdx");
    o->note = g_strdup("parent-missing: reconnected to moved/base.vhdx");
    o->ino = 4242;
    o->mtime_ns = 1764400000123456789;
    o->time = 1764400001;
    for (int i = 0; i < 32; i++)
        o->hash[i] = (uint8_t)(i * 7);
}

static uint8_t *sample_bytes(size_t *len)
{
    g_autoptr(vh_patch) p = sample_patch();
    vh_patch_origin o;
    sample_origin(&o);
    uint8_t *b = vh_patch_file_encode(p, &o, len, NULL);
    assert_non_null(b);
    vh_patch_origin_clear(&o);
    return b;
}

/* The same patch set: sizes, visible part, every range. */
static void assert_same_patch(const vh_patch *a, const vh_patch *b)
{
    assert_int_equal(vh_patch_base_size(a), vh_patch_base_size(b));
    assert_int_equal(vh_patch_visible(a), vh_patch_visible(b));
    assert_int_equal(vh_patch_size(a), vh_patch_size(b));
    assert_int_equal(vh_patch_count(a), vh_patch_count(b));
    for (guint i = 0; i < vh_patch_count(a); i++) {
        uint64_t ao, bo;
        size_t al, bl;
        const uint8_t *ad, *bd;
        vh_patch_range(a, i, &ao, &al, &ad);
        vh_patch_range(b, i, &bo, &bl, &bd);
        assert_int_equal(ao, bo);
        assert_int_equal(al, bl);
        assert_memory_equal(ad, bd, al);
    }
}

static void file_round_trip(void **state)
{
    g_autoptr(vh_patch) p = sample_patch();
    vh_patch_origin o, back;
    sample_origin(&o);
    size_t len = 0;
    g_autofree uint8_t *b = vh_patch_file_encode(p, &o, &len, NULL);
    g_autoptr(GError) err = NULL;
    g_autoptr(vh_patch) q = vh_patch_file_decode(b, len, "x", &back, &err);
    if (!q)
        fail_msg("%s", err->message);
    assert_same_patch(p, q);
    assert_string_equal(back.rel, o.rel);
    assert_string_equal(back.note, o.note);
    assert_int_equal(back.ino, o.ino);
    assert_int_equal(back.mtime_ns, o.mtime_ns);
    assert_int_equal(back.time, o.time);
    assert_memory_equal(back.hash, o.hash, 32);
    size_t len2 = 0;
    g_autofree uint8_t *b2 = vh_patch_file_encode(q, &back, &len2, NULL);
    assert_int_equal(len2, len);
    assert_memory_equal(b2, b, len);
    vh_patch_origin_clear(&o);
    vh_patch_origin_clear(&back);
}

static void expect_bad(const uint8_t *b, size_t len)
{
    vh_patch_origin o;
    g_autoptr(GError) err = NULL;
    vh_patch *p = vh_patch_file_decode(b, len, "bad.vhpatch", &o, &err);
    assert_null(p);
    assert_non_null(err);
    assert_int_equal(vh_error_errno(err), EINVAL);
    assert_non_null(strstr(err->message, "bad.vhpatch"));
    assert_null(o.rel);
}

/* Every truncation (a crash while DIR was written) and every single-bit flip is refused. */
static void file_truncations_and_flips(void **state)
{
    size_t len = 0;
    g_autofree uint8_t *b = sample_bytes(&len);
    for (size_t n = 0; n < len; n++)
        expect_bad(b, n);
    g_autofree uint8_t *c = g_memdup2(b, len);
    for (size_t i = 0; i < len; i++)
        for (int bit = 0; bit < 8; bit++) {
            c[i] ^= (uint8_t)(1u << bit);
            expect_bad(c, len);
            c[i] ^= (uint8_t)(1u << bit);
        }
    vh_patch_origin o;
    g_autoptr(vh_patch) ok = vh_patch_file_decode(c, len, "x", &o, NULL);
    assert_non_null(ok); /* the flips were undone */
    vh_patch_origin_clear(&o);
}

/* Field edits with a valid checksum: only the field checks stand between them and the table. */
static void refused_with_crc(uint8_t *b, size_t len)
{
    vh_put_le32(b + len - 4, vh_crc32c(b, len - 4));
    expect_bad(b, len);
}

static void file_hostile_fields(void **state)
{
    size_t len = 0;
    g_autofree uint8_t *b = sample_bytes(&len);
    struct {
        size_t off;
        unsigned width;
        uint64_t value;
    } edits[] = {
        {104, 4, 65537},                     /* range count past the bound */
        {104, 4, 0xffffffffu},               /* range count overflow */
        {104, 4, 4},                         /* one more range than the file holds */
        {104, 4, 2},                         /* one fewer: the bytes do not add up */
        {108, 4, 0},                         /* empty path */
        {108, 4, 0xffffffffu},               /* path length past everything */
        {112, 4, 5000},                      /* note longer than the bound */
        {112, 4, 0x7fffffff},                /* note length past the end */
        {16, 8, 1},                          /* recorded size */
        {48, 8, 101},                        /* visible past the base */
        {56, 8, 100 + 64 * 1024 * 1024 + 1}, /* grows past what a patch set may */
        {32, 8, UINT64_MAX},                 /* base size overflow */
        {8, 4, 2},                           /* version */
        {12, 4, 64},                         /* header size */
        {120, 4, 1},                         /* reserved */
    };
    for (size_t k = 0; k < G_N_ELEMENTS(edits); k++) {
        g_autofree uint8_t *c = g_memdup2(b, len);
        if (edits[k].width == 4)
            vh_put_le32(c + edits[k].off, (uint32_t)edits[k].value);
        else
            vh_put_le64(c + edits[k].off, edits[k].value);
        refused_with_crc(c, len);
    }
    /* the range table: at 128 + path + note; three ranges {20,10} {85,4} {118,4} */
    size_t table =
        128 + strlen("vm/child.avhdx") + strlen("parent-missing: reconnected to moved/base.vhdx");
    uint64_t ranges[][4] = {
        {20, 10, 5, 4},              /* second before the first */
        {20, 10, 25, 4},             /* overlap */
        {20, 0, 85, 14},             /* empty range */
        {UINT64_MAX - 3, 10, 85, 4}, /* offset overflow */
        {20, 10, 120, 4},            /* second past the patched size (122) */
        {20, UINT64_MAX, 85, 4},     /* huge length */
    };
    for (size_t k = 0; k < G_N_ELEMENTS(ranges); k++) {
        g_autofree uint8_t *c = g_memdup2(b, len);
        vh_put_le64(c + table, ranges[k][0]);
        vh_put_le64(c + table + 8, ranges[k][1]);
        vh_put_le64(c + table + 16, ranges[k][2]);
        vh_put_le64(c + table + 24, ranges[k][3]);
        refused_with_crc(c, len);
    }
}

/* A path that would leave the store, is absolute, or is not one path, never decodes. */
static void file_path_escapes(void **state)
{
    const char *bad_paths[] = {"../etc/passwd", "/etc/passwd", "vm/../../x", "vm//child", "./child",
                               "vm/.",          "vm/",         "..",         "vm/..",     ""};
    for (size_t k = 0; k < G_N_ELEMENTS(bad_paths); k++)
        assert_false(vh_patch_file_rel_ok(bad_paths[k]));
    assert_true(vh_patch_file_rel_ok("vm/child.avhdx"));
    assert_true(vh_patch_file_rel_ok("a..b/..c"));
    g_autoptr(vh_patch) p = sample_patch();
    for (size_t k = 0; k < G_N_ELEMENTS(bad_paths); k++) {
        if (!*bad_paths[k])
            continue;
        vh_patch_origin o;
        sample_origin(&o);
        g_free(o.rel);
        o.rel = g_strdup(bad_paths[k]);
        size_t len = 0;
        g_autofree uint8_t *b = vh_patch_file_encode(p, &o, &len, NULL);
        expect_bad(b, len);
        vh_patch_origin_clear(&o);
    }
    /* a NUL inside the path */
    size_t len = 0;
    g_autofree uint8_t *b = sample_bytes(&len);
    b[128 + 2] = 0;
    refused_with_crc(b, len);
}

/* Saved into a folder, loaded back, checked against the store file; a changed file is stale;
 * the folder's symlinks are not followed. */
static void file_save_load_check(void **state)
{
    g_autofree char *root = g_dir_make_tmp("vh-overlay-XXXXXX", NULL);
    g_autofree char *store = g_build_filename(root, "store", NULL);
    g_autofree char *dir = g_build_filename(root, "ovl", NULL);
    g_autofree char *vm = g_build_filename(store, "vm", NULL);
    assert_int_equal(g_mkdir_with_parents(vm, 0755), 0);
    assert_int_equal(g_mkdir_with_parents(dir, 0755), 0);
    g_autofree char *child = g_build_filename(vm, "child.avhdx", NULL);
    uint8_t base[100];
    for (int i = 0; i < 100; i++)
        base[i] = (uint8_t)(i * 3);
    assert_true(g_file_set_contents(child, (char *)base, 100, NULL));
    g_autoptr(vh_patch) p = sample_patch();
    vh_autofd int fd = open(child, O_RDONLY);
    vh_patch_origin o;
    assert_int_equal(vh_patch_origin_of(&o, p, fd, "vm/child.avhdx", "healed", 7, NULL), 0);
    vh_autofd int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    assert_int_equal(vh_patch_file_save(dfd, p, &o, NULL), 0);
    g_autofree char *name = vh_patch_file_name("vm/child.avhdx");
    vh_patch_origin back;
    g_autoptr(GError) err = NULL;
    g_autoptr(vh_patch) q = vh_patch_file_load(dfd, name, &back, &err);
    if (!q)
        fail_msg("%s", err->message);
    assert_same_patch(p, q);
    vh_autofd int sfd = open(store, O_PATH | O_DIRECTORY);
    struct stat st;
    assert_int_equal(vh_patch_file_check(sfd, store, q, &back, &st, &err), 0);
    /* the bytes under a patch change, size and mtime restored: the hash tells */
    struct stat before;
    assert_int_equal(stat(child, &before), 0);
    base[22] ^= 1;
    assert_true(g_file_set_contents(child, (char *)base, 100, NULL));
    /* g_file_set_contents replaces the file: a new inode */
    assert_int_equal(vh_patch_file_check(sfd, store, q, &back, &st, &err), -ESTALE);
    g_clear_error(&err);
    struct stat now;
    assert_int_equal(stat(child, &now), 0);
    back.ino = (uint64_t)now.st_ino; /* as if the inode were the same */
    struct timespec ts[2] = {before.st_atim, before.st_mtim};
    assert_int_equal(utimensat(AT_FDCWD, child, ts, 0), 0);
    assert_int_equal(vh_patch_file_check(sfd, store, q, &back, &st, &err), -ESTALE);
    assert_non_null(strstr(err->message, "bytes under its patches"));
    g_clear_error(&err);
    /* gone */
    assert_int_equal(unlink(child), 0);
    assert_int_equal(vh_patch_file_check(sfd, store, q, &back, &st, &err), -ENOENT);
    g_clear_error(&err);
    /* a symlink in the folder is not followed */
    g_autofree char *target = g_build_filename(dir, name, NULL);
    g_autofree char *link = g_build_filename(dir, "0123.vhpatch", NULL);
    assert_int_equal(symlink(target, link), 0);
    vh_patch_origin via;
    assert_null(vh_patch_file_load(dfd, "0123.vhpatch", &via, &err));
    g_clear_error(&err);
    /* removal */
    assert_int_equal(vh_patch_file_remove(dfd, "vm/child.avhdx", NULL), 0);
    assert_false(g_file_test(target, G_FILE_TEST_EXISTS));
    assert_int_equal(vh_patch_file_remove(dfd, "vm/child.avhdx", NULL), 0);
    vh_patch_origin_clear(&o);
    vh_patch_origin_clear(&back);
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", root);
    assert_int_equal(system(cmd), 0);
}

/* The table with a folder: put saves, a stale entry's file goes, load brings valid files back
 * and logs the rest. */
static void overlay_table_dir(void **state)
{
    g_autofree char *root = g_dir_make_tmp("vh-overlay-XXXXXX", NULL);
    g_autofree char *store = g_build_filename(root, "store", NULL);
    g_autofree char *dir = g_build_filename(root, "ovl", NULL);
    assert_int_equal(g_mkdir_with_parents(store, 0755), 0);
    assert_int_equal(g_mkdir_with_parents(dir, 0755), 0);
    g_autofree char *f = g_build_filename(store, "c.vhd", NULL);
    uint8_t base[100] = {0};
    assert_true(g_file_set_contents(f, (char *)base, 100, NULL));
    int logged = 0;
    vh_overlay *o = vh_overlay_new(count_any, &logged);
    assert_int_equal(vh_overlay_set_dir(o, store, dir, true, NULL), 0);
    assert_int_equal(logged, 1); /* the folder is marked as the store's */
    logged = 0;
    g_autoptr(vh_patch) p = sample_patch();
    vh_autofd int fd = open(f, O_RDONLY);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    vh_patch_origin org;
    assert_int_equal(vh_patch_origin_of(&org, p, fd, "c.vhd", "healed", 7, NULL), 0);
    vh_overlay_put(o, &st, p, &org);
    g_autofree char *name = vh_patch_file_name("c.vhd");
    g_autofree char *saved = g_build_filename(dir, name, NULL);
    assert_true(g_file_test(saved, G_FILE_TEST_IS_REGULAR));
    vh_overlay_free(o);

    /* a second table (a remount) loads it; a hostile file beside it is logged and ignored */
    g_autofree char *junk = g_build_filename(dir, "ffff.vhpatch", NULL);
    assert_true(g_file_set_contents(junk, "VHPATCH\nnonsense", -1, NULL));
    o = vh_overlay_new(count_any, &logged);
    assert_int_equal(vh_overlay_set_dir(o, store, dir, true, NULL), 0);
    assert_int_equal(vh_overlay_load(o, NULL, NULL, NULL), 1);
    assert_int_equal(logged, 1);
    g_autoptr(vh_patch) got = vh_overlay_get(o, &st, "c.vhd");
    assert_non_null(got);
    assert_same_patch(p, got);
    /* the file changes: the entry and its file go */
    struct stat later = st;
    later.st_mtim.tv_nsec++;
    assert_null(vh_overlay_get(o, &later, "c.vhd"));
    assert_false(g_file_test(saved, G_FILE_TEST_EXISTS));
    assert_true(g_file_test(junk, G_FILE_TEST_EXISTS)); /* not ours to remove */
    vh_overlay_free(o);

    /* read-only (vhdheal): a stale file is dropped but stays in the folder */
    o = vh_overlay_new(count_any, &logged);
    assert_int_equal(vh_overlay_set_dir(o, store, dir, true, NULL), 0);
    vh_overlay_put(o, &st, p, &org);
    vh_overlay_free(o);
    assert_int_equal(utimensat(AT_FDCWD, f, (struct timespec[]){{0, UTIME_OMIT}, {1, 0}}, 0), 0);
    o = vh_overlay_new(count_any, &logged);
    assert_int_equal(vh_overlay_set_dir(o, store, dir, false, NULL), 0);
    logged = 0;
    assert_int_equal(vh_overlay_load(o, NULL, NULL, NULL), 0);
    assert_int_equal(logged, 2); /* the junk, the stale one */
    assert_true(g_file_test(saved, G_FILE_TEST_EXISTS));
    vh_overlay_free(o);
    vh_patch_origin_clear(&org);
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", root);
    assert_int_equal(system(cmd), 0);
}

/* Marker tests (doc/design.md "The marker") */

static void assert_marker_refused(const char *text, size_t len)
{
    vh_overlay_marker m;
    g_autoptr(GError) err = NULL;
    if (vh_overlay_marker_decode((const uint8_t *)text, len, "m", &m, &err) != -EINVAL)
        fail_msg("decoded: %.*s", (int)len, text);
    assert_null(m.store);
    assert_non_null(err);
    assert_non_null(strstr(err->message, "not an overlay folder marker"));
}

/* One spelling: the text as documented, decoded back to the same marker; bytes that would
 * blur a line are escaped and come back. */
static void marker_round_trip(void **state)
{
    vh_overlay_marker m = {g_strdup("/srv/vms"), makedev(8, 1), 131073}, back;
    size_t len = 0;
    g_autofree char *text = vh_overlay_marker_encode(&m, &len, NULL);
    assert_string_equal(text,
                        "vhdheal overlay folder 1\nstore /srv/vms\ndevice 8:1\ninode 131073\n");
    assert_int_equal(len, strlen(text));
    assert_int_equal(vh_overlay_marker_decode((uint8_t *)text, len, "m", &back, NULL), 0);
    assert_string_equal(back.store, m.store);
    assert_true(back.dev == m.dev && back.ino == m.ino);
    vh_overlay_marker_clear(&back);
    vh_overlay_marker_clear(&m);

    m = (vh_overlay_marker){g_strdup("/a\nb\\c\td\x7f\xc3\xa9"), makedev(259, 70000), UINT64_MAX};
    g_autofree char *odd = vh_overlay_marker_encode(&m, &len, NULL);
    assert_string_equal(odd, "vhdheal overlay folder 1\nstore /a\\x0ab\\x5cc\\x09d\\x7f\xc3\xa9\n"
                             "device 259:70000\ninode 18446744073709551615\n");
    assert_int_equal(vh_overlay_marker_decode((uint8_t *)odd, len, "m", &back, NULL), 0);
    assert_string_equal(back.store, m.store);
    assert_true(back.dev == m.dev && back.ino == m.ino);
    vh_overlay_marker_clear(&back);
    /* every truncation is refused */
    for (size_t k = 0; k < len; k++)
        assert_marker_refused(odd, k);
    vh_overlay_marker_clear(&m);

    /* not an absolute path: nothing to write */
    const char *bad[] = {"", "srv/vms", NULL};
    for (size_t k = 0; k < G_N_ELEMENTS(bad); k++) {
        m = (vh_overlay_marker){(char *)bad[k], 1, 1};
        g_autoptr(GError) err = NULL;
        assert_null(vh_overlay_marker_encode(&m, &len, &err));
        assert_int_equal(vh_error_errno(err), EINVAL);
    }
    g_autofree char *longp = g_strnfill(VH_PATCH_FILE_MAX_PATH, 'a');
    longp[0] = '/';
    m = (vh_overlay_marker){longp, 1, 1};
    assert_null(vh_overlay_marker_encode(&m, &len, NULL));
}

/* What the encoder never writes never decodes: binary, another version, a raw control byte, an
 * escape it does not make, numbers spelt otherwise, lines missing or added, too large. */
static void marker_hostile_text(void **state)
{
#define M "vhdheal overlay folder 1\n"
    const char *bad[] = {
        "",
        M,
        "vhdheal overlay folder 2\nstore /s\ndevice 8:1\ninode 2\n",
        "VHDHEAL overlay folder 1\nstore /s\ndevice 8:1\ninode 2\n",
        M "store /s\ndevice 8:1\ninode 2",        /* no last newline */
        M "store /s\ndevice 8:1\ninode 2\n\n",    /* a line more */
        M "store /s\ndevice 8:1\ninode 2\nx 1\n", /* a line more */
        M "store /s\ndevice 8:1\n",               /* a line less */
        M "store s\ndevice 8:1\ninode 2\n",       /* relative */
        M "store  /s\ndevice 8:1\ninode 2\n",     /* " /s" */
        M "store\n/s\ndevice 8:1\ninode 2\n",
        M "store /\\x00s\ndevice 8:1\ninode 2\n",  /* NUL by escape */
        M "store /\\x41\ndevice 8:1\ninode 2\n",   /* 'A' needs no escape */
        M "store /\\x0A\ndevice 8:1\ninode 2\n",   /* upper case hex */
        M "store /\\x0\ndevice 8:1\ninode 2\n",    /* short escape */
        M "store /\\\ndevice 8:1\ninode 2\n",      /* a lone backslash */
        M "store /a\\n\ndevice 8:1\ninode 2\n",    /* not our escape */
        M "store /a\tb\ndevice 8:1\ninode 2\n",    /* raw tab */
        M "store /a\rb\ndevice 8:1\ninode 2\n",    /* raw CR */
        M "store /s\r\ndevice 8:1\r\ninode 2\r\n", /* CRLF */
        M "store /s\ndevice 8\ninode 2\n",
        M "store /s\ndevice 8:01\ninode 2\n",
        M "store /s\ndevice -8:1\ninode 2\n",
        M "store /s\ndevice 8:1:1\ninode 2\n",
        M "store /s\ndevice 4294967296:1\ninode 2\n",
        M "store /s\ndevice 8:1\ninode 02\n",
        M "store /s\ndevice 8:1\ninode +2\n",
        M "store /s\ndevice 8:1\ninode 2x\n",
        M "store /s\ndevice 8:1\ninode 18446744073709551616\n",
        M "store /s\ndevice 8:1\ninode \n",
        M "store /s\ninode 2\ndevice 8:1\n", /* out of order */
        M "device 8:1\nstore /s\ninode 2\n",
    };
    for (size_t k = 0; k < G_N_ELEMENTS(bad); k++)
        assert_marker_refused(bad[k], strlen(bad[k]));
    /* a NUL byte anywhere; binary */
    const char good[] = M "store /s\ndevice 8:1\ninode 2\n";
    for (size_t k = strlen(M); k < sizeof good - 1; k++) {
        g_autofree char *c = g_memdup2(good, sizeof good - 1);
        c[k] = '\0';
        assert_marker_refused(c, sizeof good - 1);
    }
    uint8_t bin[4096];
    for (size_t i = 0; i < sizeof bin; i++)
        bin[i] = (uint8_t)(i * 151 + 7);
    assert_marker_refused((char *)bin, sizeof bin);
    memcpy(bin, M, strlen(M)); /* the magic, then binary */
    bin[sizeof bin - 1] = '\n';
    assert_marker_refused((char *)bin, sizeof bin);
    /* too large, even when well formed */
    GString *big = g_string_new(M "store /");
    while (big->len <= VH_OVERLAY_MARKER_MAX_SIZE)
        g_string_append(big, "a");
    g_string_append(big, "\ndevice 8:1\ninode 2\n");
    assert_marker_refused(big->str, big->len);
    g_string_free(big, TRUE);
#undef M
}

static gint by_name(gconstpointer a, gconstpointer b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The folder's whole listing, each entry's kind, owner, mode, inode, times and bytes: what
 * "nothing in the folder changed" means. */
static char *listing(const char *dir)
{
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    assert_non_null(d);
    g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
    const char *n;
    while ((n = g_dir_read_name(d)))
        g_ptr_array_add(names, g_strdup(n));
    g_ptr_array_sort(names, by_name);
    GString *out = g_string_new(NULL);
    for (guint i = 0; i < names->len; i++) {
        g_autofree char *p = g_build_filename(dir, names->pdata[i], NULL);
        struct stat st;
        assert_int_equal(lstat(p, &st), 0);
        g_string_append_printf(out, "%s %o %u %ju %jd.%09ld %jd\n", (char *)names->pdata[i],
                               (unsigned)st.st_mode, (unsigned)st.st_uid, (uintmax_t)st.st_ino,
                               (intmax_t)st.st_mtim.tv_sec, st.st_mtim.tv_nsec,
                               (intmax_t)st.st_size);
        g_autofree char *bytes = NULL;
        gsize len = 0;
        if (S_ISREG(st.st_mode) && g_file_get_contents(p, &bytes, &len, NULL))
            g_string_append_len(out, bytes, (gssize)len);
        else if (S_ISLNK(st.st_mode))
            g_string_append(out, bytes = g_file_read_link(p, NULL));
    }
    return g_string_free(out, FALSE);
}

static int claim(const char *dir, const char *store, bool write, int *logged, GError **err)
{
    vh_autofd int fd = open(dir, O_RDONLY | O_DIRECTORY);
    assert_true(fd >= 0);
    return vh_overlay_dir_claim(fd, dir, store, write, count_any, logged, err);
}

/* A hostile marker put in place by `make` is refused by the mount's claim and vhdheal's, and
 * nothing in the folder changes. */
static void refused_marker(const char *dir, const char *store, int want_errno, const char *says)
{
    g_autofree char *before = listing(dir);
    for (int write = 0; write < 2; write++) {
        g_autoptr(GError) err = NULL;
        int logged = 0;
        assert_int_equal(claim(dir, store, write, &logged, &err), -want_errno);
        if (!strstr(err->message, says) || !strstr(err->message, "which store"))
            fail_msg("%s", err->message);
        assert_int_equal(logged, 0);
        g_autofree char *after = listing(dir);
        assert_string_equal(before, after);
    }
}

/* One folder, one store: marked on the first claim that writes, the same store's claims pass,
 * another store's are refused naming both, with nothing written; hostile markers are refused. */
static void marker_claim(void **state)
{
    g_autofree char *root = g_dir_make_tmp("vh-overlay-XXXXXX", NULL);
    g_autofree char *a = g_build_filename(root, "a", NULL);
    g_autofree char *b = g_build_filename(root, "b", NULL);
    g_autofree char *dir = g_build_filename(root, "ovl", NULL);
    g_autofree char *mark = g_build_filename(dir, VH_OVERLAY_MARKER, NULL);
    for (const char *d = a; d; d = d == a ? b : d == b ? dir : NULL)
        assert_int_equal(g_mkdir_with_parents(d, 0755), 0);
    /* a folder of the previous version: a patch file, no marker */
    g_autofree char *patch =
        g_build_filename(dir, "0123456789abcdef0123456789abcdef.vhpatch", NULL);
    assert_true(g_file_set_contents(patch, "kept as it is", -1, NULL));
    int logged = 0;
    g_autoptr(GError) err = NULL;
    assert_int_equal(claim(dir, a, false, &logged, NULL), 0); /* vhdheal writes nothing */
    assert_false(g_file_test(mark, G_FILE_TEST_EXISTS));
    assert_int_equal(claim(dir, a, true, &logged, NULL), 1);
    assert_int_equal(logged, 1);
    struct stat st, sa;
    assert_int_equal(lstat(mark, &st), 0);
    assert_int_equal(stat(a, &sa), 0);
    assert_true(S_ISREG(st.st_mode) && (st.st_mode & 07777) == 0600 && st.st_uid == geteuid());
    g_autofree char *text = NULL;
    gsize len = 0;
    assert_true(g_file_get_contents(mark, &text, &len, NULL));
    vh_overlay_marker m;
    assert_int_equal(vh_overlay_marker_decode((uint8_t *)text, len, mark, &m, NULL), 0);
    assert_string_equal(m.store, a);
    assert_true(m.dev == (uint64_t)sa.st_dev && m.ino == (uint64_t)sa.st_ino);
    vh_overlay_marker_clear(&m);
    g_autofree char *content = NULL;
    assert_true(g_file_get_contents(patch, &content, NULL, NULL));
    assert_string_equal(content, "kept as it is");

    /* the same store again: nothing written, nothing logged */
    g_autofree char *marked = listing(dir);
    logged = 0;
    assert_int_equal(claim(dir, a, true, &logged, NULL), 1);
    assert_int_equal(claim(dir, a, false, &logged, NULL), 1);
    assert_int_equal(logged, 0);
    g_autofree char *again = listing(dir);
    assert_string_equal(marked, again);

    /* another store: refused, both named, nothing written */
    for (int write = 0; write < 2; write++) {
        assert_int_equal(claim(dir, b, write, &logged, &err), -EXDEV);
        assert_non_null(strstr(err->message, a));
        assert_non_null(strstr(err->message, b));
        assert_null(strstr(err->message, "same device and inode"));
        g_clear_error(&err);
        g_autofree char *after = listing(dir);
        assert_string_equal(marked, after);
    }
    /* ... and so is the table's folder (the mount's service, vhdheal) */
    vh_overlay *o = vh_overlay_new(count_any, &logged);
    assert_int_equal(vh_overlay_set_dir(o, b, dir, true, &err), -EXDEV);
    g_clear_error(&err);
    vh_overlay_free(o);

    /* the store moved: the same folder under another path is refused, with the way out */
    g_autofree char *moved = g_build_filename(root, "a-moved", NULL);
    assert_int_equal(rename(a, moved), 0);
    assert_int_equal(claim(dir, moved, true, &logged, &err), -EXDEV);
    assert_non_null(strstr(err->message, "same device and inode"));
    assert_non_null(strstr(err->message, mark));
    g_clear_error(&err);
    /* another folder at the store's path (replaced, restored): its own, noted */
    assert_int_equal(g_mkdir_with_parents(a, 0755), 0);
    logged = 0;
    assert_int_equal(claim(dir, a, true, &logged, NULL), 1);
    assert_int_equal(logged, 1);
    g_autofree char *still = listing(dir);
    assert_string_equal(marked, still);

    /* hostile markers: writable by others, a symlink (to a good marker, dangling), not a
     * regular file, too large, binary; never replaced */
    assert_int_equal(chmod(mark, 0666), 0);
    refused_marker(dir, a, EPERM, "mode 0666");
    assert_int_equal(chmod(mark, 0620), 0);
    refused_marker(dir, a, EPERM, "mode 0620");
    assert_int_equal(chmod(mark, 0600), 0);
    if (geteuid() == 0) {
        assert_int_equal(chown(mark, 65534, 65534), 0);
        refused_marker(dir, a, EPERM, "owned by user 65534");
        assert_int_equal(chown(mark, 0, 0), 0);
    }
    g_autofree char *good = g_build_filename(root, "good.store", NULL);
    assert_int_equal(rename(mark, good), 0);
    assert_int_equal(symlink(good, mark), 0);
    refused_marker(dir, a, EXDEV, "symlink");
    assert_int_equal(unlink(mark), 0);
    assert_int_equal(symlink("/nonexistent/vhdheal.store", mark), 0);
    refused_marker(dir, a, EXDEV, "symlink");
    assert_int_equal(unlink(mark), 0);
    assert_int_equal(mkdir(mark, 0700), 0);
    refused_marker(dir, a, EINVAL, "not a regular file");
    assert_int_equal(rmdir(mark), 0);
    assert_int_equal(mkfifo(mark, 0600), 0);
    refused_marker(dir, a, EINVAL, "not a regular file");
    assert_int_equal(unlink(mark), 0);
    {
        g_autofree char *huge = g_strnfill(VH_OVERLAY_MARKER_MAX_SIZE + 1, 'x');
        assert_true(g_file_set_contents(mark, huge, -1, NULL));
        assert_int_equal(chmod(mark, 0600), 0);
        refused_marker(dir, a, EFBIG, "more than");
        uint8_t bin[512];
        for (size_t i = 0; i < sizeof bin; i++)
            bin[i] = (uint8_t)(i * 151 + 7);
        assert_true(g_file_set_contents(mark, (char *)bin, sizeof bin, NULL));
        refused_marker(dir, a, EINVAL, "not an overlay folder marker");
    }
    /* the good one back: the folder is a's again */
    assert_int_equal(rename(good, mark), 0);
    assert_int_equal(claim(dir, a, true, &logged, NULL), 1);
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", root);
    assert_int_equal(system(cmd), 0);
}

/* A patch file for rel over the file at path, saved into dir. */
static void save_patch_for(const char *dir, const char *path, const char *rel)
{
    g_autoptr(vh_patch) p = sample_patch();
    vh_autofd int fd = open(path, O_RDONLY);
    vh_autofd int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    vh_patch_origin o;
    assert_int_equal(vh_patch_origin_of(&o, p, fd, rel, "healed", 7, NULL), 0);
    assert_int_equal(vh_patch_file_save(dfd, p, &o, NULL), 0);
    vh_patch_origin_clear(&o);
}

/* A folder without a marker (an earlier version's) that holds repairs is marked for a store
 * only when one of them fits a disk of it: else it may be another store's, and is refused with
 * nothing written (vhdheal, which writes nothing, still reads it). */
static void marker_unmarked_folder(void **state)
{
    g_autofree char *root = g_dir_make_tmp("vh-overlay-XXXXXX", NULL);
    g_autofree char *a = g_build_filename(root, "a", NULL);
    g_autofree char *b = g_build_filename(root, "b", NULL);
    g_autofree char *dir = g_build_filename(root, "ovl", NULL);
    g_autofree char *mark = g_build_filename(dir, VH_OVERLAY_MARKER, NULL);
    for (const char *d = a; d; d = d == a ? b : d == b ? dir : NULL)
        assert_int_equal(g_mkdir_with_parents(d, 0755), 0);
    uint8_t base[100];
    for (int i = 0; i < 100; i++)
        base[i] = (uint8_t)(i * 3);
    g_autofree char *fa = g_build_filename(a, "c.vhd", NULL);
    g_autofree char *fb = g_build_filename(b, "c.vhd", NULL); /* the same path, another file */
    g_autofree char *ga = g_build_filename(a, "only-a.vhd", NULL);
    assert_true(g_file_set_contents(fa, (char *)base, 100, NULL));
    assert_true(g_file_set_contents(fb, (char *)base, 100, NULL));
    assert_true(g_file_set_contents(ga, (char *)base, 100, NULL));
    save_patch_for(dir, fa, "c.vhd");
    save_patch_for(dir, ga, "only-a.vhd");
    g_autofree char *junk = g_build_filename(dir, "ffff.vhpatch", NULL);
    assert_true(g_file_set_contents(junk, "VHPATCH\nnonsense", -1, NULL));
    g_autofree char *before = listing(dir);
    int logged = 0;
    g_autoptr(GError) err = NULL;
    assert_int_equal(claim(dir, b, true, &logged, &err), -EXDEV);
    if (!strstr(err->message, "none of the 2 repairs") || !strstr(err->message, b))
        fail_msg("%s", err->message);
    g_clear_error(&err);
    assert_int_equal(logged, 0);
    g_autofree char *after = listing(dir);
    assert_string_equal(before, after);
    assert_int_equal(claim(dir, b, false, &logged, NULL), 0); /* vhdheal: read, not marked */
    /* one of them fits a's disks: a's folder */
    assert_int_equal(claim(dir, a, true, &logged, NULL), 1);
    assert_true(g_file_test(mark, G_FILE_TEST_IS_REGULAR));
    /* only junk, or nothing: marked */
    assert_int_equal(unlink(mark), 0);
    g_autofree char *na = vh_patch_file_name("c.vhd"), *ng = vh_patch_file_name("only-a.vhd");
    g_autofree char *pa = g_build_filename(dir, na, NULL), *pg = g_build_filename(dir, ng, NULL);
    assert_int_equal(unlink(pa), 0);
    assert_int_equal(unlink(pg), 0);
    assert_int_equal(claim(dir, b, true, &logged, NULL), 1);
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", root);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(patch_ranges),
        cmocka_unit_test(patch_bound),
        cmocka_unit_test(vhd_overlay_heals),
        cmocka_unit_test(vhdx_overlay_heals),
        cmocka_unit_test(vhd_locators_grow),
        cmocka_unit_test(vhdx_pending_log),
        cmocka_unit_test(overlay_table),
        cmocka_unit_test(file_round_trip),
        cmocka_unit_test(file_truncations_and_flips),
        cmocka_unit_test(file_hostile_fields),
        cmocka_unit_test(file_path_escapes),
        cmocka_unit_test(file_save_load_check),
        cmocka_unit_test(overlay_table_dir),
        cmocka_unit_test(marker_round_trip),
        cmocka_unit_test(marker_hostile_text),
        cmocka_unit_test(marker_claim),
        cmocka_unit_test(marker_unmarked_folder),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
