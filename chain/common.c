// SPDX-License-Identifier: GPL-2.0-or-later
/* common.c - the engine's error domain and helpers (see common.h). */
#include "common.h"

#include <stdarg.h>
#include <unistd.h>

GQuark vh_error_quark(void)
{
    return g_quark_from_static_string("vh-error-quark");
}

int vh_fail(GError **err, int errnum, const char *fmt, ...)
{
    if (errnum <= 0)
        errnum = EIO;
    if (err && !*err) {
        va_list ap;
        va_start(ap, fmt);
        g_autofree char *msg = g_strdup_vprintf(fmt, ap);
        va_end(ap);
        g_set_error_literal(err, VH_ERROR, errnum, msg);
    }
    return -errnum;
}

int vh_fail_prefix(GError **err, const char *fmt, ...)
{
    if (!err || !*err)
        return -EIO;
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *prefix = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_prefix_error(err, "%s: ", prefix);
    return -vh_error_errno(*err);
}

int vh_error_errno(const GError *err)
{
    if (err && err->domain == VH_ERROR && err->code > 0)
        return err->code;
    return EIO;
}

void vh_close_fdp(int *fdp)
{
    if (fdp && *fdp >= 0) {
        close(*fdp);
        *fdp = -1;
    }
}

char *vh_relpath_dir(const char *rel)
{
    const char *slash = strrchr(rel, '/');
    return slash ? g_strndup(rel, (gsize)(slash - rel)) : g_strdup("");
}

const char *vh_relpath_base(const char *rel)
{
    const char *slash = strrchr(rel, '/');
    return slash ? slash + 1 : rel;
}
