// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * test_service.c - the engine service on real VHD and VHDX stores: verdicts with rescans for
 * parents moved behind its back, heals of a chain (the disk and its ancestors), the gate, the
 * status text and its events, reconnects asked for with each error, relinks after renames
 * (files, folders, exchange), ambiguous links left alone, journal recovery, and the log lines.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <glib/gstdio.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "overlay_file.h"
#include "service.h"
#include "winpath.h"

#define VSIZE (4 * 1024 * 1024)

typedef struct {
    vh_format format;
    char *store;
    vh_service *s;
    GPtrArray *log; /* char* lines, "W " or "I " first */
    GMutex log_lock;
} fx_t;

static const char *ext(const fx_t *f, bool child)
{
    if (f->format == VH_FORMAT_VHD)
        return child ? "avhd" : "vhd";
    return child ? "avhdx" : "vhdx";
}

static char *path_of(const fx_t *f, const char *rel)
{
    return g_build_filename(f->store, rel, NULL);
}

static void make_base(const fx_t *f, const char *rel)
{
    g_autofree char *abs = path_of(f, rel);
    g_autofree char *dir = g_path_get_dirname(abs);
    assert_int_equal(g_mkdir_with_parents(dir, 0755), 0);
    vh_create_opts o = {.format = f->format, .type = VH_TYPE_DYNAMIC, .size = VSIZE};
    g_autoptr(GError) err = NULL;
    if (vh_disk_create(abs, &o, &err) < 0)
        fail_msg("%s", err->message);
}

static void make_child(const fx_t *f, const char *rel, const char *parent_rel)
{
    g_autofree char *abs = path_of(f, rel);
    g_autofree char *pabs = path_of(f, parent_rel);
    g_autofree char *dir = g_path_get_dirname(abs);
    assert_int_equal(g_mkdir_with_parents(dir, 0755), 0);
    g_autoptr(vh_disk) parent = NULL;
    g_autoptr(GError) err = NULL;
    assert_int_equal(vh_disk_open(pabs, VH_OPEN_READ, &parent, NULL), 0);
    g_autofree char *relpath = vh_winpath_relative(abs, pabs);
    vh_create_opts c = {.type = VH_TYPE_DIFFERENCING, .parent = parent, .parent_relative = relpath};
    if (vh_disk_create(abs, &c, &err) < 0)
        fail_msg("%s", err->message);
}

static void mkdir_in(const fx_t *f, const char *rel)
{
    g_autofree char *abs = path_of(f, rel);
    assert_int_equal(g_mkdir_with_parents(abs, 0755), 0);
}

static void move(const fx_t *f, const char *from, const char *to)
{
    g_autofree char *a = path_of(f, from), *b = path_of(f, to);
    g_autofree char *dir = g_path_get_dirname(b);
    assert_int_equal(g_mkdir_with_parents(dir, 0755), 0);
    assert_int_equal(rename(a, b), 0);
}

static void log_line(void *ctx, bool warning, const char *line)
{
    fx_t *f = ctx;
    g_mutex_lock(&f->log_lock);
    g_ptr_array_add(f->log, g_strdup_printf("%c %s", warning ? 'W' : 'I', line));
    g_mutex_unlock(&f->log_lock);
}

/* Lines of the log that start with prefix ("I detected vms/child"). */
static guint log_count(fx_t *f, const char *prefix)
{
    guint n = 0;
    for (guint k = 0; k < f->log->len; k++)
        n += g_str_has_prefix(f->log->pdata[k], prefix);
    return n;
}

static void start(fx_t *f)
{
    vh_service_opts o = {.store = f->store, .rescan_interval_us = 1};
    g_autoptr(GError) err = NULL;
    f->s = vh_service_new(&o, &err);
    assert_non_null(f->s);
    vh_service_set_log(f->s, log_line, f);
    assert_int_equal(vh_service_scan(f->s, NULL), 0);
}

static fx_t *fx_new(vh_format fmt)
{
    fx_t *f = g_new0(fx_t, 1);
    f->format = fmt;
    f->store = g_dir_make_tmp("vh-service-XXXXXX", NULL);
    f->log = g_ptr_array_new_with_free_func(g_free);
    g_mutex_init(&f->log_lock);
    return f;
}

static void fx_free(fx_t *f)
{
    vh_service_free(f->s);
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", f->store);
    assert_int_equal(system(cmd), 0);
    for (guint k = 0; k < f->log->len; k++)
        print_message("# log: %s\n", (char *)f->log->pdata[k]);
    g_ptr_array_unref(f->log);
    g_mutex_clear(&f->log_lock);
    g_free(f->store);
    g_free(f);
}

static char *sha_of(const fx_t *f, const char *rel)
{
    g_autofree char *abs = path_of(f, rel);
    char *data;
    gsize len;
    assert_true(g_file_get_contents(abs, &data, &len, NULL));
    char *sum = g_compute_checksum_for_data(G_CHECKSUM_SHA256, (guchar *)data, len);
    g_free(data);
    return sum;
}

static vh_disk_info *info_of(fx_t *f, const char *rel)
{
    g_autoptr(GError) err = NULL;
    vh_disk_info *i = vh_service_describe(f->s, rel, &err);
    if (!i)
        fail_msg("%s: %s", rel, err->message);
    return i;
}

static char *status_of(fx_t *f, const char *rel, const char *note)
{
    g_autoptr(vh_disk_info) i = info_of(f, rel);
    return vh_service_status(f->s, i, NULL, note);
}

static const vh_link *link_k(const vh_chain *c, guint k)
{
    assert_true(k < c->links->len);
    return c->links->pdata[k];
}

/* --- heals ------------------------------------------------------------------------------ */

static void heal_moved_parent(vh_format fmt)
{
    fx_t *f = fx_new(fmt);
    g_autofree char *b = g_strdup_printf("vms/base.%s", ext(f, false));
    g_autofree char *m = g_strdup_printf("vms/mid.%s", ext(f, true));
    g_autofree char *t = g_strdup_printf("vms/top.%s", ext(f, true));
    g_autofree char *nb = g_strdup_printf("archive/base.%s", ext(f, false));
    make_base(f, b);
    make_child(f, m, b);
    make_child(f, t, m);
    move(f, b, nb);
    start(f);

    g_autoptr(GError) err = NULL;
    g_autoptr(vh_chain) c = vh_service_chain(f->s, t, &err);
    assert_non_null(c);
    assert_int_equal(c->disks->len, 3);
    assert_int_equal(link_k(c, 0)->verdict, VH_VERDICT_OK);
    assert_int_equal(link_k(c, 1)->verdict, VH_VERDICT_PARENT_MISSING);
    assert_string_equal(link_k(c, 1)->heal_target, nb);
    /* where the locators point: the old place */
    bool in_store;
    g_autofree char *place = vh_link_parent_place(link_k(c, 1), &in_store);
    assert_true(in_store);
    assert_string_equal(place, b);
    g_autofree char *okplace = vh_link_parent_place(link_k(c, 0), &in_store);
    assert_string_equal(okplace, m);

    /* the top's status names the broken ancestor, and the note for a healable link */
    g_autofree char *st = status_of(f, t, "heals on open");
    g_autofree char *want = g_strdup_printf("broken parent-missing: %s: ", m);
    assert_true(g_str_has_prefix(st, want));
    assert_true(g_str_has_suffix(st, "; heals on open"));
    assert_non_null(strstr(st, nb));
    /* one detection line however often it is asked */
    g_autoptr(vh_chain) again = vh_service_chain(f->s, m, NULL);
    assert_int_equal(again->broken, 1);
    g_autofree char *det = g_strdup_printf("I detected %s: parent-missing: ", m);
    assert_int_equal(log_count(f, det), 1);

    g_autoptr(GPtrArray) changed =
        g_ptr_array_new_with_free_func((GDestroyNotify)vh_disk_info_unref);
    assert_int_equal(vh_service_heal(f->s, t, NULL, NULL, changed, NULL), 1);
    assert_int_equal(changed->len, 1);
    assert_string_equal(((vh_disk_info *)changed->pdata[0])->path, m);
    g_autofree char *healed =
        g_strdup_printf("I healed %s: parent-missing: reconnected to %s", m, nb);
    assert_int_equal(log_count(f, healed), 1);

    g_autoptr(vh_chain) after = vh_service_chain(f->s, t, NULL);
    assert_int_equal(after->broken, 0);
    assert_true(after->complete);
    g_autofree char *st_m = status_of(f, m, "x");
    assert_true(g_str_has_prefix(st_m, "healed 20"));
    g_autofree char *what = g_strdup_printf("Z: parent-missing: reconnected to %s", nb);
    assert_non_null(strstr(st_m, what));
    g_autofree char *st_t = status_of(f, t, "x");
    assert_string_equal(st_t, "ok");
    /* healing a healthy chain does nothing */
    assert_int_equal(vh_service_heal(f->s, t, NULL, NULL, NULL, NULL), 0);
    fx_free(f);
}

static void test_heal_vhd(void **state)
{
    heal_moved_parent(VH_FORMAT_VHD);
}

static void test_heal_vhdx(void **state)
{
    heal_moved_parent(VH_FORMAT_VHDX);
}

static int gate_busy(void *ctx, const vh_disk_info *child, const char *parent_abs,
                     vh_reconnect_pin *pin, char **why)
{
    int *calls = ctx;
    (*calls)++;
    *why = g_strdup("open for writing through the mount");
    return -EBUSY;
}

static void test_gate_refuses(void **state)
{
    fx_t *f = fx_new(VH_FORMAT_VHDX);
    make_base(f, "base.vhdx");
    make_child(f, "c.avhdx", "base.vhdx");
    move(f, "base.vhdx", "old/base.vhdx");
    start(f);
    g_autofree char *before = sha_of(f, "c.avhdx");
    int calls = 0;
    assert_int_equal(vh_service_heal(f->s, "c.avhdx", gate_busy, &calls, NULL, NULL), 0);
    assert_int_equal(vh_service_heal(f->s, "c.avhdx", gate_busy, &calls, NULL, NULL), 0);
    assert_int_equal(calls, 2);
    g_autofree char *after = sha_of(f, "c.avhdx");
    assert_string_equal(before, after);
    g_autofree char *st = status_of(f, "c.avhdx", "note");
    assert_true(g_str_has_prefix(st, "broken parent-missing: "));
    assert_true(g_str_has_suffix(st, "; not healed: c.avhdx: open for writing through the mount"));
    /* logged once for the same file and message */
    assert_int_equal(log_count(f, "W not healed c.avhdx: parent-missing: "), 1);
    /* no gate: heals */
    assert_int_equal(vh_service_heal(f->s, "c.avhdx", NULL, NULL, NULL, NULL), 1);
    fx_free(f);
}

/* A parent moved behind the service's back (after its scan) is found by a rescan. */
static void test_rescan_finds_moved_parent(void **state)
{
    fx_t *f = fx_new(VH_FORMAT_VHD);
    make_base(f, "a/base.vhd");
    make_child(f, "a/c.avhd", "a/base.vhd");
    start(f);
    g_autoptr(vh_chain) c0 = vh_service_chain(f->s, "a/c.avhd", NULL);
    assert_int_equal(c0->broken, 0);
    move(f, "a/base.vhd", "deep/er/renamed.vhd");
    g_usleep(10);
    g_autoptr(vh_chain) c = vh_service_chain(f->s, "a/c.avhd", NULL);
    assert_int_equal(c->broken, 1);
    assert_string_equal(link_k(c, 0)->heal_target, "deep/er/renamed.vhd");
    fx_free(f);
}

static void test_ambiguous_not_healed(void **state)
{
    fx_t *f = fx_new(VH_FORMAT_VHDX);
    make_base(f, "vm/base.vhdx");
    make_child(f, "vm/c.avhdx", "vm/base.vhdx");
    g_autofree char *src = path_of(f, "vm/base.vhdx");
    g_autofree char *data = NULL;
    gsize len;
    assert_true(g_file_get_contents(src, &data, &len, NULL));
    mkdir_in(f, "x");
    mkdir_in(f, "y");
    g_autofree char *x = path_of(f, "x/base.vhdx"), *y = path_of(f, "y/base.vhdx");
    assert_true(g_file_set_contents(x, data, (gssize)len, NULL));
    assert_true(g_file_set_contents(y, data, (gssize)len, NULL));
    assert_int_equal(unlink(src), 0);
    start(f);
    g_autofree char *before = sha_of(f, "vm/c.avhdx");
    assert_int_equal(vh_service_heal(f->s, "vm/c.avhdx", NULL, NULL, NULL, NULL), 0);
    g_autofree char *after = sha_of(f, "vm/c.avhdx");
    assert_string_equal(before, after);
    g_autofree char *st = status_of(f, "vm/c.avhdx", "never shown");
    assert_true(g_str_has_prefix(st, "broken ambiguous: "));
    assert_true(g_str_has_suffix(st, "(x/base.vhdx, y/base.vhdx)"));
    fx_free(f);
}

/* --- reconnects asked for --------------------------------------------------------------- */

static void expect_fail(fx_t *f, const char *child, const char *parent, bool force, int code,
                        const char *msg_part)
{
    g_autoptr(GError) err = NULL;
    vh_reconnect_result res;
    int r = vh_service_reconnect(f->s, child, parent, force, NULL, NULL, &res, &err);
    vh_reconnect_result_clear(&res);
    if (r != -code)
        fail_msg("%s -> %s: %d (%s), expected %d", child, parent, r, err ? err->message : "",
                 -code);
    assert_non_null(err);
    assert_int_equal(err->code, code);
    assert_non_null(strstr(err->message, msg_part));
    g_autoptr(vh_disk_info) i = info_of(f, child);
    if (i->format != VH_FORMAT_NONE) {
        g_autofree char *st = vh_service_status(f->s, i, NULL, NULL);
        assert_string_equal(st, err->message);
    }
}

static void test_reconnect_errors(void **state)
{
    fx_t *f = fx_new(VH_FORMAT_VHD);
    make_base(f, "base.vhd");
    make_base(f, "other.vhd");
    make_child(f, "c.avhd", "base.vhd");
    g_autofree char *plain = path_of(f, "notes.txt");
    assert_true(g_file_set_contents(plain, "hello", 5, NULL));
    g_autofree char *outside = g_strdup_printf("%s.outside.vhd", f->store);
    {
        vh_create_opts o = {.format = VH_FORMAT_VHD, .type = VH_TYPE_DYNAMIC, .size = VSIZE};
        assert_int_equal(vh_disk_create(outside, &o, NULL), 0);
    }
    start(f);
    expect_fail(f, "base.vhd", "other.vhd", false, ENOTSUP, "has no parent");
    expect_fail(f, "notes.txt", "base.vhd", false, ENOTSUP, "not a VHD or VHDX file");
    expect_fail(f, "c.avhd", "nosuch.vhd", false, ENOENT, "does not exist");
    expect_fail(f, "c.avhd", "other.vhd", false, EINVAL, "id-mismatch");
    expect_fail(f, "c.avhd", "notes.txt", false, EINVAL, "not usable");
    expect_fail(f, "c.avhd", outside, false, EXDEV, "outside the store");
    g_autofree char *bad_status = status_of(f, "c.avhd", NULL);
    assert_non_null(strstr(bad_status, "is outside the store"));
    /* the failure holds until the file changes */
    g_autofree char *cabs = path_of(f, "c.avhd");
    struct timespec ts[2] = {{.tv_sec = 1000000000}, {.tv_sec = 1000000000}};
    assert_int_equal(utimensat(AT_FDCWD, cabs, ts, 0), 0);
    g_autofree char *st = status_of(f, "c.avhd", NULL);
    assert_string_equal(st, "ok");
    /* forced: reconnects to another disk of the same size */
    vh_reconnect_result res;
    g_autoptr(GError) err = NULL;
    assert_int_equal(
        vh_service_reconnect(f->s, "c.avhd", "other.vhd", true, NULL, NULL, &res, &err), 0);
    assert_non_null(res.repair_id);
    vh_reconnect_result_clear(&res);
    g_autofree char *st2 = status_of(f, "c.avhd", NULL);
    assert_true(g_str_has_prefix(st2, "healed "));
    assert_true(
        g_str_has_suffix(st2, ": reconnected to other.vhd on request, ignoring the identity"));
    g_autoptr(vh_chain) c = vh_service_chain(f->s, "c.avhd", NULL);
    assert_string_equal(link_k(c, 0)->parent, "other.vhd");
    /* the gate's refusal is the write's failure */
    int calls = 0;
    g_clear_error(&err);
    assert_int_equal(
        vh_service_reconnect(f->s, "c.avhd", "other.vhd", false, gate_busy, &calls, &res, &err),
        -EBUSY);
    vh_reconnect_result_clear(&res);
    g_autofree char *st3 = status_of(f, "c.avhd", NULL);
    assert_string_equal(st3, "c.avhd: open for writing through the mount");
    assert_int_equal(log_count(f, "W reconnect of c.avhd to other.vhd refused: "), 2);
    assert_int_equal(log_count(f, "I reconnected c.avhd to other.vhd on request ignoring"), 1);
    unlink(outside);
    fx_free(f);
}

/* --- renames ---------------------------------------------------------------------------- */

static void test_relink_after_rename(void **state)
{
    fx_t *f = fx_new(VH_FORMAT_VHDX);
    make_base(f, "vm/base.vhdx");
    make_child(f, "vm/c1.avhdx", "vm/base.vhdx");
    make_child(f, "other/c2.avhdx", "vm/base.vhdx");
    make_child(f, "vm/gc.avhdx", "vm/c1.avhdx");
    start(f);
    /* a file moved: both children follow */
    move(f, "vm/base.vhdx", "lib/base.vhdx");
    g_autoptr(GPtrArray) changed =
        g_ptr_array_new_with_free_func((GDestroyNotify)vh_disk_info_unref);
    assert_int_equal(
        vh_service_renamed(f->s, "vm/base.vhdx", "lib/base.vhdx", false, true, NULL, NULL, changed),
        2);
    assert_int_equal(changed->len, 2);
    for (const char *const *c = (const char *const[]){"vm/c1.avhdx", "other/c2.avhdx", NULL}; *c;
         c++) {
        g_autoptr(vh_chain) ch = vh_service_chain(f->s, *c, NULL);
        assert_int_equal(ch->broken, 0);
        assert_string_equal(link_k(ch, 0)->parent, "lib/base.vhdx");
    }
    /* a folder moved with a child and a grandchild: the moved child's link breaks and is
       relinked, the grandchild's relative link still holds */
    move(f, "vm", "vms/vm");
    assert_int_equal(vh_service_renamed(f->s, "vm", "vms/vm", false, true, NULL, NULL, NULL), 1);
    g_autoptr(vh_chain) gc = vh_service_chain(f->s, "vms/vm/gc.avhdx", NULL);
    assert_int_equal(gc->broken, 0);
    assert_int_equal(gc->disks->len, 3);
    assert_string_equal(((vh_disk_info *)gc->disks->pdata[2])->path, "lib/base.vhdx");
    /* without relink: the index follows, nothing is written */
    g_autofree char *before = sha_of(f, "other/c2.avhdx");
    move(f, "lib/base.vhdx", "lib2/base.vhdx");
    assert_int_equal(
        vh_service_renamed(f->s, "lib/base.vhdx", "lib2/base.vhdx", false, false, NULL, NULL, NULL),
        0);
    g_autofree char *after = sha_of(f, "other/c2.avhdx");
    assert_string_equal(before, after);
    g_autoptr(vh_disk_info) gone = vh_store_get(vh_service_store(f->s), "lib/base.vhdx");
    assert_null(gone);
    g_autoptr(vh_disk_info) there = vh_store_get(vh_service_store(f->s), "lib2/base.vhdx");
    assert_non_null(there);
    fx_free(f);
}

static void test_relink_after_exchange(void **state)
{
    fx_t *f = fx_new(VH_FORMAT_VHD);
    make_base(f, "a/base.vhd");
    make_child(f, "a/c.avhd", "a/base.vhd");
    g_autofree char *note = path_of(f, "b/note.txt");
    mkdir_in(f, "b");
    assert_true(g_file_set_contents(note, "n", 1, NULL));
    start(f);
    /* exchange a/ and b/ by hand, as RENAME_EXCHANGE would */
    move(f, "a", "t");
    move(f, "b", "a");
    move(f, "t", "b");
    assert_int_equal(vh_service_renamed(f->s, "a", "b", true, true, NULL, NULL, NULL), 0);
    g_autoptr(vh_disk_info) c = vh_store_get(vh_service_store(f->s), "b/c.avhd");
    assert_non_null(c);
    g_autoptr(vh_disk_info) n = vh_store_get(vh_service_store(f->s), "a/note.txt");
    assert_non_null(n);
    g_autoptr(vh_disk_info) old = vh_store_get(vh_service_store(f->s), "a/c.avhd");
    assert_null(old);
    /* two files exchanged: the child's parent is now the other name */
    make_base(f, "x.vhd");
    make_child(f, "y.avhd", "b/base.vhd");
    vh_service_changed(f->s, "x.vhd");
    vh_service_changed(f->s, "y.avhd");
    move(f, "x.vhd", "t.vhd");
    move(f, "b/base.vhd", "x.vhd");
    move(f, "t.vhd", "b/base.vhd");
    assert_int_equal(vh_service_renamed(f->s, "x.vhd", "b/base.vhd", true, true, NULL, NULL, NULL),
                     2);
    g_autoptr(vh_chain) ch = vh_service_chain(f->s, "b/c.avhd", NULL);
    assert_string_equal(link_k(ch, 0)->parent, "x.vhd");
    g_autoptr(vh_chain) cy = vh_service_chain(f->s, "y.avhd", NULL);
    assert_string_equal(link_k(cy, 0)->parent, "x.vhd");
    fx_free(f);
}

/* --- the rest --------------------------------------------------------------------------- */

static void test_recover_and_corrupt(void **state)
{
    fx_t *f = fx_new(VH_FORMAT_VHDX);
    make_base(f, "b.vhdx");
    g_autofree char *bad = path_of(f, "bad.vhdx");
    {
        g_autofree char *data = NULL;
        gsize len;
        g_autofree char *b = path_of(f, "b.vhdx");
        assert_true(g_file_get_contents(b, &data, &len, NULL));
        for (gsize k = 64 * 1024; k < 192 * 1024 && k < len; k++)
            data[k] = 0; /* both headers */
        assert_true(g_file_set_contents(bad, data, (gssize)len, NULL));
    }
    start(f);
    assert_int_equal(vh_service_recover(f->s, NULL), 0);
    g_autofree char *priv = path_of(f, ".vhdheal");
    assert_false(g_file_test(priv, G_FILE_TEST_EXISTS)); /* nothing created */
    g_autoptr(vh_disk_info) i = info_of(f, "bad.vhdx");
    assert_non_null(i->error);
    g_autofree char *st = vh_service_status(f->s, i, NULL, NULL);
    assert_true(g_str_has_prefix(st, "broken corrupt: "));
    g_autoptr(GError) err = NULL;
    vh_reconnect_result res;
    assert_int_equal(
        vh_service_reconnect(f->s, "bad.vhdx", "b.vhdx", false, NULL, NULL, &res, &err), -EIO);
    g_autoptr(vh_chain) none = vh_service_chain(f->s, "bad.vhdx", NULL);
    assert_null(none);
    g_autoptr(GError) e2 = NULL;
    assert_null(vh_service_describe(f->s, "nosuch", &e2));
    assert_int_equal(e2->code, ENOENT);
    assert_false(vh_disk_info_is_child(i));
    fx_free(f);
}

static void test_children(void **state)
{
    fx_t *f = fx_new(VH_FORMAT_VHD);
    make_base(f, "lib/base.vhd");
    make_child(f, "vm/c1.avhd", "lib/base.vhd");
    make_child(f, "other/c2.avhd", "lib/base.vhd");
    make_child(f, "vm/gc.avhd", "vm/c1.avhd");
    start(f);
    g_autoptr(GPtrArray) kids = vh_service_children(f->s, "lib/base.vhd", NULL);
    assert_int_equal(kids->len, 2);
    assert_string_equal(kids->pdata[0], "other/c2.avhd");
    assert_string_equal(kids->pdata[1], "vm/c1.avhd");
    g_autoptr(GPtrArray) grand = vh_service_children(f->s, "vm/c1.avhd", NULL);
    assert_int_equal(grand->len, 1);
    assert_string_equal(grand->pdata[0], "vm/gc.avhd");
    g_autoptr(GPtrArray) none = vh_service_children(f->s, "vm/gc.avhd", NULL);
    assert_int_equal(none->len, 0);
    g_autoptr(GError) e = NULL;
    assert_null(vh_service_children(f->s, "nosuch.vhd", &e));
    assert_int_equal(e->code, ENOENT);
    g_autofree char *text = vh_children_text(kids);
    assert_string_equal(text, "other/c2.avhd, vm/c1.avhd");
    g_autoptr(GPtrArray) seven = g_ptr_array_new();
    for (int k = 0; k < 7; k++)
        g_ptr_array_add(seven, "x");
    g_autofree char *cut = vh_children_text(seven);
    assert_string_equal(cut, "x, x, x, x, x and 2 more");

    /* vhdheal write's check: the store is given or found (STORE/.vhdheal marks it) */
    g_autofree char *base = path_of(f, "lib/base.vhd");
    g_autofree char *leaf = path_of(f, "vm/gc.avhd");
    g_autoptr(GError) e2 = NULL;
    assert_int_equal(vh_parent_write_check(base, f->store, false, &e2), -EBUSY);
    assert_non_null(strstr(e2->message, "other/c2.avhd, vm/c1.avhd"));
    assert_non_null(strstr(e2->message, "--force"));
    assert_int_equal(vh_parent_write_check(base, f->store, true, NULL), 0);
    assert_int_equal(vh_parent_write_check(leaf, f->store, false, NULL), 0);
    mkdir_in(f, ".vhdheal");
    g_autoptr(GError) e3 = NULL;
    assert_int_equal(vh_parent_write_check(base, NULL, false, &e3), -EBUSY);
    fx_free(f);
}

/* Refuses one child (ctx: its path); counts the calls from every thread. */
typedef struct {
    const char *refused;
    gint calls;
} gate_one_t;

static int gate_one(void *ctx, const vh_disk_info *child, const char *parent_abs,
                    vh_reconnect_pin *pin, char **why)
{
    gate_one_t *g = ctx;
    g_atomic_int_inc(&g->calls);
    if (strcmp(child->path, g->refused) != 0)
        return 0;
    *why = g_strdup("refused by the test");
    return -EBUSY;
}

/* A folder of many children moved: all relinked from several threads, the refused one left. */
static void test_relink_many(void **state)
{
    enum { N = 24 };
    fx_t *f = fx_new(VH_FORMAT_VHDX);
    make_base(f, "lib/base.vhdx");
    for (int k = 0; k < N; k++) {
        g_autofree char *rel = g_strdup_printf("vms/c%02d.avhdx", k);
        make_child(f, rel, "lib/base.vhdx");
    }
    start(f);
    move(f, "vms", "deep/vms");
    gate_one_t g = {.refused = "deep/vms/c07.avhdx"};
    g_autoptr(GPtrArray) changed =
        g_ptr_array_new_with_free_func((GDestroyNotify)vh_disk_info_unref);
    assert_int_equal(
        vh_service_renamed(f->s, "vms", "deep/vms", false, true, gate_one, &g, changed), N - 1);
    assert_int_equal(changed->len, N - 1);
    assert_int_equal(g_atomic_int_get(&g.calls), N);
    for (int k = 0; k < N; k++) {
        g_autofree char *rel = g_strdup_printf("deep/vms/c%02d.avhdx", k);
        g_autoptr(vh_chain) ch = vh_service_chain(f->s, rel, NULL);
        assert_int_equal(ch->broken, k == 7 ? 1 : 0);
    }
    assert_int_equal(log_count(f, "I healed deep/vms/c"), N - 1);
    assert_int_equal(log_count(f, "W not healed deep/vms/c07.avhdx"), 1);
    fx_free(f);
}

/* Overlay healing with an overlay folder: the repair is saved there, a second service (a
 * remount) loads it and presents the chain healed at once, with the status it had, healing
 * nothing; the store never changes; a child changed since is dropped and its file removed. */
static void overlay_folder(vh_format fmt)
{
    fx_t *f = fx_new(fmt);
    g_autofree char *cn = g_strdup_printf("vm/c.%s", ext(f, true));
    g_autofree char *bn = g_strdup_printf("vm/base.%s", ext(f, false));
    g_autofree char *moved = g_strdup_printf("old/base.%s", ext(f, false));
    make_base(f, bn);
    make_child(f, cn, bn);
    move(f, bn, moved);
    g_autofree char *odir = g_strdup_printf("%s.ovl", f->store);
    assert_int_equal(g_mkdir_with_parents(odir, 0755), 0);
    vh_service_opts o = {
        .store = f->store, .rescan_interval_us = 1, .overlay = true, .overlay_dir = odir};
    f->s = vh_service_new(&o, NULL);
    assert_non_null(f->s);
    vh_service_set_log(f->s, log_line, f);
    assert_int_equal(vh_service_load_overlay(f->s, NULL), 0);
    assert_int_equal(vh_service_scan(f->s, NULL), 0);
    g_autofree char *before = sha_of(f, cn);
    assert_int_equal(vh_service_heal(f->s, cn, NULL, NULL, NULL, NULL), 1);
    g_autofree char *st1 = status_of(f, cn, NULL);
    assert_true(g_str_has_prefix(st1, "healed (overlay) "));
    g_autofree char *name = vh_patch_file_name(cn);
    g_autofree char *saved = g_build_filename(odir, name, NULL);
    assert_true(g_file_test(saved, G_FILE_TEST_IS_REGULAR));
    g_clear_pointer(&f->s, vh_service_free);

    /* the remount */
    guint heals = log_count(f, "I healed ");
    f->s = vh_service_new(&o, NULL);
    vh_service_set_log(f->s, log_line, f);
    assert_int_equal(vh_service_load_overlay(f->s, NULL), 1);
    g_autofree char *st2 = status_of(f, cn, NULL);
    assert_string_equal(st2, st1);
    {
        g_autoptr(vh_chain) c = vh_service_chain(f->s, cn, NULL);
        assert_non_null(c);
        assert_int_equal(link_k(c, 0)->verdict, VH_VERDICT_OK);
    }
    assert_int_equal(vh_service_heal(f->s, cn, NULL, NULL, NULL, NULL), 0);
    assert_int_equal(log_count(f, "I healed "), heals);
    g_autofree char *after = sha_of(f, cn);
    assert_string_equal(before, after);
    g_clear_pointer(&f->s, vh_service_free);

    /* changed since: dropped at load, logged with its name, its file removed */
    g_autofree char *cabs = path_of(f, cn);
    assert_int_equal(utimensat(AT_FDCWD, cabs, (struct timespec[]){{0, UTIME_OMIT}, {7, 0}}, 0), 0);
    f->s = vh_service_new(&o, NULL);
    vh_service_set_log(f->s, log_line, f);
    assert_int_equal(vh_service_load_overlay(f->s, NULL), 0);
    g_autofree char *dropped = g_strdup_printf("W %s: changed on the store", cn);
    assert_int_equal(log_count(f, dropped), 1);
    assert_false(g_file_test(saved, G_FILE_TEST_EXISTS));
    g_autofree char *st3 = status_of(f, cn, NULL);
    assert_true(g_str_has_prefix(st3, "broken parent-missing"));
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", odir);
    assert_int_equal(system(cmd), 0);
    fx_free(f);
}

static void test_overlay_folder_vhd(void **state)
{
    overlay_folder(VH_FORMAT_VHD);
}

static void test_overlay_folder_vhdx(void **state)
{
    overlay_folder(VH_FORMAT_VHDX);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heal_vhd),
        cmocka_unit_test(test_heal_vhdx),
        cmocka_unit_test(test_gate_refuses),
        cmocka_unit_test(test_rescan_finds_moved_parent),
        cmocka_unit_test(test_ambiguous_not_healed),
        cmocka_unit_test(test_reconnect_errors),
        cmocka_unit_test(test_relink_after_rename),
        cmocka_unit_test(test_relink_after_exchange),
        cmocka_unit_test(test_recover_and_corrupt),
        cmocka_unit_test(test_children),
        cmocka_unit_test(test_relink_many),
        cmocka_unit_test(test_overlay_folder_vhd),
        cmocka_unit_test(test_overlay_folder_vhdx),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
