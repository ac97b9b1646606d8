// SPDX-License-Identifier: GPL-2.0-or-later
/* test_store.c - the store index: scanning, incremental refresh (counting re-reads),
 * notifications, identity lookups, thread safety, and which folder is the store. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fakedisk.h"
#include "store.h"

#define ID_A "aaaaaaaa-0000-0000-0000-000000000001"
#define ID_B "bbbbbbbb-0000-0000-0000-000000000002"
#define ID_C "cccccccc-0000-0000-0000-000000000003"

typedef struct {
    char *dir;
    vh_store *s;
} fixture;

static int setup(void **state)
{
    fixture *f = g_new0(fixture, 1);
    f->dir = g_dir_make_tmp("test_store_XXXXXX", NULL);
    fake_write(f->dir, "a.vhd", "format=vhd\ntype=dynamic\nsize=1048576\nid=" ID_A);
    fake_write(f->dir, "vm/b.vhd",
               "format=vhd\ntype=differencing\nsize=1048576\nid=" ID_B "\nparent=" ID_A
               "\nloc=W2ru|..\\a.vhd\nloc=W2ku|C:\\VMs\\a.vhd");
    fake_write(f->dir, "vm/deep/c.vhdx",
               "format=vhdx\ntype=dynamic\nsize=4096\nlss=4096\nid=" ID_C);
    fake_write(f->dir, "vm/copy-of-a.vhd", "format=vhd\ntype=dynamic\nsize=1048576\nid=" ID_A);
    fake_write(f->dir, "vm/broken.vhd", "format=vhd\nerror=bad footer checksum");
    g_autofree char *notes = g_build_filename(f->dir, "vm/notes.txt", NULL);
    g_file_set_contents(notes, "not a disk", -1, NULL);
    /* the journal folder and symlinks are never indexed */
    fake_write(f->dir, ".vhdheal/journal-disk.vhd", "format=vhd\ntype=fixed\nsize=1\nid=" ID_C);
    g_autofree char *link = g_build_filename(f->dir, "vm/link.vhd", NULL);
    assert_int_equal(symlink("../a.vhd", link), 0);
    f->s = vh_store_new(f->dir, NULL);
    assert_non_null(f->s);
    vh_store_set_probe(f->s, fake_probe, NULL);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    vh_store_free(f->s);
    fake_rm_rf(f->dir);
    g_free(f->dir);
    g_free(f);
    return 0;
}

static char *paths_of(GPtrArray *a)
{
    GString *s = g_string_new("");
    for (guint k = 0; k < a->len; k++)
        g_string_append_printf(s, "%s%s", k ? " " : "", ((vh_disk_info *)a->pdata[k])->path);
    return g_string_free(s, FALSE);
}

static char *ids(vh_store *s, const char *id)
{
    vh_id x;
    assert_true(vh_id_parse(id, &x));
    g_autoptr(GPtrArray) a = vh_store_find_id(s, &x);
    return paths_of(a);
}

static void scan_indexes_disks_by_content(void **state)
{
    fixture *f = *state;
    assert_false(vh_store_scanned(f->s));
    assert_int_equal(vh_store_scan(f->s, NULL), 0);
    assert_true(vh_store_scanned(f->s));
    assert_int_equal(vh_store_probe_count(f->s), 6); /* 5 disk files + notes.txt */
    assert_int_equal(vh_store_count(f->s), 6);
    g_autoptr(GPtrArray) all = vh_store_list(f->s, NULL);
    g_autofree char *p = paths_of(all);
    assert_string_equal(p, "a.vhd vm/b.vhd vm/broken.vhd vm/copy-of-a.vhd vm/deep/c.vhdx");
    g_autoptr(GPtrArray) vm = vh_store_list(f->s, "vm/deep");
    g_autofree char *q = paths_of(vm);
    assert_string_equal(q, "vm/deep/c.vhdx");
    g_autofree char *a = ids(f->s, ID_A);
    assert_string_equal(a, "a.vhd vm/copy-of-a.vhd");
    g_autofree char *c = ids(f->s, ID_C); /* the .vhdheal copy is not indexed */
    assert_string_equal(c, "vm/deep/c.vhdx");

    g_autoptr(vh_disk_info) b = vh_store_get(f->s, "vm/b.vhd");
    assert_non_null(b);
    assert_int_equal(b->format, VH_FORMAT_VHD);
    assert_int_equal(b->type, VH_TYPE_DIFFERENCING);
    assert_int_equal(b->virtual_size, 1048576);
    assert_int_equal(b->link.locators->len, 2);
    g_autoptr(vh_disk_info) broken = vh_store_get(f->s, "vm/broken.vhd");
    assert_string_equal(broken->error, "bad footer checksum");
    g_autoptr(vh_disk_info) notes = vh_store_get(f->s, "vm/notes.txt");
    assert_int_equal(notes->format, VH_FORMAT_NONE);
    assert_null(vh_store_get(f->s, "vm/link.vhd"));
}

static void set_mtime(const char *dir, const char *rel, time_t t)
{
    g_autofree char *p = g_build_filename(dir, rel, NULL);
    struct timespec ts[2] = {{t, 0}, {t, 0}};
    assert_int_equal(utimensat(AT_FDCWD, p, ts, 0), 0);
}

static void refresh_rereads_only_what_changed(void **state)
{
    fixture *f = *state;
    assert_int_equal(vh_store_scan(f->s, NULL), 0);
    guint64 n0 = vh_store_probe_count(f->s);
    /* nothing changed: nothing re-read */
    assert_int_equal(vh_store_scan(f->s, NULL), 0);
    assert_int_equal(vh_store_probe_count(f->s) - n0, 0);

    /* touched (mtime), added, renamed, moved to another folder, deleted */
    set_mtime(f->dir, "a.vhd", 1000000000);
    fake_write(f->dir, "new/d.vhd", "format=vhd\ntype=fixed\nsize=512\nid=" ID_C);
    g_autofree char *from = g_build_filename(f->dir, "vm/copy-of-a.vhd", NULL);
    g_autofree char *to = g_build_filename(f->dir, "renamed.vhd", NULL);
    assert_int_equal(rename(from, to), 0);
    g_autofree char *from2 = g_build_filename(f->dir, "vm/deep", NULL);
    g_autofree char *to2 = g_build_filename(f->dir, "moved", NULL);
    assert_int_equal(rename(from2, to2), 0);
    g_autofree char *gone = g_build_filename(f->dir, "vm/broken.vhd", NULL);
    assert_int_equal(unlink(gone), 0);

    assert_int_equal(vh_store_scan(f->s, NULL), 0);
    assert_int_equal(vh_store_probe_count(f->s) - n0, 2); /* a.vhd and new/d.vhd */
    g_autoptr(GPtrArray) all = vh_store_list(f->s, NULL);
    g_autofree char *p = paths_of(all);
    assert_string_equal(p, "a.vhd moved/c.vhdx new/d.vhd renamed.vhd vm/b.vhd");
    g_autofree char *a = ids(f->s, ID_A);
    assert_string_equal(a, "a.vhd renamed.vhd");
    g_autofree char *c = ids(f->s, ID_C);
    assert_string_equal(c, "moved/c.vhdx new/d.vhd");

    /* a file whose size changes under the same inode is re-read */
    g_autofree char *b = g_build_filename(f->dir, "vm/b.vhd", NULL);
    FILE *fp = fopen(b, "a");
    fputs("ts=5\n", fp);
    fclose(fp);
    set_mtime(f->dir, "vm/b.vhd", 1000000000); /* same mtime as could happen: size differs */
    guint64 n1 = vh_store_probe_count(f->s);
    assert_int_equal(vh_store_scan(f->s, NULL), 0);
    assert_int_equal(vh_store_probe_count(f->s) - n1, 1);
    g_autoptr(vh_disk_info) bi = vh_store_get(f->s, "vm/b.vhd");
    assert_int_equal(bi->link.parent_timestamp, 5);
}

static void describe_probes_only_when_stale(void **state)
{
    fixture *f = *state;
    /* before any scan: describe probes and caches */
    g_autoptr(vh_disk_info) a = vh_store_describe(f->s, "a.vhd", NULL);
    assert_non_null(a);
    assert_int_equal(vh_store_probe_count(f->s), 1);
    g_autoptr(vh_disk_info) a2 = vh_store_describe(f->s, "a.vhd", NULL);
    assert_ptr_equal(a, a2);
    assert_int_equal(vh_store_probe_count(f->s), 1);
    set_mtime(f->dir, "a.vhd", 1000000000);
    g_autoptr(vh_disk_info) a3 = vh_store_describe(f->s, "a.vhd", NULL);
    assert_ptr_not_equal(a, a3);
    assert_int_equal(vh_store_probe_count(f->s), 2);
    /* the cached entries are reused by the first full scan */
    assert_int_equal(vh_store_scan(f->s, NULL), 0);
    assert_int_equal(vh_store_probe_count(f->s), 2 + 5);
    GError *err = NULL;
    assert_null(vh_store_describe(f->s, "none.vhd", &err));
    assert_int_equal(err->code, ENOENT);
    g_clear_error(&err);
    assert_null(vh_store_describe(f->s, "vm/link.vhd", &err)); /* never through a symlink */
    g_clear_error(&err);
}

static void notifications_keep_the_index_current(void **state)
{
    fixture *f = *state;
    assert_int_equal(vh_store_scan(f->s, NULL), 0);
    guint64 n0 = vh_store_probe_count(f->s);
    vh_store_note_rename(f->s, "vm/copy-of-a.vhd", "x.vhd");
    vh_store_note_rename(f->s, "vm/deep", "elsewhere/deep");
    vh_store_note_unlink(f->s, "vm/broken.vhd");
    assert_int_equal(vh_store_probe_count(f->s), n0);
    g_autofree char *a = ids(f->s, ID_A);
    assert_string_equal(a, "a.vhd x.vhd");
    g_autofree char *c = ids(f->s, ID_C);
    assert_string_equal(c, "elsewhere/deep/c.vhdx");
    assert_null(vh_store_get(f->s, "vm/broken.vhd"));
    fake_write(f->dir, "vm/new.vhd", "format=vhd\ntype=fixed\nsize=512\nid=" ID_B);
    vh_store_note_changed(f->s, "vm/new.vhd");
    assert_int_equal(vh_store_probe_count(f->s), n0 + 1);
    g_autofree char *b = ids(f->s, ID_B);
    assert_string_equal(b, "vm/b.vhd vm/new.vhd");
    vh_store_note_changed(f->s, "vm/does-not-exist.vhd"); /* a vanished file: dropped */
    assert_null(vh_store_get(f->s, "vm/does-not-exist.vhd"));
}

/* A probe that changes the store, and tells the index, while a scan is running. */
typedef struct {
    vh_store *s;
    const char *dir;
    int fired;
} race_ctx;

static int racing_probe(void *ctx, const char *abs, const char *rel, vh_disk_info *out)
{
    race_ctx *rc = ctx;
    if (strcmp(rel, "vm/trigger.vhd") == 0 && !rc->fired++) {
        /* The walk has listed every folder: these changes are only known by the notes. */
        g_autofree char *a = g_build_filename(rc->dir, "a.vhd", NULL);
        g_autofree char *moved = g_build_filename(rc->dir, "vm/moved-a.vhd", NULL);
        assert_int_equal(rename(a, moved), 0);
        vh_store_note_rename(rc->s, "a.vhd", "vm/moved-a.vhd");
        g_autofree char *copy = g_build_filename(rc->dir, "vm/copy-of-a.vhd", NULL);
        assert_int_equal(unlink(copy), 0);
        vh_store_note_unlink(rc->s, "vm/copy-of-a.vhd");
        fake_write(rc->dir, "vm/new.vhd", "format=vhd\ntype=fixed\nsize=512\nid=" ID_C);
        vh_store_note_changed(rc->s, "vm/new.vhd");
        /* A rename the walk already saw done: what the walk found at the new name stays. */
        vh_store_note_rename(rc->s, "gone/b.vhd", "vm/b.vhd");
    }
    return fake_probe(NULL, abs, rel, out);
}

static void notes_made_during_a_scan_survive_it(void **state)
{
    fixture *f = *state;
    assert_int_equal(vh_store_scan(f->s, NULL), 0);
    fake_write(f->dir, "vm/trigger.vhd", "format=vhd\ntype=fixed\nsize=512\nid=" ID_B);
    race_ctx rc = {.s = f->s, .dir = f->dir};
    vh_store_set_threads(f->s, 1);
    vh_store_set_probe(f->s, racing_probe, &rc);
    assert_int_equal(vh_store_scan(f->s, NULL), 0);
    assert_int_equal(rc.fired, 1);
    g_autofree char *a = ids(f->s, ID_A);
    assert_string_equal(a, "vm/moved-a.vhd");
    assert_null(vh_store_get(f->s, "a.vhd"));
    assert_null(vh_store_get(f->s, "vm/copy-of-a.vhd"));
    g_autofree char *c = ids(f->s, ID_C);
    assert_string_equal(c, "vm/deep/c.vhdx vm/new.vhd");
    g_autofree char *b = ids(f->s, ID_B);
    assert_string_equal(b, "vm/b.vhd vm/trigger.vhd");
    /* Nothing was missed: the next scan re-reads nothing and changes nothing. */
    guint64 n0 = vh_store_probe_count(f->s);
    assert_int_equal(vh_store_scan(f->s, NULL), 0);
    assert_int_equal(vh_store_probe_count(f->s), n0);
    g_autofree char *a2 = ids(f->s, ID_A);
    assert_string_equal(a2, "vm/moved-a.vhd");
}

typedef struct {
    vh_store *s;
    gint stop;
    gint lookups;
    gint errors; /* cmocka's asserts must not run outside the main thread */
} reader_ctx;

static gpointer reader(gpointer p)
{
    reader_ctx *r = p;
    vh_id x;
    vh_id_parse(ID_A, &x);
    while (!g_atomic_int_get(&r->stop)) {
        g_autoptr(GPtrArray) a = vh_store_find_id(r->s, &x);
        for (guint k = 0; k < a->len; k++)
            if (((vh_disk_info *)a->pdata[k])->virtual_size != 1048576)
                g_atomic_int_inc(&r->errors);
        g_autoptr(GPtrArray) all = vh_store_list(r->s, NULL);
        for (guint k = 0; k < all->len; k++)
            if (!((vh_disk_info *)all->pdata[k])->path)
                g_atomic_int_inc(&r->errors);
        g_atomic_int_inc(&r->lookups);
    }
    return NULL;
}

static void parallel_scan_with_concurrent_readers(void **state)
{
    fixture *f = *state;
    for (int k = 0; k < 300; k++) {
        g_autofree char *rel = g_strdup_printf("many/%02d/d%03d.vhd", k % 17, k);
        fake_write(f->dir, rel, "format=vhd\ntype=dynamic\nsize=1048576\nid=" ID_A);
    }
    vh_store_set_threads(f->s, 4);
    reader_ctx r = {.s = f->s};
    GThread *t1 = g_thread_new("r1", reader, &r), *t2 = g_thread_new("r2", reader, &r);
    assert_int_equal(vh_store_scan(f->s, NULL), 0);
    for (int k = 0; k < 50; k++) { /* renames and rescans while readers run */
        g_autofree char *o = g_strdup_printf("many/%02d/d%03d.vhd", k % 17, k);
        g_autofree char *n = g_strdup_printf("many/%02d/r%03d.vhd", k % 17, k);
        vh_store_note_rename(f->s, o, n);
    }
    assert_int_equal(vh_store_scan(f->s, NULL), 0);
    g_atomic_int_set(&r.stop, 1);
    g_thread_join(t1);
    g_thread_join(t2);
    assert_true(g_atomic_int_get(&r.lookups) > 0);
    assert_int_equal(g_atomic_int_get(&r.errors), 0);
    assert_int_equal(vh_store_probe_count(f->s), 306);
    vh_id x;
    vh_id_parse(ID_A, &x);
    g_autoptr(GPtrArray) a = vh_store_find_id(f->s, &x);
    assert_int_equal(a->len, 302);
}

static void store_is_determined_as_designed(void **state)
{
    fixture *f = *state;
    g_autofree char *real = realpath(f->dir, NULL);
    g_autofree char *b = g_build_filename(f->dir, "vm/b.vhd", NULL);
    g_autofree char *c = g_build_filename(f->dir, "vm/deep/c.vhdx", NULL);
    g_autofree char *vm = g_build_filename(f->dir, "vm", NULL);
    g_autofree char *vm_real = g_build_filename(real, "vm", NULL);
    char *files[] = {b, c};
    /* --store wins */
    g_autofree char *s1 = vh_store_determine(f->dir, files, 2, true, NULL);
    assert_string_equal(s1, real);
    /* a folder to check is the store */
    char *folder[] = {vm};
    g_autofree char *s2 = vh_store_determine(NULL, folder, 1, true, NULL);
    assert_string_equal(s2, vm_real);
    /* files: the nearest folder above them holding .vhdheal/ */
    g_autofree char *s3 = vh_store_determine(NULL, files, 2, true, NULL);
    assert_string_equal(s3, real);
    /* without .vhdheal/: the deepest folder holding all the named files */
    g_autofree char *marker = g_build_filename(f->dir, ".vhdheal", NULL);
    fake_rm_rf(marker);
    g_autofree char *s4 = vh_store_determine(NULL, files, 2, true, NULL);
    assert_string_equal(s4, vm_real);
    char *one[] = {c};
    g_autofree char *s5 = vh_store_determine(NULL, one, 1, true, NULL);
    g_autofree char *deep_real = g_build_filename(real, "vm/deep", NULL);
    assert_string_equal(s5, deep_real);
    /* a file outside --store, or missing */
    GError *err = NULL;
    g_autofree char *deep = g_build_filename(f->dir, "vm/deep", NULL);
    char *out[] = {b};
    assert_null(vh_store_determine(deep, out, 1, true, &err));
    assert_non_null(strstr(err->message, "outside the store"));
    g_clear_error(&err);
    char *missing[] = {"/nonexistent/x.vhd"};
    assert_null(vh_store_determine(NULL, missing, 1, true, &err));
    g_clear_error(&err);
    g_autofree char *rel = vh_store_relpath(real, b);
    assert_string_equal(rel, "vm/b.vhd");
    assert_null(vh_store_relpath(vm_real, f->dir));
}

static void default_probe_rejects_non_disks(void **state)
{
    fixture *f = *state;
    vh_store_set_probe(f->s, NULL, NULL); /* the real probe */
    assert_int_equal(vh_store_scan(f->s, NULL), 0);
    g_autoptr(GPtrArray) all = vh_store_list(f->s, NULL);
    assert_int_equal(all->len, 0); /* fake disks are text files, not disks */
    assert_int_equal(vh_store_count(f->s), 6);
}

/* Real disks through the default probe: a refresh re-reads only what changed. */
static void make_real(const char *dir, const char *rel, vh_format fmt)
{
    g_autofree char *p = g_build_filename(dir, rel, NULL);
    g_autofree char *d = g_path_get_dirname(p);
    assert_int_equal(g_mkdir_with_parents(d, 0755), 0);
    vh_create_opts o = {.format = fmt, .type = VH_TYPE_DYNAMIC, .size = 4 * VH_MIB};
    g_autoptr(GError) err = NULL;
    if (vh_disk_create(p, &o, &err) < 0)
        fail_msg("%s", err->message);
}

static void real_disks_refresh(void **state)
{
    fixture *f = *state;
    g_autofree char *dir = g_build_filename(f->dir, "real", NULL);
    make_real(dir, "a/one.vhd", VH_FORMAT_VHD);
    for (int k = 0; k < 40; k++) {
        g_autofree char *rel = g_strdup_printf("b/%02d.vhd", k);
        make_real(dir, rel, VH_FORMAT_VHD);
    }
    g_autoptr(vh_store) s = vh_store_new(dir, NULL);
    assert_int_equal(vh_store_scan(s, NULL), 0);
    assert_int_equal(vh_store_probe_count(s), 41);
    g_autoptr(GPtrArray) all = vh_store_list(s, NULL);
    assert_int_equal(all->len, 41);
    g_autoptr(vh_disk_info) one = vh_store_get(s, "a/one.vhd");
    assert_int_equal(one->format, VH_FORMAT_VHD);
    assert_int_equal(one->virtual_size, 4 * VH_MIB);
    set_mtime(dir, "b/00.vhd", 1000000000);     /* touched */
    make_real(dir, "c/new.vhd", VH_FORMAT_VHD); /* added */
    g_autofree char *from = g_build_filename(dir, "b/01.vhd", NULL);
    g_autofree char *to = g_build_filename(dir, "a/renamed.vhd", NULL);
    assert_int_equal(rename(from, to), 0); /* renamed */
    g_autofree char *gone = g_build_filename(dir, "b/02.vhd", NULL);
    assert_int_equal(unlink(gone), 0); /* deleted */
    assert_int_equal(vh_store_scan(s, NULL), 0);
    assert_int_equal(vh_store_probe_count(s), 41 + 2);
    g_autoptr(vh_disk_info) r = vh_store_get(s, "a/renamed.vhd");
    assert_non_null(r);
    assert_null(vh_store_get(s, "b/01.vhd"));
    assert_null(vh_store_get(s, "b/02.vhd"));
    g_autoptr(GPtrArray) after = vh_store_list(s, NULL);
    assert_int_equal(after->len, 41);
}

static void write_file(const char *dir, const char *rel, const void *buf, size_t len)
{
    g_autofree char *p = g_build_filename(dir, rel, NULL);
    int fd = open(p, O_WRONLY | O_CREAT, 0644); /* the same file: its bytes are overwritten */
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, buf, len, 0), (ssize_t)len);
    close(fd);
}

/*
 * A file too short to be a disk (VH_SNIFF_MIN_SIZE) is indexed as not a disk without a probe; once
 * written to be one, the next note or refresh probes it. The boundary is the sniffer's: 8 bytes
 * "vhdxfile" are probed (and found unreadable), 7 are not.
 */
static void short_files_are_not_probed(void **state)
{
    fixture *f = *state;
    g_autofree char *dir = g_build_filename(f->dir, "grow", NULL);
    make_real(dir, "src.vhdx", VH_FORMAT_VHDX);
    g_autofree char *src = g_build_filename(dir, "src.vhdx", NULL);
    g_autofree char *bytes = NULL;
    gsize len = 0;
    assert_true(g_file_get_contents(src, &bytes, &len, NULL));
    assert_int_equal(unlink(src), 0);
    g_autoptr(vh_store) s = vh_store_new(dir, NULL);
    write_file(dir, "empty.bin", "", 0);
    write_file(dir, "seven.bin", "vhdxfil", 7);
    assert_int_equal(vh_store_scan(s, NULL), 0);
    assert_int_equal(vh_store_count(s), 2);
    assert_int_equal(vh_store_probe_count(s), 0);
    /* created empty (as through the mount: noted on close), then written to be a disk */
    write_file(dir, "new.vhdx", "", 0);
    vh_store_note_changed(s, "new.vhdx");
    g_autoptr(vh_disk_info) empty = vh_store_get(s, "new.vhdx");
    assert_non_null(empty);
    assert_int_equal(empty->format, VH_FORMAT_NONE);
    assert_int_equal(vh_store_probe_count(s), 0);
    write_file(dir, "new.vhdx", bytes, len);
    vh_store_note_changed(s, "new.vhdx");
    assert_int_equal(vh_store_probe_count(s), 1);
    g_autoptr(vh_disk_info) disk = vh_store_get(s, "new.vhdx");
    assert_true(vh_disk_info_is_disk(disk));
    assert_int_equal(disk->virtual_size, 4 * VH_MIB);
    /* the shortest file the sniffer takes for a disk is probed */
    write_file(dir, "eight.bin", "vhdxfile", 8);
    g_autoptr(vh_disk_info) eight = vh_store_describe(s, "eight.bin", NULL);
    assert_int_equal(vh_store_probe_count(s), 2);
    assert_int_equal(eight->format, VH_FORMAT_VHDX);
    assert_non_null(eight->error);
    /* a disk renamed to a name no disk has and back is still known by its content */
    g_autofree char *a = g_build_filename(dir, "new.vhdx", NULL);
    g_autofree char *b = g_build_filename(dir, "new.txt", NULL);
    assert_int_equal(rename(a, b), 0);
    vh_store_note_rename(s, "new.vhdx", "new.txt");
    g_autoptr(vh_disk_info) renamed = vh_store_get(s, "new.txt");
    assert_true(vh_disk_info_is_disk(renamed));
    assert_int_equal(vh_store_scan(s, NULL), 0);
    assert_int_equal(rename(b, a), 0);
    assert_int_equal(vh_store_scan(s, NULL), 0); /* a rename behind its back: found by inode */
    g_autoptr(vh_disk_info) back = vh_store_get(s, "new.vhdx");
    assert_true(vh_disk_info_is_disk(back));
    assert_int_equal(vh_store_probe_count(s), 2);
    g_autoptr(GPtrArray) disks = vh_store_list(s, NULL);
    assert_int_equal(disks->len, 2); /* new.vhdx, eight.bin (unreadable) */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(scan_indexes_disks_by_content, setup, teardown),
        cmocka_unit_test_setup_teardown(refresh_rereads_only_what_changed, setup, teardown),
        cmocka_unit_test_setup_teardown(describe_probes_only_when_stale, setup, teardown),
        cmocka_unit_test_setup_teardown(notifications_keep_the_index_current, setup, teardown),
        cmocka_unit_test_setup_teardown(notes_made_during_a_scan_survive_it, setup, teardown),
        cmocka_unit_test_setup_teardown(parallel_scan_with_concurrent_readers, setup, teardown),
        cmocka_unit_test_setup_teardown(store_is_determined_as_designed, setup, teardown),
        cmocka_unit_test_setup_teardown(default_probe_rejects_non_disks, setup, teardown),
        cmocka_unit_test_setup_teardown(real_disks_refresh, setup, teardown),
        cmocka_unit_test_setup_teardown(short_files_are_not_probed, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
