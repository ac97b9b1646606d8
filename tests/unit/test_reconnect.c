// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * test_reconnect.c - the reconnect engine on real VHD and VHDX files: every error of
 * doc/design.md's errno table ("Extended attributes"), a successful reconnect, and crash safety by
 * fault injection at every write and flush (and torn writes at 512-byte boundaries), with a short
 * and a too-long new path.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <sys/wait.h>
#include <glib/gstdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"
#include "journal.h"
#include "reconnect.h"
#include "winpath.h"

#define VSIZE (8 * 1024 * 1024)

typedef struct {
    vh_format format;
    char *store;
    char *base;  /* where the parent is now */
    char *child; /* STORE/vms/child.ext */
} fx_t;

static char *fmt_ext(vh_format f)
{
    return f == VH_FORMAT_VHD ? "vhd" : "vhdx";
}

static void write_pattern(const char *path, uint64_t off, size_t len, uint8_t seed)
{
    g_autoptr(vh_disk) d = NULL;
    g_autoptr(GError) err = NULL;
    vh_chain_open_opts o = {.maxdepth = 16, .writable = true};
    int r = vh_chain_open(path, &o, &d, &err);
    if (r < 0)
        fail_msg("%s", err->message);
    g_autofree uint8_t *buf = g_malloc(len);
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(seed + i * 13);
    assert_int_equal(vh_disk_write(d, buf, off, len, NULL), 0);
    assert_int_equal(vh_disk_flush(d, NULL), 0);
}

static void make_dir(const char *p)
{
    assert_int_equal(g_mkdir_with_parents(p, 0755), 0);
}

/* A store with vms/child.EXT whose parent base.EXT was moved into `moved_dir` (broken link). */
static fx_t *make_store(vh_format f, const char *moved_dir)
{
    fx_t *fx = g_new0(fx_t, 1);
    fx->format = f;
    fx->store = g_dir_make_tmp("vh-reconnect-XXXXXX", NULL);
    g_autofree char *vms = g_build_filename(fx->store, "vms", NULL);
    make_dir(vms);
    g_autofree char *base0 = g_strdup_printf("%s/base.%s", vms, fmt_ext(f));
    fx->child = g_strdup_printf("%s/child.%s", vms, fmt_ext(f));
    vh_create_opts o = {.format = f, .type = VH_TYPE_DYNAMIC, .size = VSIZE};
    g_autoptr(GError) err = NULL;
    if (vh_disk_create(base0, &o, &err) < 0)
        fail_msg("%s", err->message);
    write_pattern(base0, 0, 3 * 1024 * 1024 + 777, 1);
    {
        g_autoptr(vh_disk) parent = NULL;
        assert_int_equal(vh_disk_open(base0, VH_OPEN_READ, &parent, NULL), 0);
        g_autofree char *rel = vh_winpath_relative(fx->child, base0);
        vh_create_opts c = {.type = VH_TYPE_DIFFERENCING, .parent = parent, .parent_relative = rel};
        if (vh_disk_create(fx->child, &c, &err) < 0)
            fail_msg("%s", err->message);
    }
    write_pattern(fx->child, 1024 * 1024 + 5, 70000, 9);
    g_autofree char *dir = g_build_filename(fx->store, moved_dir, NULL);
    make_dir(dir);
    fx->base = g_strdup_printf("%s/base.%s", dir, fmt_ext(f));
    assert_int_equal(rename(base0, fx->base), 0);
    return fx;
}

static void free_store(fx_t *fx)
{
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", fx->store);
    assert_int_equal(system(cmd), 0);
    g_free(fx->store);
    g_free(fx->base);
    g_free(fx->child);
    g_free(fx);
}

static GBytes *file_bytes(const char *path)
{
    char *data;
    gsize len;
    assert_true(g_file_get_contents(path, &data, &len, NULL));
    return g_bytes_new_take(data, len);
}

static void put_bytes(const char *path, GBytes *b)
{
    assert_true(
        g_file_set_contents(path, g_bytes_get_data(b, NULL), (gssize)g_bytes_get_size(b), NULL));
}

/* sha256 of the child's virtual content with the true parent attached by hand. */
static char *content_hash(const fx_t *fx)
{
    g_autoptr(vh_disk) c = NULL;
    vh_disk *p = NULL;
    g_autoptr(GError) err = NULL;
    if (vh_disk_open(fx->child, VH_OPEN_READ, &c, &err) < 0)
        return NULL;
    assert_int_equal(vh_disk_open(fx->base, VH_OPEN_READ, &p, NULL), 0);
    vh_disk_set_parent(c, p);
    g_autoptr(GChecksum) sum = g_checksum_new(G_CHECKSUM_SHA256);
    g_autofree uint8_t *buf = g_malloc(1024 * 1024);
    for (uint64_t off = 0; off < c->virtual_size; off += 1024 * 1024) {
        assert_int_equal(vh_disk_read(c, buf, off, 1024 * 1024, NULL), 0);
        g_checksum_update(sum, buf, 1024 * 1024);
    }
    return g_strdup(g_checksum_get_string(sum));
}

static char *link_of(const char *path)
{
    g_autoptr(vh_disk) d = NULL;
    g_autoptr(GError) err = NULL;
    if (vh_disk_open(path, VH_OPEN_READ, &d, &err) < 0)
        return NULL;
    return vh_link_describe(d);
}

static int reconnect(const fx_t *fx, const char *parent, bool force, GError **err)
{
    vh_reconnect_opts o = {.store = fx->store, .ignore_id_mismatch = force};
    vh_reconnect_result res;
    int r = vh_reconnect(fx->child, parent, &o, &res, err);
    vh_reconnect_result_clear(&res);
    return r;
}

static void reconnect_heals_the_chain(vh_format f)
{
    fx_t *fx = make_store(f, "moved/elsewhere");
    g_autoptr(vh_disk) broken = NULL;
    g_autoptr(GError) err = NULL;
    vh_chain_open_opts o = {.store = fx->store, .maxdepth = 16};
    assert_true(vh_chain_open(fx->child, &o, &broken, &err) < 0);
    g_autofree char *before = content_hash(fx);
    assert_int_equal(reconnect(fx, fx->base, false, &err), 0);
    g_autoptr(vh_disk) chain = NULL;
    assert_int_equal(vh_chain_open(fx->child, &o, &chain, NULL), 0);
    assert_non_null(chain->parent);
    g_autofree char *after = content_hash(fx);
    assert_string_equal(before, after);
    /* the relative locator now points at the new place */
    bool found = false;
    for (guint i = 0; i < chain->link.locators->len; i++) {
        vh_locator *l = chain->link.locators->pdata[i];
        if (l->kind == VH_LOC_RELATIVE_PATH || l->kind == VH_LOC_W2RU) {
            g_autofree char *want = g_strdup_printf("..\\moved\\elsewhere\\base.%s", fmt_ext(f));
            assert_string_equal(l->path, want);
            found = true;
        }
    }
    assert_true(found);
    free_store(fx);
}

static void vhd_reconnect_heals(void **state)
{
    reconnect_heals_the_chain(VH_FORMAT_VHD);
}

static void vhdx_reconnect_heals(void **state)
{
    reconnect_heals_the_chain(VH_FORMAT_VHDX);
}

static void expect_error(const fx_t *fx, const char *parent, bool force, int code, const char *text)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GBytes) before = file_bytes(fx->child);
    int r = reconnect(fx, parent, force, &err);
    if (r != -code)
        fail_msg("reconnect to %s: want %s, got %d (%s)", parent, g_strerror(code), r,
                 err ? err->message : "no error");
    assert_non_null(err);
    if (text && !strstr(err->message, text))
        fail_msg("message '%s' lacks '%s'", err->message, text);
    g_autoptr(GBytes) after = file_bytes(fx->child);
    assert_true(g_bytes_equal(before, after)); /* a refused reconnect writes nothing */
}

static void errors_follow_the_table(vh_format f)
{
    fx_t *fx = make_store(f, "moved");
    const char *ext = fmt_ext(f);
    g_autofree char *missing = g_build_filename(fx->store, "nope.vhdx", NULL);
    expect_error(fx, missing, false, ENOENT, "does not exist");
    expect_error(fx, "", false, EINVAL, "empty");
    /* not a disk */
    g_autofree char *text = g_build_filename(fx->store, "notes.txt", NULL);
    assert_true(g_file_set_contents(text, "hello", -1, NULL));
    expect_error(fx, text, false, EINVAL, "not");
    /* another disk of the same size: identity mismatch, accepted with force */
    g_autofree char *other = g_strdup_printf("%s/other.%s", fx->store, ext);
    vh_create_opts o = {.format = f, .type = VH_TYPE_DYNAMIC, .size = VSIZE};
    assert_int_equal(vh_disk_create(other, &o, NULL), 0);
    expect_error(fx, other, false, EINVAL, "id-mismatch");
    /* size mismatch, even with force */
    g_autofree char *small = g_strdup_printf("%s/small.%s", fx->store, ext);
    o.size = VSIZE / 2;
    assert_int_equal(vh_disk_create(small, &o, NULL), 0);
    expect_error(fx, small, true, EINVAL, "size-mismatch");
    /* format mismatch */
    g_autofree char *otherfmt =
        g_strdup_printf("%s/fmt.%s", fx->store, f == VH_FORMAT_VHD ? "vhdx" : "vhd");
    o.size = VSIZE;
    o.format = f == VH_FORMAT_VHD ? VH_FORMAT_VHDX : VH_FORMAT_VHD;
    assert_int_equal(vh_disk_create(otherfmt, &o, NULL), 0);
    expect_error(fx, otherfmt, true, EINVAL, "format-mismatch");
    /* outside the store */
    g_autofree char *outside_dir = g_dir_make_tmp("vh-outside-XXXXXX", NULL);
    g_autofree char *outside = g_strdup_printf("%s/base.%s", outside_dir, ext);
    g_autofree char *cmd = g_strdup_printf("cp '%s' '%s'", fx->base, outside);
    assert_int_equal(system(cmd), 0);
    expect_error(fx, outside, false, EXDEV, "outside");
    /* the child is not a differencing disk */
    {
        vh_reconnect_opts ro = {.store = fx->store};
        vh_reconnect_result res;
        g_autoptr(GError) err = NULL;
        assert_int_equal(vh_reconnect(fx->base, other, &ro, &res, &err), -ENOTSUP);
        g_clear_error(&err);
        assert_int_equal(vh_reconnect(text, fx->base, &ro, &res, &err), -ENOTSUP);
    }
    /* a cycle: a grandchild of the child offered as its parent */
    {
        g_autofree char *grand = g_strdup_printf("%s/vms/grand.%s", fx->store, ext);
        assert_int_equal(reconnect(fx, fx->base, false, NULL), 0);
        g_autoptr(vh_disk) c = NULL;
        assert_int_equal(vh_disk_open(fx->child, VH_OPEN_READ, &c, NULL), 0);
        g_autofree char *rel = g_strdup_printf(".\\child.%s", ext);
        vh_create_opts go = {.type = VH_TYPE_DIFFERENCING, .parent = c, .parent_relative = rel};
        assert_int_equal(vh_disk_create(grand, &go, NULL), 0);
        expect_error(fx, grand, true, EINVAL, "cycle");
        expect_error(fx, fx->child, true, EINVAL, "cycle");
    }
    /* a corrupt child (both VHDX headers / the VHD dynamic header fail their checksums): EIO */
    {
        g_autofree char *copy = g_strdup_printf("%s/vms/corrupt.%s", fx->store, ext);
        g_autofree char *cp = g_strdup_printf("cp '%s' '%s'", fx->child, copy);
        assert_int_equal(system(cp), 0);
        int fd = open(copy, O_RDWR);
        if (f == VH_FORMAT_VHD) {
            assert_int_equal(pwrite(fd, "\x00\x00\x00\x01", 4, 512 + 36), 4);
        } else {
            assert_int_equal(pwrite(fd, "\xde\xad\xbe\xef", 4, 64 * 1024 + 4), 4);
            assert_int_equal(pwrite(fd, "\xde\xad\xbe\xef", 4, 128 * 1024 + 4), 4);
        }
        close(fd);
        vh_reconnect_opts ro = {.store = fx->store};
        vh_reconnect_result res;
        g_autoptr(GError) err = NULL;
        assert_int_equal(vh_reconnect(copy, fx->base, &ro, &res, &err), -EIO);
        assert_non_null(strstr(err->message, "checksum"));
    }
    /* locked by another holder: EBUSY */
    {
        int fd = open(fx->child, O_RDWR);
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
        assert_int_equal(fcntl(fd, F_OFD_SETLK, &fl), 0);
        expect_error(fx, fx->base, false, EBUSY, "in use");
        close(fd);
    }
    g_autofree char *cmd2 = g_strdup_printf("rm -rf '%s'", outside_dir);
    assert_int_equal(system(cmd2), 0);
    free_store(fx);
}

static void vhd_errors(void **state)
{
    errors_follow_the_table(VH_FORMAT_VHD);
}

static void vhdx_errors(void **state)
{
    errors_follow_the_table(VH_FORMAT_VHDX);
}

/*
 * For every mutating op n of the reconnect, and torn writes: stop there. After a clean stop the
 * child must open, without any recovery, with the old or the new link and the same content
 * (format-level crash safety); after every stop, torn or not, the journal's recovery (what the
 * next open does) must give back the original bytes.
 */
static int crash_everywhere(vh_format f, const char *moved_dir)
{
    fx_t *fx = make_store(f, moved_dir);
    g_autoptr(GBytes) original = file_bytes(fx->child);
    g_autofree char *old_link = link_of(fx->child);
    g_autofree char *hash = content_hash(fx);
    g_autofree char *journal_dir = g_build_filename(fx->store, ".vhdheal", NULL);
    g_autofree char *rm = g_strdup_printf("rm -rf '%s'", journal_dir);

    vh_fault_arm(VH_FAULT_NONE, 0, 0);
    assert_int_equal(reconnect(fx, fx->base, false, NULL), 0);
    long total = vh_fault_ops();
    g_autofree char *new_link = link_of(fx->child);
    assert_string_not_equal(old_link, new_link);
    int covered = 0;
    for (long n = 1; n <= total; n++) {
        for (size_t tear = 0; tear <= 1024; tear += 512) {
            put_bytes(fx->child, original);
            assert_int_equal(system(rm), 0);
            vh_fault_arm(tear ? VH_FAULT_TEAR : VH_FAULT_STOP, n, tear);
            g_autoptr(GError) err = NULL;
            int r = reconnect(fx, fx->base, false, &err);
            vh_fault_disarm();
            assert_true(r < 0);
            if (tear == 0) {
                /* A clean stop: the format's own write order keeps the file consistent. */
                g_autofree char *link = link_of(fx->child);
                if (!link || (strcmp(link, old_link) != 0 && strcmp(link, new_link) != 0))
                    fail_msg("crash at op %ld/%ld: link is '%s'", n, total,
                             link ? link : "(does not open)");
                g_autofree char *h = content_hash(fx);
                assert_string_equal(h, hash);
            }
            /* A torn write may leave a checksummed structure half old, half new: the next
             * open's journal recovery puts back the original bytes (doc/design.md "Journal"). */
            g_autoptr(vh_journal) j = NULL;
            assert_int_equal(vh_journal_open(fx->store, &j, NULL), 0);
            assert_true(vh_journal_recover(j, NULL, NULL, NULL) >= 0);
            g_autoptr(GBytes) now = file_bytes(fx->child);
            assert_true(g_bytes_equal(now, original));
            covered++;
        }
    }
    free_store(fx);
    return covered;
}

/* A folder path long enough that no locator of the original layout can hold it. */
static char *long_dir(void)
{
    GString *s = g_string_new("deep");
    for (int i = 0; i < 9; i++) {
        g_string_append_c(s, '/');
        for (int k = 0; k < 240; k++)
            g_string_append_c(s, (char)('a' + (i + k) % 26));
    }
    return g_string_free(s, FALSE);
}

static void vhd_crash_safety(void **state)
{
    g_autofree char *deep = long_dir();
    int a = crash_everywhere(VH_FORMAT_VHD, "moved");
    int b = crash_everywhere(VH_FORMAT_VHD, deep);
    print_message("# VHD crash points covered: %d (short path), %d (long path)\n", a, b);
    assert_true(a > 3 && b > 3);
}

static void vhdx_crash_safety(void **state)
{
    g_autofree char *deep = long_dir();
    int a = crash_everywhere(VH_FORMAT_VHDX, "moved");
    int b = crash_everywhere(VH_FORMAT_VHDX, deep);
    print_message("# VHDX crash points covered: %d (short path), %d (long path)\n", a, b);
    assert_true(a > 3 && b > 3);
}

static guint journal_count(const fx_t *fx, const char *what)
{
    g_autofree char *jp = g_build_filename(fx->store, ".vhdheal", "journal", NULL);
    g_autofree char *text = NULL;
    if (!g_file_get_contents(jp, &text, NULL, NULL))
        return 0;
    guint n = 0;
    for (const char *p = text; (p = strstr(p, what)); p++)
        n++;
    return n;
}

static int say_healed(void *ctx, GError **err)
{
    (*(int *)ctx)++;
    return 0;
}

/* Reconnects of one broken child, one after the other or at once from several processes, make
 * one repair: under the lock the second finds it healed and writes nothing. */
static void compare_and_swap(vh_format f)
{
    fx_t *fx = make_store(f, "moved");
    g_autoptr(GBytes) broken = file_bytes(fx->child);
    vh_reconnect_opts o = {.store = fx->store};
    vh_reconnect_result res;
    assert_int_equal(vh_reconnect(fx->child, fx->base, &o, &res, NULL), 0);
    assert_false(res.already_healed);
    assert_non_null(res.repair_id);
    vh_reconnect_result_clear(&res);
    g_autoptr(GBytes) healed = file_bytes(fx->child);
    g_autofree char *healed_link = link_of(fx->child);
    assert_int_equal(vh_reconnect(fx->child, fx->base, &o, &res, NULL), 0);
    assert_true(res.already_healed);
    assert_null(res.repair_id);
    vh_reconnect_result_clear(&res);
    g_autoptr(GBytes) again = file_bytes(fx->child);
    assert_true(g_bytes_equal(again, healed));
    assert_int_equal(journal_count(fx, "BEGIN"), 1);

    /* a heal whose verdict, re-run under the lock, says the link is no longer broken */
    put_bytes(fx->child, broken);
    int asked = 0;
    vh_reconnect_opts ho = {
        .store = fx->store, .still_broken = say_healed, .still_broken_ctx = &asked};
    assert_int_equal(vh_reconnect(fx->child, fx->base, &ho, &res, NULL), 0);
    assert_true(res.already_healed);
    vh_reconnect_result_clear(&res);
    assert_int_equal(asked, 1);
    g_autoptr(GBytes) untouched = file_bytes(fx->child);
    assert_true(g_bytes_equal(untouched, broken));
    assert_int_equal(journal_count(fx, "BEGIN"), 1);

    /* eight processes at once: one repair */
    for (int round = 0; round < 3; round++) {
        put_bytes(fx->child, broken);
        guint commits = journal_count(fx, "COMMIT");
        int go[2];
        assert_int_equal(pipe(go), 0);
        pid_t pids[8];
        for (int k = 0; k < 8; k++) {
            pids[k] = fork();
            assert_true(pids[k] >= 0);
            if (pids[k] == 0) {
                char c;
                close(go[1]);
                if (read(go[0], &c, 1) < 0)
                    _exit(3);
                vh_reconnect_result cr;
                int r;
                GError *e = NULL;
                do { /* a loser of the lock race retries, as a later open would */
                    g_clear_error(&e);
                    r = vh_reconnect(fx->child, fx->base, &o, &cr, &e);
                } while (r == -EBUSY);
                if (r < 0)
                    fprintf(stderr, "reconnect: %s\n", e->message);
                _exit(r < 0 ? 3 : cr.already_healed ? 0 : 1);
            }
        }
        close(go[0]);
        close(go[1]);
        int wrote = 0;
        for (int k = 0; k < 8; k++) {
            int status;
            assert_int_equal(waitpid(pids[k], &status, 0), pids[k]);
            assert_true(WIFEXITED(status) && WEXITSTATUS(status) <= 1);
            wrote += WEXITSTATUS(status);
        }
        assert_int_equal(wrote, 1);
        assert_int_equal(journal_count(fx, "COMMIT"), commits + 1);
        g_autofree char *now = link_of(fx->child);
        assert_non_null(now);
        assert_string_equal(now, healed_link);
    }
    free_store(fx);
}

/* A repair that meets a live one (another process holds the child's lock while it heals it)
 * waits for the lock, then finds the link healed: "already healed", no second record, no
 * EBUSY (a timer's repair beside a mount, two hosts). */
static void waits_for_a_live_repair(vh_format f)
{
    fx_t *fx = make_store(f, "moved");
    g_autoptr(GBytes) broken = file_bytes(fx->child);
    vh_reconnect_opts o = {.store = fx->store};
    vh_reconnect_result res;
    assert_int_equal(vh_reconnect(fx->child, fx->base, &o, &res, NULL), 0);
    vh_reconnect_result_clear(&res);
    g_autoptr(GBytes) healed = file_bytes(fx->child);
    put_bytes(fx->child, broken);
    guint begins = journal_count(fx, "BEGIN");
    int locked[2];
    assert_int_equal(pipe(locked), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) { /* the live repair: locked, writes the healed bytes slowly, lets go */
        close(locked[0]);
        int fd = open(fx->child, O_RDWR | O_CLOEXEC);
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
        if (fd < 0 || fcntl(fd, F_OFD_SETLK, &fl) < 0 || write(locked[1], "x", 1) != 1)
            _exit(3);
        g_usleep(300 * 1000);
        gsize n;
        const char *b = g_bytes_get_data(healed, &n);
        if (pwrite(fd, b, n, 0) != (ssize_t)n || fdatasync(fd) < 0)
            _exit(3);
        _exit(0); /* the lock goes with the process */
    }
    close(locked[1]);
    char c;
    assert_int_equal(read(locked[0], &c, 1), 1);
    close(locked[0]);
    g_autoptr(GError) err = NULL;
    int r = vh_reconnect(fx->child, fx->base, &o, &res, &err);
    if (r < 0)
        fail_msg("the repair beside a live one failed: %s", err->message);
    assert_true(res.already_healed);
    vh_reconnect_result_clear(&res);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(journal_count(fx, "BEGIN"), begins);
    g_autoptr(GBytes) now = file_bytes(fx->child);
    assert_true(g_bytes_equal(now, healed));
    free_store(fx);
}

static void vhd_waits_for_a_live_repair(void **state)
{
    waits_for_a_live_repair(VH_FORMAT_VHD);
}

static void vhdx_waits_for_a_live_repair(void **state)
{
    waits_for_a_live_repair(VH_FORMAT_VHDX);
}

static void vhd_compare_and_swap(void **state)
{
    compare_and_swap(VH_FORMAT_VHD);
}

static void vhdx_compare_and_swap(void **state)
{
    compare_and_swap(VH_FORMAT_VHDX);
}

/* A journal append that fails (a full disk) aborts the reconnect before the child is touched,
 * at the BEGIN record and at every RANGE record. */
static void enospc(vh_format f)
{
    fx_t *fx = make_store(f, "moved");
    g_autoptr(GBytes) original = file_bytes(fx->child);
    vh_fault_arm(VH_FAULT_NONE, 0, 0);
    assert_int_equal(reconnect(fx, fx->base, false, NULL), 0);
    long total = vh_fault_ops();
    int aborted = 0;
    for (long n = 1; n <= total; n++) {
        put_bytes(fx->child, original);
        vh_fault_arm(VH_FAULT_ONCE, n, 0);
        vh_fault_set_errno(ENOSPC);
        g_autoptr(GError) err = NULL;
        int r = reconnect(fx, fx->base, false, &err);
        vh_fault_disarm();
        assert_true(r < 0);
        if (!strstr(err->message, "journal"))
            continue; /* the fault hit a write of the child: crash_everywhere's case */
        assert_int_equal(r, -ENOSPC);
        if (!strstr(err->message, "not repaired"))
            fail_msg("op %ld: %s", n, err->message);
        g_autoptr(GBytes) now = file_bytes(fx->child);
        assert_true(g_bytes_equal(now, original));
        aborted++;
    }
    print_message("# %s: %d journal appends failed with ENOSPC, child unchanged each time\n",
                  fmt_ext(f), aborted);
    assert_true(aborted >= 2);
    free_store(fx);
}

static void vhd_enospc(void **state)
{
    enospc(VH_FORMAT_VHD);
}

static void vhdx_enospc(void **state)
{
    enospc(VH_FORMAT_VHDX);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(vhd_reconnect_heals),
        cmocka_unit_test(vhdx_reconnect_heals),
        cmocka_unit_test(vhd_errors),
        cmocka_unit_test(vhdx_errors),
        cmocka_unit_test(vhd_crash_safety),
        cmocka_unit_test(vhdx_crash_safety),
        cmocka_unit_test(vhd_compare_and_swap),
        cmocka_unit_test(vhdx_compare_and_swap),
        cmocka_unit_test(vhd_waits_for_a_live_repair),
        cmocka_unit_test(vhdx_waits_for_a_live_repair),
        cmocka_unit_test(vhd_enospc),
        cmocka_unit_test(vhdx_enospc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
