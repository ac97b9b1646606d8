// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * test_io.c - chain/io.c: the durability switch for synthetic data. Linked with
 * -Wl,--wrap=fdatasync (tests/unit/meson.build) to count the flushes that reach the system.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdlib.h>
#include <unistd.h>

#include "tmpfix.h"

static int fdatasync_calls;

int __real_fdatasync(int fd);
int __wrap_fdatasync(int fd);

int __wrap_fdatasync(int fd)
{
    fdatasync_calls++;
    return __real_fdatasync(fd);
}

/*
 * Durable by default: a flush of a writable file is one fdatasync (of a read-only one, none).
 * Switched off, flushes skip the system call but still count for the fault injector and still
 * fail when it fires.
 */
static void durability_switch(void **state)
{
    g_autofree char *p = tpath("f");
    fdatasync_calls = 0;
    vh_file f;
    assert_int_equal(vh_file_create(&f, p, NULL), 0);
    assert_int_equal(vh_file_write(&f, "abc", 3, 0, "test", NULL), 0);
    assert_true(vh_io_durable());
    vh_fault_disarm();
    assert_int_equal(vh_file_flush(&f, NULL), 0);
    assert_int_equal(fdatasync_calls, 1);
    assert_int_equal(vh_fault_ops(), 1);

    vh_io_set_durable(false);
    assert_false(vh_io_durable());
    assert_int_equal(vh_file_flush(&f, NULL), 0);
    assert_int_equal(vh_file_flush(&f, NULL), 0);
    assert_int_equal(fdatasync_calls, 1);
    assert_int_equal(vh_fault_ops(), 3);
    vh_fault_arm(VH_FAULT_STOP, 2, 0);
    assert_int_equal(vh_file_write(&f, "d", 1, 3, "test", NULL), 0);
    g_autoptr(GError) err = NULL;
    assert_int_equal(vh_file_flush(&f, &err), -EIO);
    assert_non_null(strstr(err->message, "injected fault"));
    assert_true(vh_fault_fired());
    vh_fault_disarm();

    vh_io_set_durable(true);
    assert_int_equal(vh_file_flush(&f, NULL), 0);
    assert_int_equal(fdatasync_calls, 2);
    vh_file_close(&f);
    assert_int_equal(vh_file_open(&f, p, false, NULL), 0);
    assert_int_equal(vh_file_flush(&f, NULL), 0); /* read-only: nothing to flush */
    assert_int_equal(fdatasync_calls, 2);
    vh_file_close(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(durability_switch, tmp_setup, tmp_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
