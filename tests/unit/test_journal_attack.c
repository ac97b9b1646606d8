// SPDX-License-Identifier: GPL-2.0-or-later
/* test_journal_attack.c - the repair journal under hostile conditions: a compaction must leave
 * every kept repair read exactly as before (torn and damaged records included), and a journal
 * whose name was taken away must not keep its lock held. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "journal.h"
#include "tmpfix.h"

#define CHILD_SIZE 16384

static char *store_path(void)
{
    return tpath("store");
}

static char *journal_path(void)
{
    return g_build_filename(tmp_dir, "store", ".vhdheal", "journal", NULL);
}

/* A child of CHILD_SIZE bytes filled with `fill`. */
static void make_child(const char *name, uint8_t fill)
{
    g_autofree char *store = store_path();
    g_mkdir_with_parents(store, 0755);
    g_autofree char *p = g_build_filename(store, name, NULL);
    g_autofree uint8_t *buf = g_malloc(CHILD_SIZE);
    memset(buf, fill, CHILD_SIZE);
    assert_true(g_file_set_contents(p, (const char *)buf, CHILD_SIZE, NULL));
}

static GBytes *child_bytes(const char *name)
{
    g_autofree char *p = g_build_filename(tmp_dir, "store", name, NULL);
    return file_bytes(p);
}

/* Begins a repair of `name` and makes `nwrites` journaled writes of `len` bytes (each 4096
 * bytes apart, filled with `fill`); the repair is left open (the caller commits or releases). */
static vh_repair *repair_writes(vh_journal *j, vh_file *f, const char *name, int nwrites,
                                size_t len, uint8_t fill)
{
    g_autofree char *store = store_path();
    g_autofree char *p = g_build_filename(store, name, NULL);
    g_autoptr(GError) e = NULL;
    assert_int_equal(vh_file_open(f, p, true, &e), 0);
    vh_repair *r = NULL;
    assert_int_equal(vh_journal_begin(j, f, "old", "new", &r, &e), 0);
    g_autofree uint8_t *buf = g_malloc(len);
    memset(buf, fill, len);
    for (int k = 0; k < nwrites; k++)
        assert_int_equal(vh_file_write(f, buf, len, (uint64_t)k * 4096, "test", &e), 0);
    return r;
}

/* n committed repairs of `name`, each rewriting its first `len` bytes. */
static void committed_repairs(vh_journal *j, const char *name, int n, size_t len)
{
    for (int i = 0; i < n; i++) {
        vh_file f;
        vh_repair *r = repair_writes(j, &f, name, 1, len, (uint8_t)(0x40 + i));
        g_autoptr(GError) e = NULL;
        assert_int_equal(vh_file_flush(&f, &e), 0);
        assert_int_equal(vh_journal_commit(r, &e), 0);
        vh_file_close(&f);
    }
}

static GBytes *journal_bytes(void)
{
    g_autofree char *p = journal_path();
    return file_bytes(p);
}

static void journal_set(const char *data, size_t len)
{
    g_autofree char *p = journal_path();
    assert_true(g_file_set_contents(p, data, (gssize)len, NULL));
    chmod(p, 0600);
}

static void journal_append_raw(const char *data, size_t len)
{
    g_autofree char *p = journal_path();
    int fd = open(p, O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
}

/* The offset of the last record of the journal text (its magic). */
static size_t last_record(const char *text, size_t len)
{
    const char *last = NULL;
    for (const char *p = text;
         (p = g_strstr_len(p, (gssize)(len - (size_t)(p - text)), "@VHJ2 ")) != NULL; p++)
        last = p;
    assert_non_null(last);
    return (size_t)(last - text);
}

/* The state of repair `id` as listed (damaged flag in *damaged). */
static vh_repair_state listed_state(vh_journal *j, const char *id, bool *damaged)
{
    g_autoptr(GPtrArray) list = NULL;
    g_autoptr(GError) e = NULL;
    assert_int_equal(vh_journal_list(j, &list, &e), 0);
    for (guint i = 0; i < list->len; i++) {
        vh_repair_info *info = list->pdata[i];
        if (strcmp(info->id, id) == 0) {
            *damaged = info->damaged;
            return info->state;
        }
    }
    fail_msg("repair %s is not listed", id);
    return VH_REPAIR_OPEN;
}

/* Starts a repair of `name` whose BEGIN fails after the compaction it triggers (a crash or a
 * full disk right after the journal was replaced): the journal ends as the compaction left it.
 * Returns the journal's size before. */
static size_t compact_then_fail(vh_journal *j, const char *name)
{
    g_autoptr(GBytes) before = journal_bytes();
    g_setenv("VHDHEAL_TEST_JOURNAL_COMPACT_AT", "4096", TRUE);
    g_autofree char *store = store_path();
    g_autofree char *p = g_build_filename(store, name, NULL);
    vh_file f;
    g_autoptr(GError) e = NULL;
    assert_int_equal(vh_file_open(&f, p, true, &e), 0);
    vh_fault_arm(VH_FAULT_ONCE, 1, 0);
    vh_fault_set_errno(ENOSPC);
    vh_repair *r = NULL;
    assert_int_equal(vh_journal_begin(j, &f, "old", "new", &r, &e), -ENOSPC);
    vh_fault_disarm();
    vh_file_close(&f);
    g_unsetenv("VHDHEAL_TEST_JOURNAL_COMPACT_AT");
    g_autoptr(GBytes) after = journal_bytes();
    /* the compaction happened: otherwise this test shows nothing */
    assert_true(g_bytes_get_size(after) < g_bytes_get_size(before) / 2);
    return g_bytes_get_size(before);
}

/*
 * A repair whose last RANGE record a crash cut two bytes short, closed by the torn mark of the
 * next appender: a torn tail, rolled back. When a compaction drops every record after it (the
 * BEGIN that triggered the compaction then failing), it must still be read as torn, not as a
 * damaged record ("all of it there, closed by its newline"): the mark's newline stands where
 * the record's own newline was.
 */
static void compaction_keeps_a_torn_range_torn(void **state)
{
    (void)state;
    make_child("a", 0x11);
    make_child("b", 0x22);
    make_child("c", 0x33);
    g_autofree char *store = store_path();
    g_autoptr(GBytes) orig = child_bytes("a");
    g_autoptr(vh_journal) j = NULL;
    g_autoptr(GError) e = NULL;
    assert_int_equal(vh_journal_open(store, &j, &e), 0);
    vh_file f;
    vh_repair *x = repair_writes(j, &f, "a", 2, 512, 0xaa);
    g_autofree char *xid = g_strdup(vh_repair_id(x));
    vh_journal_release(x);
    /* the crash: the second record was torn two bytes short, so its write was never made */
    uint8_t back[512];
    memset(back, 0x11, sizeof back);
    assert_int_equal(pwrite(f.fd, back, sizeof back, 4096), (ssize_t)sizeof back);
    vh_file_close(&f);
    {
        g_autoptr(GBytes) jb = journal_bytes();
        gsize n;
        const char *t = g_bytes_get_data(jb, &n);
        journal_set(t, n - 2);
    }
    committed_repairs(j, "b", 4, 2048); /* the first BEGIN closes the torn tail with its mark */
    bool damaged = true;
    assert_int_equal(listed_state(j, xid, &damaged), VH_REPAIR_OPEN);
    assert_false(damaged);
    compact_then_fail(j, "c");
    assert_int_equal(listed_state(j, xid, &damaged), VH_REPAIR_OPEN);
    assert_false(damaged); /* read as before the compaction */
    vh_recover_stats st = {0};
    assert_int_equal(vh_journal_recover(j, "a", &st, &e), 1);
    assert_int_equal(st.left, 0);
    vh_recover_stats_clear(&st);
    g_autoptr(GBytes) now = child_bytes("a");
    assert_true(g_bytes_equal(now, orig));
}

/*
 * A repair whose second RANGE record was damaged after its write was made (its length field):
 * followed by other records it is damage, and recovery leaves the repair alone (restoring the
 * first range only would leave the child neither as it was nor as repaired). A compaction that
 * drops every record after it must not turn it into a torn tail (it would end the file short of
 * its length).
 */
static void compaction_keeps_a_damaged_range_damaged(void **state)
{
    (void)state;
    make_child("a", 0x11);
    make_child("b", 0x22);
    make_child("c", 0x33);
    g_autofree char *store = store_path();
    g_autoptr(vh_journal) j = NULL;
    g_autoptr(GError) e = NULL;
    assert_int_equal(vh_journal_open(store, &j, &e), 0);
    vh_file f;
    vh_repair *x = repair_writes(j, &f, "a", 2, 512, 0xaa);
    g_autofree char *xid = g_strdup(vh_repair_id(x));
    vh_journal_release(x);
    vh_file_close(&f);
    {
        g_autoptr(GBytes) jb = journal_bytes();
        gsize n;
        const char *t = g_bytes_get_data(jb, &n);
        g_autofree char *copy = g_memdup2(t, n);
        copy[last_record(copy, n) + 8] = '7'; /* "@VHJ2 00" -> "@VHJ2 007": far too long */
        journal_set(copy, n);
    }
    committed_repairs(j, "b", 4, 2048);
    bool damaged = false;
    assert_int_equal(listed_state(j, xid, &damaged), VH_REPAIR_OPEN);
    assert_true(damaged);
    g_autoptr(GBytes) repaired = child_bytes("a");
    compact_then_fail(j, "c");
    assert_int_equal(listed_state(j, xid, &damaged), VH_REPAIR_OPEN);
    assert_true(damaged); /* read as before the compaction */
    vh_recover_stats st = {0};
    assert_int_equal(vh_journal_recover(j, "a", &st, &e), 0);
    assert_int_equal(st.left, 1);
    vh_recover_stats_clear(&st);
    g_autoptr(GBytes) now = child_bytes("a");
    assert_true(g_bytes_equal(now, repaired));
}

/*
 * A damaged RANGE record (a byte of its payload flipped) followed by a committed repair's
 * records and then by a record torn before its magic was whole ("@VH", closed by the torn mark
 * of the next appender). When the compaction drops the committed repair, the damaged record
 * must not swallow the torn line and, ending in its mark, pass for a torn tail.
 */
static void compaction_does_not_merge_damage_into_a_torn_line(void **state)
{
    (void)state;
    make_child("a", 0x11);
    make_child("b", 0x22);
    make_child("c", 0x33);
    g_autofree char *store = store_path();
    g_autoptr(vh_journal) j = NULL;
    g_autoptr(GError) e = NULL;
    assert_int_equal(vh_journal_open(store, &j, &e), 0);
    vh_file f;
    vh_repair *x = repair_writes(j, &f, "a", 2, 512, 0xaa);
    g_autofree char *xid = g_strdup(vh_repair_id(x));
    vh_journal_release(x);
    vh_file_close(&f);
    {
        g_autoptr(GBytes) jb = journal_bytes();
        gsize n;
        const char *t = g_bytes_get_data(jb, &n);
        g_autofree char *copy = g_memdup2(t, n);
        size_t at = last_record(copy, n) + 24 + 80; /* inside its base64 */
        copy[at] = copy[at] == 'A' ? 'B' : 'A';
        journal_set(copy, n);
    }
    committed_repairs(j, "b", 4, 2048);
    journal_append_raw("@VH", 3); /* a writer crashed three bytes into its record */
    g_autoptr(GBytes) repaired = child_bytes("a");
    bool damaged = false;
    assert_int_equal(listed_state(j, xid, &damaged), VH_REPAIR_OPEN);
    assert_true(damaged);
    /* a repair of another child compacts the journal (its records follow the torn line) */
    g_setenv("VHDHEAL_TEST_JOURNAL_COMPACT_AT", "4096", TRUE);
    g_autoptr(GBytes) before = journal_bytes();
    committed_repairs(j, "c", 1, 512);
    g_unsetenv("VHDHEAL_TEST_JOURNAL_COMPACT_AT");
    g_autoptr(GBytes) after = journal_bytes();
    assert_true(g_bytes_get_size(after) < g_bytes_get_size(before) / 2);
    assert_int_equal(listed_state(j, xid, &damaged), VH_REPAIR_OPEN);
    assert_true(damaged); /* read as before the compaction */
    vh_recover_stats st = {0};
    assert_int_equal(vh_journal_recover(j, "a", &st, &e), 0);
    assert_int_equal(st.left, 1);
    vh_recover_stats_clear(&st);
    g_autoptr(GBytes) now = child_bytes("a");
    assert_true(g_bytes_equal(now, repaired));
}

/* Is a write lock held (by anyone but the descriptor asking) on the file at path? */
static bool write_locked(const char *path)
{
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    assert_int_equal(fcntl(fd, F_OFD_GETLK, &fl), 0);
    close(fd);
    return fl.l_type != F_UNLCK;
}

/*
 * The journal's name replaced by a symbolic link (or removed, in a folder where no new one can
 * be made) while a process holds the journal open: its next append fails (ELOOP), and it must
 * not keep the lock it took on the old file, or every other process that has that file open
 * (another mount's daemon) waits for it for ever.
 */
static void failed_follow_releases_the_lock(void **state)
{
    (void)state;
    make_child("a", 0x11);
    g_autofree char *store = store_path();
    g_autoptr(vh_journal) j = NULL;
    g_autoptr(GError) e = NULL;
    assert_int_equal(vh_journal_open(store, &j, &e), 0);
    committed_repairs(j, "a", 1, 512);
    g_autofree char *jp = journal_path();
    g_autofree char *keep = g_strconcat(jp, ".keep", NULL);
    g_autofree char *sym = g_strconcat(jp, ".link", NULL);
    assert_int_equal(link(jp, keep), 0); /* the old file, still reachable by this test */
    assert_int_equal(symlink("/dev/null", sym), 0);
    assert_int_equal(rename(sym, jp), 0);
    vh_file f;
    vh_repair *r = NULL;
    g_autofree char *p = g_build_filename(store, "a", NULL);
    assert_int_equal(vh_file_open(&f, p, true, &e), 0);
    assert_int_equal(vh_journal_begin(j, &f, "old", "new", &r, &e), -ELOOP);
    g_clear_error(&e);
    vh_file_close(&f);
    assert_false(write_locked(keep));
}

/*
 * A compaction by a process whose umask takes the owner's write permission away (0222, 0277)
 * must still leave a journal of mode 0600: the journal it replaces was made 0600 whatever the
 * umask, and a journal of mode 0400 cannot be opened for writing by its owner (every later
 * repair and recovery of a non-root user fails with EACCES).
 */
static void compaction_keeps_the_journal_writable(void **state)
{
    (void)state;
    make_child("a", 0x11);
    make_child("b", 0x22);
    g_autofree char *store = store_path();
    g_autoptr(vh_journal) j = NULL;
    g_autoptr(GError) e = NULL;
    assert_int_equal(vh_journal_open(store, &j, &e), 0);
    committed_repairs(j, "a", 4, 2048);
    g_autoptr(GBytes) before = journal_bytes();
    mode_t old = umask(0222);
    g_setenv("VHDHEAL_TEST_JOURNAL_COMPACT_AT", "4096", TRUE);
    committed_repairs(j, "b", 1, 512);
    g_unsetenv("VHDHEAL_TEST_JOURNAL_COMPACT_AT");
    umask(old);
    g_autoptr(GBytes) after = journal_bytes();
    assert_true(g_bytes_get_size(after) < g_bytes_get_size(before)); /* it was compacted */
    g_autofree char *jp = journal_path();
    struct stat st;
    assert_int_equal(stat(jp, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
}

/*
 * An undo interrupted after its UNDOING record, then a repair of the same child committed (the
 * next open heals it), then the interrupted undo run again, as doc/journal.md says to complete
 * it: it must not write its original bytes over the later repair (which would stay listed as
 * done, and could never be undone: "changed since"). It refuses until the later repair is
 * undone; then both undos give back the original bytes.
 */
static void resumed_undo_does_not_undo_a_later_repair(void **state)
{
    (void)state;
    make_child("a", 0x11);
    g_autofree char *store = store_path();
    g_autoptr(GBytes) orig = child_bytes("a");
    g_autoptr(vh_journal) j = NULL;
    g_autoptr(GError) e = NULL;
    assert_int_equal(vh_journal_open(store, &j, &e), 0);
    vh_file f;
    vh_repair *x = repair_writes(j, &f, "a", 2, 512, 0xaa);
    g_autofree char *xid = g_strdup(vh_repair_id(x));
    assert_int_equal(vh_file_flush(&f, &e), 0);
    assert_int_equal(vh_journal_commit(x, &e), 0);
    vh_file_close(&f);
    /* the undo stops after UNDOING (its write and flush), at its first restoring write */
    vh_fault_arm(VH_FAULT_STOP, 3, 0);
    assert_true(vh_journal_undo(j, xid, &e) < 0);
    assert_true(vh_fault_fired());
    vh_fault_disarm();
    g_clear_error(&e);
    /* a later repair of the same child */
    vh_repair *r2 = repair_writes(j, &f, "a", 2, 512, 0xbb);
    g_autofree char *r2id = g_strdup(vh_repair_id(r2));
    assert_int_equal(vh_file_flush(&f, &e), 0);
    assert_int_equal(vh_journal_commit(r2, &e), 0);
    vh_file_close(&f);
    g_autoptr(GBytes) repaired = child_bytes("a");
    assert_int_equal(vh_journal_undo(j, xid, &e), -EBUSY);
    g_clear_error(&e);
    g_autoptr(GBytes) now = child_bytes("a");
    assert_true(g_bytes_equal(now, repaired));
    /* undone newest first, both give back the original bytes */
    assert_int_equal(vh_journal_undo(j, r2id, &e), 0);
    assert_int_equal(vh_journal_undo(j, xid, &e), 0);
    g_autoptr(GBytes) back = child_bytes("a");
    assert_true(g_bytes_equal(back, orig));
}

static const char *const kids[] = {"a", "b", "c", "d"};

/* A random history on children a..d: repairs committed, crashed (left unfinished), aborted and
 * undone, the journal torn or damaged between them as a crash or a bad disk leaves it. */
static void random_history(vh_journal *j, GRand *rnd)
{
    g_autoptr(GPtrArray) ids = g_ptr_array_new_with_free_func(g_free);
    for (int step = 0; step < 16; step++) {
        const char *child = kids[g_rand_int_range(rnd, 0, 4)];
        int op = g_rand_int_range(rnd, 0, 9);
        g_autoptr(GError) e = NULL;
        if (op <= 4) { /* a repair: committed, crashed or aborted */
            vh_file f;
            g_autofree char *p = g_build_filename(tmp_dir, "store", child, NULL);
            assert_int_equal(vh_file_open(&f, p, true, &e), 0);
            vh_repair *r = NULL;
            assert_int_equal(vh_journal_begin(j, &f, "old", "new", &r, &e), 0);
            int n = g_rand_int_range(rnd, 1, 4);
            for (int k = 0; k < n; k++) {
                size_t len = (size_t)g_rand_int_range(rnd, 1, 5) * 512;
                uint64_t off = (uint64_t)g_rand_int_range(rnd, 0, 28) * 512;
                g_autofree uint8_t *buf = g_malloc(len);
                memset(buf, g_rand_int_range(rnd, 0, 256), len);
                assert_int_equal(vh_file_write(&f, buf, len, off, "test", &e), 0);
            }
            if (op <= 2) {
                assert_int_equal(vh_file_flush(&f, &e), 0);
                g_ptr_array_add(ids, g_strdup(vh_repair_id(r)));
                assert_int_equal(vh_journal_commit(r, &e), 0);
            } else if (op == 3) {
                vh_journal_release(r);
            } else {
                assert_int_equal(vh_journal_abort(r, &e), 0);
            }
            vh_file_close(&f);
        } else if (op == 5 && ids->len) { /* may be refused: changed since, damaged */
            vh_journal_undo(j, ids->pdata[g_rand_int_range(rnd, 0, (gint32)ids->len)], NULL);
        } else {
            g_autoptr(GBytes) jb = journal_bytes();
            gsize n;
            const char *t = g_bytes_get_data(jb, &n);
            if (n < 64 || !g_strstr_len(t, (gssize)n, "@VHJ2 "))
                continue; /* no record yet (old-format lines only) */
            g_autofree char *copy = g_memdup2(t, n);
            size_t last = last_record(copy, n);
            if (op == 6) /* torn: the last record cut short */
                journal_set(copy, n - (size_t)g_rand_int_range(rnd, 1, (gint32)MIN(n - last, 80)));
            else if (op == 7) /* damaged: a byte of the last record */
                copy[last + (size_t)g_rand_int_range(rnd, 0, (gint32)(n - last))] ^= 0x20,
                    journal_set(copy, n);
            else /* a record torn before its magic was whole */
                journal_append_raw("@VH", 3);
        }
    }
}

/* A journal of the old text format: an unfinished repair of d (which holds what it found), a
 * rolled back one of c. */
static void legacy_journal(void)
{
    g_autofree char *dir = g_build_filename(tmp_dir, "store", ".vhdheal", NULL);
    assert_int_equal(g_mkdir_with_parents(dir, 0700), 0);
    uint8_t orig[512];
    memset(orig, 0x40, sizeof orig);
    g_autofree char *b64 = g_base64_encode(orig, sizeof orig);
    g_autofree char *text = g_strdup_printf("BEGIN\tL1\t1700000000\td\t%d\told\tnew\n"
                                            "RANGE\tL1\t0\t512\t%s\n"
                                            "BEGIN\tL2\t1700000001\tc\t%d\told\tnew\n"
                                            "ROLLBACK\tL2\n",
                                            CHILD_SIZE, b64, CHILD_SIZE);
    journal_set(text, strlen(text));
}

typedef struct {
    int rolled_back, resolved, left;
    GHashTable *listed; /* id -> state | damaged << 4 */
} decisions;

static void list_into(vh_journal *j, GHashTable *h)
{
    g_autoptr(GPtrArray) list = NULL;
    assert_int_equal(vh_journal_list(j, &list, NULL), 0);
    for (guint i = 0; i < list->len; i++) {
        vh_repair_info *info = list->pdata[i];
        g_hash_table_insert(h, g_strdup(info->id),
                            GINT_TO_POINTER((int)info->state | (info->damaged ? 16 : 0)));
    }
}

/*
 * Recovery after a compaction decides as before it: for random histories (repairs committed,
 * crashed, aborted and undone, the journal torn and damaged between them, a third of them after
 * lines of the old format), a copy of the store
 * is recovered without the compaction and the store after one (whose BEGIN then failed, so
 * that nothing follows what it wrote): every repair still listed reads the same (state,
 * damaged), recovery rolls back, resolves and leaves alone as many, and the children end byte
 * for byte the same.
 */
static void compaction_changes_no_decision(void **state)
{
    (void)state;
    int compacted = 0, rounds = 150;
    for (int round = 0; round < rounds; round++) {
        g_autofree char *cmd = g_strdup_printf("rm -rf '%s/store' '%s/copy'", tmp_dir, tmp_dir);
        assert_int_equal(system(cmd), 0);
        for (int k = 0; k < 4; k++)
            make_child(kids[k], (uint8_t)(0x10 * (k + 1)));
        make_child("e", 0x55);
        g_autofree char *store = store_path();
        g_autofree char *copy = tpath("copy");
        GRand *rnd = g_rand_new_with_seed((guint32)round);
        if (round % 3 == 0)
            legacy_journal();
        g_autoptr(vh_journal) j = NULL;
        assert_int_equal(vh_journal_open(store, &j, NULL), 0);
        random_history(j, rnd);
        g_rand_free(rnd);
        g_autofree char *cp = g_strdup_printf("cp -a '%s' '%s'", store, copy);
        assert_int_equal(system(cp), 0);
        g_autoptr(GBytes) before = journal_bytes();
        decisions d[2] = {{0}, {0}};
        for (int k = 0; k < 2; k++)
            d[k].listed = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
        list_into(j, d[0].listed);
        /* the compaction, its BEGIN failing */
        g_setenv("VHDHEAL_TEST_JOURNAL_COMPACT_AT", "4096", TRUE);
        vh_file f;
        g_autofree char *pe = g_build_filename(store, "e", NULL);
        assert_int_equal(vh_file_open(&f, pe, true, NULL), 0);
        vh_fault_arm(VH_FAULT_ONCE, 1, 0);
        vh_repair *r = NULL;
        assert_true(vh_journal_begin(j, &f, "old", "new", &r, NULL) < 0);
        vh_fault_disarm();
        vh_file_close(&f);
        g_unsetenv("VHDHEAL_TEST_JOURNAL_COMPACT_AT");
        g_autoptr(GBytes) after = journal_bytes();
        compacted += g_bytes_get_size(after) < g_bytes_get_size(before);
        list_into(j, d[1].listed);
        GHashTableIter it;
        gpointer id, v;
        g_hash_table_iter_init(&it, d[1].listed);
        while (g_hash_table_iter_next(&it, &id, &v)) {
            gpointer was = NULL;
            if (!g_hash_table_lookup_extended(d[0].listed, id, NULL, &was) || was != v)
                fail_msg("round %d: repair %s listed %d after the compaction, %d before", round,
                         (char *)id, GPOINTER_TO_INT(v), GPOINTER_TO_INT(was));
        }
        g_autoptr(vh_journal) j2 = NULL;
        assert_int_equal(vh_journal_open(copy, &j2, NULL), 0);
        vh_journal *js[2] = {j2, j};
        for (int k = 0; k < 2; k++) {
            vh_recover_stats st = {0};
            assert_true(vh_journal_recover(js[k], NULL, &st, NULL) >= 0);
            d[k].rolled_back = st.rolled_back;
            d[k].resolved = st.resolved;
            d[k].left = st.left;
            vh_recover_stats_clear(&st);
        }
        if (d[0].rolled_back != d[1].rolled_back || d[0].resolved != d[1].resolved ||
            d[0].left != d[1].left)
            fail_msg("round %d: recovery rolled back %d, resolved %d, left %d without the "
                     "compaction; %d, %d, %d after it",
                     round, d[0].rolled_back, d[0].resolved, d[0].left, d[1].rolled_back,
                     d[1].resolved, d[1].left);
        for (int k = 0; k < 4; k++) {
            g_autofree char *a = g_build_filename(store, kids[k], NULL);
            g_autofree char *b = g_build_filename(copy, kids[k], NULL);
            g_autoptr(GBytes) ba = file_bytes(a);
            g_autoptr(GBytes) bb = file_bytes(b);
            if (!g_bytes_equal(ba, bb))
                fail_msg("round %d: child %s differs after recovery with and without the "
                         "compaction",
                         round, kids[k]);
        }
        for (int k = 0; k < 2; k++)
            g_hash_table_destroy(d[k].listed);
    }
    print_message("# %d random histories, %d compacted\n", rounds, compacted);
    assert_true(compacted > rounds / 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(compaction_keeps_a_torn_range_torn, tmp_setup,
                                        tmp_teardown),
        cmocka_unit_test_setup_teardown(compaction_keeps_a_damaged_range_damaged, tmp_setup,
                                        tmp_teardown),
        cmocka_unit_test_setup_teardown(compaction_does_not_merge_damage_into_a_torn_line,
                                        tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(failed_follow_releases_the_lock, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(compaction_keeps_the_journal_writable, tmp_setup,
                                        tmp_teardown),
        cmocka_unit_test_setup_teardown(resumed_undo_does_not_undo_a_later_repair, tmp_setup,
                                        tmp_teardown),
        cmocka_unit_test_setup_teardown(compaction_changes_no_decision, tmp_setup, tmp_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
