// SPDX-License-Identifier: GPL-2.0-or-later
/* test_resolve.c - the resolver's verdicts on fake disks in a real folder tree: locator order,
 * path mapping, identity checks, the index's heal targets, chain-level verdicts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <sys/stat.h>
#include <unistd.h>

#include "fakedisk.h"
#include "resolve.h"

#define ID_BASE "11111111-0000-0000-0000-000000000001"
#define ID_MID "22222222-0000-0000-0000-000000000002"
#define ID_TOP "33333333-0000-0000-0000-000000000003"
#define ID_OTHER "44444444-0000-0000-0000-000000000004"
#define MIB "1048576"

typedef struct {
    char *top;   /* holds store/ and outside/ */
    char *store; /* top/store */
    vh_store *s;
    vh_resolver *r;
} fixture;

static int setup(void **state)
{
    fixture *f = g_new0(fixture, 1);
    f->top = g_dir_make_tmp("test_resolve_XXXXXX", NULL);
    f->store = g_build_filename(f->top, "store", NULL);
    g_mkdir_with_parents(f->store, 0755);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    vh_resolver_free(f->r);
    vh_store_free(f->s);
    fake_rm_rf(f->top);
    g_free(f->store);
    g_free(f->top);
    g_free(f);
    return 0;
}

static void open_store_trust(fixture *f, const char *winroot, guint maxdepth, vh_trust trust)
{
    f->s = vh_store_new(f->store, NULL);
    assert_non_null(f->s);
    vh_store_set_probe(f->s, fake_probe, NULL);
    vh_resolve_opts o = {.winroot = winroot, .maxdepth = maxdepth, .trust = trust};
    f->r = vh_resolver_new(f->s, &o);
}

static void open_store(fixture *f, const char *winroot, guint maxdepth)
{
    open_store_trust(f, winroot, maxdepth, VH_TRUST_OWNER);
}

static void base(fixture *f, const char *rel, const char *fmt, const char *id, const char *size)
{
    g_autofree char *l =
        g_strdup_printf("format=%s\ntype=dynamic\nsize=%s\nlss=512\nid=%s", fmt, size, id);
    fake_write(f->store, rel, l);
}

/* A differencing disk; locs is "kind|path" lines. */
static void diff(fixture *f, const char *rel, const char *fmt, const char *id, const char *parent,
                 const char *locs)
{
    g_autofree char *l =
        g_strdup_printf("format=%s\ntype=differencing\nsize=" MIB "\nlss=512\nid=%s\nparent=%s\n%s",
                        fmt, id, parent, locs);
    fake_write(f->store, rel, l);
}

static vh_link *link_of(fixture *f, const char *rel)
{
    GError *err = NULL;
    vh_link *l = vh_resolve_link(f->r, rel, &err);
    if (!l)
        fail_msg("%s", err->message);
    return l;
}

static const vh_locator_try *try_at(const vh_link *l, guint k)
{
    assert_true(k < l->tries->len);
    return l->tries->pdata[k];
}

static void expect_try(const vh_link *l, guint k, vh_locator_kind kind, vh_verdict result)
{
    assert_int_equal(try_at(l, k)->kind, kind);
    assert_int_equal(try_at(l, k)->result, result);
}

/* Opens the store (winroot, default depth) and resolves rel's link, which must be ok to parent. */
static vh_link *link_ok(fixture *f, const char *winroot, const char *rel, const char *parent)
{
    open_store(f, winroot, 0);
    vh_link *l = link_of(f, rel);
    assert_int_equal(l->verdict, VH_VERDICT_OK);
    assert_string_equal(l->parent, parent);
    return l;
}

static void ok_by_relative_locator(void **state)
{
    fixture *f = *state;
    base(f, "vm/base.vhdx", "vhdx", ID_BASE, MIB);
    diff(f, "vm/top.avhdx", "vhdx", ID_TOP, ID_BASE,
         "loc=relative_path|.\\base.vhdx\nloc=absolute_win32_path|D:\\VMs\\vm\\base.vhdx");
    g_autoptr(vh_link) l = link_ok(f, NULL, "vm/top.avhdx", "vm/base.vhdx");
    assert_int_equal(l->via, 0);
    assert_false(l->stale);
    assert_null(l->heal_target);
    assert_int_equal(l->tries->len, 1);   /* later locators are not needed */
    assert_false(vh_store_scanned(f->s)); /* a healthy link needs no index scan */
}

static void locator_order_vhdx(void **state)
{
    fixture *f = *state;
    base(f, "vm/base.vhdx", "vhdx", ID_BASE, MIB);
    base(f, "vm/old/base.vhdx", "vhdx", ID_OTHER, MIB);
    /* stored order: absolute first; rule 1 tries relative first: wrong id there, then volume
     * (missing), then absolute (by its tail): ok, stale */
    diff(f, "vm/top.avhdx", "vhdx", ID_TOP, ID_BASE,
         "loc=absolute_win32_path|D:\\VMs\\vm\\base.vhdx\nloc=relative_path|.\\old\\base.vhdx\n"
         "loc=volume_path|\\\\?\\Volume{0eba351e-5634-46d6-a8cf-4ddc2d6ac0b9}\\nowhere\\x.vhdx");
    g_autoptr(vh_link) l = link_ok(f, NULL, "vm/top.avhdx", "vm/base.vhdx");
    assert_true(l->stale);
    expect_try(l, 0, VH_LOC_RELATIVE_PATH, VH_VERDICT_ID_MISMATCH);
    assert_string_equal(try_at(l, 0)->target, "vm/old/base.vhdx");
    expect_try(l, 1, VH_LOC_VOLUME_PATH, VH_VERDICT_PARENT_MISSING);
    expect_try(l, 2, VH_LOC_ABSOLUTE_WIN32_PATH, VH_VERDICT_OK);
    assert_int_equal(try_at(l, 2)->via, VH_WP_VIA_TAIL);
}

static void locator_order_vhd_and_parent_name(void **state)
{
    fixture *f = *state;
    base(f, "a/p.vhd", "vhd", ID_BASE, MIB);
    /* W2ru and W2ku miss; Wi2k misses; the Parent Unicode Name, as a relative path "x\p.vhd",
     * misses, then its basename in the child's folder hits */
    diff(f, "a/c.vhd", "vhd", ID_TOP, ID_BASE,
         "loc=MacX|file:///nowhere/q.vhd\nloc=parent_unicode_name|x\\p.vhd\n"
         "loc=Wi2k|C:\\old\\q.vhd\nloc=W2ku|C:\\old\\q.vhd\nloc=W2ru|.\\q.vhd");
    g_autoptr(vh_link) l = link_ok(f, NULL, "a/c.vhd", "a/p.vhd");
    assert_int_equal(l->tries->len, 4);
    assert_int_equal(try_at(l, 0)->kind, VH_LOC_W2RU);
    assert_int_equal(try_at(l, 1)->kind, VH_LOC_W2KU);
    assert_int_equal(try_at(l, 2)->kind, VH_LOC_WI2K);
    assert_int_equal(try_at(l, 3)->kind, VH_LOC_PARENT_NAME);
    assert_int_equal(try_at(l, 3)->via, VH_WP_VIA_TAIL);
}

static void winroot_and_tails_and_case(void **state)
{
    fixture *f = *state;
    base(f, "Web01/Virtual Hard Disks/Web01.vhdx", "vhdx", ID_BASE, MIB);
    diff(f, "Web01/Virtual Hard Disks/c1.avhdx", "vhdx", ID_TOP, ID_BASE,
         "loc=relative_path|.\\gone.vhdx\n"
         "loc=absolute_win32_path|d:\\HYPER-V\\web01\\virtual hard disks\\WEB01.VHDX");
    g_autoptr(vh_link) l = link_ok(f, "D:\\Hyper-V", "Web01/Virtual Hard Disks/c1.avhdx",
                                   "Web01/Virtual Hard Disks/Web01.vhdx");
    assert_int_equal(try_at(l, 1)->via, VH_WP_VIA_WINROOT);
    vh_resolver_free(f->r);
    /* without winroot: by the tail, the same file */
    vh_resolve_opts o = {0};
    f->r = vh_resolver_new(f->s, &o);
    g_autoptr(vh_link) m = link_of(f, "Web01/Virtual Hard Disks/c1.avhdx");
    assert_int_equal(m->verdict, VH_VERDICT_OK);
    assert_int_equal(try_at(m, 1)->via, VH_WP_VIA_TAIL);
}

static void parent_moved_gives_heal_target(void **state)
{
    fixture *f = *state;
    base(f, "elsewhere/deep/base.vhd", "vhd", ID_BASE, MIB);
    diff(f, "vm/top.vhd", "vhd", ID_TOP, ID_BASE,
         "loc=W2ru|.\\base.vhd\nloc=W2ku|C:\\VMs\\vm\\base.vhd");
    open_store(f, NULL, 0);
    g_autoptr(vh_link) l = link_of(f, "vm/top.vhd");
    assert_int_equal(l->verdict, VH_VERDICT_PARENT_MISSING);
    assert_string_equal(l->heal_target, "elsewhere/deep/base.vhd");
    assert_string_equal(vh_link_fix_parent(l), "elsewhere/deep/base.vhd");
    assert_string_equal(try_at(l, 0)->target, "vm/base.vhd");
    assert_non_null(strstr(l->detail, "elsewhere/deep/base.vhd"));
    assert_true(vh_store_scanned(f->s));
}

static void parent_missing_without_target(void **state)
{
    fixture *f = *state;
    base(f, "vm/base.vhd", "vhd", ID_OTHER, MIB);
    diff(f, "top.vhd", "vhd", ID_TOP, ID_BASE, "loc=W2ru|.\\gone.vhd");
    diff(f, "noloc.vhd", "vhd", ID_MID, ID_BASE, "");
    open_store(f, NULL, 0);
    g_autoptr(vh_link) l = link_of(f, "top.vhd");
    assert_int_equal(l->verdict, VH_VERDICT_PARENT_MISSING);
    assert_null(l->heal_target);
    assert_int_equal(l->candidates->len, 0);
    assert_non_null(strstr(l->detail, "no disk in the store has that id"));
    g_autoptr(vh_link) n = link_of(f, "noloc.vhd");
    assert_int_equal(n->verdict, VH_VERDICT_PARENT_MISSING);
    assert_int_equal(n->tries->len, 0);
}

static void replaced_parent_is_id_mismatch(void **state)
{
    fixture *f = *state;
    base(f, "vm/base.vhd", "vhd", ID_OTHER, MIB); /* same name, another disk */
    base(f, "backup/base.vhd", "vhd", ID_BASE, MIB);
    diff(f, "vm/top.vhd", "vhd", ID_TOP, ID_BASE, "loc=W2ru|.\\base.vhd");
    open_store(f, NULL, 0);
    g_autoptr(vh_link) l = link_of(f, "vm/top.vhd");
    assert_int_equal(l->verdict, VH_VERDICT_ID_MISMATCH);
    assert_string_equal(l->heal_target, "backup/base.vhd");
    assert_non_null(strstr(l->detail, ID_OTHER));
}

static void size_sector_format_mismatch(void **state)
{
    fixture *f = *state;
    base(f, "size/base.vhd", "vhd", ID_BASE, "2097152");
    diff(f, "size/top.vhd", "vhd", ID_TOP, ID_BASE, "loc=W2ru|.\\base.vhd");
    fake_write(f->store, "lss/base.vhdx",
               "format=vhdx\ntype=dynamic\nsize=" MIB "\nlss=4096\nid=" ID_MID);
    diff(f, "lss/top.vhdx", "vhdx", ID_TOP, ID_MID, "loc=relative_path|.\\base.vhdx");
    base(f, "fmt/base.vhd", "vhdx", ID_OTHER, MIB); /* a VHDX named .vhd */
    diff(f, "fmt/top.vhd", "vhd", ID_TOP, ID_OTHER, "loc=W2ru|.\\base.vhd");
    open_store(f, NULL, 0);
    g_autoptr(vh_link) a = link_of(f, "size/top.vhd");
    assert_int_equal(a->verdict, VH_VERDICT_SIZE_MISMATCH);
    assert_null(a->heal_target);
    g_autoptr(vh_link) b = link_of(f, "lss/top.vhdx");
    assert_int_equal(b->verdict, VH_VERDICT_SECTOR_SIZE_MISMATCH);
    g_autoptr(vh_link) c = link_of(f, "fmt/top.vhd");
    assert_int_equal(c->verdict, VH_VERDICT_FORMAT_MISMATCH);
    assert_null(c->heal_target);
}

static void parent_linkage2_is_accepted(void **state)
{
    fixture *f = *state;
    base(f, "base.vhdx", "vhdx", ID_OTHER, MIB);
    fake_write(f->store, "top.vhdx",
               "format=vhdx\ntype=differencing\nsize=" MIB "\nlss=512\nid=" ID_TOP
               "\nparent=" ID_BASE "\nparent2=" ID_OTHER "\nloc=relative_path|.\\base.vhdx");
    open_store(f, NULL, 0);
    g_autoptr(vh_link) l = link_of(f, "top.vhdx");
    assert_int_equal(l->verdict, VH_VERDICT_OK);
}

/* Hyper-V writes an all-zero parent_linkage2: it never matches, not even a disk whose id is
 * zero (the chain opener follows the same rule: it uses these verdicts). */
static void zero_parent_linkage2_never_matches(void **state)
{
    fixture *f = *state;
    base(f, "base.vhdx", "vhdx", "00000000-0000-0000-0000-000000000000", MIB);
    fake_write(f->store, "top.vhdx",
               "format=vhdx\ntype=differencing\nsize=" MIB "\nlss=512\nid=" ID_TOP
               "\nparent=" ID_BASE "\nparent2=00000000-0000-0000-0000-000000000000\n"
               "loc=relative_path|.\\base.vhdx");
    open_store(f, NULL, 0);
    g_autoptr(vh_link) l = link_of(f, "top.vhdx");
    assert_int_equal(l->verdict, VH_VERDICT_ID_MISMATCH);
    assert_null(l->heal_target);
}

static void outside_store_never_followed(void **state)
{
    fixture *f = *state;
    g_autofree char *outside = g_build_filename(f->top, "outside", NULL);
    fake_write(outside, "base.vhd", "format=vhd\ntype=dynamic\nsize=" MIB "\nid=" ID_BASE);
    diff(f, "vm/a.vhd", "vhd", ID_TOP, ID_BASE, "loc=W2ru|..\\..\\outside\\base.vhd");
    g_autofree char *link = g_build_filename(f->store, "vm/base.vhd", NULL);
    assert_int_equal(symlink("../../outside/base.vhd", link), 0);
    diff(f, "vm/b.vhd", "vhd", ID_MID, ID_BASE, "loc=W2ru|.\\base.vhd");
    g_autofree char *real_outside = realpath(outside, NULL);
    g_autofree char *url = g_strdup_printf("loc=MacX|file://%s/base.vhd", real_outside);
    diff(f, "vm/c.vhd", "vhd", ID_OTHER, ID_BASE, url);
    open_store(f, NULL, 0);
    vh_store_set_threads(f->s, 1);
    fake_probed = g_ptr_array_new_with_free_func(g_free);
    for (int k = 0; k < 3; k++) {
        const char *child = k == 0 ? "vm/a.vhd" : k == 1 ? "vm/b.vhd" : "vm/c.vhd";
        g_autoptr(vh_link) l = link_of(f, child);
        assert_int_equal(l->verdict, VH_VERDICT_OUTSIDE_STORE);
        assert_null(l->heal_target);
    }
    /* the outside file was never probed: the 3 children were, and nothing else */
    assert_int_equal(fake_probed->len, 3);
    for (guint k = 0; k < fake_probed->len; k++)
        assert_null(strstr(fake_probed->pdata[k], "outside"));
    g_clear_pointer(&fake_probed, g_ptr_array_unref);
    g_autoptr(GPtrArray) all = vh_store_list(f->s, NULL);
    assert_int_equal(all->len, 3);
}

static void corrupt_parent(void **state)
{
    fixture *f = *state;
    fake_write(f->store, "vm/base.vhd", "format=vhd\nerror=footer checksum mismatch");
    diff(f, "vm/top.vhd", "vhd", ID_TOP, ID_BASE, "loc=W2ru|.\\base.vhd");
    g_autofree char *notdisk = g_build_filename(f->store, "vm/text.vhd", NULL);
    g_file_set_contents(notdisk, "hello", -1, NULL);
    diff(f, "vm/t2.vhd", "vhd", ID_MID, ID_BASE, "loc=W2ru|.\\text.vhd");
    open_store(f, NULL, 0);
    g_autoptr(vh_link) l = link_of(f, "vm/top.vhd");
    assert_int_equal(l->verdict, VH_VERDICT_PARENT_CORRUPT);
    assert_non_null(strstr(l->detail, "footer checksum mismatch"));
    g_autoptr(vh_link) m = link_of(f, "vm/t2.vhd");
    assert_int_equal(m->verdict, VH_VERDICT_PARENT_CORRUPT);
    assert_non_null(strstr(m->detail, "not a VHD or VHDX"));
}

static void copies_prefer_name_then_folder_else_ambiguous(void **state)
{
    fixture *f = *state;
    /* name: the copy named as the locator wins over a nearer one */
    base(f, "n/sub/base.vhd", "vhd", ID_BASE, MIB);
    base(f, "n/other/renamed.vhd", "vhd", ID_BASE, MIB);
    diff(f, "n/sub/top.vhd", "vhd", ID_TOP, ID_BASE, "loc=W2ru|..\\gone\\base.vhd");
    open_store(f, NULL, 0);
    g_autoptr(vh_link) a = link_of(f, "n/sub/top.vhd");
    assert_int_equal(a->verdict, VH_VERDICT_PARENT_MISSING);
    assert_string_equal(a->heal_target, "n/sub/base.vhd");
    assert_int_equal(a->candidates->len, 1);
    teardown(state);
    setup(state);
    f = *state;
    /* folder: two copies not named as the locator, the nearer wins */
    base(f, "v/x/a.vhd", "vhd", ID_BASE, MIB);
    base(f, "w/y/z/b.vhd", "vhd", ID_BASE, MIB);
    diff(f, "v/top.vhd", "vhd", ID_TOP, ID_BASE, "loc=W2ru|.\\base.vhd");
    open_store(f, NULL, 0);
    g_autoptr(vh_link) b = link_of(f, "v/top.vhd");
    assert_string_equal(b->heal_target, "v/x/a.vhd");
    teardown(state);
    setup(state);
    f = *state;
    /* a tie: ambiguous, both listed, no target */
    base(f, "v/x/base.vhd", "vhd", ID_BASE, MIB);
    base(f, "v/y/base.vhd", "vhd", ID_BASE, MIB);
    diff(f, "v/top.vhd", "vhd", ID_TOP, ID_BASE, "loc=W2ru|.\\base.vhd");
    open_store(f, NULL, 0);
    g_autoptr(vh_link) c = link_of(f, "v/top.vhd");
    assert_int_equal(c->verdict, VH_VERDICT_AMBIGUOUS);
    assert_null(c->heal_target);
    assert_int_equal(c->candidates->len, 2);
    assert_string_equal(c->candidates->pdata[0], "v/x/base.vhd");
    assert_string_equal(c->candidates->pdata[1], "v/y/base.vhd");
}

static void vhd_timestamp_is_a_warning(void **state)
{
    fixture *f = *state;
    base(f, "base.vhd", "vhd", ID_BASE, MIB);
    fake_write(f->store, "top.vhd",
               "format=vhd\ntype=differencing\nsize=" MIB "\nid=" ID_TOP "\nparent=" ID_BASE
               "\nts=12345\nloc=W2ru|.\\base.vhd");
    open_store(f, NULL, 0);
    g_autoptr(vh_link) l = link_of(f, "top.vhd");
    assert_int_equal(l->verdict, VH_VERDICT_OK);
    assert_int_equal(l->warnings->len, 1);
    assert_non_null(strstr(l->warnings->pdata[0], "12345"));
}

static void chains_cycles_and_depth(void **state)
{
    fixture *f = *state;
    base(f, "base.vhd", "vhd", ID_BASE, MIB);
    diff(f, "mid.vhd", "vhd", ID_MID, ID_BASE, "loc=W2ru|.\\moved-away.vhd");
    diff(f, "top.vhd", "vhd", ID_TOP, ID_MID, "loc=W2ru|.\\mid.vhd");
    /* a <-> b */
    diff(f, "cyc/a.vhd", "vhd", "aaaaaaaa-0000-0000-0000-00000000000a",
         "bbbbbbbb-0000-0000-0000-00000000000b", "loc=W2ru|.\\b.vhd");
    diff(f, "cyc/b.vhd", "vhd", "bbbbbbbb-0000-0000-0000-00000000000b",
         "aaaaaaaa-0000-0000-0000-00000000000a", "loc=W2ru|.\\a.vhd");
    /* itself */
    diff(f, "cyc/self.vhd", "vhd", ID_OTHER, ID_OTHER, "loc=W2ru|.\\self.vhd");
    open_store(f, NULL, 3);
    g_autoptr(vh_chain) c = vh_resolve_chain(f->r, "top.vhd", NULL);
    assert_int_equal(c->disks->len, 3); /* the heal target was followed */
    assert_int_equal(c->links->len, 2);
    assert_int_equal(c->broken, 1);
    assert_true(c->complete);
    assert_int_equal(((vh_link *)c->links->pdata[0])->verdict, VH_VERDICT_OK);
    assert_int_equal(((vh_link *)c->links->pdata[1])->verdict, VH_VERDICT_PARENT_MISSING);
    assert_string_equal(((vh_link *)c->links->pdata[1])->heal_target, "base.vhd");

    g_autoptr(vh_chain) y = vh_resolve_chain(f->r, "cyc/a.vhd", NULL);
    assert_int_equal(y->links->len, 2);
    assert_int_equal(((vh_link *)y->links->pdata[0])->verdict, VH_VERDICT_OK);
    assert_int_equal(((vh_link *)y->links->pdata[1])->verdict, VH_VERDICT_CYCLE);
    assert_false(y->complete);
    g_autoptr(vh_chain) s = vh_resolve_chain(f->r, "cyc/self.vhd", NULL);
    assert_int_equal(((vh_link *)s->links->pdata[0])->verdict, VH_VERDICT_CYCLE);

    /* a chain of 4 with maxdepth 3 */
    diff(f, "deep.vhd", "vhd", "55555555-0000-0000-0000-000000000005", ID_TOP,
         "loc=W2ru|.\\top.vhd");
    g_autoptr(vh_chain) d = vh_resolve_chain(f->r, "deep.vhd", NULL);
    assert_int_equal(d->disks->len, 3);
    assert_int_equal(((vh_link *)d->links->pdata[2])->verdict, VH_VERDICT_TOO_DEEP);
    GError *err = NULL;
    assert_null(vh_resolve_chain(f->r, "none.vhd", &err));
    g_clear_error(&err);
    assert_null(vh_resolve_link(f->r, "base.vhd", &err)); /* not differencing */
    assert_int_equal(err->code, ENOTSUP);
    g_clear_error(&err);
}

/* --- trust (doc/design.md "Many users on one mount", resolver rule 4) --- */

#define ALICE 61001
#define BOB 61002
#define STAFF 61100
#define BOBS 61102

static void trust_rule(void **state)
{
    (void)state;
    /* owner: the child's owner's and root's disks only, whatever the groups */
    assert_true(vh_trusted(VH_TRUST_OWNER, ALICE, STAFF, ALICE, STAFF));
    assert_true(vh_trusted(VH_TRUST_OWNER, ALICE, STAFF, 0, 0));
    assert_false(vh_trusted(VH_TRUST_OWNER, ALICE, STAFF, BOB, STAFF));
    assert_false(vh_trusted(VH_TRUST_OWNER, 0, 0, BOB, 0)); /* root's child: root's disks only */
    /* group: also the child's group's */
    assert_true(vh_trusted(VH_TRUST_GROUP, ALICE, STAFF, BOB, STAFF));
    assert_false(vh_trusted(VH_TRUST_GROUP, ALICE, STAFF, BOB, BOBS));
    assert_true(vh_trusted(VH_TRUST_GROUP, ALICE, STAFF, ALICE, BOBS));
    /* any */
    assert_true(vh_trusted(VH_TRUST_ANY, ALICE, STAFF, BOB, BOBS));
    vh_trust t = VH_TRUST_ANY;
    for (vh_trust k = VH_TRUST_OWNER; k <= VH_TRUST_ANY; k++) {
        assert_true(vh_trust_parse(vh_trust_name(k), &t));
        assert_int_equal(t, k);
    }
    assert_false(vh_trust_parse("root", &t));
    assert_false(vh_trust_parse(NULL, &t));
    assert_string_equal(vh_trust_name(VH_TRUST_OWNER), "owner");
}

/* Files of other users need root to make; skipped otherwise, failed under CI. */
static bool can_chown(void)
{
    if (geteuid() == 0)
        return true;
    if (getenv("CI"))
        fail_msg("the trust tests need root (to give files to other users)");
    return false;
}

static void own(fixture *f, const char *rel, uid_t uid, gid_t gid)
{
    g_autofree char *abs = g_build_filename(f->store, rel, NULL);
    assert_int_equal(lchown(abs, uid, gid), 0);
}

/*
 * Alice archived her base; Bob made a disk with her base's identity, named as her locator names
 * it: by trust=owner Bob's is never a candidate (her own copy is the heal target, though Bob's
 * is preferred by name); by trust=any the two of different owners are ambiguous.
 */
static void trust_filters_candidates(void **state)
{
    fixture *f = *state;
    if (!can_chown())
        skip();
    base(f, "alice/archive/base-2025.vhdx", "vhdx", ID_BASE, MIB);
    base(f, "bob/base.vhdx", "vhdx", ID_BASE, MIB);
    diff(f, "alice/vm/top.avhdx", "vhdx", ID_TOP, ID_BASE, "loc=relative_path|.\\base.vhdx");
    own(f, "alice/archive/base-2025.vhdx", ALICE, STAFF);
    own(f, "alice/vm/top.avhdx", ALICE, STAFF);
    own(f, "bob/base.vhdx", BOB, STAFF);
    open_store(f, NULL, 0);
    g_autoptr(vh_link) l = link_of(f, "alice/vm/top.avhdx");
    assert_int_equal(l->verdict, VH_VERDICT_PARENT_MISSING);
    assert_string_equal(l->heal_target, "alice/archive/base-2025.vhdx");
    assert_int_equal(l->candidates->len, 0); /* Bob's is not even named */
    vh_resolver_free(f->r);
    vh_store_free(f->s);

    open_store_trust(f, NULL, 0, VH_TRUST_ANY);
    g_autoptr(vh_link) a = link_of(f, "alice/vm/top.avhdx");
    assert_int_equal(a->verdict, VH_VERDICT_AMBIGUOUS);
    assert_null(a->heal_target);
    assert_int_equal(a->candidates->len, 2);
    assert_non_null(strstr(a->detail, "different owners"));
    vh_resolver_free(f->r);
    vh_store_free(f->s);

    /* group: Bob's in Alice's group counts, and the two owners make it ambiguous; in his own
     * group it does not count */
    open_store_trust(f, NULL, 0, VH_TRUST_GROUP);
    g_autoptr(vh_link) g = link_of(f, "alice/vm/top.avhdx");
    assert_int_equal(g->verdict, VH_VERDICT_AMBIGUOUS);
    vh_resolver_free(f->r);
    vh_store_free(f->s);
    own(f, "bob/base.vhdx", BOB, BOBS);
    open_store_trust(f, NULL, 0, VH_TRUST_GROUP);
    g_autoptr(vh_link) h = link_of(f, "alice/vm/top.avhdx");
    assert_int_equal(h->verdict, VH_VERDICT_PARENT_MISSING);
    assert_string_equal(h->heal_target, "alice/archive/base-2025.vhdx");
}

/* A locator that leads to another user's disk is as if it led nowhere; root's always count. */
static void trust_filters_locators(void **state)
{
    fixture *f = *state;
    if (!can_chown())
        skip();
    base(f, "bob/base.vhdx", "vhdx", ID_BASE, MIB);
    diff(f, "alice/top.avhdx", "vhdx", ID_TOP, ID_BASE, "loc=relative_path|..\\bob\\base.vhdx");
    base(f, "lib/base.vhdx", "vhdx", ID_MID, MIB);
    diff(f, "alice/mine.avhdx", "vhdx", ID_OTHER, ID_MID, "loc=relative_path|..\\lib\\base.vhdx");
    diff(f, "alice/probe.avhdx", "vhdx", ID_OTHER, ID_BASE, "loc=relative_path|..\\bob\\mid.vhdx");
    diff(f, "alice/probe2.avhdx", "vhdx", ID_OTHER, ID_BASE,
         "loc=relative_path|..\\bob\\nosuch.vhdx");
    base(f, "bob/mid.vhdx", "vhdx", ID_MID, MIB);
    diff(f, "alice/wrong.avhdx", "vhdx", ID_OTHER, ID_BASE, "loc=relative_path|..\\lib\\base.vhdx");
    base(f, "bob/big.vhdx", "vhdx", "66666666-0000-0000-0000-000000000006", "2097152");
    diff(f, "alice/sized.avhdx", "vhdx", ID_OTHER, "66666666-0000-0000-0000-000000000006",
         "loc=relative_path|.\\nosuch.vhdx");
    own(f, "bob/big.vhdx", BOB, STAFF);
    own(f, "alice/wrong.avhdx", ALICE, STAFF);
    own(f, "alice/sized.avhdx", ALICE, STAFF);
    own(f, "bob/base.vhdx", BOB, STAFF);
    own(f, "bob/mid.vhdx", BOB, STAFF);
    own(f, "alice/top.avhdx", ALICE, STAFF);
    own(f, "alice/mine.avhdx", ALICE, STAFF);
    own(f, "alice/probe.avhdx", ALICE, STAFF);
    own(f, "alice/probe2.avhdx", ALICE, STAFF);
    open_store(f, NULL, 0);
    g_autoptr(vh_link) l = link_of(f, "alice/top.avhdx");
    assert_int_equal(l->verdict, VH_VERDICT_PARENT_MISSING);
    assert_null(l->heal_target);
    /* in the words of a missing file: no probing of other users' folders through locators */
    assert_string_equal(try_at(l, 0)->detail, "not found");
    assert_string_equal(try_at(l, 0)->target, "bob/base.vhdx");
    assert_non_null(strstr(l->detail, "no disk in the store trusted for this child"));
    /* another user's file of another identity: not a word about it, as for a missing name */
    g_autoptr(vh_link) p = link_of(f, "alice/probe.avhdx");
    g_autoptr(vh_link) q = link_of(f, "alice/probe2.avhdx");
    assert_string_equal(try_at(p, 0)->detail, "not found");
    assert_string_equal(try_at(q, 0)->detail, "not found");
    assert_int_equal(p->verdict, q->verdict);
    assert_null(strstr(p->detail, ID_MID));
    g_autoptr(vh_link) m = link_of(f, "alice/mine.avhdx"); /* root's base */
    assert_int_equal(m->verdict, VH_VERDICT_OK);
    assert_string_equal(m->parent, "lib/base.vhdx");
    /* root's file that is not the parent is not described either (root's folders) */
    g_autoptr(vh_link) w = link_of(f, "alice/wrong.avhdx");
    assert_string_equal(try_at(w, 0)->detail, "not found");
    assert_null(strstr(w->detail, ID_MID));
    /* another user's disk with the expected id but another size: neither named nor measured */
    g_autoptr(vh_link) z = link_of(f, "alice/sized.avhdx");
    assert_int_equal(z->verdict, VH_VERDICT_PARENT_MISSING);
    assert_null(strstr(z->detail, "bob/"));
    assert_null(strstr(z->detail, "2097152"));
    /* the chain stops at the untrusted link: Bob's disk is not in Alice's chain */
    g_autoptr(vh_chain) c = vh_resolve_chain(f->r, "alice/top.avhdx", NULL);
    assert_int_equal(c->disks->len, 1);
    assert_false(c->complete);
    vh_resolver_free(f->r);
    vh_store_free(f->s);
    open_store_trust(f, NULL, 0, VH_TRUST_ANY);
    g_autoptr(vh_link) a = link_of(f, "alice/top.avhdx");
    assert_int_equal(a->verdict, VH_VERDICT_OK);
    assert_string_equal(a->parent, "bob/base.vhdx");
    /* when everyone trusts everyone, details are shown */
    g_autoptr(vh_link) wa = link_of(f, "alice/wrong.avhdx");
    assert_int_equal(wa->verdict, VH_VERDICT_ID_MISMATCH);
    g_autoptr(vh_link) za = link_of(f, "alice/sized.avhdx");
    assert_int_equal(za->verdict, VH_VERDICT_SIZE_MISMATCH);
}

static void verdict_names(void **state)
{
    const char *want[] = {"ok",
                          "parent-missing",
                          "id-mismatch",
                          "size-mismatch",
                          "sector-size-mismatch",
                          "format-mismatch",
                          "cycle",
                          "too-deep",
                          "outside-store",
                          "parent-corrupt",
                          "ambiguous"};
    for (int k = 0; k < VH_VERDICT_COUNT_; k++)
        assert_string_equal(vh_verdict_name((vh_verdict)k), want[k]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(verdict_names),
        cmocka_unit_test(trust_rule),
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
        T(trust_filters_candidates),
        T(trust_filters_locators),
        T(ok_by_relative_locator),
        T(locator_order_vhdx),
        T(locator_order_vhd_and_parent_name),
        T(winroot_and_tails_and_case),
        T(parent_moved_gives_heal_target),
        T(parent_missing_without_target),
        T(replaced_parent_is_id_mismatch),
        T(size_sector_format_mismatch),
        T(parent_linkage2_is_accepted),
        T(zero_parent_linkage2_never_matches),
        T(outside_store_never_followed),
        T(corrupt_parent),
        T(copies_prefer_name_then_folder_else_ambiguous),
        T(vhd_timestamp_is_a_warning),
        T(chains_cycles_and_depth),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
