// SPDX-License-Identifier: GPL-2.0-or-later
/* test_journal.c - the repair journal: rollback after a crash at every write, commit, undo. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <glib/gstdio.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "chain.h"
#include "journal.h"
#include "reconnect.h"
#include "winpath.h"

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

static char *journal_path(const fixture *fx)
{
    return g_build_filename(fx->store, ".vhdheal", "journal", NULL);
}

/* A repair of `child` that "crashed" after it wrote into it: its record stays open and the
 * child holds part of what it wrote. */
static void crashed_repair_of(fixture *fx, const char *child)
{
    for (long n = 1;; n++) {
        assert_true(n < 50);
        assert_true(g_file_set_contents(child, g_bytes_get_data(fx->original, NULL),
                                        (gssize)g_bytes_get_size(fx->original), NULL));
        g_autoptr(vh_journal) j = NULL;
        assert_int_equal(vh_journal_open(fx->store, &j, NULL), 0);
        vh_fault_arm(VH_FAULT_STOP, n, 0);
        int r = do_repair(j, child, NULL);
        vh_fault_disarm();
        assert_true(r < 0);
        g_autoptr(GBytes) now = file_bytes(child);
        if (!g_bytes_equal(now, fx->original))
            return;
        /* the stop came before any write to the child: resolve that record, try later */
        assert_true(vh_journal_recover(j, NULL, NULL, NULL) >= 0);
    }
}

static void crashed_repair(fixture *fx)
{
    crashed_repair_of(fx, fx->child);
}

static guint count_in_journal(const fixture *fx, const char *what)
{
    g_autofree char *jp = journal_path(fx);
    g_autofree char *text = NULL;
    assert_true(g_file_get_contents(jp, &text, NULL, NULL));
    guint n = 0;
    for (const char *p = text; (p = strstr(p, what)); p++)
        n++;
    return n;
}

/* A record cut at any byte is ignored, never merges with the next one, and the next append
 * (a whole repair) parses. */
static void torn_record_is_skipped(void **state)
{
    fixture *fx = *state;
    g_autofree char *jp = journal_path(fx);
    {
        g_autoptr(vh_journal) j = NULL;
        assert_int_equal(vh_journal_open(fx->store, &j, NULL), 0);
        assert_int_equal(do_repair(j, fx->child, NULL), 0);
    }
    g_autofree char *before = NULL;
    gsize before_len;
    assert_true(g_file_get_contents(jp, &before, &before_len, NULL));
    /* one more record: a repair begun and let go (its BEGIN is the last record) */
    {
        g_autoptr(vh_journal) j = NULL;
        assert_int_equal(vh_journal_open(fx->store, &j, NULL), 0);
        vh_file f;
        assert_int_equal(vh_file_open(&f, fx->child, true, NULL), 0);
        vh_repair *rp = NULL;
        assert_int_equal(vh_journal_begin(j, &f, "a", "b", &rp, NULL), 0);
        vh_journal_release(rp);
        vh_file_close(&f);
    }
    g_autofree char *full = NULL;
    gsize full_len;
    assert_true(g_file_get_contents(jp, &full, &full_len, NULL));
    assert_true(full_len > before_len + 20);
    g_autoptr(GBytes) child_now = file_bytes(fx->child);
    int cuts = 0;
    for (gsize cut = before_len; cut < full_len; cut++) {
        assert_true(g_file_set_contents(jp, full, (gssize)cut, NULL));
        assert_int_equal(chmod(jp, 0600), 0);
        g_autoptr(vh_journal) j = NULL;
        assert_int_equal(vh_journal_open(fx->store, &j, NULL), 0);
        g_autoptr(GPtrArray) list = NULL;
        assert_int_equal(vh_journal_list(j, &list, NULL), 0);
        assert_int_equal(list->len, 1);
        assert_int_equal(((vh_repair_info *)list->pdata[0])->state, VH_REPAIR_COMMITTED);
        assert_int_equal(vh_journal_recover(j, NULL, NULL, NULL), 0);
        /* the next repair appends after the torn tail and parses whole */
        assert_int_equal(do_repair(j, fx->child, NULL), 0);
        g_ptr_array_unref(g_steal_pointer(&list));
        assert_int_equal(vh_journal_list(j, &list, NULL), 0);
        assert_int_equal(list->len, 2);
        vh_repair_info *second = list->pdata[1];
        /* a torn tail (closed by the mark, or cut after its header line: no mark then) is not
         * damage: the repair before it stays whole */
        assert_false(((vh_repair_info *)list->pdata[0])->damaged);
        assert_int_equal(second->state, VH_REPAIR_COMMITTED);
        assert_string_equal(second->child, "child.vhd");
        assert_string_equal(second->old_link, "old link");
        assert_string_equal(second->new_link, "new\tlink\n");
        assert_int_equal(vh_journal_undo(j, second->id, NULL), 0);
        g_autoptr(GBytes) back = file_bytes(fx->child);
        assert_true(g_bytes_equal(back, child_now));
        cuts++;
    }
    print_message("# journal cut at %d byte offsets of its last record\n", cuts);
}

/* ENOSPC on an append (whole or short): the repair is aborted before the child is touched. */
static void enospc_aborts_the_repair(void **state)
{
    fixture *fx = *state;
    g_autofree char *jp = journal_path(fx);
    for (long n = 1; n <= 3; n += 2) { /* 1: the BEGIN record; 3: the first RANGE record */
        for (size_t tear = 0; tear <= 10; tear += 10) {
            g_autoptr(vh_journal) j = NULL;
            assert_int_equal(vh_journal_open(fx->store, &j, NULL), 0);
            struct stat st0;
            assert_int_equal(stat(jp, &st0), 0);
            vh_fault_arm(tear ? VH_FAULT_TEAR : VH_FAULT_STOP, n, tear);
            vh_fault_set_errno(ENOSPC);
            g_autoptr(GError) err = NULL;
            int r = do_repair(j, fx->child, &err);
            vh_fault_disarm();
            assert_int_equal(r, -ENOSPC);
            assert_non_null(strstr(err->message, "journal"));
            g_autoptr(GBytes) now = file_bytes(fx->child);
            assert_true(g_bytes_equal(now, fx->original));
            /* a short record was cut off again: the journal ends on a record boundary */
            g_autofree char *text = NULL;
            gsize len;
            assert_true(g_file_get_contents(jp, &text, &len, NULL));
            assert_true(len == 0 || text[len - 1] == '\n');
            vh_recover_stats st = {0};
            assert_int_equal(vh_journal_recover(j, NULL, &st, NULL), 0);
            assert_int_equal(st.left, 0);
            vh_recover_stats_clear(&st);
            now = (g_bytes_unref(now), file_bytes(fx->child));
            assert_true(g_bytes_equal(now, fx->original));
        }
    }
}

/* A repair whose child is locked by someone else is live: recovery leaves it alone. */
static void recovery_skips_a_locked_child(void **state)
{
    fixture *fx = *state;
    crashed_repair(fx);
    guint rollbacks = count_in_journal(fx, "ROLLBACK");
    g_autoptr(GBytes) crashed = file_bytes(fx->child);
    int fd = open(fx->child, O_RDWR);
    assert_true(fd >= 0);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    assert_int_equal(fcntl(fd, F_OFD_SETLK, &fl), 0);
    g_autoptr(vh_journal) j = NULL;
    assert_int_equal(vh_journal_open(fx->store, &j, NULL), 0);
    vh_recover_stats st = {0};
    assert_int_equal(vh_journal_recover(j, NULL, &st, NULL), 0);
    assert_int_equal(st.busy, 1);
    g_autoptr(GBytes) now = file_bytes(fx->child);
    assert_true(g_bytes_equal(now, crashed));
    assert_int_equal(count_in_journal(fx, "ROLLBACK"), rollbacks);
    close(fd); /* the "live repair" is gone: now it is recovered */
    assert_int_equal(vh_journal_recover(j, NULL, NULL, NULL), 1);
    g_autoptr(GBytes) back = file_bytes(fx->child);
    assert_true(g_bytes_equal(back, fx->original));
    vh_recover_stats_clear(&st);
}

/* The child changed after the crash (grown by a write): left alone and reported. */
static void recovery_leaves_a_changed_child(void **state)
{
    fixture *fx = *state;
    crashed_repair(fx);
    int fd = open(fx->child, O_RDWR);
    assert_true(fd >= 0);
    g_autofree uint8_t *more = g_malloc(16 * 1024 * 1024);
    memset(more, 0x5A, 16 * 1024 * 1024);
    assert_int_equal(pwrite(fd, more, 16 * 1024 * 1024, 16384), 16 * 1024 * 1024);
    close(fd);
    g_autoptr(GBytes) changed = file_bytes(fx->child);
    g_autoptr(vh_journal) j = NULL;
    assert_int_equal(vh_journal_open(fx->store, &j, NULL), 0);
    vh_recover_stats st = {0};
    assert_int_equal(vh_journal_recover(j, NULL, &st, NULL), 0);
    assert_int_equal(st.left, 1);
    assert_non_null(st.notes);
    assert_non_null(strstr(st.notes->pdata[0], "changed since"));
    g_autoptr(GBytes) now = file_bytes(fx->child);
    assert_true(g_bytes_equal(now, changed));
    vh_recover_stats_clear(&st);
    /* and a byte changed inside a journaled range, size unchanged: left alone too */
    crashed_repair(fx);
    fd = open(fx->child, O_RDWR);
    assert_int_equal(pwrite(fd, "z", 1, 520), 1);
    close(fd);
    g_autoptr(GBytes) poked = file_bytes(fx->child);
    assert_int_equal(vh_journal_recover(j, NULL, &st, NULL), 0);
    assert_true(st.left >= 1);
    g_autoptr(GBytes) after = file_bytes(fx->child);
    assert_true(g_bytes_equal(after, poked));
    vh_recover_stats_clear(&st);
}

/* Recoveries started at once by several processes resolve an unfinished record once (without
 * the child's lock and a re-read under it, several read it unfinished and all roll it back). */
static void recovery_happens_once(void **state)
{
    fixture *fx = *state;
    enum { PROCS = 16, ROUNDS = 5 };
    int restorers = 0;
    for (int round = 0; round < ROUNDS; round++) {
        crashed_repair(fx);
        guint rollbacks = count_in_journal(fx, "ROLLBACK");
        int go[2];
        assert_int_equal(pipe(go), 0);
        pid_t pids[PROCS];
        for (int k = 0; k < PROCS; k++) {
            pids[k] = fork();
            assert_true(pids[k] >= 0);
            if (pids[k] == 0) {
                vh_journal *j = NULL;
                if (vh_journal_open(fx->store, &j, NULL) < 0)
                    _exit(2);
                char c;
                close(go[1]);
                if (read(go[0], &c, 1) < 0) /* all start together */
                    _exit(2);
                int r = vh_journal_recover(j, NULL, NULL, NULL);
                vh_journal_close(j);
                _exit(r < 0 ? 2 : r);
            }
        }
        close(go[0]);
        close(go[1]); /* EOF: go */
        int total = 0;
        for (int k = 0; k < PROCS; k++) {
            int status;
            assert_int_equal(waitpid(pids[k], &status, 0), pids[k]);
            assert_true(WIFEXITED(status) && WEXITSTATUS(status) <= 1);
            total += WEXITSTATUS(status);
        }
        assert_int_equal(count_in_journal(fx, "ROLLBACK"), rollbacks + 1);
        assert_int_equal(total, 1);
        g_autoptr(GBytes) now = file_bytes(fx->child);
        assert_true(g_bytes_equal(now, fx->original));
        /* a later recovery of the resolved record is a no-op */
        g_autoptr(vh_journal) j = NULL;
        assert_int_equal(vh_journal_open(fx->store, &j, NULL), 0);
        assert_int_equal(vh_journal_recover(j, NULL, NULL, NULL), 0);
        assert_int_equal(count_in_journal(fx, "ROLLBACK"), rollbacks + 1);
        restorers += total;
    }
    print_message("# %d rounds of %d concurrent recoveries: %d restored the child\n", ROUNDS, PROCS,
                  restorers);
}

/* A symbolic link where the journal or its folder should be is refused, never written through. */
static void symlinks_are_refused(void **state)
{
    fixture *fx = *state;
    g_autofree char *target = g_build_filename(fx->store, "target", NULL);
    assert_true(g_file_set_contents(target, "precious", -1, NULL));
    g_autofree char *dir = g_build_filename(fx->store, ".vhdheal", NULL);
    assert_int_equal(mkdir(dir, 0700), 0);
    g_autofree char *jp = journal_path(fx);
    assert_int_equal(symlink(target, jp), 0);
    g_autoptr(GError) err = NULL;
    vh_journal *j = NULL;
    assert_int_equal(vh_journal_open(fx->store, &j, &err), -ELOOP);
    assert_null(j);
    assert_non_null(strstr(err->message, "symbolic link"));
    g_autofree char *text = NULL;
    assert_true(g_file_get_contents(target, &text, NULL, NULL));
    assert_string_equal(text, "precious");
    /* the folder itself a link to another folder */
    assert_int_equal(unlink(jp), 0);
    assert_int_equal(rmdir(dir), 0);
    g_autofree char *elsewhere = g_build_filename(fx->store, "elsewhere", NULL);
    assert_int_equal(mkdir(elsewhere, 0700), 0);
    assert_int_equal(symlink(elsewhere, dir), 0);
    g_clear_error(&err);
    assert_int_equal(vh_journal_open(fx->store, &j, &err), -ELOOP);
    assert_non_null(strstr(err->message, "symbolic link"));
    g_autofree char *made = g_build_filename(elsewhere, "journal", NULL);
    assert_false(g_file_test(made, G_FILE_TEST_EXISTS));
    /* a FIFO as the journal: refused, without blocking */
    assert_int_equal(unlink(dir), 0);
    assert_int_equal(mkdir(dir, 0700), 0);
    assert_int_equal(mkfifo(jp, 0600), 0);
    g_clear_error(&err);
    assert_int_equal(vh_journal_open(fx->store, &j, &err), -EINVAL);
}

static void modes_are_private(void **state)
{
    fixture *fx = *state;
    g_autoptr(vh_journal) j = NULL;
    assert_int_equal(vh_journal_open(fx->store, &j, NULL), 0);
    g_autofree char *dir = g_build_filename(fx->store, ".vhdheal", NULL);
    g_autofree char *jp = journal_path(fx);
    struct stat st;
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0700);
    assert_int_equal(stat(jp, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    /* made by an older version: tightened */
    g_clear_pointer(&j, vh_journal_close);
    assert_int_equal(chmod(dir, 0755), 0);
    assert_int_equal(chmod(jp, 0644), 0);
    assert_int_equal(vh_journal_open(fx->store, &j, NULL), 0);
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0700);
    assert_int_equal(stat(jp, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
}

/* A journal of the old text format: its records are listed and undone; a torn last line is
 * ignored and does not swallow the next (new-format) record. */
static void legacy_journal_is_read(void **state)
{
    fixture *fx = *state;
    g_autofree char *dir = g_build_filename(fx->store, ".vhdheal", NULL);
    assert_int_equal(mkdir(dir, 0700), 0);
    g_autofree char *jp = journal_path(fx);
    /* as the old code wrote it: one repair of 4 bytes at 100, committed */
    const uint8_t *orig = g_bytes_get_data(fx->original, NULL);
    g_autofree char *b64 = g_base64_encode(orig + 100, 4);
    g_autoptr(GChecksum) c = g_checksum_new(G_CHECKSUM_SHA256);
    g_checksum_update(c, (const guchar *)"WXYZ", 4);
    g_autofree char *text = g_strdup_printf("BEGIN\told1\t0\tchild.vhd\t8192\ta\tb\n"
                                            "RANGE\told1\t100\t4\t%s\n"
                                            "COMMIT\told1\t8192\t%s\n"
                                            "BEGIN\ttorn\t0\tchild.vhd\t8192\tx",
                                            b64, g_checksum_get_string(c));
    assert_true(g_file_set_contents(jp, text, -1, NULL));
    int fd = open(fx->child, O_RDWR);
    assert_int_equal(pwrite(fd, "WXYZ", 4, 100), 4);
    close(fd);
    g_autoptr(vh_journal) j = NULL;
    assert_int_equal(vh_journal_open(fx->store, &j, NULL), 0);
    assert_int_equal(vh_journal_undo(j, "old1", NULL), 0);
    g_autoptr(GBytes) now = file_bytes(fx->child);
    assert_true(g_bytes_equal(now, fx->original));
    g_autoptr(GPtrArray) list = NULL;
    assert_int_equal(vh_journal_list(j, &list, NULL), 0);
    assert_int_equal(list->len, 1);
    assert_int_equal(((vh_repair_info *)list->pdata[0])->state, VH_REPAIR_UNDONE);
}

/* ---------- damaged records of real VHD and VHDX repairs ---------- */

typedef struct {
    char *store, *child, *base, *jpath;
    GBytes *found;    /* the child before the repair */
    GBytes *repaired; /* the child after it */
    GBytes *journal;  /* the journal after it: BEGIN, RANGE..., COMMIT */
} real_fx;

/* A store with vm/child.EXT whose parent lib/base.EXT was moved there (a broken link), then
 * reconnected: one committed repair of several RANGE records. */
static real_fx *real_repair(vh_format f)
{
    const char *ext = f == VH_FORMAT_VHD ? "vhd" : "vhdx";
    real_fx *fx = g_new0(real_fx, 1);
    fx->store = g_dir_make_tmp("vh-journal-real-XXXXXX", NULL);
    g_autofree char *vm = g_build_filename(fx->store, "vm", NULL);
    g_autofree char *lib = g_build_filename(fx->store, "lib", NULL);
    assert_int_equal(g_mkdir_with_parents(vm, 0755), 0);
    assert_int_equal(g_mkdir_with_parents(lib, 0755), 0);
    g_autofree char *base0 = g_strdup_printf("%s/base.%s", vm, ext);
    fx->child = g_strdup_printf("%s/child.%s", vm, ext);
    fx->base = g_strdup_printf("%s/base.%s", lib, ext);
    fx->jpath = g_build_filename(fx->store, ".vhdheal", "journal", NULL);
    g_autoptr(GError) err = NULL;
    vh_create_opts o = {.format = f, .type = VH_TYPE_DYNAMIC, .size = 8 * 1024 * 1024};
    if (vh_disk_create(base0, &o, &err) < 0)
        fail_msg("%s", err->message);
    {
        g_autoptr(vh_disk) parent = NULL;
        assert_int_equal(vh_disk_open(base0, VH_OPEN_READ, &parent, NULL), 0);
        g_autofree char *rel = vh_winpath_relative(fx->child, base0);
        vh_create_opts c = {.type = VH_TYPE_DIFFERENCING, .parent = parent, .parent_relative = rel};
        if (vh_disk_create(fx->child, &c, &err) < 0)
            fail_msg("%s", err->message);
    }
    assert_int_equal(rename(base0, fx->base), 0);
    fx->found = file_bytes(fx->child);
    vh_reconnect_opts ro = {.store = fx->store};
    vh_reconnect_result res;
    if (vh_reconnect(fx->child, fx->base, &ro, &res, &err) < 0)
        fail_msg("%s", err->message);
    vh_reconnect_result_clear(&res);
    fx->repaired = file_bytes(fx->child);
    assert_false(g_bytes_equal(fx->found, fx->repaired));
    fx->journal = file_bytes(fx->jpath);
    return fx;
}

static void real_free(real_fx *fx)
{
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", fx->store);
    assert_int_equal(system(cmd), 0);
    g_free(fx->store);
    g_free(fx->child);
    g_free(fx->base);
    g_free(fx->jpath);
    g_bytes_unref(fx->found);
    g_bytes_unref(fx->repaired);
    g_bytes_unref(fx->journal);
    g_free(fx);
}

/* Where the records of a kind start in the journal (offsets of their "@VHJ2 "). */
static GArray *records_of(GBytes *journal, const char *kind)
{
    gsize len;
    const char *t = g_bytes_get_data(journal, &len);
    GArray *at = g_array_new(FALSE, FALSE, sizeof(gsize));
    size_t klen = strlen(kind);
    for (gsize k = 0; k + 24 + klen <= len; k++)
        if ((k == 0 || t[k - 1] == '\n') && memcmp(t + k, "@VHJ2 ", 6) == 0 &&
            memcmp(t + k + 24, kind, klen) == 0)
            g_array_append_val(at, k);
    return at;
}

/* Writes the journal: its first `cut` bytes, with byte `flip` (if not 0) changed. */
static void put_journal(const real_fx *fx, gsize cut, gsize flip)
{
    g_autofree char *t = g_memdup2(g_bytes_get_data(fx->journal, NULL), cut);
    if (flip)
        t[flip] ^= 1;
    assert_true(g_file_set_contents(fx->jpath, t, (gssize)cut, NULL));
    assert_int_equal(chmod(fx->jpath, 0600), 0);
}

static vh_repair_info *only_repair(vh_journal *j, GPtrArray **list)
{
    assert_int_equal(vh_journal_list(j, list, NULL), 0);
    assert_int_equal((*list)->len, 1);
    return (*list)->pdata[0];
}

/*
 * A damaged RANGE record (the first, a middle one, the last) of a repair that never reached
 * its COMMIT: recovery leaves the child exactly as it finds it and says why, instead of
 * restoring the other ranges (half old, half new); undo of the committed repair refuses with
 * the journal to blame.
 */
static void damaged_range_leaves_the_repair_alone(vh_format f)
{
    real_fx *fx = real_repair(f);
    g_autoptr(GArray) ranges = records_of(fx->journal, "RANGE\t");
    g_autoptr(GArray) commit = records_of(fx->journal, "COMMIT\t");
    assert_int_equal(commit->len, 1);
    assert_true(ranges->len >= 3);
    gsize commit_at = g_array_index(commit, gsize, 0);
    /* the first, a middle and the last record, damaged inside its payload (the CRC fails),
     * and a middle one damaged in its magic (it no longer reads as a record) */
    guint which[] = {0, ranges->len / 2, ranges->len - 1, ranges->len / 2};
    gsize where[] = {24 + 40, 24 + 40, 24 + 40, 1};
    for (guint w = 0; w < G_N_ELEMENTS(which); w++) {
        gsize rec = g_array_index(ranges, gsize, which[w]);
        gsize flip = rec + where[w];
        assert_true(flip < commit_at);
        /* unfinished: the crash came before COMMIT (the child holds the new bytes) */
        assert_true(g_file_set_contents(fx->child, g_bytes_get_data(fx->repaired, NULL),
                                        (gssize)g_bytes_get_size(fx->repaired), NULL));
        put_journal(fx, commit_at, flip);
        g_autoptr(vh_journal) j = NULL;
        assert_int_equal(vh_journal_open(fx->store, &j, NULL), 0);
        vh_recover_stats st = {0};
        assert_int_equal(vh_journal_recover(j, NULL, &st, NULL), 0);
        assert_int_equal(st.rolled_back, 0);
        assert_int_equal(st.resolved, 0);
        assert_int_equal(st.left, 1);
        assert_non_null(st.notes);
        assert_non_null(strstr(st.notes->pdata[0], "journal record damaged"));
        assert_non_null(strstr(st.notes->pdata[0], "left alone"));
        vh_recover_stats_clear(&st);
        g_autoptr(GBytes) now = file_bytes(fx->child);
        assert_true(g_bytes_equal(now, fx->repaired));
        g_autoptr(GPtrArray) list = NULL;
        vh_repair_info *info = only_repair(j, &list);
        assert_int_equal(info->state, VH_REPAIR_OPEN);
        assert_true(info->damaged);
        /* the same within a repair, under the child's lock: left alone again */
        assert_int_equal(vh_journal_recover(j, NULL, NULL, NULL), 0);
        g_autoptr(GBytes) again = file_bytes(fx->child);
        assert_true(g_bytes_equal(again, fx->repaired));

        /* committed, the same record damaged: undo refuses and blames the journal */
        put_journal(fx, g_bytes_get_size(fx->journal), flip); /* a new file: open it again */
        g_clear_pointer(&j, vh_journal_close);
        assert_int_equal(vh_journal_open(fx->store, &j, NULL), 0);
        g_autoptr(GPtrArray) list2 = NULL;
        info = only_repair(j, &list2);
        assert_int_equal(info->state, VH_REPAIR_COMMITTED);
        g_autoptr(GError) err = NULL;
        assert_int_equal(vh_journal_undo(j, info->id, &err), -EBADMSG);
        assert_non_null(strstr(err->message, "journal record damaged"));
        g_autoptr(GBytes) kept = file_bytes(fx->child);
        assert_true(g_bytes_equal(kept, fx->repaired));
    }
    print_message("# %s: %u RANGE records, damaged first, middle, last, a magic\n",
                  f == VH_FORMAT_VHD ? "VHD" : "VHDX", ranges->len);
    real_free(fx);
}

static void vhd_damaged_range(void **state)
{
    (void)state;
    damaged_range_leaves_the_repair_alone(VH_FORMAT_VHD);
}

static void vhdx_damaged_range(void **state)
{
    (void)state;
    damaged_range_leaves_the_repair_alone(VH_FORMAT_VHDX);
}

/* A damaged region after a repair was committed does not touch it: its records all lie before
 * the region, so it is still undone byte for byte. */
static void damage_after_a_commit_spares_it(void **state)
{
    (void)state;
    real_fx *fx = real_repair(VH_FORMAT_VHDX);
    /* a whole record, closed by its newline, whose CRC fails: damage, not a torn tail */
    const char bad[] = "@VHJ2 00000004 00000000\nabcd\n";
    gsize len = g_bytes_get_size(fx->journal);
    g_autofree char *t = g_malloc(len + sizeof bad - 1);
    memcpy(t, g_bytes_get_data(fx->journal, NULL), len);
    memcpy(t + len, bad, sizeof bad - 1);
    assert_true(g_file_set_contents(fx->jpath, t, (gssize)(len + sizeof bad - 1), NULL));
    assert_int_equal(chmod(fx->jpath, 0600), 0);
    g_autoptr(vh_journal) j = NULL;
    assert_int_equal(vh_journal_open(fx->store, &j, NULL), 0);
    g_autoptr(GPtrArray) list = NULL;
    vh_repair_info *info = only_repair(j, &list);
    assert_int_equal(info->state, VH_REPAIR_COMMITTED);
    assert_false(info->damaged);
    g_autoptr(GError) err = NULL;
    if (vh_journal_undo(j, info->id, &err) < 0)
        fail_msg("%s", err->message);
    g_autoptr(GBytes) now = file_bytes(fx->child);
    assert_true(g_bytes_equal(now, fx->found));
    real_free(fx);
}

/*
 * The crash case: the last RANGE record torn at the end of the journal (its write never
 * made). The child holds what the writes before it made; recovery rolls it back whole.
 */
static void torn_last_range_rolls_back(vh_format f)
{
    real_fx *fx = real_repair(f);
    g_autoptr(GArray) ranges = records_of(fx->journal, "RANGE\t");
    assert_true(ranges->len >= 2);
    gsize last = g_array_index(ranges, gsize, ranges->len - 1);
    /* the child before the last write: its original bytes back, its size as it was */
    const char *t = g_bytes_get_data(fx->journal, NULL);
    const char *nl = strchr(t + last + 24, '\n');
    g_autofree char *payload = g_strndup(t + last + 24, (gsize)(nl - (t + last + 24)));
    g_auto(GStrv) fld = g_strsplit(payload, "\t", -1);
    assert_int_equal(g_strv_length(fld), 8);
    gsize olen;
    g_autofree guchar *orig = g_base64_decode(fld[5], &olen);
    int fd = open(fx->child, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, orig, olen, (off_t)g_ascii_strtoull(fld[2], NULL, 10)),
                     (ssize_t)olen);
    assert_int_equal(ftruncate(fd, (off_t)g_ascii_strtoull(fld[4], NULL, 10)), 0);
    close(fd);
    g_autoptr(GBytes) crashed = file_bytes(fx->child);
    assert_false(g_bytes_equal(crashed, fx->found));
    for (gsize tear = 3; tear < (gsize)(nl - (t + last)) + 1; tear += 97) {
        assert_true(g_file_set_contents(fx->child, g_bytes_get_data(crashed, NULL),
                                        (gssize)g_bytes_get_size(crashed), NULL));
        put_journal(fx, last + tear, 0);
        g_autoptr(vh_journal) j = NULL;
        assert_int_equal(vh_journal_open(fx->store, &j, NULL), 0);
        vh_recover_stats st = {0};
        assert_int_equal(vh_journal_recover(j, NULL, &st, NULL), 1);
        assert_int_equal(st.left, 0);
        vh_recover_stats_clear(&st);
        g_autoptr(GBytes) now = file_bytes(fx->child);
        assert_true(g_bytes_equal(now, fx->found));
        g_autoptr(GPtrArray) list = NULL;
        vh_repair_info *info = only_repair(j, &list);
        assert_int_equal(info->state, VH_REPAIR_ROLLED_BACK);
        assert_false(info->damaged);
    }
    real_free(fx);
}

static void vhd_torn_last_range(void **state)
{
    (void)state;
    torn_last_range_rolls_back(VH_FORMAT_VHD);
}

static void vhdx_torn_last_range(void **state)
{
    (void)state;
    torn_last_range_rolls_back(VH_FORMAT_VHDX);
}

/*
 * A repair rewrites whole structures of which a few bytes change (a VHD's 64 KiB locator space):
 * only the 512-byte chunks that change are journaled, a write of the bytes already there not at
 * all; undo and recovery of a write torn anywhere still give back the original bytes.
 */
static int rewrite_block(const char *child, uint8_t *block, size_t len, long fault, size_t tear,
                         vh_journal *j)
{
    vh_file f;
    assert_int_equal(vh_file_open(&f, child, true, NULL), 0);
    vh_repair *rp = NULL;
    assert_int_equal(vh_journal_begin(j, &f, "old", "new", &rp, NULL), 0);
    int r = vh_file_write(&f, block, len, 0, "same", NULL); /* nothing changes */
    block[10000] ^= 0x5a;
    block[10100] ^= 0xa5;
    if (fault) /* the fault-th op from here: the RANGE record's write, its flush, the write */
        vh_fault_arm(tear ? VH_FAULT_TEAR : VH_FAULT_STOP, fault, tear);
    if (r == 0)
        r = vh_file_write(&f, block, len, 0, "block", NULL);
    if (r == 0)
        r = vh_file_flush(&f, NULL);
    vh_fault_disarm();
    if (r == 0)
        r = vh_journal_commit(rp, NULL);
    else
        vh_journal_release(rp); /* the "crash": the record stays open */
    vh_file_close(&f);
    return r;
}

static void unchanged_bytes_are_not_journaled(void **state)
{
    fixture *fx = *state;
    enum { LEN = 65536 };
    g_autofree uint8_t *orig = g_malloc(LEN);
    for (size_t i = 0; i < LEN; i++)
        orig[i] = (uint8_t)g_random_int();
    g_autofree uint8_t *block = g_memdup2(orig, LEN);
    assert_true(g_file_set_contents(fx->child, (char *)orig, LEN, NULL));
    g_autoptr(vh_journal) j = NULL;
    assert_int_equal(vh_journal_open(fx->store, &j, NULL), 0);
    assert_int_equal(rewrite_block(fx->child, block, LEN, 0, 0, j), 0);
    assert_int_equal(count_in_journal(fx, "RANGE\t"), 1);
    g_autofree char *jp = journal_path(fx);
    GStatBuf st;
    assert_int_equal(g_stat(jp, &st), 0);
    assert_true(st.st_size < 2048); /* one 512-byte chunk, not 64 KiB */
    g_autoptr(GPtrArray) list = NULL;
    assert_int_equal(vh_journal_list(j, &list, NULL), 0);
    assert_int_equal(vh_journal_undo(j, ((vh_repair_info *)list->pdata[0])->id, NULL), 0);
    g_autoptr(GBytes) want = g_bytes_new(orig, LEN);
    g_autoptr(GBytes) undone = file_bytes(fx->child);
    assert_true(g_bytes_equal(undone, want));
    /* torn (at sector boundaries) before, at and after the changed chunk [9728, 10240) */
    static const size_t tears[] = {512, 9728, 10240, 40960};
    for (size_t k = 0; k < G_N_ELEMENTS(tears); k++) {
        memcpy(block, orig, LEN);
        assert_int_equal(rewrite_block(fx->child, block, LEN, 3, tears[k], j), -EIO);
        g_autoptr(GBytes) torn = file_bytes(fx->child);
        assert_int_equal(g_bytes_equal(torn, want), tears[k] <= 9728); /* the tear hit it */
        assert_int_equal(vh_journal_recover(j, NULL, NULL, NULL) >= 0, 1);
        g_autoptr(GBytes) now = file_bytes(fx->child);
        assert_true(g_bytes_equal(now, want));
    }
}

static vh_repair_info *find_info(GPtrArray *list, const char *child, vh_repair_state state)
{
    for (guint i = 0; i < list->len; i++) {
        vh_repair_info *info = list->pdata[i];
        if (strcmp(info->child, child) == 0 && info->state == state)
            return info;
    }
    return NULL;
}

static void append_to(const char *path, const char *bytes)
{
    FILE *f = fopen(path, "a");
    assert_non_null(f);
    fputs(bytes, f);
    fclose(f);
}

/*
 * A journal grown past its bound (64 KiB here) drops its oldest finished repairs at the next
 * BEGIN: it stays bounded, while an unfinished repair older than all of them still rolls back,
 * one whose records a damaged region may hold is still left alone, the newest repairs are still
 * undone, and a handle opened before the compactions appends to the new journal.
 */
static void compaction_keeps_what_recovery_needs(void **state)
{
    fixture *fx = *state;
    enum { LIMIT = 65536 };
    g_setenv("VHDHEAL_TEST_JOURNAL_COMPACT_AT", "65536", TRUE); /* LIMIT */
    g_autofree char *jp = journal_path(fx);
    g_autofree char *a = g_build_filename(fx->store, "a.vhd", NULL);
    g_autofree char *b = g_build_filename(fx->store, "b.vhd", NULL);
    crashed_repair_of(fx, a); /* unfinished, then a damaged region: left alone */
    append_to(jp, "@VHJ2 00000004 00000000\nabcd\n");
    crashed_repair_of(fx, b); /* unfinished after the damage: rolled back */
    g_autoptr(GBytes) a_crashed = file_bytes(a);
    g_autoptr(vh_journal) early = NULL;
    assert_int_equal(vh_journal_open(fx->store, &early, NULL), 0);
    g_autoptr(vh_journal) j = NULL;
    assert_int_equal(vh_journal_open(fx->store, &j, NULL), 0);
    GStatBuf st;
    guint compactions = 0, repairs = 0;
    goffset last = 0;
    for (; compactions < 3; repairs++) {
        assert_true(repairs < 2000);
        assert_int_equal(do_repair(j, fx->child, NULL), 0);
        g_autoptr(GPtrArray) list = NULL;
        assert_int_equal(vh_journal_list(j, &list, NULL), 0);
        vh_repair_info *done = find_info(list, "child.vhd", VH_REPAIR_COMMITTED);
        assert_non_null(done);
        assert_int_equal(vh_journal_undo(j, done->id, NULL), 0);
        assert_int_equal(g_stat(jp, &st), 0);
        if (st.st_size >= 2 * LIMIT)
            fail_msg("journal %ld bytes after %u repairs, %u compactions", (long)st.st_size,
                     repairs, compactions);
        if (st.st_size < last)
            compactions++;
        last = st.st_size;
    }
    print_message("# %u repairs and undos, %u compactions\n", repairs, compactions);
    assert_int_equal(count_in_journal(fx, "COMPACTED\t"), 1);
    /* the handle opened before every compaction writes into the journal the name holds */
    assert_int_equal(do_repair(early, fx->child, NULL), 0);
    g_autoptr(vh_journal) fresh = NULL;
    assert_int_equal(vh_journal_open(fx->store, &fresh, NULL), 0);
    g_autoptr(GPtrArray) list = NULL;
    assert_int_equal(vh_journal_list(fresh, &list, NULL), 0);
    assert_true(list->len < repairs);
    vh_repair_info *last_repair = find_info(list, "child.vhd", VH_REPAIR_COMMITTED);
    assert_non_null(last_repair);
    assert_int_equal(vh_journal_undo(fresh, last_repair->id, NULL), 0);
    g_autoptr(GBytes) child_now = file_bytes(fx->child);
    assert_true(g_bytes_equal(child_now, fx->original));
    vh_repair_info *ia = find_info(list, "a.vhd", VH_REPAIR_OPEN);
    vh_repair_info *ib = find_info(list, "b.vhd", VH_REPAIR_OPEN);
    assert_non_null(ia);
    assert_non_null(ib);
    assert_true(ia->damaged);
    assert_false(ib->damaged);
    vh_recover_stats rs = {0};
    assert_true(vh_journal_recover(fresh, NULL, &rs, NULL) >= 0);
    vh_recover_stats_clear(&rs);
    g_autoptr(GBytes) a_now = file_bytes(a);
    g_autoptr(GBytes) b_now = file_bytes(b);
    assert_true(g_bytes_equal(a_now, a_crashed));
    assert_true(g_bytes_equal(b_now, fx->original));
    g_unsetenv("VHDHEAL_TEST_JOURNAL_COMPACT_AT");
}

/* One process of compaction_under_concurrent_repairs: `rounds` repairs and undos of its own
 * child through one handle opened at the start. Exit 0 when every one worked. */
static int repair_and_undo_rounds(fixture *fx, int k, int rounds, int go)
{
    g_autofree char *name = g_strdup_printf("c%d.vhd", k);
    g_autofree char *path = g_build_filename(fx->store, name, NULL);
    if (!g_file_set_contents(path, g_bytes_get_data(fx->original, NULL),
                             (gssize)g_bytes_get_size(fx->original), NULL))
        return 2;
    g_autoptr(vh_journal) j = NULL;
    char c;
    if (vh_journal_open(fx->store, &j, NULL) < 0 || read(go, &c, 1) < 0)
        return 2;
    for (int i = 0; i < rounds; i++) {
        g_autoptr(GError) err = NULL;
        g_autoptr(GPtrArray) list = NULL;
        if (do_repair(j, path, &err) < 0 || vh_journal_list(j, &list, &err) < 0) {
            g_printerr("%s: %s\n", name, err ? err->message : "?");
            return 3;
        }
        vh_repair_info *done = find_info(list, name, VH_REPAIR_COMMITTED);
        if (!done || vh_journal_undo(j, done->id, &err) < 0) {
            g_printerr("%s round %d: %s\n", name, i, err ? err->message : "not listed");
            return 4;
        }
    }
    g_autoptr(GBytes) now = file_bytes(path);
    return g_bytes_equal(now, fx->original) ? 0 : 5;
}

/* Eight processes repair and undo at once through a journal compacted again and again: no
 * record is lost to a replaced journal (every repair is found, undone, none left unfinished). */
static void compaction_under_concurrent_repairs(void **state)
{
    fixture *fx = *state;
    enum { PROCS = 8, ROUNDS = 30, LIMIT = 65536 };
    g_setenv("VHDHEAL_TEST_JOURNAL_COMPACT_AT", "65536", TRUE); /* LIMIT */
    int go[2];
    assert_int_equal(pipe(go), 0);
    pid_t pids[PROCS];
    for (int k = 0; k < PROCS; k++) {
        pids[k] = fork();
        assert_true(pids[k] >= 0);
        if (pids[k] == 0) {
            close(go[1]);
            _exit(repair_and_undo_rounds(fx, k, ROUNDS, go[0]));
        }
    }
    close(go[0]);
    close(go[1]); /* EOF: go */
    for (int k = 0; k < PROCS; k++) {
        int status;
        assert_int_equal(waitpid(pids[k], &status, 0), pids[k]);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
    }
    g_autoptr(vh_journal) j = NULL;
    assert_int_equal(vh_journal_open(fx->store, &j, NULL), 0);
    g_autoptr(GPtrArray) list = NULL;
    assert_int_equal(vh_journal_list(j, &list, NULL), 0);
    for (guint i = 0; i < list->len; i++) {
        vh_repair_info *info = list->pdata[i];
        assert_int_equal(info->state, VH_REPAIR_UNDONE);
        assert_false(info->damaged);
    }
    assert_true(list->len < PROCS * ROUNDS); /* compacted */
    assert_int_equal(count_in_journal(fx, "COMPACTED\t"), 1);
    g_autofree char *jp = journal_path(fx);
    GStatBuf st;
    assert_int_equal(g_stat(jp, &st), 0);
    assert_true(st.st_size < 2 * LIMIT);
    g_unsetenv("VHDHEAL_TEST_JOURNAL_COMPACT_AT");
}

/* One repair of the fixture's child, committed then undone (it reads as it did). */
static void repair_and_undo(fixture *fx, vh_journal *j)
{
    assert_int_equal(do_repair(j, fx->child, NULL), 0);
    g_autoptr(GPtrArray) list = NULL;
    assert_int_equal(vh_journal_list(j, &list, NULL), 0);
    vh_repair_info *done = find_info(list, "child.vhd", VH_REPAIR_COMMITTED);
    assert_non_null(done);
    assert_int_equal(vh_journal_undo(j, done->id, NULL), 0);
}

static void keep_warning(const gchar *domain, GLogLevelFlags level, const gchar *msg, gpointer data)
{
    g_ptr_array_add(data, g_strdup(msg));
}

static goffset size_of(const char *path)
{
    GStatBuf st;
    assert_int_equal(g_stat(path, &st), 0);
    return st.st_size;
}

/*
 * A compaction that cannot write journal.new (a folder planted there, which stops root too) is
 * one warning (g_warning, as the engine's others) naming the journal and the errno, once per
 * process and cause however many repairs meet it; the repairs themselves go on. Once
 * journal.new can be made again the journal is compacted.
 */
static void failed_compaction_warns_once(void **state)
{
    fixture *fx = *state;
    g_setenv("VHDHEAL_TEST_JOURNAL_COMPACT_AT", "4096", TRUE);
    g_autoptr(GPtrArray) warnings = g_ptr_array_new_with_free_func(g_free);
    guint handler = g_log_set_handler(NULL, G_LOG_LEVEL_WARNING, keep_warning, warnings);
    g_autofree char *jp = journal_path(fx);
    g_autofree char *planted = g_strconcat(jp, ".new", NULL);
    g_autofree char *inside = g_build_filename(planted, "x", NULL);
    g_autoptr(vh_journal) j = NULL;
    assert_int_equal(vh_journal_open(fx->store, &j, NULL), 0);
    assert_int_equal(g_mkdir(planted, 0700), 0);
    assert_true(g_file_set_contents(inside, "x", 1, NULL));
    int rounds = 0;
    while (warnings->len == 0) { /* until the journal passes 4096 bytes at a repair's start */
        assert_true(rounds++ < 100);
        repair_and_undo(fx, j);
    }
    assert_true(size_of(jp) > 4096);
    for (int k = 0; k < 3; k++) {
        goffset before = size_of(jp);
        repair_and_undo(fx, j);
        assert_true(size_of(jp) > before); /* not compacted: it grew */
        assert_int_equal(warnings->len, 1);
    }
    const char *w = warnings->pdata[0];
    print_message("# %s\n", w);
    g_autofree char *code = g_strdup_printf("errno %d", EEXIST);
    assert_non_null(strstr(w, jp));
    assert_non_null(strstr(w, code));
    assert_non_null(strstr(w, g_strerror(EEXIST)));
    g_autoptr(GBytes) child_now = file_bytes(fx->child);
    assert_true(g_bytes_equal(child_now, fx->original));
    assert_int_equal(g_unlink(inside), 0);
    assert_int_equal(g_rmdir(planted), 0);
    goffset before = size_of(jp);
    repair_and_undo(fx, j);
    assert_true(size_of(jp) < before); /* compacted at last */
    assert_int_equal(count_in_journal(fx, "COMPACTED\t"), 1);
    assert_int_equal(warnings->len, 1);
    g_log_remove_handler(NULL, handler);
    g_unsetenv("VHDHEAL_TEST_JOURNAL_COMPACT_AT");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(commit_then_undo_restores_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(undo_refuses_a_changed_child, setup, teardown),
        cmocka_unit_test_setup_teardown(crash_at_every_op_recovers, setup, teardown),
        cmocka_unit_test_setup_teardown(unfinished_last_record_is_ignored, setup, teardown),
        cmocka_unit_test_setup_teardown(torn_record_is_skipped, setup, teardown),
        cmocka_unit_test_setup_teardown(enospc_aborts_the_repair, setup, teardown),
        cmocka_unit_test_setup_teardown(recovery_skips_a_locked_child, setup, teardown),
        cmocka_unit_test_setup_teardown(recovery_leaves_a_changed_child, setup, teardown),
        cmocka_unit_test_setup_teardown(recovery_happens_once, setup, teardown),
        cmocka_unit_test_setup_teardown(symlinks_are_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(modes_are_private, setup, teardown),
        cmocka_unit_test_setup_teardown(legacy_journal_is_read, setup, teardown),
        cmocka_unit_test_setup_teardown(unchanged_bytes_are_not_journaled, setup, teardown),
        cmocka_unit_test_setup_teardown(compaction_keeps_what_recovery_needs, setup, teardown),
        cmocka_unit_test_setup_teardown(compaction_under_concurrent_repairs, setup, teardown),
        cmocka_unit_test_setup_teardown(failed_compaction_warns_once, setup, teardown),
        cmocka_unit_test(vhd_damaged_range),
        cmocka_unit_test(vhdx_damaged_range),
        cmocka_unit_test(damage_after_a_commit_spares_it),
        cmocka_unit_test(vhd_torn_last_range),
        cmocka_unit_test(vhdx_torn_last_range),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
