// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * test_convert.c - Convert-VHD (convert.h): the output format from DST's name; a conversion to
 * VHD and VHDX stopped at every write, flush and truncate (the fault injector of io.h) fails and
 * leaves neither DST nor a temporary file; a cancelled one (EINTR) too; a finished one reads as
 * the source, and an existing DST is refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <dirent.h>
#include <unistd.h>

#include "convert.h"
#include "tmpfix.h"

#define VSIZE (8 * 1024 * 1024)

static void test_format_from_name(void **state)
{
    vh_format f = VH_FORMAT_NONE;
    bool raw = true;
    assert_true(vh_convert_format_from_name("a/b.vhd", &f, &raw));
    assert_int_equal(f, VH_FORMAT_VHD);
    assert_false(raw);
    assert_true(vh_convert_format_from_name("B.VHDX", &f, &raw));
    assert_int_equal(f, VH_FORMAT_VHDX);
    assert_true(vh_convert_format_from_name("x.img", &f, &raw));
    assert_true(raw);
    assert_true(vh_convert_format_from_name("x.raw", &f, &raw));
    assert_true(raw);
    assert_false(vh_convert_format_from_name("x.qcow2", &f, &raw));
    assert_false(vh_convert_format_from_name("dir.vhd/file", &f, &raw));
    assert_false(vh_convert_format_from_name("noext", &f, &raw));
}

/* A dynamic VHDX with a few unaligned writes; *ref gets its content. */
static vh_disk *make_source(uint8_t **ref)
{
    g_autofree char *path = tpath("src.vhdx");
    vh_create_opts o = {.format = VH_FORMAT_VHDX, .type = VH_TYPE_DYNAMIC, .size = VSIZE};
    assert_int_equal(vh_disk_create(path, &o, NULL), 0);
    vh_disk *d = NULL;
    assert_int_equal(vh_disk_open(path, VH_OPEN_WRITE, &d, NULL), 0);
    *ref = g_malloc0(VSIZE);
    GRand *rng = g_rand_new_with_seed(7);
    for (int k = 0; k < 6; k++) {
        uint64_t off = g_rand_int_range(rng, 0, VSIZE - 70000);
        size_t n = (size_t)g_rand_int_range(rng, 1, 70000);
        for (size_t i = 0; i < n; i++)
            (*ref)[off + i] = (uint8_t)g_rand_int(rng);
        assert_int_equal(vh_disk_write(d, *ref + off, off, n, NULL), 0);
    }
    g_rand_free(rng);
    assert_int_equal(vh_disk_flush(d, NULL), 0);
    vh_disk_close(d);
    assert_int_equal(vh_disk_open(path, VH_OPEN_READ, &d, NULL), 0);
    return d;
}

/* How many files in the test folder have ".partial-" in their name. */
static int partial_files(void)
{
    DIR *dir = opendir(tmp_dir);
    int n = 0;
    for (struct dirent *e; dir && (e = readdir(dir));)
        n += strstr(e->d_name, ".partial-") != NULL;
    if (dir)
        closedir(dir);
    return n;
}

static void check_output(const char *dst, const uint8_t *ref)
{
    g_autoptr(vh_disk) d = NULL;
    assert_int_equal(vh_disk_open(dst, VH_OPEN_READ, &d, NULL), 0);
    assert_int_equal(d->virtual_size, VSIZE);
    g_autofree uint8_t *got = g_malloc(VSIZE);
    assert_int_equal(vh_disk_read(d, got, 0, VSIZE, NULL), 0);
    assert_memory_equal(got, ref, VSIZE);
}

static void faults_for(vh_disk *src, const uint8_t *ref, vh_format fmt)
{
    vh_convert_opts o = {.format = fmt, .type = VH_TYPE_DYNAMIC};
    g_autofree char *dst = tpath(fmt == VH_FORMAT_VHD ? "out.vhd" : "out.vhdx");
    vh_fault_disarm();
    assert_int_equal(vh_convert(src, dst, &o, NULL), 0);
    long ops = vh_fault_ops();
    assert_true(ops > 3);
    check_output(dst, ref);
    /* an existing DST is refused, and left as it is */
    g_autoptr(GError) err = NULL;
    assert_int_equal(vh_convert(src, dst, &o, &err), -EEXIST);
    check_output(dst, ref);
    unlink(dst);
    for (long nth = 1; nth <= ops; nth++) {
        vh_fault_arm(VH_FAULT_STOP, nth, 0);
        g_autoptr(GError) e = NULL;
        int r = vh_convert(src, dst, &o, &e);
        vh_fault_disarm();
        assert_true(r < 0);
        assert_non_null(e);
        assert_int_equal(access(dst, F_OK), -1);
        assert_int_equal(partial_files(), 0);
    }
    volatile sig_atomic_t cancel = 1;
    o.cancel = &cancel;
    g_autoptr(GError) e = NULL;
    assert_int_equal(vh_convert(src, dst, &o, &e), -EINTR);
    assert_int_equal(access(dst, F_OK), -1);
    assert_int_equal(partial_files(), 0);
}

static void test_faults(void **state)
{
    g_autofree uint8_t *ref = NULL;
    g_autoptr(vh_disk) src = make_source(&ref);
    faults_for(src, ref, VH_FORMAT_VHDX);
    faults_for(src, ref, VH_FORMAT_VHD);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format_from_name),
        cmocka_unit_test_setup_teardown(test_faults, tmp_setup, tmp_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
