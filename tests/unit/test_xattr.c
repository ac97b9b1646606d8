// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * test_xattr.c - the xattr table of the mount (fs/xattr.c), walked key by key on real disks
 * (a differencing VHDX and its base, a fixed VHD, a child whose parent is gone) and on a plain
 * file, without a kernel mount: what applies where, exact values, ENODATA, size queries and
 * ERANGE, listing, EROFS for read-only names, ENOTSUP for unknown ones, the store file's own
 * attributes (user.vhd.* hidden, its comment wins), and writes of user.vhd.parent[.force] with
 * their errors and the status they leave.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdlib.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "fs.h"
#include "service.h"
#include "winpath.h"

#define MNT "/mnt/vhtest"
#define VSIZE (16 * 1024 * 1024)

enum { F_BASE, F_CHILD, F_FIXED, F_ORPHAN, F_PLAIN, F_COUNT };
static const char *const files[F_COUNT] = {"vm/base.vhdx", "vm/child.avhdx", "fixed.vhd",
                                           "vm/orphan.avhdx", "notes.txt"};

typedef struct {
    char *tmp;
    struct vhfs fs;
    struct vhfs_inode *in[F_COUNT];
    char base_id[VH_ID_STRLEN + 1];
} fx_t;

static char *abs_of(fx_t *f, const char *rel)
{
    return g_build_filename(f->fs.cfg.store, rel, NULL);
}

static void create(fx_t *f, const char *rel, vh_format fmt, vh_type type, const char *parent)
{
    g_autofree char *abs = abs_of(f, rel);
    g_autoptr(GError) err = NULL;
    g_autoptr(vh_disk) p = NULL;
    g_autofree char *prel = NULL;
    vh_create_opts o = {.format = fmt, .type = type, .size = VSIZE};
    if (parent) {
        g_autofree char *pabs = abs_of(f, parent);
        assert_int_equal(vh_disk_open(pabs, VH_OPEN_READ, &p, NULL), 0);
        prel = vh_winpath_relative(abs, pabs);
        o.parent = p;
        o.parent_relative = prel;
    }
    if (vh_disk_create(abs, &o, &err) < 0)
        fail_msg("%s", err->message);
}

static int setup_mode(void **state, enum vhfs_healmode mode)
{
    fx_t *f = g_new0(fx_t, 1);
    f->tmp = g_dir_make_tmp("vh-xattr-XXXXXX", NULL);
    f->fs.root.fd = -1;
    f->fs.cfg.store = realpath(f->tmp, NULL);
    f->fs.cfg.mountpoint = g_strdup(MNT);
    f->fs.cfg.heal = VHFS_HEAL_MANUAL;
    f->fs.cfg.healmode = mode;
    f->fs.cfg.maxdepth = 256;
    g_autofree char *vm = abs_of(f, "vm");
    assert_int_equal(g_mkdir_with_parents(vm, 0755), 0);
    create(f, files[F_BASE], VH_FORMAT_VHDX, VH_TYPE_DYNAMIC, NULL);
    create(f, files[F_CHILD], VH_FORMAT_VHDX, VH_TYPE_DIFFERENCING, files[F_BASE]);
    create(f, files[F_FIXED], VH_FORMAT_VHD, VH_TYPE_FIXED, NULL);
    create(f, "vm/gone.vhdx", VH_FORMAT_VHDX, VH_TYPE_DYNAMIC, NULL);
    create(f, files[F_ORPHAN], VH_FORMAT_VHDX, VH_TYPE_DIFFERENCING, "vm/gone.vhdx");
    g_autofree char *gone = abs_of(f, "vm/gone.vhdx");
    assert_int_equal(unlink(gone), 0);
    g_autofree char *plain = abs_of(f, files[F_PLAIN]);
    assert_true(g_file_set_contents(plain, "just text\n", -1, NULL));
    g_autofree char *babs = abs_of(f, files[F_BASE]);
    g_autoptr(vh_disk) b = NULL;
    assert_int_equal(vh_disk_open(babs, VH_OPEN_READ, &b, NULL), 0);
    vh_id_format(&b->id, f->base_id);

    assert_int_equal(vhfs_init(&f->fs), 0);
    assert_int_equal(vhfs_heal_start(&f->fs), 0);
    for (int k = 0; k < F_COUNT; k++) {
        g_autofree char *abs = abs_of(f, files[k]);
        struct stat st;
        struct vhfs_inode *in = g_new0(struct vhfs_inode, 1);
        in->fd = open(abs, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        assert_true(in->fd >= 0);
        assert_int_equal(fstat(in->fd, &st), 0);
        in->dev = st.st_dev;
        in->ino = st.st_ino;
        in->type = S_IFREG;
        in->nlookup = 1;
        g_hash_table_add(f->fs.inodes, in); /* freed by vhfs_fini */
        f->in[k] = in;
    }
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return setup_mode(state, VHFS_HEALMODE_PERSIST);
}

static int setup_overlay(void **state)
{
    return setup_mode(state, VHFS_HEALMODE_OVERLAY);
}

static int teardown(void **state)
{
    fx_t *f = *state;
    vhfs_heal_stop(&f->fs);
    vhfs_fini(&f->fs);
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", f->tmp);
    assert_int_equal(system(cmd), 0);
    free(f->fs.cfg.store);
    g_free(f->fs.cfg.mountpoint);
    g_free(f->tmp);
    g_free(f);
    return 0;
}

/* Reads an attribute the way the kernel asks: size first, a short buffer, then the value. */
static char *get(fx_t *f, int file, const char *name, ssize_t *res, bool *ours)
{
    char buf[4096];
    ssize_t n = vhfs_xattr_get(&f->fs, NULL, f->in[file], name, NULL, 0, ours);
    *res = n;
    if (!*ours || n < 0)
        return NULL;
    assert_true(n > 0 && n < (ssize_t)sizeof buf);
    bool o2;
    assert_int_equal(vhfs_xattr_get(&f->fs, NULL, f->in[file], name, buf, (size_t)n - 1, &o2),
                     -ERANGE);
    assert_int_equal(vhfs_xattr_get(&f->fs, NULL, f->in[file], name, buf, sizeof buf, &o2), n);
    assert_true(o2);
    return g_strndup(buf, (gsize)n);
}

static bool applies(const struct vhfs_xattr_key *k, int file)
{
    bool disk = file != F_PLAIN;
    bool child = file == F_CHILD || file == F_ORPHAN;
    switch (k->need) {
    case VHFS_NEED_DISK:
    case VHFS_NEED_READABLE:
        return disk;
    case VHFS_NEED_CHILD:
        return child;
    }
    return false;
}

/* The value each readable key must have on the child. */
static const char *child_value(fx_t *f, const char *name)
{
    static char buf[512];
    if (strcmp(name, "user.vhd.format") == 0)
        return "vhdx";
    if (strcmp(name, "user.vhd.type") == 0)
        return "differencing";
    if (strcmp(name, "user.vhd.size") == 0)
        return "16777216";
    if (strcmp(name, "user.vhd.parent") == 0)
        return MNT "/vm/base.vhdx";
    if (strcmp(name, "user.vhd.parent.id") == 0)
        return f->base_id;
    if (strcmp(name, "user.vhd.chain") == 0)
        return MNT "/vm/child.avhdx\n" MNT "/vm/base.vhdx";
    if (strcmp(name, "user.vhd.status") == 0)
        return "ok";
    if (strcmp(name, "user.xdg.comment") == 0)
        return "differencing VHDX, parent base.vhdx";
    if (strcmp(name, "user.vhd.id") == 0) {
        g_autofree char *abs = abs_of(f, files[F_CHILD]);
        g_autoptr(vh_disk) d = NULL;
        assert_int_equal(vh_disk_open(abs, VH_OPEN_READ, &d, NULL), 0);
        vh_id_format(&d->id, buf);
        return buf;
    }
    fail_msg("no expected value for %s: add it to the test", name);
    return NULL;
}

static bool listed(fx_t *f, int file, const char *name)
{
    char buf[4096];
    ssize_t n = vhfs_xattr_list(&f->fs, f->in[file], NULL, 0);
    assert_true(n >= 0 && n < (ssize_t)sizeof buf);
    if (n > 0)
        assert_int_equal(vhfs_xattr_list(&f->fs, f->in[file], buf, (size_t)n - 1), -ERANGE);
    assert_int_equal(vhfs_xattr_list(&f->fs, f->in[file], buf, sizeof buf), n);
    for (ssize_t k = 0; k < n; k += (ssize_t)strlen(buf + k) + 1)
        if (strcmp(buf + k, name) == 0)
            return true;
    return false;
}

/* The one test that walks the table. */
static void test_table(void **state)
{
    fx_t *f = *state;
    assert_true(vhfs_xattr_nkeys >= 10);
    for (size_t i = 0; i < vhfs_xattr_nkeys; i++) {
        const struct vhfs_xattr_key *k = &vhfs_xattr_keys[i];
        print_message("# %s\n", k->name);
        assert_true(g_str_has_prefix(k->name, "user.vhd.") ||
                    strcmp(k->name, "user.xdg.comment") == 0);
        assert_true(k->read != NULL || k->write != NULL);
        assert_int_equal(k->listed, k->read != NULL); /* listxattr lists the readable ones */
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(vhfs_xattr_keys[j].name, k->name);
        bool comment = strcmp(k->name, "user.xdg.comment") == 0;
        for (int file = 0; file < F_COUNT; file++) {
            ssize_t res;
            bool ours;
            g_autofree char *v = get(f, file, k->name, &res, &ours);
            bool want = k->read != NULL && applies(k, file);
            if (comment && file == F_PLAIN) {
                assert_false(ours); /* a plain file's comment is its own */
            } else {
                assert_true(ours);
                if (want)
                    assert_non_null(v);
                else
                    assert_int_equal(res, -ENODATA);
            }
            assert_int_equal(listed(f, file, k->name), want);
            if (file == F_CHILD && want)
                assert_string_equal(v, child_value(f, k->name));
            if (k->write == NULL) {
                bool o;
                int r = vhfs_xattr_set(&f->fs, NULL, f->in[file], k->name, "x", 1, 0, &o);
                if (comment) {
                    assert_false(o); /* written to the store file */
                } else {
                    assert_true(o);
                    assert_int_equal(r, -EROFS);
                }
            }
            bool o;
            int r = vhfs_xattr_remove(&f->fs, f->in[file], k->name, &o);
            assert_int_equal(o, !comment);
            if (!comment)
                assert_int_equal(r, -EROFS);
        }
    }
}

static void expect_status(fx_t *f, int file, const char *want_prefix)
{
    ssize_t res;
    bool ours;
    g_autofree char *st = get(f, file, "user.vhd.status", &res, &ours);
    assert_non_null(st);
    if (!g_str_has_prefix(st, want_prefix))
        fail_msg("status '%s' does not start with '%s'", st, want_prefix);
}

static int set(fx_t *f, int file, const char *name, const char *v)
{
    bool ours;
    int r = vhfs_xattr_set(&f->fs, NULL, f->in[file], name, v, strlen(v), 0, &ours);
    assert_true(ours);
    return r;
}

static void test_values_elsewhere(void **state)
{
    fx_t *f = *state;
    ssize_t res;
    bool ours;
    g_autofree char *fixed = get(f, F_FIXED, "user.xdg.comment", &res, &ours);
    assert_string_equal(fixed, "fixed VHD, 16.0 MiB");
    g_autofree char *bchain = get(f, F_BASE, "user.vhd.chain", &res, &ours);
    assert_string_equal(bchain, MNT "/vm/base.vhdx");
    /* a broken link: the parent is where the locator points, the chain ends at the child */
    g_autofree char *op = get(f, F_ORPHAN, "user.vhd.parent", &res, &ours);
    assert_string_equal(op, MNT "/vm/gone.vhdx");
    g_autofree char *oc = get(f, F_ORPHAN, "user.vhd.chain", &res, &ours);
    assert_string_equal(oc, MNT "/vm/orphan.avhdx");
    expect_status(f, F_ORPHAN, "broken parent-missing: no locator leads to the parent (id ");
    g_autofree char *ocom = get(f, F_ORPHAN, "user.xdg.comment", &res, &ours);
    assert_string_equal(ocom, "differencing VHDX, parent gone.vhdx (broken: parent-missing)");
    /* unknown names */
    assert_int_equal(
        vhfs_xattr_get(&f->fs, NULL, f->in[F_CHILD], "user.vhd.nosuch", NULL, 0, &ours), -ENODATA);
    assert_true(ours);
    assert_int_equal(set(f, F_CHILD, "user.vhd.nosuch", "1"), -ENOTSUP);
    assert_int_equal(vhfs_xattr_remove(&f->fs, f->in[F_CHILD], "user.vhd.nosuch", &ours), -ENODATA);
    vhfs_xattr_get(&f->fs, NULL, f->in[F_CHILD], "user.other", NULL, 0, &ours);
    assert_false(ours);
    vhfs_xattr_get(&f->fs, NULL, f->in[F_CHILD], "security.capability", NULL, 0, &ours);
    assert_false(ours);
    assert_true(vhfs_xattr_hidden("user.vhd.format"));
    assert_false(vhfs_xattr_hidden("user.xdg.comment"));
    /* the store file's own attributes: user.vhd.* never shows, its comment wins */
    g_autofree char *cabs = abs_of(f, files[F_CHILD]);
    if (setxattr(cabs, "user.vhd.format", "stored", 6, 0) == 0) {
        g_autofree char *fmt = get(f, F_CHILD, "user.vhd.format", &res, &ours);
        assert_string_equal(fmt, "vhdx");
        assert_int_equal(setxattr(cabs, "user.xdg.comment", "mine", 4, 0), 0);
        vhfs_xattr_get(&f->fs, NULL, f->in[F_CHILD], "user.xdg.comment", NULL, 0, &ours);
        assert_false(ours);
        assert_false(listed(f, F_CHILD, "user.xdg.comment"));
        assert_true(listed(f, F_CHILD, "user.vhd.format"));
        assert_int_equal(removexattr(cabs, "user.xdg.comment"), 0);
    } else {
        /* a partial skip, so not skip_unless_ci(): the cases above ran and passed */
        if (g_getenv("CI"))
            fail_msg("the temporary folder has no user xattrs (CI is set)");
        print_message("# the temporary folder has no user xattrs: store-file cases skipped\n");
    }
}

static void test_writes(void **state)
{
    fx_t *f = *state;
    const char *p = "user.vhd.parent";
    assert_int_equal(set(f, F_ORPHAN, p, ""), -EINVAL);
    expect_status(f, F_ORPHAN, "the parent path is empty");
    assert_int_equal(set(f, F_ORPHAN, p, "a\nb"), -EINVAL);
    assert_int_equal(set(f, F_ORPHAN, p, "/etc/passwd"), -EXDEV);
    expect_status(f, F_ORPHAN, "/etc/passwd: the parent is outside the store");
    assert_int_equal(set(f, F_ORPHAN, p, "../../outside.vhdx"), -EXDEV);
    assert_int_equal(set(f, F_ORPHAN, p, "nosuch.vhdx\n"), -ENOENT);
    expect_status(f, F_ORPHAN, MNT "/vm/nosuch.vhdx: the parent does not exist");
    assert_int_equal(set(f, F_ORPHAN, p, "../notes.txt"), -EINVAL);
    assert_int_equal(set(f, F_ORPHAN, p, "base.vhdx"), -EINVAL); /* identity */
    expect_status(f, F_ORPHAN, "id-mismatch: ");
    assert_int_equal(set(f, F_ORPHAN, p, "../fixed.vhd"), -EINVAL); /* format */
    assert_int_equal(set(f, F_BASE, p, "x"), -ENOTSUP);
    expect_status(f, F_BASE, "vm/base.vhdx: a dynamic vhdx disk has no parent to reconnect");
    assert_int_equal(set(f, F_PLAIN, p, "vm/base.vhdx"), -ENOTSUP);
    /* open for writing through the mount */
    g_atomic_int_inc(&f->in[F_ORPHAN]->nwriters);
    assert_int_equal(set(f, F_ORPHAN, "user.vhd.parent.force", MNT "/vm/base.vhdx"), -EBUSY);
    expect_status(f, F_ORPHAN, "vm/orphan.avhdx: open for writing through the mount");
    g_atomic_int_dec_and_test(&f->in[F_ORPHAN]->nwriters);
    /* forced, by a path under the mount point */
    assert_int_equal(set(f, F_ORPHAN, "user.vhd.parent.force", MNT "/vm/base.vhdx\n"), 0);
    expect_status(f, F_ORPHAN, "healed ");
    ssize_t res;
    bool ours;
    g_autofree char *chain = get(f, F_ORPHAN, "user.vhd.chain", &res, &ours);
    assert_string_equal(chain, MNT "/vm/orphan.avhdx\n" MNT "/vm/base.vhdx");
    g_autofree char *com = get(f, F_ORPHAN, "user.xdg.comment", &res, &ours);
    assert_true(g_str_has_prefix(com, "differencing VHDX, parent base.vhdx (healed 20"));
    /* by a path under STORE, then relative to the child's folder */
    g_autofree char *sb = abs_of(f, files[F_BASE]);
    assert_int_equal(set(f, F_CHILD, p, sb), 0);
    assert_int_equal(set(f, F_CHILD, p, "./base.vhdx"), 0);
    /* a read-only mount writes nothing */
    f->fs.cfg.ro = true;
    assert_int_equal(set(f, F_CHILD, p, "base.vhdx"), -EROFS);
    expect_status(f, F_CHILD, "vm/child.avhdx: read-only mount");
    f->fs.cfg.ro = false;
}

static char *store_sums(fx_t *f)
{
    GString *s = g_string_new(NULL);
    for (int k = 0; k < F_COUNT; k++) {
        g_autofree char *abs = abs_of(f, files[k]);
        g_autofree char *data = NULL;
        gsize len = 0;
        assert_true(g_file_get_contents(abs, &data, &len, NULL));
        g_autofree char *sum = g_compute_checksum_for_data(G_CHECKSUM_SHA256, (guchar *)data, len);
        g_string_append_printf(s, "%s %s\n", sum, files[k]);
    }
    return g_string_free(s, FALSE);
}

/* healmode=overlay: user.vhd.parent builds a patch set the mount presents; the store's files
 * stay byte for byte as they were, and the attributes (the resolver) follow the overlay. */
static void test_overlay_writes(void **state)
{
    fx_t *f = *state;
    g_autofree char *before = store_sums(f);
    g_autofree char *orphan = abs_of(f, files[F_ORPHAN]);
    struct stat st;
    assert_int_equal(stat(orphan, &st), 0);
    assert_null(vhfs_heal_patch(&f->fs, &st));
    expect_status(f, F_ORPHAN, "broken ");
    assert_int_equal(set(f, F_ORPHAN, "user.vhd.parent.force", MNT "/vm/base.vhdx"), 0);
    expect_status(f, F_ORPHAN, "healed (overlay) ");
    ssize_t res;
    bool ours;
    g_autofree char *chain = get(f, F_ORPHAN, "user.vhd.chain", &res, &ours);
    assert_string_equal(chain, MNT "/vm/orphan.avhdx\n" MNT "/vm/base.vhdx");
    vh_patch *p = vhfs_heal_patch(&f->fs, &st);
    assert_non_null(p);
    struct stat shown = st;
    vhfs_heal_present(&f->fs, &shown);
    assert_int_equal((uint64_t)shown.st_size, vh_patch_size(p));
    vh_patch_unref(p);
    /* disks are not written through an overlay mount; other files are */
    assert_int_equal(vhfs_heal_may_write(&f->fs, f->in[F_ORPHAN]), -EROFS);
    assert_int_equal(vhfs_heal_may_write(&f->fs, f->in[F_BASE]), -EROFS);
    assert_int_equal(vhfs_heal_may_write(&f->fs, f->in[F_PLAIN]), 0);
    g_autofree char *after = store_sums(f);
    assert_string_equal(before, after);
    g_autofree char *journal = abs_of(f, ".vhdheal");
    assert_false(g_file_test(journal, G_FILE_TEST_EXISTS));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_table, setup, teardown),
        cmocka_unit_test_setup_teardown(test_values_elsewhere, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overlay_writes, setup_overlay, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
