// SPDX-License-Identifier: GPL-2.0-or-later
/* parent_value.c - user.vhd.parent values (see parent_value.h). */
#include "parent_value.h"

#include <limits.h>

int vhfs_parent_value_check(const char *value, size_t size, char **out, GError **err)
{
    size_t len = size;

    if (len > 0 && value[len - 1] == '\n')
        len--;
    if (len == 0)
        return vh_fail(err, EINVAL, "the parent path is empty");
    if (len >= PATH_MAX)
        return vh_fail(err, EINVAL, "the parent path is longer than %d bytes", PATH_MAX - 1);
    if (memchr(value, '\0', len) != NULL || memchr(value, '\n', len) != NULL)
        return vh_fail(err, EINVAL, "the parent path holds a NUL or newline character");
    if (!g_utf8_validate(value, (gssize)len, NULL))
        return vh_fail(err, EINVAL, "the parent path is not valid UTF-8");
    *out = g_strndup(value, len);
    return 0;
}

int vhfs_parent_value_map(const char *mountpoint, const char *store, const char *rel,
                          const char *value, char **out, GError **err)
{
    g_autofree char *dir = g_path_get_dirname(rel);
    g_autofree char *base =
        strcmp(dir, ".") == 0 ? g_strdup(mountpoint) : g_build_filename(mountpoint, dir, NULL);
    g_autofree char *p = g_canonicalize_filename(value, base);
    /* It keeps a leading "//" (POSIX leaves its meaning open); Linux reads it as "/". */
    if (p[0] == '/' && p[1] == '/')
        memmove(p, p + 1, strlen(p));
    const char *in_mount = vh_path_below(mountpoint, p);
    const char *in_store = vh_path_below(store, p);

    /* When one lies inside the other, the longer (more specific) root is the one meant. */
    if (in_mount != NULL && in_store != NULL) {
        if (strlen(store) > strlen(mountpoint))
            in_mount = NULL;
        else
            in_store = NULL;
    }
    if (in_mount != NULL) {
        *out = g_build_filename(store, in_mount, NULL);
        return 0;
    }
    if (in_store != NULL) {
        *out = g_steal_pointer(&p);
        return 0;
    }
    return vh_fail(err, EXDEV, "%s: the parent is outside the store (give a path under %s)", p,
                   mountpoint);
}
