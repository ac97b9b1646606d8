// SPDX-License-Identifier: GPL-2.0-or-later
/* test_report.c - chain tops and the wording shared by `vhdheal check` and @chains: which disks
 * are tops (a broken link with a heal target still makes its parent no top, cycles get one top,
 * unreadable disks are tops of their own only when asked), and the exact status text. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <sys/stat.h>
#include <unistd.h>

#include "fakedisk.h"
#include "report.h"

#define ID_BASE "11111111-0000-0000-0000-000000000001"
#define ID_MID "22222222-0000-0000-0000-000000000002"
#define ID_TOP "33333333-0000-0000-0000-000000000003"
#define ID_SOLO "44444444-0000-0000-0000-000000000004"
#define ID_A "aaaaaaaa-0000-0000-0000-00000000000a"
#define ID_B "bbbbbbbb-0000-0000-0000-00000000000b"
#define MIB "1048576"

typedef struct {
    char *dir;
    vh_store *s;
    vh_resolver *r;
} fixture;

static void base(fixture *f, const char *rel, const char *id)
{
    g_autofree char *l =
        g_strdup_printf("format=vhd\ntype=dynamic\nsize=" MIB "\nlss=512\nid=%s", id);
    fake_write(f->dir, rel, l);
}

static void diff(fixture *f, const char *rel, const char *id, const char *parent, const char *loc)
{
    g_autofree char *l = g_strdup_printf("format=vhd\ntype=differencing\nsize=" MIB
                                         "\nlss=512\nid=%s\nparent=%s\nloc=W2ru|%s",
                                         id, parent, loc);
    fake_write(f->dir, rel, l);
}

/* base.vhd <- mid.vhd (its locator points nowhere: broken, heal target base.vhd) <- top.vhd;
 * solo.vhd; a <-> b (a cycle); bad.vhd (unreadable). */
static int setup(void **state)
{
    fixture *f = g_new0(fixture, 1);
    f->dir = g_dir_make_tmp("test_report_XXXXXX", NULL);
    base(f, "base.vhd", ID_BASE);
    diff(f, "vm/mid.vhd", ID_MID, ID_BASE, ".\\moved-away.vhd");
    diff(f, "vm/top.vhd", ID_TOP, ID_MID, ".\\mid.vhd");
    base(f, "solo.vhd", ID_SOLO);
    diff(f, "cyc/a.vhd", ID_A, ID_B, ".\\b.vhd");
    diff(f, "cyc/b.vhd", ID_B, ID_A, ".\\a.vhd");
    fake_write(f->dir, "bad.vhd", "format=vhd\nerror=bad footer checksum");
    f->s = vh_store_new(f->dir, NULL);
    assert_non_null(f->s);
    vh_store_set_probe(f->s, fake_probe, NULL);
    assert_int_equal(vh_store_scan(f->s, NULL), 0);
    vh_resolve_opts o = {0};
    f->r = vh_resolver_new(f->s, &o);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    vh_resolver_free(f->r);
    vh_store_free(f->s);
    fake_rm_rf(f->dir);
    g_free(f->dir);
    g_free(f);
    return 0;
}

static char *top_paths(GPtrArray *tops)
{
    GString *s = g_string_new("");
    for (guint k = 0; k < tops->len; k++)
        g_string_append_printf(s, "%s%s", k ? " " : "",
                               ((vh_report_top *)tops->pdata[k])->disk->path);
    return g_string_free(s, FALSE);
}

static const vh_report_top *top_named(GPtrArray *tops, const char *path)
{
    for (guint k = 0; k < tops->len; k++)
        if (strcmp(((vh_report_top *)tops->pdata[k])->disk->path, path) == 0)
            return tops->pdata[k];
    fail_msg("%s is no top", path);
    return NULL;
}

static void counting(void *ctx, guint done, guint total)
{
    guint *seen = ctx;
    assert_true(done <= total);
    *seen = done;
}

static void tops_follow_heal_targets_and_cycles(void **state)
{
    fixture *f = *state;
    g_autoptr(GPtrArray) disks = vh_store_list(f->s, NULL);
    guint seen = 0;
    g_autoptr(GPtrArray) tops = vh_report_tops(f->r, disks, false, counting, &seen);
    assert_int_equal(seen, disks->len);
    /* base.vhd is reached through mid's heal target: no top; the cycle's first disk is. */
    g_autofree char *p = top_paths(tops);
    assert_string_equal(p, "solo.vhd vm/top.vhd cyc/a.vhd");
    const vh_report_top *t = top_named(tops, "vm/top.vhd");
    assert_non_null(t->chain);
    assert_int_equal(t->chain->disks->len, 3);
    g_autoptr(GPtrArray) with_bad = vh_report_tops(f->r, disks, true, NULL, NULL);
    g_autofree char *q = top_paths(with_bad);
    assert_string_equal(q, "bad.vhd solo.vhd vm/top.vhd cyc/a.vhd");
    const vh_report_top *b = top_named(with_bad, "bad.vhd");
    assert_null(b->chain);
    assert_int_equal(b->error, EIO);
    assert_string_equal(b->why, "bad footer checksum");
    /* Within one folder the parent of a listed disk is still no top. */
    g_autoptr(GPtrArray) vm = vh_store_list(f->s, "vm");
    g_autoptr(GPtrArray) vm_tops = vh_report_tops(f->r, vm, true, NULL, NULL);
    g_autofree char *v = top_paths(vm_tops);
    assert_string_equal(v, "vm/top.vhd");
}

static void wording_of_chains(void **state)
{
    fixture *f = *state;
    g_autoptr(GPtrArray) disks = vh_store_list(f->s, NULL);
    g_autoptr(GPtrArray) tops = vh_report_tops(f->r, disks, true, NULL, NULL);

    const vh_report_top *solo = top_named(tops, "solo.vhd");
    assert_true(vh_report_healthy(solo->chain));
    g_autofree char *h1 = vh_report_headline(solo->chain);
    assert_string_equal(h1, "ok      solo.vhd (1 disk)");
    g_autofree char *s1 = vh_report_status(solo->disk, solo->chain, NULL);
    assert_string_equal(s1, "ok      solo.vhd (1 disk)\n"
                            "solo.vhd: base: dynamic vhd, 1048576 bytes\n"
                            "chain: solo.vhd\n");

    const vh_report_top *top = top_named(tops, "vm/top.vhd");
    assert_false(vh_report_healthy(top->chain));
    g_autofree char *h2 = vh_report_headline(top->chain);
    assert_string_equal(h2, "BROKEN  vm/top.vhd (1 broken link)");
    g_autofree char *c2 = vh_report_chain_line(top->chain);
    assert_string_equal(c2, "vm/top.vhd -> vm/mid.vhd -> base.vhd");
    g_autofree char *l2 = vh_report_link_line(top->chain->links->pdata[1]);
    assert_true(g_str_has_prefix(l2, "vm/mid.vhd: parent-missing: "));
    g_autofree char *s2 = vh_report_status(top->disk, top->chain, NULL);
    g_auto(GStrv) lines = g_strsplit(s2, "\n", -1);
    assert_int_equal(g_strv_length(lines), 6); /* 5 lines and the empty rest */
    assert_string_equal(lines[0], "BROKEN  vm/top.vhd (1 broken link)");
    assert_true(g_str_has_prefix(lines[1], "vm/top.vhd: ok: "));
    assert_string_equal(lines[2], l2);
    assert_string_equal(lines[3], "base.vhd: base: dynamic vhd, 1048576 bytes");
    assert_string_equal(lines[4], "chain: vm/top.vhd -> vm/mid.vhd -> base.vhd");

    const vh_report_top *cyc = top_named(tops, "cyc/a.vhd");
    g_autofree char *c3 = vh_report_chain_line(cyc->chain);
    assert_string_equal(c3, "cyc/a.vhd -> cyc/b.vhd -> ?");
    g_autofree char *s3 = vh_report_status(cyc->disk, cyc->chain, NULL);
    assert_null(strstr(s3, ": base: ")); /* no base line for a chain that stops short */

    const vh_report_top *bad = top_named(tops, "bad.vhd");
    g_autofree char *s4 = vh_report_status(bad->disk, NULL, bad->why);
    assert_string_equal(s4, "UNREADABLE  bad.vhd\nbad.vhd: unreadable: bad footer checksum\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(tops_follow_heal_targets_and_cycles, setup, teardown),
        cmocka_unit_test_setup_teardown(wording_of_chains, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
