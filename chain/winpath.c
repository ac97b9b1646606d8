// SPDX-License-Identifier: GPL-2.0-or-later
/* winpath.c - Windows locator paths (see winpath.h). */
#include "winpath.h"

#include <stdlib.h>

/* Splits a canonical absolute path into its components. */
static char **components(const char *path)
{
    g_autofree char *abs = g_canonicalize_filename(path, NULL);
    return g_strsplit(abs[0] == '/' ? abs + 1 : abs, "/", -1);
}

char *vh_winpath_from_posix(const char *posix)
{
    char *s = g_strdup(posix);
    for (char *p = s; *p; p++)
        if (*p == '/')
            *p = '\\';
    return s;
}

char *vh_winpath_relative(const char *child, const char *parent)
{
    g_autofree char *child_dir = g_path_get_dirname(child);
    g_auto(GStrv) from = components(child_dir);
    g_auto(GStrv) to = components(parent);
    guint nf = g_strv_length(from), nt = g_strv_length(to);
    if (nf == 1 && from[0][0] == '\0')
        nf = 0; /* the root folder */
    guint common = 0;
    while (common < nf && common + 1 < nt && strcmp(from[common], to[common]) == 0)
        common++;
    GString *s = g_string_new(nf == common ? ".\\" : "");
    for (guint i = common; i < nf; i++)
        g_string_append(s, "..\\");
    for (guint i = common; i < nt; i++) {
        g_string_append(s, to[i]);
        if (i + 1 < nt)
            g_string_append_c(s, '\\');
    }
    return g_string_free(s, FALSE);
}
