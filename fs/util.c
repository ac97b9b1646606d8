/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * util.c - logging for the mount (stderr in the foreground, syslog as a daemon) and small
 * helpers shared by the modules of fs/.
 *
 * Contract: vhfs_log is safe from any thread; each message is written as one line with one call,
 * so lines of concurrent workers do not interleave.
 */
#include "fs.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static bool log_foreground = true;
static bool log_debug;

/* The engine's warnings (g_warning: recovery's notes, a journal compaction that failed) go to
 * the mount's log: a daemon's stderr is /dev/null. */
static void engine_warning(const gchar *domain, GLogLevelFlags level, const gchar *msg,
                           gpointer data)
{
    vhfs_log(LOG_WARNING, "%s", msg);
}

void vhfs_log_init(bool foreground, bool debug)
{
    log_foreground = foreground;
    log_debug = debug;
    if (!foreground)
        openlog("vhdhealfs", LOG_PID, LOG_DAEMON);
    g_log_set_handler(NULL, G_LOG_LEVEL_WARNING, engine_warning, NULL);
}

bool vhfs_log_debug_enabled(void)
{
    return log_debug;
}

static void log_line(int priority, const char *msg)
{
    if (!log_foreground) {
        syslog(priority, "%s", msg);
        return;
    }
    /* One fprintf per line: stdio locks the stream, so workers' lines stay whole. */
    fprintf(stderr, "vhdhealfs: %s\n", msg);
}

static G_GNUC_PRINTF(2, 0) void log_v(int priority, const char *fmt, va_list ap)
{
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    size_t len = strlen(msg);

    while (len > 0 && msg[len - 1] == '\n') /* libfuse ends its messages with one */
        msg[--len] = '\0';
    log_line(priority, msg);
}

void vhfs_log(int priority, const char *fmt, ...)
{
    va_list ap;

    if (priority == LOG_DEBUG && !log_debug)
        return;
    va_start(ap, fmt);
    log_v(priority, fmt, ap);
    va_end(ap);
}

void vhfs_fuse_log(enum fuse_log_level level, const char *fmt, va_list ap)
{
    /* fuse_log_level uses syslog's numbering. */
    int priority = (int)level;

    if (priority == LOG_DEBUG && !log_debug)
        return;
    log_v(priority, fmt, ap);
}

void vhfs_procfd(char buf[VHFS_PROCFD_LEN], int fd)
{
    snprintf(buf, VHFS_PROCFD_LEN, "/proc/self/fd/%d", fd);
}

void vhfs_reply_err(fuse_req_t req, const char *who, const char *op, int err)
{
    if (err != 0)
        vhfs_debug("%s%s%s: %s (errno %d)", who, *who ? ": " : "", op, g_strerror(err), err);
    fuse_reply_err(req, err);
}
