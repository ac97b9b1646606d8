// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * test_caller.c - acting for a user (fs/caller.c) and repairs through pinned files
 * (vh_reconnect_pin): opens as another user see that user's rights (a file in a folder the user
 * cannot search is EACCES whether it exists or not), symlinks are refused or kept inside STORE,
 * the thread's credentials come back; a reconnect given a pin writes the pinned file even when
 * the path it was given names another file (a symlink swapped in), and the journal names it.
 * Needs root to take another user's credentials (skipped otherwise, failed under CI).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs.h"
#include "reconnect.h"
#include "winpath.h"

#define USER 61001
#define GROUP 61500
#define VSIZE (8 * 1024 * 1024)

typedef struct {
    char *store;
    struct vhfs fs;
} fx_t;

static bool need_root(void)
{
    if (geteuid() == 0)
        return true;
    if (getenv("CI"))
        fail_msg("test_caller needs root (to act as another user)");
    return false;
}

static char *at(fx_t *f, const char *rel)
{
    return g_build_filename(f->store, rel, NULL);
}

static void put(fx_t *f, const char *rel, mode_t mode, uid_t uid, gid_t gid)
{
    g_autofree char *p = at(f, rel);
    g_autofree char *dir = g_path_get_dirname(p);
    assert_int_equal(g_mkdir_with_parents(dir, 0755), 0);
    assert_true(g_file_set_contents(p, "data", -1, NULL));
    assert_int_equal(chown(p, uid, gid), 0);
    assert_int_equal(chmod(p, mode), 0);
}

static int setup(void **state)
{
    fx_t *f = g_new0(fx_t, 1);
    f->store = g_dir_make_tmp("vh-caller-XXXXXX", NULL);
    assert_int_equal(chmod(f->store, 0755), 0);
    f->fs.root.fd = open(f->store, O_PATH | O_DIRECTORY | O_CLOEXEC);
    assert_true(f->fs.root.fd >= 0);
    f->fs.as_root = geteuid() == 0;
    f->fs.cfg.store = realpath(f->store, NULL);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", f->store);
    assert_int_equal(system(cmd), 0);
    close(f->fs.root.fd);
    free(f->fs.cfg.store);
    g_free(f->store);
    g_free(f);
    return 0;
}

static int open_as(fx_t *f, const struct vhfs_caller *c, const char *rel, int flags, bool nofollow)
{
    int fd = vhfs_caller_openat(&f->fs, c, rel, flags, nofollow);
    if (fd >= 0) {
        close(fd);
        return 0;
    }
    return fd;
}

static void opens_with_the_callers_rights(void **state)
{
    fx_t *f = *state;
    if (!need_root())
        skip();
    put(f, "priv/f", 0600, 0, 0);
    g_autofree char *priv = at(f, "priv");
    assert_int_equal(chmod(priv, 0700), 0);
    put(f, "pub/f", 0644, 0, 0);
    put(f, "pub/g", 0640, 0, GROUP);
    g_autofree char *lnk = at(f, "pub/l");
    assert_int_equal(symlink("f", lnk), 0);
    g_autofree char *out = at(f, "pub/out");
    assert_int_equal(symlink("../../", out), 0);
    gid_t before[64];
    int nbefore = getgroups(64, before);

    struct vhfs_caller c = {.uid = USER, .gid = USER};
    /* an unsearchable folder: missing and existing look alike */
    assert_int_equal(open_as(f, &c, "priv/f", O_RDONLY, false), -EACCES);
    assert_int_equal(open_as(f, &c, "priv/nosuch", O_RDONLY, false), -EACCES);
    assert_int_equal(open_as(f, &c, "pub/nosuch", O_RDONLY, false), -ENOENT);
    assert_int_equal(open_as(f, &c, "pub/f", O_RDONLY, false), 0);
    assert_int_equal(open_as(f, &c, "pub/f", O_RDWR, false), -EACCES);
    assert_int_equal(open_as(f, &c, "pub/g", O_RDONLY, false), -EACCES);
    /* symlinks: none with nofollow, only inside STORE otherwise */
    assert_int_equal(open_as(f, &c, "pub/l", O_RDONLY, true), -ELOOP);
    assert_int_equal(open_as(f, &c, "pub/l", O_RDONLY, false), 0);
    assert_int_equal(open_as(f, &c, "pub/out/etc/hostname", O_RDONLY, false), -EXDEV);
    assert_int_equal(open_as(f, &c, "../x", O_RDONLY, false), -EXDEV);
    /* supplementary groups count */
    c.groups[0] = GROUP;
    c.ngroups = 1;
    assert_int_equal(open_as(f, &c, "pub/g", O_RDONLY, false), 0);
    /* the thread is itself again */
    assert_int_equal(setfsuid((uid_t)-1), 0);
    assert_int_equal(setfsgid((gid_t)-1), 0);
    gid_t after[64];
    assert_int_equal(getgroups(64, after), nbefore);
    assert_memory_equal(before, after, (size_t)nbefore * sizeof(gid_t));
    /* read checks on the very inode: another file at the path is EAGAIN */
    struct stat st;
    g_autofree char *pf = at(f, "pub/f");
    assert_int_equal(stat(pf, &st), 0);
    assert_int_equal(vhfs_caller_may_read(&f->fs, &c, "pub/f", st.st_dev, st.st_ino), 0);
    assert_int_equal(vhfs_caller_may_read(&f->fs, &c, "pub/g", st.st_dev, st.st_ino), -EAGAIN);
    assert_int_equal(vhfs_caller_may_read(&f->fs, &c, "priv/f", st.st_dev, st.st_ino), -EACCES);
    /* a daemon that is not root acts for no other user */
    f->fs.as_root = false;
    assert_int_equal(open_as(f, &c, "pub/f", O_RDONLY, false), -EACCES);
}

static void make_disk(const char *path, const char *parent)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *dir = g_path_get_dirname(path);
    assert_int_equal(g_mkdir_with_parents(dir, 0755), 0);
    if (!parent) {
        vh_create_opts o = {.format = VH_FORMAT_VHD, .type = VH_TYPE_DYNAMIC, .size = VSIZE};
        if (vh_disk_create(path, &o, &err) < 0)
            fail_msg("%s", err->message);
        return;
    }
    g_autoptr(vh_disk) p = NULL;
    assert_int_equal(vh_disk_open(parent, VH_OPEN_READ, &p, NULL), 0);
    g_autofree char *rel = vh_winpath_relative(path, parent);
    vh_create_opts c = {.type = VH_TYPE_DIFFERENCING, .parent = p, .parent_relative = rel};
    if (vh_disk_create(path, &c, &err) < 0)
        fail_msg("%s", err->message);
}

static char *sha_of(const char *path)
{
    g_autofree char *data = NULL;
    gsize len;
    assert_true(g_file_get_contents(path, &data, &len, NULL));
    return g_compute_checksum_for_data(G_CHECKSUM_SHA256, (const guchar *)data, len);
}

/* The path names alice's checkpoint (a symlink swapped in); the pin names bob's child. */
static void reconnect_writes_the_pinned_file(void **state)
{
    fx_t *f = *state;
    g_autofree char *abase = at(f, "alice/base.vhd"), *atop = at(f, "alice/top.avhd");
    g_autofree char *bbase = at(f, "bob/base.vhd"), *btop = at(f, "bob/top.avhd");
    g_autofree char *bmoved = at(f, "bob/moved.vhd"), *lnk = at(f, "bob/lnk");
    make_disk(abase, NULL);
    make_disk(atop, abase);
    make_disk(bbase, NULL);
    make_disk(btop, bbase);
    assert_int_equal(rename(bbase, bmoved), 0);
    assert_int_equal(symlink("../alice/top.avhd", lnk), 0);
    g_autofree char *victim = sha_of(atop), *mine = sha_of(btop);

    vh_reconnect_pin pin = {.child_fd = open(btop, O_PATH | O_CLOEXEC), .parent_fd = -1};
    assert_true(pin.child_fd >= 0);
    vh_reconnect_opts o = {.store = f->store, .pin = &pin};
    vh_reconnect_result res = {0};
    g_autoptr(GError) err = NULL;
    if (vh_reconnect(lnk, bmoved, &o, &res, &err) < 0)
        fail_msg("%s", err->message);
    close(pin.child_fd);
    vh_reconnect_result_clear(&res);
    g_autofree char *victim_after = sha_of(atop), *mine_after = sha_of(btop);
    assert_string_equal(victim, victim_after);
    assert_string_not_equal(mine, mine_after);
    /* the journal names the file written */
    g_autofree char *journal = at(f, ".vhdheal/journal");
    g_autofree char *text = NULL;
    assert_true(g_file_get_contents(journal, &text, NULL, NULL));
    assert_non_null(strstr(text, "\tbob/top.avhd\t"));
    assert_null(strstr(text, "alice"));

    /* without the pin the same call is about the file the path names now: alice's */
    g_clear_error(&err);
    vh_reconnect_opts plain = {.store = f->store};
    assert_int_equal(vh_reconnect(lnk, bmoved, &plain, &res, &err), -EINVAL);
    assert_non_null(strstr(err->message, "id-mismatch"));
    vh_reconnect_result_clear(&res);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(opens_with_the_callers_rights, setup, teardown),
        cmocka_unit_test_setup_teardown(reconnect_writes_the_pinned_file, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
