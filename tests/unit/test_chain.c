// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * test_chain.c - the chain opener (chain.h, doc/chain.md) on real VHDX files: hostile locators
 * (an absolute path outside the store, "..\..\x", a file:// URL, a UNC path, a symlink in the
 * store pointing outside, a FIFO named like the parent) give a broken link and nothing outside
 * the store, and no FIFO, is opened (inotify watches for IN_OPEN); a healthy chain opens, also
 * writable; reconnect's cycle check (which follows the chain above the parent it is given)
 * stays in the store too, and refuses a link that would make a cycle, forced or not. A hang is
 * a failure: alarm() ends the program.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"
#include "reconnect.h"

#define VSIZE (4 * 1024 * 1024)

typedef struct {
    char *top;     /* holds store/ and outside/ */
    char *store;   /* its realpath */
    char *outside; /* top/outside: holds base.vhdx */
} fixture;

static char *in_store(fixture *f, const char *rel)
{
    return g_build_filename(f->store, rel, NULL);
}

static void create_base(const char *path)
{
    g_autofree char *dir = g_path_get_dirname(path);
    assert_int_equal(g_mkdir_with_parents(dir, 0755), 0);
    vh_create_opts o = {.format = VH_FORMAT_VHDX, .type = VH_TYPE_DYNAMIC, .size = VSIZE};
    g_autoptr(GError) err = NULL;
    if (vh_disk_create(path, &o, &err) < 0)
        fail_msg("%s", err->message);
}

/* A differencing disk at `path` whose parent is `parent` and whose only locator is `loc`. */
static void create_child(const char *path, const char *parent, const char *loc)
{
    g_autofree char *dir = g_path_get_dirname(path);
    assert_int_equal(g_mkdir_with_parents(dir, 0755), 0);
    g_autoptr(vh_disk) p = NULL;
    g_autoptr(GError) err = NULL;
    if (vh_disk_open(parent, VH_OPEN_READ, &p, &err) < 0)
        fail_msg("%s", err->message);
    vh_create_opts o = {.type = VH_TYPE_DIFFERENCING, .parent = p, .parent_relative = loc};
    if (vh_disk_create(path, &o, &err) < 0)
        fail_msg("%s", err->message);
}

static int setup(void **state)
{
    fixture *f = g_new0(fixture, 1);
    f->top = g_dir_make_tmp("test_chain_XXXXXX", NULL);
    g_autofree char *store = g_build_filename(f->top, "store", NULL);
    g_mkdir_with_parents(store, 0755);
    f->store = realpath(store, NULL);
    f->outside = g_build_filename(f->top, "outside", NULL);
    g_autofree char *base = g_build_filename(f->outside, "base.vhdx", NULL);
    create_base(base);
    *state = f;
    alarm(60);
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    alarm(0);
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", f->top);
    int rc = system(cmd);
    g_free(f->top);
    free(f->store);
    g_free(f->outside);
    g_free(f);
    return rc == 0 ? 0 : -1;
}

/* Opens (not O_PATH), as inotify sees them, of files in `dir` named `name` (NULL: any). */
static int opens_seen(int ifd, const char *name)
{
    int n = 0;
    char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
    ssize_t len;
    while ((len = read(ifd, buf, sizeof buf)) > 0) {
        for (char *p = buf; p < buf + len;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            if ((ev->mask & IN_OPEN) && (!name || (ev->len && strcmp(ev->name, name) == 0)))
                n++;
            p += sizeof *ev + ev->len;
        }
    }
    return n;
}

/* The hostile locators: each case is a folder of the store with child.vhdx in it. */
static void hostile_locators_never_leave_the_store(void **state)
{
    fixture *f = *state;
    g_autofree char *base = g_build_filename(f->outside, "base.vhdx", NULL);
    g_autofree char *url = g_strdup_printf("file://%s", base);
    g_autofree char *unc = g_strdup_printf("\\\\%s", base + 1); /* \\dir\...\outside\base.vhdx */
    g_strdelimit(unc, "/", '\\');
    struct {
        const char *dir, *loc;
        int want; /* the errno of the broken link */
    } cases[] = {
        {"abs", base, EXDEV},
        {"dotdot", "..\\..\\outside\\base.vhdx", EXDEV},
        {"url", url, EXDEV},
        {"unc", unc, ENOENT},
        {"symlink", ".\\base.vhdx", EXDEV},
        {"fifo", ".\\fifo.vhdx", ENOENT},
    };
    for (size_t k = 0; k < G_N_ELEMENTS(cases); k++) {
        g_autofree char *rel = g_strdup_printf("%s/child.vhdx", cases[k].dir);
        g_autofree char *child = in_store(f, rel);
        create_child(child, base, cases[k].loc);
    }
    g_autofree char *link = in_store(f, "symlink/base.vhdx");
    assert_int_equal(symlink("../../outside/base.vhdx", link), 0);
    g_autofree char *fifo = in_store(f, "fifo/fifo.vhdx");
    assert_int_equal(mkfifo(fifo, 0644), 0);

    int ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    assert_true(ifd >= 0);
    g_autofree char *fifo_dir = in_store(f, "fifo");
    assert_true(inotify_add_watch(ifd, f->outside, IN_OPEN) >= 0);
    assert_true(inotify_add_watch(ifd, fifo_dir, IN_OPEN) >= 0);
    for (size_t k = 0; k < G_N_ELEMENTS(cases); k++) {
        g_autofree char *rel = g_strdup_printf("%s/child.vhdx", cases[k].dir);
        g_autofree char *child = in_store(f, rel);
        for (int w = 0; w < 2; w++) {
            vh_chain_open_opts o = {.store = f->store, .writable = w == 1};
            g_autoptr(vh_disk) d = NULL;
            g_autoptr(GError) err = NULL;
            int r = vh_chain_open(child, &o, &d, &err);
            if (r != -cases[k].want)
                fail_msg("%s: %d, want %d: %s", cases[k].dir, r, -cases[k].want,
                         err ? err->message : "opened");
            assert_non_null(
                strstr(err->message, cases[k].want == EXDEV ? "outside-store" : "parent-missing"));
            assert_null(d);
        }
    }
    /* reconnect's cycle check follows the chain above the parent it is given: a forced dry run
     * onto each hostile child must not leave the store either (nor wait on the FIFO) */
    g_autofree char *in_base = in_store(f, "in/base.vhdx"), *kid = in_store(f, "in/kid.vhdx");
    create_base(in_base);
    create_child(kid, in_base, ".\\base.vhdx");
    for (size_t k = 0; k < G_N_ELEMENTS(cases); k++) {
        g_autofree char *rel = g_strdup_printf("%s/child.vhdx", cases[k].dir);
        g_autofree char *child = in_store(f, rel);
        vh_reconnect_opts o = {.store = f->store, .ignore_id_mismatch = true, .dry_run = true};
        vh_reconnect_result res;
        g_autoptr(GError) err = NULL;
        if (vh_reconnect(kid, child, &o, &res, &err) < 0)
            fail_msg("reconnect onto %s: %s", cases[k].dir, err->message);
        vh_reconnect_result_clear(&res);
    }
    /* nothing outside the store was opened, and the FIFO was not either */
    assert_int_equal(opens_seen(ifd, "base.vhdx"), 0);
    assert_int_equal(opens_seen(ifd, "fifo.vhdx"), 0);
    /* the store's probe opens beneath the store too: a symlink there is not followed */
    {
        g_autoptr(vh_store) st = vh_store_new(f->store, NULL);
        g_autoptr(vh_disk_info) i = vh_disk_info_new();
        assert_int_equal(vh_store_default_probe(st, link, "symlink/base.vhdx", i), -EXDEV);
        assert_int_equal(opens_seen(ifd, "base.vhdx"), 0);
    }
    /* the positive control: the watch does see an open of the outside file */
    g_autoptr(vh_disk) d = NULL;
    assert_int_equal(vh_disk_open(base, VH_OPEN_READ, &d, NULL), 0);
    assert_int_equal(opens_seen(ifd, "base.vhdx"), 1);
    close(ifd);
}

static guint depth(const vh_disk *d)
{
    guint n = 0;
    for (; d; d = d->parent)
        n++;
    return n;
}

/* vm/a <- vm/c <- vm/m <- vm/p, then m moved to moved/m: p's link is broken, the index has m. */
static void make_chain(fixture *f, bool move_m)
{
    g_autofree char *a = in_store(f, "vm/a.vhdx"), *c = in_store(f, "vm/c.vhdx");
    g_autofree char *m = in_store(f, "vm/m.vhdx"), *p = in_store(f, "vm/p.vhdx");
    create_base(a);
    create_child(c, a, ".\\a.vhdx");
    create_child(m, c, ".\\c.vhdx");
    create_child(p, m, ".\\m.vhdx");
    if (move_m) {
        g_autofree char *moved = in_store(f, "moved/m.vhdx");
        g_autofree char *dir = g_path_get_dirname(moved);
        assert_int_equal(g_mkdir_with_parents(dir, 0755), 0);
        assert_int_equal(rename(m, moved), 0);
    }
}

/* A healthy chain opens (the top writable when asked); a broken one only across its heal
 * target, and only when asked. */
static void opens_a_chain_in_the_store(void **state)
{
    fixture *f = *state;
    make_chain(f, false);
    g_autofree char *p = in_store(f, "vm/p.vhdx");
    vh_chain_open_opts o = {.store = f->store, .writable = true};
    g_autoptr(vh_disk) d = NULL;
    g_autoptr(GError) err = NULL;
    if (vh_chain_open(p, &o, &d, &err) < 0)
        fail_msg("%s", err->message);
    assert_int_equal(depth(d), 4);
    assert_true(d->file.writable);
    assert_false(d->parent->file.writable);
    uint8_t buf[512] = {7};
    assert_int_equal(vh_disk_write(d, buf, 0, sizeof buf, NULL), 0);
    g_clear_pointer(&d, vh_disk_close);
    g_autofree char *m = in_store(f, "vm/m.vhdx"), *moved = in_store(f, "m2.vhdx");
    assert_int_equal(rename(m, moved), 0);
    o.writable = false;
    assert_int_equal(vh_chain_open(p, &o, &d, NULL), -ENOENT);
    o.use_heal_target = true;
    assert_int_equal(vh_chain_open(p, &o, &d, NULL), 0);
    assert_int_equal(depth(d), 4);
    assert_string_equal(d->parent->file.path, moved);
}

static void expect_cycle(fixture *f, bool force)
{
    g_autofree char *c = in_store(f, "vm/c.vhdx"), *p = in_store(f, "vm/p.vhdx");
    vh_reconnect_opts o = {.store = f->store, .ignore_id_mismatch = force};
    vh_reconnect_result res;
    g_autoptr(GError) err = NULL;
    int r = vh_reconnect(c, p, &o, &res, &err);
    vh_reconnect_result_clear(&res);
    if (r != -EINVAL)
        fail_msg("reconnect %s: %d: %s", force ? "forced" : "", r, err ? err->message : "done");
    assert_non_null(strstr(err->message, "would make a cycle"));
}

/* c -> p makes a cycle whether the chain above p is healthy or only whole through the index. */
static void reconnect_refuses_a_cycle(void **state)
{
    fixture *f = *state;
    make_chain(f, false);
    expect_cycle(f, true);
    expect_cycle(f, false);
}

static void reconnect_refuses_a_cycle_through_a_heal_target(void **state)
{
    fixture *f = *state;
    make_chain(f, true);
    g_autofree char *c = in_store(f, "vm/c.vhdx");
    g_autofree char *before = NULL;
    g_file_get_contents(c, &before, NULL, NULL);
    expect_cycle(f, true);
    expect_cycle(f, false);
    g_autofree char *after = NULL;
    g_file_get_contents(c, &after, NULL, NULL);
    assert_true(before && after && memcmp(before, after, 64 * 1024) == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
        T(hostile_locators_never_leave_the_store),
        T(opens_a_chain_in_the_store),
        T(reconnect_refuses_a_cycle),
        T(reconnect_refuses_a_cycle_through_a_heal_target),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
