// SPDX-License-Identifier: GPL-2.0-or-later
/* test_journal.c - the repair journal: rollback after a crash at every write, commit, undo. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <glib/gstdio.h>
#include <unistd.h>

#include "journal.h"

typedef struct {
    char *store;
    char *child;
    GBytes *original;
} fixture;

static int setup(void **state)
{
    fixture *fx = g_new0(fixture, 1);
    fx->store = g_dir_make_tmp("vh-journal-XXXXXX", NULL);
    fx->child = g_build_filename(fx->store, "child.vhd", NULL);
    uint8_t data[8192];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 7 + 3);
    assert_true(g_file_set_contents(fx->child, (char *)data, sizeof data, NULL));
    fx->original = g_bytes_new(data, sizeof data);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", fx->store);
    assert_int_equal(system(cmd), 0);
    g_free(fx->store);
    g_free(fx->child);
    g_bytes_unref(fx->original);
    g_free(fx);
    vh_fault_disarm();
    return 0;
}

static GBytes *file_bytes(const char *path)
{
    char *data;
    gsize len;
    assert_true(g_file_get_contents(path, &data, &len, NULL));
    return g_bytes_new_take(data, len);
}

/* A repair-like sequence: overwrite, overwrite again (overlapping), extend, flush. */
static int do_repair(vh_journal *j, const char *child, GError **err)
{
    vh_file f;
    int r = vh_file_open(&f, child, true, err);
    if (r < 0)
        return r;
    vh_repair *rp = NULL;
    r = vh_journal_begin(j, &f, "old link", "new\tlink\n", &rp, err);
    uint8_t a[600], b[100], c[1024];
    memset(a, 0xAA, sizeof a);
    memset(b, 0xBB, sizeof b);
    memset(c, 0xCC, sizeof c);
    if (r == 0)
        r = vh_file_write(&f, a, sizeof a, 500, "a", err);
    if (r == 0)
        r = vh_file_write(&f, b, sizeof b, 1000, "b", err);
    if (r == 0)
        r = vh_file_truncate(&f, 16384, err);
    if (r == 0)
        r = vh_file_write(&f, c, sizeof c, 8192 - 512, "c", err);
    if (r == 0)
        r = vh_file_flush(&f, err);
    if (rp) {
        if (r == 0)
            r = vh_journal_commit(rp, err);
        else
            vh_journal_abort(rp, NULL); /* may fail too: the "crash" goes on */
    }
    vh_file_close(&f);
    return r;
}

static void commit_then_undo_restores_bytes(void **state)
{
    fixture *fx = *state;
    g_autoptr(vh_journal) j = NULL;
    assert_int_equal(vh_journal_open(fx->store, &j, NULL), 0);
    assert_int_equal(do_repair(j, fx->child, NULL), 0);
    g_autoptr(GBytes) after = file_bytes(fx->child);
    assert_int_equal(g_bytes_get_size(after), 16384);
    assert_false(g_bytes_equal(after, fx->original));

    g_autoptr(GPtrArray) list = NULL;
    assert_int_equal(vh_journal_list(j, &list, NULL), 0);
    assert_int_equal(list->len, 1);
    vh_repair_info *info = list->pdata[0];
    assert_int_equal(info->state, VH_REPAIR_COMMITTED);
    assert_string_equal(info->child, "child.vhd");
    assert_string_equal(info->new_link, "new\tlink\n");

    assert_int_equal(vh_journal_undo(j, info->id, NULL), 0);
    g_autoptr(GBytes) undone = file_bytes(fx->child);
    assert_true(g_bytes_equal(undone, fx->original));
    g_autoptr(GError) err = NULL;
    assert_int_equal(vh_journal_undo(j, info->id, &err), -EINVAL);
    assert_non_null(strstr(err->message, "undone already"));
}

static void undo_refuses_a_changed_child(void **state)
{
    fixture *fx = *state;
    g_autoptr(vh_journal) j = NULL;
    assert_int_equal(vh_journal_open(fx->store, &j, NULL), 0);
    assert_int_equal(do_repair(j, fx->child, NULL), 0);
    g_autoptr(GPtrArray) list = NULL;
    assert_int_equal(vh_journal_list(j, &list, NULL), 0);
    int fd = open(fx->child, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, "x", 1, 510), 1);
    close(fd);
    g_autoptr(GError) err = NULL;
    assert_int_equal(vh_journal_undo(j, ((vh_repair_info *)list->pdata[0])->id, &err), -EBUSY);
    assert_int_equal(vh_journal_undo(j, "no-such-id", NULL), -ENOENT);
}

/* Crash after every mutating op (and torn at every 512-byte boundary): recovery always gives
 * either the original bytes or the committed result. */
static void crash_at_every_op_recovers(void **state)
{
    fixture *fx = *state;
    g_autoptr(GBytes) committed = NULL;
    {
        g_autofree char *copy = g_build_filename(fx->store, "ref", NULL);
        assert_true(g_file_set_contents(copy, g_bytes_get_data(fx->original, NULL),
                                        (gssize)g_bytes_get_size(fx->original), NULL));
        g_autoptr(vh_journal) j = NULL;
        assert_int_equal(vh_journal_open(fx->store, &j, NULL), 0);
        vh_fault_arm(VH_FAULT_NONE, 0, 0);
        assert_int_equal(do_repair(j, copy, NULL), 0);
        committed = file_bytes(copy);
    }
    long total = 6; /* 3 writes, 1 truncate, 1 flush (+1 spare past the end) */
    int covered = 0;
    for (long n = 1; n <= total; n++) {
        for (size_t tear = 0; tear <= 1024; tear += 512) {
            assert_true(g_file_set_contents(fx->child, g_bytes_get_data(fx->original, NULL),
                                            (gssize)g_bytes_get_size(fx->original), NULL));
            g_autoptr(vh_journal) j = NULL;
            assert_int_equal(vh_journal_open(fx->store, &j, NULL), 0);
            vh_fault_arm(tear ? VH_FAULT_TEAR : VH_FAULT_STOP, n, tear);
            int r = do_repair(j, fx->child, NULL);
            bool fired = vh_fault_fired();
            vh_fault_disarm();
            assert_true(r < 0 || !fired);
            assert_true(vh_journal_recover(j, NULL, NULL, NULL) >= 0);
            g_autoptr(GBytes) now = file_bytes(fx->child);
            assert_true(g_bytes_equal(now, fx->original) || g_bytes_equal(now, committed));
            if (fired)
                assert_true(g_bytes_equal(now, fx->original));
            covered++;
        }
    }
    print_message("# crash points covered: %d\n", covered);
    assert_true(covered >= 15);
}

static void unfinished_last_record_is_ignored(void **state)
{
    fixture *fx = *state;
    g_autoptr(vh_journal) j = NULL;
    assert_int_equal(vh_journal_open(fx->store, &j, NULL), 0);
    assert_int_equal(do_repair(j, fx->child, NULL), 0);
    g_autofree char *jp = g_build_filename(fx->store, ".vhdheal", "journal", NULL);
    FILE *f = fopen(jp, "a");
    fputs("BEGIN\tbroken\t0\tchild.vhd\t8192\tx\ty", f); /* no newline: never finished */
    fclose(f);
    g_autoptr(GPtrArray) list = NULL;
    assert_int_equal(vh_journal_list(j, &list, NULL), 0);
    assert_int_equal(list->len, 1);
    assert_int_equal(vh_journal_recover(j, NULL, NULL, NULL), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(commit_then_undo_restores_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(undo_refuses_a_changed_child, setup, teardown),
        cmocka_unit_test_setup_teardown(crash_at_every_op_recovers, setup, teardown),
        cmocka_unit_test_setup_teardown(unfinished_last_record_is_ignored, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
