// SPDX-License-Identifier: GPL-2.0-or-later
/* test_winpath.c - parsing stored Windows paths, mapping them into a store, safe lookups. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "winpath.h"

static void relative_and_from_posix(void **state)
{
    g_autofree char *a = vh_winpath_relative("/s/vm/child.vhd", "/s/vm/base.vhd");
    assert_string_equal(a, ".\\base.vhd");
    g_autofree char *b = vh_winpath_relative("/s/vm/a/child.vhd", "/s/vm/b/base.vhd");
    assert_string_equal(b, "..\\b\\base.vhd");
    g_autofree char *c = vh_winpath_from_posix("a/b/c.vhdx");
    assert_string_equal(c, "a\\b\\c.vhdx");
}

static void assert_parts(const vh_winpath *p, const char *joined)
{
    g_autofree char *j = g_strjoinv("|", p->parts);
    assert_string_equal(j, joined);
}

static void parses_every_form(void **state)
{
    vh_winpath p;
    assert_true(vh_winpath_parse("C:\\VMs\\a\\..\\base.vhd", &p));
    assert_int_equal(p.kind, VH_WP_DRIVE);
    assert_string_equal(p.root, "C:");
    assert_parts(&p, "VMs|base.vhd");
    vh_winpath_clear(&p);

    assert_true(vh_winpath_parse("\\\\?\\D:\\Hyper-V\\x.vhdx", &p));
    assert_int_equal(p.kind, VH_WP_DRIVE);
    assert_string_equal(p.root, "D:");
    assert_parts(&p, "Hyper-V|x.vhdx");
    vh_winpath_clear(&p);

    assert_true(vh_winpath_parse("\\\\?\\UNC\\nas\\vms\\web\\x.vhdx", &p));
    assert_int_equal(p.kind, VH_WP_UNC);
    assert_string_equal(p.root, "nas\\vms");
    assert_parts(&p, "web|x.vhdx");
    vh_winpath_clear(&p);

    assert_true(vh_winpath_parse("\\\\nas\\vms\\web\\x.vhdx", &p));
    assert_int_equal(p.kind, VH_WP_UNC);
    assert_string_equal(p.root, "nas\\vms");
    vh_winpath_clear(&p);

    assert_true(vh_winpath_parse("\\\\?\\Volume{0eba351e-5634-46d6-a8cf-4ddc2d6ac0b9}\\Users\\"
                                 "x.avhdx",
                                 &p));
    assert_int_equal(p.kind, VH_WP_VOLUME);
    assert_string_equal(p.root, "Volume{0eba351e-5634-46d6-a8cf-4ddc2d6ac0b9}");
    assert_parts(&p, "Users|x.avhdx");
    vh_winpath_clear(&p);

    assert_true(vh_winpath_parse("..\\..\\other\\.\\p.vhd", &p));
    assert_int_equal(p.kind, VH_WP_RELATIVE);
    assert_parts(&p, "..|..|other|p.vhd");
    vh_winpath_clear(&p);

    assert_true(vh_winpath_parse("\\dir\\p.vhd", &p));
    assert_int_equal(p.kind, VH_WP_ROOTED);
    vh_winpath_clear(&p);

    assert_true(vh_winpath_parse("file://localhost/srv/vms/p%20q.vhd", &p));
    assert_int_equal(p.kind, VH_WP_POSIX);
    assert_parts(&p, "srv|vms|p q.vhd");
    vh_winpath_clear(&p);

    assert_true(vh_winpath_parse("file:///srv/p.vhd", &p));
    assert_parts(&p, "srv|p.vhd");
    vh_winpath_clear(&p);

    assert_false(vh_winpath_parse("", &p));
    assert_true(vh_winpath_parse("C:\\", &p)); /* a bare root: a winroot */
    assert_null(p.parts[0]);
    vh_winpath_clear(&p);
    assert_false(vh_winpath_parse(".\\", &p));
    assert_false(vh_winpath_parse("\\\\?\\", &p));
    assert_false(vh_winpath_parse("\\\\server", &p));
}

static void components_compare_as_windows(void **state)
{
    assert_true(vh_winpath_component_equal("Base.VHD", "base.vhd"));
    assert_true(vh_winpath_component_equal("base.vhd. . ", "BASE.vhd"));
    assert_true(vh_winpath_component_equal("Ärger", "ärger"));
    assert_false(vh_winpath_component_equal("base.vhd", "base.vhdx"));
    assert_false(vh_winpath_component_equal(".vhd", "vhd"));
}

/* Candidates as "via:rel" (or "via:OUTSIDE"), joined by spaces. */
static char *cands(const char *stored, const char *child_dir, const char *winroot,
                   const char *store_abs)
{
    g_autoptr(GPtrArray) c = vh_winpath_candidates(stored, child_dir, winroot, store_abs);
    GString *s = g_string_new("");
    for (guint k = 0; k < c->len; k++) {
        vh_wp_candidate *x = c->pdata[k];
        g_string_append_printf(s, "%s%s:%s", k ? " " : "", vh_wp_via_name(x->via),
                               x->outside ? "OUTSIDE" : x->rel);
    }
    return g_string_free(s, FALSE);
}

static void maps_into_the_store(void **state)
{
    g_autofree char *a = cands(".\\base.vhd", "vm/disks", NULL, "/srv");
    assert_string_equal(a, "relative:vm/disks/base.vhd");
    g_autofree char *b = cands("..\\..\\x\\base.vhd", "vm/disks", NULL, "/srv");
    assert_string_equal(b, "relative:x/base.vhd");
    g_autofree char *c = cands("..\\..\\..\\base.vhd", "vm/disks", NULL, "/srv");
    assert_string_equal(c, "relative:OUTSIDE");

    /* under winroot: the same place under STORE (case and trailing dots ignored) */
    g_autofree char *d = cands("D:\\hyper-v. \\Web01\\Virtual Hard Disks\\Web01.vhdx",
                               "Web01/Virtual Hard Disks", "d:\\Hyper-V\\", "/srv");
    assert_true(g_str_has_prefix(d, "winroot:Web01/Virtual Hard Disks/Web01.vhdx "));
    g_autofree char *e = cands("\\\\?\\UNC\\NAS\\vms\\a\\b.vhd", "", "\\\\nas\\VMS", NULL);
    assert_true(g_str_has_prefix(e, "winroot:a/b.vhd "));
    /* not under winroot: outside as Windows sees it, then the tails */
    g_autofree char *f = cands("E:\\other\\b.vhd", "vm", "D:\\VMs", NULL);
    assert_string_equal(f, "winroot:OUTSIDE tail:vm/b.vhd tail:b.vhd tail:vm/other/b.vhd "
                           "tail:other/b.vhd");
    /* no winroot: the tails, file name first, child's folder before STORE */
    g_autofree char *g =
        cands("C:\\ProgramData\\Microsoft\\Windows\\Virtual Hard Disks\\b.vhdx", "", NULL, NULL);
    assert_true(g_str_has_prefix(g, "tail:b.vhdx tail:Virtual Hard Disks/b.vhdx "
                                    "tail:Windows/Virtual Hard Disks/b.vhdx"));
    /* POSIX (MacX) under the store's own path, and outside it */
    g_autofree char *h = cands("file://localhost/srv/vm/b.vhd", "vm", NULL, "/srv");
    assert_true(g_str_has_prefix(h, "store:vm/b.vhd "));
    g_autofree char *i = cands("file:///etc/b.vhd", "vm", NULL, "/srv");
    assert_string_equal(i, "store:OUTSIDE tail:vm/b.vhd tail:b.vhd tail:vm/etc/b.vhd "
                           "tail:etc/b.vhd");
    g_autofree char *j = cands("", "vm", NULL, "/srv");
    assert_string_equal(j, "");
}

static void maps_back_to_windows(void **state)
{
    g_autofree char *a = vh_winpath_to_windows("Web01/disk.vhdx", "\\\\nas\\vms\\");
    assert_string_equal(a, "\\\\nas\\vms\\Web01\\disk.vhdx");
    g_autofree char *b = vh_winpath_to_windows("d.vhd", "D:\\VMs");
    assert_string_equal(b, "D:\\VMs\\d.vhd");
    /* a winroot written with '/' (as in -o winroot=D:/VMs/) gives the same path */
    g_autofree char *s = vh_winpath_to_windows("d.vhd", "D:/VMs/");
    assert_string_equal(s, "D:\\VMs\\d.vhd");
    g_autofree char *u = vh_winpath_to_windows("x/d.vhd", "//nas/vms");
    assert_string_equal(u, "\\\\nas\\vms\\x\\d.vhd");
    /* and that maps into the store again */
    g_autofree char *c = cands(b, "", "D:\\VMs", NULL);
    assert_true(g_str_has_prefix(c, "winroot:d.vhd"));
}

static void join_folds_dots(void **state)
{
    const char *p1[] = {"..", "b", ".", "c.vhd", NULL};
    g_autofree char *a = vh_winpath_join("x/y", p1);
    assert_string_equal(a, "x/b/c.vhd");
    const char *p2[] = {"..", "..", "..", "c.vhd", NULL};
    assert_null(vh_winpath_join("x/y", p2));
}

/* ---- lookups on a real folder ---- */

typedef struct {
    char *top;   /* holds store/ and outside/ */
    char *store; /* realpath */
    int fd;
} fixture;

static void touch(const char *dir, const char *rel)
{
    g_autofree char *p = g_build_filename(dir, rel, NULL);
    g_autofree char *d = g_path_get_dirname(p);
    g_mkdir_with_parents(d, 0755);
    assert_true(g_file_set_contents(p, "x", 1, NULL));
}

static int setup(void **state)
{
    fixture *f = g_new0(fixture, 1);
    f->top = g_dir_make_tmp("test_winpath_XXXXXX", NULL);
    g_autofree char *store = g_build_filename(f->top, "store", NULL);
    touch(store, "VMs/Web01/Base.VHD");
    touch(store, "VMs/Web01/child.vhd");
    touch(f->top, "outside/secret.vhd");
    g_autofree char *l1 = g_build_filename(store, "VMs/escape.vhd", NULL);
    assert_int_equal(symlink("../../outside/secret.vhd", l1), 0);
    g_autofree char *l2 = g_build_filename(store, "VMs/alias.vhd", NULL);
    assert_int_equal(symlink("Web01/Base.VHD", l2), 0);
    g_autofree char *l3 = g_build_filename(store, "outdir", NULL);
    assert_int_equal(symlink("../outside", l3), 0);
    f->store = realpath(store, NULL);
    f->fd = open(f->store, O_RDONLY | O_DIRECTORY);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    close(f->fd);
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", f->top);
    assert_int_equal(system(cmd), 0);
    free(f->store);
    g_free(f->top);
    g_free(f);
    return 0;
}

static void lookup_exact_and_folding_case(void **state)
{
    fixture *f = *state;
    g_autofree char *a = NULL;
    assert_int_equal(vh_winpath_lookup(f->fd, f->store, "VMs/Web01/Base.VHD", &a), 0);
    assert_string_equal(a, "VMs/Web01/Base.VHD");
    g_autofree char *b = NULL;
    assert_int_equal(vh_winpath_lookup(f->fd, f->store, "vms/WEB01/base.vhd", &b), 0);
    assert_string_equal(b, "VMs/Web01/Base.VHD");
    g_autofree char *c = NULL;
    assert_int_equal(vh_winpath_lookup(f->fd, f->store, "VMs/Web01/none.vhd", &c), -ENOENT);
    assert_null(c);
    /* a folder is not a disk */
    assert_int_equal(vh_winpath_lookup(f->fd, f->store, "VMs/Web01", &c), -ENOENT);
    /* a file used as a folder */
    assert_int_equal(vh_winpath_lookup(f->fd, f->store, "VMs/Web01/child.vhd/x", &c), -ENOENT);
}

static void lookup_follows_symlinks_only_inside(void **state)
{
    fixture *f = *state;
    g_autofree char *a = NULL;
    assert_int_equal(vh_winpath_lookup(f->fd, f->store, "VMs/alias.vhd", &a), 0);
    assert_string_equal(a, "VMs/Web01/Base.VHD");
    g_autofree char *b = NULL;
    assert_int_equal(vh_winpath_lookup(f->fd, f->store, "VMs/escape.vhd", &b), -EXDEV);
    assert_int_equal(vh_winpath_lookup(f->fd, f->store, "VMs/ESCAPE.vhd", &b), -EXDEV);
    assert_int_equal(vh_winpath_lookup(f->fd, f->store, "outdir/secret.vhd", &b), -EXDEV);
    assert_int_equal(vh_winpath_lookup(f->fd, f->store, "../outside/secret.vhd", &b), -EXDEV);
    assert_null(b);
}

/* The one "below the store" check, on canonical paths. */
static void path_below(void **state)
{
    assert_string_equal(vh_path_below("/srv/store", "/srv/store/a/b.vhdx"), "a/b.vhdx");
    assert_string_equal(vh_path_below("/srv/store", "/srv/store"), "");
    assert_string_equal(vh_path_below("/srv/store/", "/srv/store/x"), "x");
    assert_null(vh_path_below("/srv/store", "/srv/storeroom/x"));
    assert_null(vh_path_below("/srv/store", "/srv"));
    assert_null(vh_path_below("/srv/store", "/etc/passwd"));
    assert_string_equal(vh_path_below("/", "/etc/passwd"), "etc/passwd");
    assert_string_equal(vh_path_below("/", "/"), "");
    assert_null(vh_path_below("/", "relative"));
    assert_string_equal(vh_path_below("", "a/b"), "a/b"); /* relative: the whole store */
    assert_string_equal(vh_path_below("vm", "vm/a"), "a");
    assert_null(vh_path_below("vm", "vm2/a"));
}

/* A winroot is a drive, share or volume path, parsed as locators are. */
static void winroot_forms(void **state)
{
    const char *good[] = {"D:",
                          "D:\\",
                          "D:\\VMs",
                          "\\\\nas\\vms",
                          "\\\\nas\\vms\\sub",
                          "//nas/vms",
                          "D:/VMs",
                          "\\\\?\\C:\\VMs",
                          "\\\\?\\UNC\\nas\\vms",
                          "\\\\?\\Volume{0b4c1d2e-0000-0000-0000-000000000000}\\VMs"};
    const char *bad[] = {"",          "VMs",         "\\VMs",    "\\\\nas",
                         "\\\\nas\\", "\\\\?\\junk", "/srv/vms", "file:///srv/vms"};
    for (size_t k = 0; k < G_N_ELEMENTS(good); k++)
        if (!vh_winpath_is_root(good[k]))
            fail_msg("%s: refused", good[k]);
    for (size_t k = 0; k < G_N_ELEMENTS(bad); k++)
        if (vh_winpath_is_root(bad[k]))
            fail_msg("%s: accepted", bad[k]);
    assert_false(vh_winpath_is_root(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(relative_and_from_posix),
        cmocka_unit_test(parses_every_form),
        cmocka_unit_test(components_compare_as_windows),
        cmocka_unit_test(maps_into_the_store),
        cmocka_unit_test(maps_back_to_windows),
        cmocka_unit_test(join_folds_dots),
        cmocka_unit_test(path_below),
        cmocka_unit_test(winroot_forms),
        cmocka_unit_test_setup_teardown(lookup_exact_and_folding_case, setup, teardown),
        cmocka_unit_test_setup_teardown(lookup_follows_symlinks_only_inside, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
