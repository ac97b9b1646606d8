// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * test_io.c - chain/io.c: the durability switch for synthetic data; opens that never block and
 * accept only regular files; opens strictly beneath a folder. Linked with -Wl,--wrap=fdatasync
 * (tests/unit/meson.build) to count the flushes that reach the system. A hang is a failure: each
 * open test arms alarm(), whose SIGALRM ends the test program.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tmpfix.h"

static int fdatasync_calls;

int __real_fdatasync(int fd);
int __wrap_fdatasync(int fd);

int __wrap_fdatasync(int fd)
{
    fdatasync_calls++;
    return __real_fdatasync(fd);
}

/*
 * Durable by default: a flush of a writable file is one fdatasync (of a read-only one, none).
 * Switched off, flushes skip the system call but still count for the fault injector and still
 * fail when it fires.
 */
static void durability_switch(void **state)
{
    g_autofree char *p = tpath("f");
    fdatasync_calls = 0;
    vh_file f;
    assert_int_equal(vh_file_create(&f, p, NULL), 0);
    assert_int_equal(vh_file_write(&f, "abc", 3, 0, "test", NULL), 0);
    assert_true(vh_io_durable());
    vh_fault_disarm();
    assert_int_equal(vh_file_flush(&f, NULL), 0);
    assert_int_equal(fdatasync_calls, 1);
    assert_int_equal(vh_fault_ops(), 1);

    vh_io_set_durable(false);
    assert_false(vh_io_durable());
    assert_int_equal(vh_file_flush(&f, NULL), 0);
    assert_int_equal(vh_file_flush(&f, NULL), 0);
    assert_int_equal(fdatasync_calls, 1);
    assert_int_equal(vh_fault_ops(), 3);
    vh_fault_arm(VH_FAULT_STOP, 2, 0);
    assert_int_equal(vh_file_write(&f, "d", 1, 3, "test", NULL), 0);
    g_autoptr(GError) err = NULL;
    assert_int_equal(vh_file_flush(&f, &err), -EIO);
    assert_non_null(strstr(err->message, "injected fault"));
    assert_true(vh_fault_fired());
    vh_fault_disarm();

    vh_io_set_durable(true);
    assert_int_equal(vh_file_flush(&f, NULL), 0);
    assert_int_equal(fdatasync_calls, 2);
    vh_file_close(&f);
    assert_int_equal(vh_file_open(&f, p, false, NULL), 0);
    assert_int_equal(vh_file_flush(&f, NULL), 0); /* read-only: nothing to flush */
    assert_int_equal(fdatasync_calls, 2);
    vh_file_close(&f);
}

/* A FIFO, a folder, a socket and a device give EINVAL "not a regular file", at once. */
static void open_refuses_what_is_not_a_regular_file(void **state)
{
    alarm(10);
    g_autofree char *fifo = tpath("fifo.vhdx");
    g_autofree char *dir = tpath("dir.vhdx");
    g_autofree char *sock = tpath("sock.vhdx");
    assert_int_equal(mkfifo(fifo, 0644), 0);
    assert_int_equal(mkdir(dir, 0755), 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    g_strlcpy(sa.sun_path, sock, sizeof sa.sun_path);
    vh_autofd int sfd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_int_equal(bind(sfd, (struct sockaddr *)&sa, sizeof sa), 0);
    const char *paths[] = {fifo, dir, sock, "/dev/null"};
    for (int k = 0; k < 4; k++) {
        for (int w = 0; w < 2; w++) {
            vh_file f;
            g_autoptr(GError) err = NULL;
            int r = vh_file_open(&f, paths[k], w == 1, &err);
            if (k == 2) /* a socket cannot be opened at all */
                assert_true(r < 0);
            else if (!(k == 1 && w == 1)) { /* a folder opened O_RDWR is EISDIR */
                assert_int_equal(r, -EINVAL);
                assert_non_null(strstr(err->message, "not a regular file"));
            }
            assert_true(r < 0);
        }
    }
    /* a regular file opens, and its fd is blocking again */
    g_autofree char *reg = tpath("reg");
    assert_true(g_file_set_contents(reg, "data", 4, NULL));
    vh_file f;
    assert_int_equal(vh_file_open(&f, reg, false, NULL), 0);
    assert_int_equal(fcntl(f.fd, F_GETFL) & O_NONBLOCK, 0);
    assert_int_equal(f.size, 4);
    vh_file_close(&f);
    alarm(0);
}

/* Opens each case beneath root; with walk, as where the kernel has no openat2. */
static void open_beneath_cases(int root, bool walk)
{
    struct {
        const char *rel;
        int want;
    } cases[] = {
        {"sub/in.vhdx", 0},       {"./sub/in.vhdx", 0},
        {"../outside", -EXDEV},   {"sub/../../outside", -EXDEV},
        {"out.vhdx", -EXDEV},     {"alias.vhdx", -EXDEV},
        {"subl/in.vhdx", -EXDEV}, {"fifo.vhdx", -EINVAL},
        {"sub", -EINVAL},         {"none.vhdx", -ENOENT},
        {"/etc/passwd", -EXDEV},  {"", -EXDEV},
    };
    vh_io_test_without_openat2(walk);
    for (size_t k = 0; k < G_N_ELEMENTS(cases); k++) {
        vh_file f;
        g_autoptr(GError) err = NULL;
        int r = vh_file_open_beneath(&f, root, cases[k].rel, cases[k].rel, false, &err);
        if (r != cases[k].want) {
            vh_io_test_without_openat2(false);
            fail_msg("%s%s: %d, want %d (%s)", cases[k].rel, walk ? " (walk)" : "", r,
                     cases[k].want, err ? err->message : "opened");
        }
        if (r == 0) {
            assert_string_equal(f.path, cases[k].rel);
            assert_int_equal(f.size, 2);
            vh_file_close(&f);
        }
    }
    vh_io_test_without_openat2(false);
}

/* Beneath a folder: no "..", no absolute path, no symlink (inside or out), no FIFO; with
 * openat2 and with the O_NOFOLLOW walk that stands in for it on older kernels. */
static void open_beneath_stays_beneath(void **state)
{
    alarm(10);
    g_autofree char *store = tpath("store");
    g_autofree char *sub = tpath("store/sub");
    g_autofree char *outside = tpath("outside");
    assert_int_equal(g_mkdir_with_parents(sub, 0755), 0);
    g_autofree char *in = tpath("store/sub/in.vhdx");
    assert_true(g_file_set_contents(in, "in", 2, NULL));
    assert_true(g_file_set_contents(outside, "out", 3, NULL));
    g_autofree char *l1 = tpath("store/out.vhdx");
    g_autofree char *l2 = tpath("store/alias.vhdx");
    g_autofree char *l3 = tpath("store/subl");
    g_autofree char *fifo = tpath("store/fifo.vhdx");
    assert_int_equal(symlink("../outside", l1), 0);
    assert_int_equal(symlink("sub/in.vhdx", l2), 0);
    assert_int_equal(symlink("sub", l3), 0);
    assert_int_equal(mkfifo(fifo, 0644), 0);
    vh_autofd int root = open(store, O_PATH | O_DIRECTORY | O_CLOEXEC);
    assert_true(root >= 0);
    open_beneath_cases(root, false);
    open_beneath_cases(root, true);
    alarm(0);
}

/* vh_write_full: all of it at an offset (pwrite), all of it down a pipe (off < 0: write, which
 * a pipe cannot pwrite), and -errno with the count written for a pipe nobody reads. */
static void write_full_writes_everything(void **state)
{
    alarm(10);
    g_autofree char *path = tpath("w.bin");
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    assert_true(fd >= 0);
    uint8_t buf[8192];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)(i * 7);
    size_t done = 0;
    assert_int_equal(vh_write_full(fd, buf, sizeof buf, 4096, &done), 0);
    assert_int_equal(done, sizeof buf);
    uint8_t back[sizeof buf];
    assert_int_equal(vh_read_full(fd, back, sizeof back, 4096), (ssize_t)sizeof back);
    assert_memory_equal(back, buf, sizeof buf);
    close(fd);

    int p[2];
    assert_int_equal(pipe(p), 0);
    /* a pipe of one page, read by a child while 8 KiB go in */
    assert_true(fcntl(p[1], F_SETPIPE_SZ, 4096) >= 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[1]);
        uint8_t in[sizeof buf];
        ssize_t n = vh_read_full(p[0], in, sizeof in, -1);
        _exit(n == (ssize_t)sizeof in && memcmp(in, buf, sizeof in) == 0 ? 0 : 1);
    }
    close(p[0]);
    assert_int_equal(vh_write_full(p[1], buf, sizeof buf, -1, NULL), 0);
    close(p[1]);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    assert_int_equal(pipe(p), 0);
    close(p[0]);
    signal(SIGPIPE, SIG_IGN);
    assert_int_equal(vh_write_full(p[1], buf, sizeof buf, -1, &done), -EPIPE);
    assert_int_equal(done, 0);
    close(p[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(durability_switch, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(open_refuses_what_is_not_a_regular_file, tmp_setup,
                                        tmp_teardown),
        cmocka_unit_test_setup_teardown(open_beneath_stays_beneath, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(write_full_writes_everything, tmp_setup, tmp_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
