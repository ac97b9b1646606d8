// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * test_inuse.c - the byte ranges of the OFD locks on disk files (inuse.h): in-use marks are
 * shared among readers and refuse a claim; a repair's data-range lock does not meet them (a
 * child open through the mount is still reconnected); a qemu-style lock (byte 100) and a claim
 * are seen by the probe; a chain's members are all marked, and a claimed member refuses the mark.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <unistd.h>

#include "chain.h"
#include "inuse.h"
#include "tmpfix.h"

static int open_rw(const char *path)
{
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    return fd;
}

static void test_marks_and_claims(void **state)
{
    g_autofree char *p = tpath("f");
    int a = open_rw(p), b = open_rw(p), c = open_rw(p);
    assert_int_equal(vh_lock_inuse(a, F_RDLCK), 0);
    assert_int_equal(vh_lock_inuse(b, F_RDLCK), 0); /* two opens through mounts */
    assert_int_equal(vh_lock_inuse(c, F_WRLCK), -EBUSY);
    assert_int_equal(vh_lock_probe(c), -EBUSY);
    /* a repair of the file open through the mount: its data range is free */
    assert_int_equal(vh_lock_data(c, F_WRLCK, false), 0);
    assert_int_equal(vh_lock_data(a, F_RDLCK, false), -EAGAIN); /* the settled open waits */
    assert_int_equal(vh_lock_data(c, F_UNLCK, false), 0);
    close(a);
    assert_int_equal(vh_lock_inuse(c, F_WRLCK), -EBUSY); /* b still marks it */
    close(b);
    assert_int_equal(vh_lock_inuse(c, F_WRLCK), 0); /* released at the last close */
    assert_int_equal(vh_lock_probe(c), 0);          /* its own claim is no other holder */
    int d = open_rw(p);
    assert_int_equal(vh_lock_inuse(d, F_RDLCK), -EBUSY); /* the mount's open during a merge */
    assert_int_equal(vh_lock_probe(d), -EBUSY);
    close(c);
    assert_int_equal(vh_lock_inuse(d, F_RDLCK), 0);
    close(d);
}

static void test_qemu_lock(void **state)
{
    g_autofree char *p = tpath("f");
    int q = open_rw(p), m = open_rw(p);
    /* qemu's raw driver locks single bytes from 100 up, shared */
    struct flock fl = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 100, .l_len = 1};
    assert_int_equal(fcntl(q, F_OFD_SETLK, &fl), 0);
    assert_int_equal(vh_lock_inuse(m, F_WRLCK), 0); /* not its byte ... */
    assert_int_equal(vh_lock_probe(m), -EBUSY);     /* ... but seen */
    assert_int_equal(vh_lock_data(m, F_WRLCK, false), -EAGAIN);
    close(q);
    assert_int_equal(vh_lock_probe(m), 0);
    close(m);
}

static void test_hold_chain(void **state)
{
    g_autofree char *base = tpath("base.vhdx"), *child = tpath("child.avhdx");
    vh_create_opts o = {.format = VH_FORMAT_VHDX, .type = VH_TYPE_DYNAMIC, .size = 1 << 20};
    assert_int_equal(vh_disk_create(base, &o, NULL), 0);
    g_autoptr(vh_disk) b = NULL;
    assert_int_equal(vh_disk_open(base, VH_OPEN_READ, &b, NULL), 0);
    vh_create_opts oc = {
        .type = VH_TYPE_DIFFERENCING, .parent = b, .parent_relative = ".\\base.vhdx"};
    assert_int_equal(vh_disk_create(child, &oc, NULL), 0);
    vh_chain_open_opts co = {.store = tmp_dir};
    g_autoptr(vh_store) store = NULL;
    g_autoptr(vh_chain) c = vh_chain_resolve(child, &co, &store, NULL);
    assert_non_null(c);
    assert_int_equal(c->disks->len, 2);
    GArray *held = NULL;
    assert_int_equal(vh_inuse_hold_chain(tmp_dir, c, &held, NULL), 0);
    assert_int_equal(held->len, 2);
    int m = open_rw(base);
    assert_int_equal(vh_lock_inuse(m, F_WRLCK), -EBUSY); /* every member is marked */
    vh_inuse_release(held);
    assert_int_equal(vh_lock_inuse(m, F_WRLCK), 0); /* a merge claims the base */
    g_autoptr(GError) err = NULL;
    held = NULL;
    assert_int_equal(vh_inuse_hold_chain(tmp_dir, c, &held, &err), -EBUSY);
    assert_null(held);
    assert_non_null(strstr(err->message, "base.vhdx"));
    close(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_marks_and_claims, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_qemu_lock, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_hold_chain, tmp_setup, tmp_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
