// SPDX-License-Identifier: GPL-2.0-or-later
/* inuse.c - the byte ranges of the OFD locks on disk files (see inuse.h). */
#include "inuse.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io.h"
#include "resolve.h"

#define PAUSE_MIN_US 500
#define PAUSE_MAX_US 20000

int vh_lock_wait(int fd, short type, off_t start, off_t len, int timeout_ms)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
    gint64 deadline = g_get_monotonic_time() + (gint64)MAX(timeout_ms, 0) * 1000;
    gulong pause_us = PAUSE_MIN_US;
    while (fcntl(fd, F_OFD_SETLK, &fl) < 0) {
        if (errno != EINTR && errno != EAGAIN && errno != EACCES)
            return -errno;
        if (errno == EINTR)
            continue;
        if (timeout_ms >= 0) {
            gint64 left = deadline - g_get_monotonic_time();
            if (left <= 0)
                return -EAGAIN; /* EACCES is the same conflict (POSIX allows either) */
            pause_us = (gulong)MIN((gint64)pause_us, left);
        }
        g_usleep(pause_us);
        pause_us = MIN(pause_us * 2, PAUSE_MAX_US);
    }
    return 0;
}

int vh_lock_data(int fd, short type, int timeout_ms)
{
    return vh_lock_wait(fd, type, 0, VH_INUSE_BYTE, timeout_ms);
}

int vh_lock_inuse(int fd, short type)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = VH_INUSE_BYTE, .l_len = 1};
    if (fcntl(fd, F_OFD_SETLK, &fl) == 0)
        return 0;
    return errno == EAGAIN || errno == EACCES ? -EBUSY : -errno;
}

int vh_lock_probe(int fd)
{
    struct flock fl = {
        .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = VH_INUSE_BYTE + 1};
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
        return -errno;
    return fl.l_type == F_UNLCK ? 0 : -EBUSY;
}

void vh_inuse_release(GArray *fds)
{
    if (!fds)
        return;
    for (guint k = 0; k < fds->len; k++)
        close(g_array_index(fds, int, k));
    g_array_unref(fds);
}

/* Opens member rel beneath the store and marks it in use: the descriptor, or -errno. */
static int hold_member(int rootfd, const char *root, const vh_disk_info *d, GError **err)
{
    g_autofree char *abs = g_build_filename(root, d->path, NULL);
    vh_file f = {.fd = -1};
    int r = vh_file_open_beneath(&f, rootfd, d->path, abs, false, err);
    if (r < 0)
        return r;
    struct stat st;
    if (fstat(f.fd, &st) < 0)
        r = vh_fail(err, errno, "%s: %s", abs, g_strerror(errno));
    else if (st.st_dev != d->dev || st.st_ino != d->ino)
        r = vh_fail(err, EAGAIN, "%s: another file than the one indexed", abs);
    else if ((r = vh_lock_inuse(f.fd, F_RDLCK)) == -EBUSY)
        r = vh_fail(err, EBUSY, "%s: a merge is running on it", abs);
    else if (r < 0)
        r = vh_fail(err, -r, "%s: cannot lock: %s", abs, g_strerror(-r));
    if (r < 0) {
        vh_file_close(&f);
        return r;
    }
    int fd = f.fd;
    f.fd = -1;
    vh_file_close(&f);
    return fd;
}

int vh_inuse_hold_chain(const char *root, const struct vh_chain *c, GArray **out, GError **err)
{
    *out = NULL;
    vh_autofd int rootfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0)
        return vh_fail(err, errno, "%s: %s", root, g_strerror(errno));
    GArray *fds = g_array_new(FALSE, FALSE, sizeof(int));
    for (guint k = 0; k < c->disks->len; k++) {
        int fd = hold_member(rootfd, root, c->disks->pdata[k], err);
        if (fd < 0) {
            vh_inuse_release(fds);
            return fd;
        }
        g_array_append_val(fds, fd);
    }
    *out = fds;
    return 0;
}
