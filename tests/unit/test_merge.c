// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * test_merge.c - Merge-VHD (merge.h) stopped at every write, flush and truncate it makes (the
 * fault injector of io.h: a crash at that point, or a write torn there), then resumed: base <- c1
 * <- c2, c1 merged into base, for VHD and VHDX. After the resume the base reads what c1 read, c2
 * (relinked) reads what it read, c1 is gone and no plan is left; before it, a VHD chain (whose
 * identities never change) already reads right from c2.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"
#include "merge.h"
#include "tmpfix.h"

#define VSIZE (4 * 1024 * 1024)

typedef struct {
    char *dir, *base, *c1, *c2;
    uint8_t *ref1, *ref2; /* what c1 and c2 read */
} chain3;

static void chain3_clear(chain3 *c)
{
    g_free(c->dir);
    g_free(c->base);
    g_free(c->c1);
    g_free(c->c2);
    g_free(c->ref1);
    g_free(c->ref2);
}

static void scribble(const char *path, uint8_t *ref, GRand *rng)
{
    g_autoptr(vh_disk) d = NULL;
    assert_int_equal(vh_disk_open(path, VH_OPEN_WRITE, &d, NULL), 0);
    for (int k = 0; k < 4; k++) {
        uint64_t off = g_rand_int_range(rng, 0, VSIZE - 300000);
        size_t n = (size_t)g_rand_int_range(rng, 1, 300000);
        for (size_t i = 0; i < n; i++)
            ref[off + i] = (uint8_t)g_rand_int(rng);
        /* a child reads its parent's bytes outside what it holds: write through its chain */
        vh_chain_open_opts co = {.store = g_path_get_dirname(path), .writable = true};
        g_autoptr(vh_disk) top = NULL;
        assert_int_equal(vh_chain_open(path, &co, &top, NULL), 0);
        g_free((char *)co.store);
        assert_int_equal(vh_disk_write(top, ref + off, off, n, NULL), 0);
        assert_int_equal(vh_disk_flush(top, NULL), 0);
    }
}

static void make_chain(chain3 *c, const char *name, vh_format fmt)
{
    c->dir = tpath(name);
    assert_int_equal(mkdir(c->dir, 0755), 0);
    const char *x = fmt == VH_FORMAT_VHD ? "" : "x";
    c->base = g_strdup_printf("%s/base.vhd%s", c->dir, x);
    c->c1 = g_strdup_printf("%s/c1.avhd%s", c->dir, x);
    c->c2 = g_strdup_printf("%s/c2.avhd%s", c->dir, x);
    vh_create_opts o = {.format = fmt,
                        .type = VH_TYPE_DYNAMIC,
                        .size = VSIZE,
                        .block_size = fmt == VH_FORMAT_VHD ? 512 * 1024 : 1024 * 1024};
    assert_int_equal(vh_disk_create(c->base, &o, NULL), 0);
    GRand *rng = g_rand_new_with_seed(fmt);
    c->ref1 = g_malloc0(VSIZE);
    scribble(c->base, c->ref1, rng);
    g_autoptr(vh_disk) b = NULL;
    assert_int_equal(vh_disk_open(c->base, VH_OPEN_READ, &b, NULL), 0);
    vh_create_opts oc = {.type = VH_TYPE_DIFFERENCING,
                         .parent = b,
                         .parent_relative = fmt == VH_FORMAT_VHD ? ".\\base.vhd" : ".\\base.vhdx"};
    assert_int_equal(vh_disk_create(c->c1, &oc, NULL), 0);
    scribble(c->c1, c->ref1, rng);
    g_autoptr(vh_disk) d1 = NULL;
    assert_int_equal(vh_disk_open(c->c1, VH_OPEN_READ, &d1, NULL), 0);
    oc.parent = d1;
    oc.parent_relative = fmt == VH_FORMAT_VHD ? ".\\c1.avhd" : ".\\c1.avhdx";
    assert_int_equal(vh_disk_create(c->c2, &oc, NULL), 0);
    c->ref2 = g_memdup2(c->ref1, VSIZE);
    scribble(c->c2, c->ref2, rng);
    g_rand_free(rng);
}

static void assert_reads(const char *store, const char *path, const uint8_t *ref)
{
    vh_chain_open_opts co = {.store = store};
    g_autoptr(vh_disk) d = NULL;
    g_autoptr(GError) err = NULL;
    int r = vh_chain_open(path, &co, &d, &err);
    if (r < 0)
        fail_msg("%s: %s", path, err->message);
    g_autofree uint8_t *got = g_malloc(VSIZE);
    assert_int_equal(vh_disk_read(d, got, 0, VSIZE, NULL), 0);
    assert_memory_equal(got, ref, VSIZE);
}

static void assert_finished(chain3 *c)
{
    assert_int_equal(access(c->c1, F_OK), -1);
    assert_reads(c->dir, c->base, c->ref1);
    assert_reads(c->dir, c->c2, c->ref2);
    g_autofree char *meta = g_build_filename(c->dir, ".vhdheal", NULL);
    g_autoptr(GDir) d = g_dir_open(meta, 0, NULL);
    for (const char *n; d && (n = g_dir_read_name(d));)
        assert_false(g_str_has_prefix(n, "merge-"));
}

static void crash_everywhere(vh_format fmt)
{
    chain3 clean = {0};
    make_chain(&clean, "clean", fmt);
    vh_merge_opts o = {.store = clean.dir};
    vh_fault_disarm();
    assert_int_equal(vh_merge(clean.c1, &o, NULL), 0);
    long ops = vh_fault_ops();
    assert_true(ops > 3);
    assert_finished(&clean);
    chain3_clear(&clean);
    for (long step = 0; step < 2 * ops; step++) {
        long nth = step / 2 + 1;
        vh_fault_kind kind = step % 2 ? VH_FAULT_TEAR : VH_FAULT_STOP;
        g_autofree char *name = g_strdup_printf("crash%ld", step);
        chain3 c = {0};
        make_chain(&c, name, fmt);
        vh_merge_opts mo = {.store = c.dir};
        vh_fault_arm(kind, nth, 512); /* a torn write keeps its first 512 bytes */
        g_autoptr(GError) e = NULL;
        int r = vh_merge(c.c1, &mo, &e);
        vh_fault_disarm();
        assert_true(r < 0); /* the crash: every later write failed too */
        if (fmt == VH_FORMAT_VHD && access(c.c1, F_OK) == 0)
            assert_reads(c.dir, c.c2, c.ref2);
        g_autoptr(GError) e2 = NULL;
        r = vh_merge_resume(c.dir, &mo, &e2);
        if (r < 0)
            fail_msg("crash (%s) at op %ld of %ld: resume: %s", step % 2 ? "tear" : "stop", nth,
                     ops, e2->message);
        assert_int_equal(r, 1);
        assert_finished(&c);
        chain3_clear(&c);
    }
}

static void test_vhd(void **state)
{
    crash_everywhere(VH_FORMAT_VHD);
}

static void test_vhdx(void **state)
{
    crash_everywhere(VH_FORMAT_VHDX);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_vhd, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_vhdx, tmp_setup, tmp_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
