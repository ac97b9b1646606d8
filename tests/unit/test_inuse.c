// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * test_inuse.c - the byte ranges of the OFD locks on disk files (inuse.h): in-use marks are
 * shared among readers and refuse a claim; a repair's data-range lock does not meet them (a
 * child open through the mount is still reconnected); a qemu-style lock (byte 100) and a claim
 * are seen by the probe; a chain's members are all marked, and a claimed member refuses the mark.
 * vh_lock_wait gives up within its bound while another open file description holds the lock,
 * and takes it as soon as the holder (a thread, another process) lets it go.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "chain.h"
#include "inuse.h"
#include "tmpfix.h"

static int open_rw(const char *path)
{
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    return fd;
}

static void test_marks_and_claims(void **state)
{
    g_autofree char *p = tpath("f");
    int a = open_rw(p), b = open_rw(p), c = open_rw(p);
    assert_int_equal(vh_lock_inuse(a, F_RDLCK), 0);
    assert_int_equal(vh_lock_inuse(b, F_RDLCK), 0); /* two opens through mounts */
    assert_int_equal(vh_lock_inuse(c, F_WRLCK), -EBUSY);
    assert_int_equal(vh_lock_probe(c), -EBUSY);
    /* a repair of the file open through the mount: its data range is free */
    assert_int_equal(vh_lock_data(c, F_WRLCK, 0), 0);
    assert_int_equal(vh_lock_data(a, F_RDLCK, 0), -EAGAIN); /* the settled open waits */
    assert_int_equal(vh_lock_data(c, F_UNLCK, 0), 0);
    close(a);
    assert_int_equal(vh_lock_inuse(c, F_WRLCK), -EBUSY); /* b still marks it */
    close(b);
    assert_int_equal(vh_lock_inuse(c, F_WRLCK), 0); /* released at the last close */
    assert_int_equal(vh_lock_probe(c), 0);          /* its own claim is no other holder */
    int d = open_rw(p);
    assert_int_equal(vh_lock_inuse(d, F_RDLCK), -EBUSY); /* the mount's open during a merge */
    assert_int_equal(vh_lock_probe(d), -EBUSY);
    close(c);
    assert_int_equal(vh_lock_inuse(d, F_RDLCK), 0);
    close(d);
}

static void test_qemu_lock(void **state)
{
    g_autofree char *p = tpath("f");
    int q = open_rw(p), m = open_rw(p);
    /* qemu's raw driver locks single bytes from 100 up, shared */
    struct flock fl = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 100, .l_len = 1};
    assert_int_equal(fcntl(q, F_OFD_SETLK, &fl), 0);
    assert_int_equal(vh_lock_inuse(m, F_WRLCK), 0); /* not its byte ... */
    assert_int_equal(vh_lock_probe(m), -EBUSY);     /* ... but seen */
    assert_int_equal(vh_lock_data(m, F_WRLCK, 0), -EAGAIN);
    close(q);
    assert_int_equal(vh_lock_probe(m), 0);
    close(m);
}

static void test_hold_chain(void **state)
{
    g_autofree char *base = tpath("base.vhdx"), *child = tpath("child.avhdx");
    vh_create_opts o = {.format = VH_FORMAT_VHDX, .type = VH_TYPE_DYNAMIC, .size = 1 << 20};
    assert_int_equal(vh_disk_create(base, &o, NULL), 0);
    g_autoptr(vh_disk) b = NULL;
    assert_int_equal(vh_disk_open(base, VH_OPEN_READ, &b, NULL), 0);
    vh_create_opts oc = {
        .type = VH_TYPE_DIFFERENCING, .parent = b, .parent_relative = ".\\base.vhdx"};
    assert_int_equal(vh_disk_create(child, &oc, NULL), 0);
    vh_chain_open_opts co = {.store = tmp_dir};
    g_autoptr(vh_store) store = NULL;
    g_autoptr(vh_chain) c = vh_chain_resolve(child, &co, &store, NULL);
    assert_non_null(c);
    assert_int_equal(c->disks->len, 2);
    GArray *held = NULL;
    assert_int_equal(vh_inuse_hold_chain(tmp_dir, c, &held, NULL), 0);
    assert_int_equal(held->len, 2);
    int m = open_rw(base);
    assert_int_equal(vh_lock_inuse(m, F_WRLCK), -EBUSY); /* every member is marked */
    vh_inuse_release(held);
    assert_int_equal(vh_lock_inuse(m, F_WRLCK), 0); /* a merge claims the base */
    g_autoptr(GError) err = NULL;
    held = NULL;
    assert_int_equal(vh_inuse_hold_chain(tmp_dir, c, &held, &err), -EBUSY);
    assert_null(held);
    assert_non_null(strstr(err->message, "base.vhdx"));
    close(m);
}

/* Milliseconds since t0 (g_get_monotonic_time). */
static gint64 ms_since(gint64 t0)
{
    return (g_get_monotonic_time() - t0) / 1000;
}

/* Slack for a loaded machine (2 cores shared with other builds): a wait ends within it. */
#define SLACK_MS 1500

static void test_wait_times_out(void **state)
{
    g_autofree char *p = tpath("f");
    int a = open_rw(p), b = open_rw(p);
    assert_int_equal(vh_lock_data(b, F_WRLCK, 0), 0);
    gint64 t0 = g_get_monotonic_time();
    assert_int_equal(vh_lock_wait(a, F_RDLCK, 0, VH_INUSE_BYTE, 300), -EAGAIN);
    gint64 took = ms_since(t0);
    assert_true(took >= 300);
    assert_true(took < 300 + SLACK_MS);
    /* 0: one try, no wait; a whole-file lock (len 0, the journal's) meets the range too */
    t0 = g_get_monotonic_time();
    assert_int_equal(vh_lock_wait(a, F_WRLCK, 0, 0, 0), -EAGAIN);
    assert_true(ms_since(t0) < 100);
    /* a range past the held one is free */
    assert_int_equal(vh_lock_wait(a, F_WRLCK, VH_INUSE_BYTE, 1, 0), 0);
    /* an error that is no conflict is returned at once, unbounded or not */
    int ro = open(p, O_RDONLY | O_CLOEXEC);
    assert_true(ro >= 0);
    t0 = g_get_monotonic_time();
    assert_int_equal(vh_lock_wait(ro, F_WRLCK, 0, 1, -1), -EBADF);
    assert_true(ms_since(t0) < 100);
    close(ro);
    close(a);
    close(b);
}

typedef struct {
    int fd;
    gulong after_us;
} release_job;

static gpointer release_later(gpointer data)
{
    release_job *job = data;
    g_usleep(job->after_us);
    vh_lock_data(job->fd, F_UNLCK, 0);
    return NULL;
}

static void test_wait_released_by_thread(void **state)
{
    g_autofree char *p = tpath("f");
    int a = open_rw(p), b = open_rw(p);
    assert_int_equal(vh_lock_data(b, F_RDLCK, 0), 0);
    release_job job = {.fd = b, .after_us = 200 * 1000};
    gint64 t0 = g_get_monotonic_time();
    GThread *t = g_thread_new("release", release_later, &job);
    assert_int_equal(vh_lock_data(a, F_WRLCK, 10000), 0);
    gint64 took = ms_since(t0);
    g_thread_join(t);
    assert_true(took >= 150); /* it did wait for the holder */
    assert_true(took < 200 + SLACK_MS);
    assert_int_equal(vh_lock_data(b, F_RDLCK, 0), -EAGAIN); /* a holds it now */
    close(a);
    close(b);
}

/* No bound: a lock another process holds is taken when that process exits (200 ms after the
 * parent says it starts waiting). */
static void test_wait_unbounded_released_by_child(void **state)
{
    g_autofree char *p = tpath("f");
    int ready[2], go[2];
    assert_int_equal(pipe(ready), 0);
    assert_int_equal(pipe(go), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char c;
        int fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0 || vh_lock_wait(fd, F_WRLCK, 0, 0, 0) < 0 || write(ready[1], "x", 1) != 1 ||
            read(go[0], &c, 1) != 1)
            _exit(2);
        g_usleep(200 * 1000);
        _exit(0); /* the lock goes with the process */
    }
    close(ready[1]);
    close(go[0]);
    char c;
    assert_int_equal(read(ready[0], &c, 1), 1);
    close(ready[0]);
    int a = open_rw(p);
    assert_int_equal(vh_lock_wait(a, F_WRLCK, 0, 0, 0), -EAGAIN); /* held until go */
    assert_int_equal(write(go[1], "x", 1), 1);
    close(go[1]);
    assert_int_equal(vh_lock_wait(a, F_WRLCK, 0, 0, -1), 0);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    close(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_marks_and_claims, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_qemu_lock, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_hold_chain, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_wait_times_out, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_wait_released_by_thread, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_wait_unbounded_released_by_child, tmp_setup,
                                        tmp_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
