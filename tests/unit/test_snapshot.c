// SPDX-License-Identifier: GPL-2.0-or-later
/* test_snapshot.c - the model of the @raw and @chains views without FUSE (snapshot.h): which
 * folders and names each view holds, lookups, the chain folders' links and status, symlink
 * texts, and when two listings of the index are the same store. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <sys/stat.h>
#include <unistd.h>

#include "fakedisk.h"
#include "snapshot.h"

#define ID_BASE "11111111-0000-0000-0000-000000000001"
#define ID_TOP "33333333-0000-0000-0000-000000000003"
#define ID_SOLO "44444444-0000-0000-0000-000000000004"
#define MIB "1048576"

typedef struct {
    char *dir;
    vh_store *s;
    vh_snap *snap;
} fixture;

/* base.vhd <- vm/top.vhd; deep/er/solo.vhd; bad.vhd (unreadable); docs/ (no disk);
 * x.vhd next to a folder x.vhd.raw/ holding a disk (the disk's view name wins). */
static int setup(void **state)
{
    fixture *f = g_new0(fixture, 1);
    f->dir = g_dir_make_tmp("test_snapshot_XXXXXX", NULL);
    fake_write(f->dir, "base.vhd", "format=vhd\ntype=dynamic\nsize=" MIB "\nid=" ID_BASE);
    fake_write(f->dir, "vm/top.vhd",
               "format=vhd\ntype=differencing\nsize=" MIB "\nid=" ID_TOP "\nparent=" ID_BASE
               "\nloc=W2ru|..\\base.vhd");
    fake_write(f->dir, "deep/er/solo.vhd", "format=vhd\ntype=dynamic\nsize=" MIB "\nid=" ID_SOLO);
    fake_write(f->dir, "bad.vhd", "format=vhd\nerror=bad footer checksum");
    fake_write(f->dir, "x.vhd", "format=vhd\ntype=fixed\nsize=512\nid=" ID_SOLO);
    fake_write(f->dir, "x.vhd.raw/in.vhd", "format=vhd\ntype=fixed\nsize=512\nid=" ID_SOLO);
    g_autofree char *docs = g_build_filename(f->dir, "docs", NULL);
    g_mkdir_with_parents(docs, 0755);
    g_autofree char *note = g_build_filename(docs, "readme.txt", NULL);
    g_file_set_contents(note, "not a disk", -1, NULL);
    f->s = vh_store_new(f->dir, NULL);
    vh_store_set_probe(f->s, fake_probe, NULL);
    assert_int_equal(vh_store_scan(f->s, NULL), 0);
    g_autoptr(GPtrArray) list = vh_store_list(f->s, NULL);
    vh_resolve_opts ro = {0};
    f->snap = vh_snap_new(f->s, &ro, list);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    vh_snap_unref(f->snap);
    vh_store_free(f->s);
    fake_rm_rf(f->dir);
    g_free(f->dir);
    g_free(f);
    return 0;
}

static char *names(vh_snap *s, vh_view_kind kind, const char *path)
{
    g_autoptr(GPtrArray) a = vh_snap_listing(s, kind, path);
    if (!a)
        return NULL;
    GString *out = g_string_new("");
    for (guint k = 0; k < a->len; k++) {
        const vh_view_entry *e = a->pdata[k];
        g_string_append_printf(out, "%s%s%s", k ? " " : "", e->name,
                               vh_view_is_dir(e->kind) ? "/" : "");
    }
    return g_string_free(out, FALSE);
}

static void raw_view_mirrors_folders_with_disks(void **state)
{
    fixture *f = *state;
    g_autofree char *root = names(f->snap, VH_VIEW_RAW_DIR, "");
    /* no docs/; x.vhd.raw is the disk x.vhd, not the folder */
    assert_string_equal(root, "bad.vhd.raw base.vhd.raw deep/ vm/ x.vhd.raw");
    g_autofree char *deep = names(f->snap, VH_VIEW_RAW_DIR, "deep");
    assert_string_equal(deep, "er/");
    assert_null(vh_snap_listing(f->snap, VH_VIEW_RAW_DIR, "docs"));
    assert_false(vh_snap_has(f->snap, VH_VIEW_RAW_DIR, "docs", 0));
    assert_true(vh_snap_has(f->snap, VH_VIEW_RAW_DIR, "deep/er", 0));

    vh_view_kind kind;
    const char *path;
    guint index;
    assert_int_equal(
        vh_snap_child(f->snap, VH_VIEW_RAW_DIR, "vm", "top.vhd.raw", &kind, &path, &index), 0);
    assert_int_equal(kind, VH_VIEW_RAW_FILE);
    assert_string_equal(path, "vm/top.vhd");
    assert_int_equal(vh_snap_child(f->snap, VH_VIEW_RAW_DIR, "", "x.vhd.raw", &kind, &path, &index),
                     0);
    assert_int_equal(kind, VH_VIEW_RAW_FILE);
    assert_int_equal(vh_snap_child(f->snap, VH_VIEW_RAW_DIR, "", "docs", &kind, &path, &index),
                     -ENOENT);
    assert_int_equal(
        vh_snap_child(f->snap, VH_VIEW_RAW_FILE, "base.vhd", "a", &kind, &path, &index), -ENOTDIR);
    g_autofree char *d1 = vh_view_raw_disk("vm", "top.vhd.raw");
    assert_string_equal(d1, "vm/top.vhd");
    g_autofree char *d2 = vh_view_raw_disk("", "base.vhd.raw");
    assert_string_equal(d2, "base.vhd");
    assert_null(vh_view_raw_disk("", ".raw"));
    assert_null(vh_view_raw_disk("", "base.vhd"));
}

static void chains_view_holds_tops_links_and_status(void **state)
{
    fixture *f = *state;
    g_autofree char *root = names(f->snap, VH_VIEW_CHAINS_DIR, "");
    /* base.vhd is top.vhd's parent: no top; bad.vhd is a top of its own */
    assert_string_equal(root, "bad.vhd/ deep/ vm/ x.vhd/ x.vhd.raw/");
    g_autofree char *vm = names(f->snap, VH_VIEW_CHAINS_DIR, "vm");
    assert_string_equal(vm, "top.vhd/");
    g_autofree char *chain = names(f->snap, VH_VIEW_CHAIN, "vm/top.vhd");
    assert_string_equal(chain, "0-top.vhd 1-base.vhd status");
    assert_int_equal(vh_snap_ntops(f->snap), 5);

    vh_view_kind kind;
    const char *path;
    guint index;
    assert_int_equal(
        vh_snap_child(f->snap, VH_VIEW_CHAIN, "vm/top.vhd", "1-base.vhd", &kind, &path, &index), 0);
    assert_int_equal(kind, VH_VIEW_LINK);
    assert_int_equal(index, 1);
    assert_true(vh_snap_has(f->snap, VH_VIEW_LINK, "vm/top.vhd", 1));
    assert_false(vh_snap_has(f->snap, VH_VIEW_LINK, "vm/top.vhd", 2));
    GPtrArray *m = vh_snap_members(f->snap, "vm/top.vhd");
    g_autofree char *target = vh_view_link_target("vm/top.vhd", m->pdata[1]);
    assert_string_equal(target, "../../../base.vhd");
    assert_int_equal(vh_view_link_target_len("vm/top.vhd", m->pdata[1]), strlen(target));
    assert_int_equal(
        vh_snap_child(f->snap, VH_VIEW_CHAIN, "vm/top.vhd", "status", &kind, &path, &index), 0);
    assert_int_equal(kind, VH_VIEW_STATUS);
    assert_string_equal(vh_snap_status(f->snap, "vm/top.vhd"),
                        "ok      vm/top.vhd (2 disks)\n"
                        "vm/top.vhd: ok: parent base.vhd (by W2ru)\n"
                        "base.vhd: base: dynamic vhd, 1048576 bytes\n"
                        "chain: vm/top.vhd -> base.vhd\n");
    assert_true(g_str_has_prefix(vh_snap_status(f->snap, "bad.vhd"), "UNREADABLE  bad.vhd\n"));
    assert_null(vh_snap_status(f->snap, "base.vhd"));
    assert_int_equal(
        vh_snap_child(f->snap, VH_VIEW_CHAIN, "vm/top.vhd", "2-x", &kind, &path, &index), -ENOENT);
}

static void chains_are_resolved_once_and_listings_compared(void **state)
{
    fixture *f = *state;
    const vh_chain *c = vh_snap_chain(f->snap, "vm/top.vhd", NULL);
    assert_non_null(c);
    assert_ptr_equal(vh_snap_chain(f->snap, "vm/top.vhd", NULL), c);
    g_autofree char *why = NULL;
    assert_null(vh_snap_chain(f->snap, "nothing.vhd", &why));
    assert_non_null(why);
    assert_true(vh_snap_first_failure(f->snap, "bad.vhd"));
    assert_false(vh_snap_first_failure(f->snap, "bad.vhd"));
    assert_non_null(vh_snap_disk(f->snap, "bad.vhd"));
    assert_null(vh_snap_disk(f->snap, "docs/readme.txt"));

    g_autoptr(GPtrArray) same = vh_store_list(f->s, NULL);
    assert_true(vh_snap_same(f->snap, same));
    fake_write(f->dir, "vm/new.vhd", "format=vhd\ntype=fixed\nsize=512\nid=" ID_SOLO);
    assert_int_equal(vh_store_scan(f->s, NULL), 0);
    g_autoptr(GPtrArray) more = vh_store_list(f->s, NULL);
    assert_false(vh_snap_same(f->snap, more));
    /* the snapshot itself never changes */
    g_autofree char *vm = names(f->snap, VH_VIEW_RAW_DIR, "vm");
    assert_string_equal(vm, "top.vhd.raw");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(raw_view_mirrors_folders_with_disks, setup, teardown),
        cmocka_unit_test_setup_teardown(chains_view_holds_tops_links_and_status, setup, teardown),
        cmocka_unit_test_setup_teardown(chains_are_resolved_once_and_listings_compared, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
