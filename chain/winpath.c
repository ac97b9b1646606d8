// SPDX-License-Identifier: GPL-2.0-or-later
/* winpath.c - Windows locator paths and their mapping into the store (see winpath.h). */
#include "winpath.h"

#include "io.h" /* vh_openat2 */

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

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

/* ---------------------------------------------------------------------------------------- */
/* Parsing */

void vh_winpath_clear(vh_winpath *p)
{
    g_clear_pointer(&p->root, g_free);
    g_clear_pointer(&p->parts, g_strfreev);
}

/* Splits "a/b/../c" into components: "." and empty ones dropped; ".." folded when absolute. */
static GStrv split_parts(const char *s, bool absolute)
{
    g_auto(GStrv) raw = g_strsplit(s, "/", -1);
    GPtrArray *out = g_ptr_array_new();
    for (char **c = raw; *c; c++) {
        if (**c == '\0' || strcmp(*c, ".") == 0)
            continue;
        if (absolute && strcmp(*c, "..") == 0) {
            if (out->len > 0)
                g_free(g_ptr_array_steal_index(out, out->len - 1));
            continue; /* ".." at a root stays at the root, as Windows does */
        }
        g_ptr_array_add(out, g_strdup(*c));
    }
    g_ptr_array_add(out, NULL);
    return (GStrv)g_ptr_array_free(out, FALSE);
}

/* A MacX locator: "file://localhost/dir/p.vhd" or "file:///dir/p.vhd" (doc/formats.md §1.3). */
static char *macx_to_posix(const char *url)
{
    const char *p = url + 5; /* after "file:" */
    if (g_str_has_prefix(p, "//")) {
        p += 2;
        const char *slash = strchr(p, '/');
        if (!slash)
            return NULL;
        p = slash; /* drop the host ("localhost" or empty) */
    }
    return g_uri_unescape_string(p, NULL);
}

/* The part of a "\\?\"-style path after the prefix; sets kind and root. */
static const char *parse_long_prefix(const char *p, vh_winpath *out)
{
    if (g_ascii_strncasecmp(p, "UNC/", 4) == 0) {
        out->kind = VH_WP_UNC;
        return p + 4;
    }
    if (g_ascii_strncasecmp(p, "Volume{", 7) == 0) {
        const char *end = strchr(p, '/');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        out->kind = VH_WP_VOLUME;
        out->root = g_strndup(p, n);
        return p + n;
    }
    if (g_ascii_isalpha(p[0]) && p[1] == ':') {
        out->kind = VH_WP_DRIVE;
        out->root = g_strndup(p, 2);
        return p + 2;
    }
    return NULL;
}

/* "server/share/rest": takes two components as the root. */
static const char *parse_unc_root(const char *p, vh_winpath *out)
{
    while (*p == '/')
        p++;
    const char *s1 = strchr(p, '/');
    if (!s1 || s1 == p)
        return NULL;
    const char *share = s1 + 1;
    const char *s2 = strchr(share, '/');
    size_t n = s2 ? (size_t)(s2 - share) : strlen(share);
    if (n == 0)
        return NULL;
    out->root = g_strdup_printf("%.*s\\%.*s", (int)(s1 - p), p, (int)n, share);
    return share + n;
}

bool vh_winpath_parse(const char *stored, vh_winpath *out)
{
    memset(out, 0, sizeof *out);
    if (!stored || !*stored)
        return false;
    g_autofree char *s = NULL;
    bool posix = false;
    if (g_ascii_strncasecmp(stored, "file:", 5) == 0) {
        s = macx_to_posix(stored);
        posix = true;
    } else {
        posix = stored[0] == '/';
        s = g_strdup(stored);
    }
    if (!s || !*s)
        return false;
    for (char *c = s; *c; c++)
        if (*c == '\\')
            *c = '/';
    const char *p = s;
    out->kind = VH_WP_RELATIVE;
    if (posix) {
        out->kind = VH_WP_POSIX;
    } else if (g_str_has_prefix(p, "//?/") || g_str_has_prefix(p, "//./") ||
               g_str_has_prefix(p, "/?\?/")) {
        p = parse_long_prefix(p + 4, out);
        if (p && out->kind == VH_WP_UNC)
            p = parse_unc_root(p, out);
    } else if (g_str_has_prefix(p, "//")) {
        out->kind = VH_WP_UNC;
        p = parse_unc_root(p + 2, out);
    } else if (g_ascii_isalpha(p[0]) && p[1] == ':') {
        out->kind = VH_WP_DRIVE;
        out->root = g_strndup(p, 2);
        p += 2;
    } else if (p[0] == '/') {
        out->kind = VH_WP_ROOTED;
    }
    if (!p) {
        vh_winpath_clear(out);
        return false;
    }
    if (!out->root)
        out->root = g_strdup("");
    out->parts = split_parts(p, out->kind != VH_WP_RELATIVE);
    /* a bare root ("C:\", "\\nas\vms") is a valid winroot; anything else needs a name */
    if (!out->parts[0] && !*out->root) {
        vh_winpath_clear(out);
        return false;
    }
    return true;
}

/* A component as Windows compares it: trailing spaces and dots dropped, case folded. */
static char *component_key(const char *c)
{
    size_t n = strlen(c);
    while (n > 0 && (c[n - 1] == ' ' || c[n - 1] == '.'))
        n--;
    if (n == 0)
        return g_strdup(c); /* "." or ".." or all dots: keep as is */
    g_autofree char *trimmed = g_strndup(c, n);
    if (!g_utf8_validate(trimmed, -1, NULL))
        return g_ascii_strdown(trimmed, -1);
    g_autofree char *norm = g_utf8_normalize(trimmed, -1, G_NORMALIZE_DEFAULT_COMPOSE);
    return g_utf8_casefold(norm ? norm : trimmed, -1);
}

bool vh_winpath_component_equal(const char *a, const char *b)
{
    g_autofree char *ka = component_key(a);
    g_autofree char *kb = component_key(b);
    return strcmp(ka, kb) == 0;
}

static bool roots_equal(const vh_winpath *a, const vh_winpath *b)
{
    if (a->kind != b->kind)
        return false;
    g_auto(GStrv) ra = g_strsplit(a->root, "\\", -1);
    g_auto(GStrv) rb = g_strsplit(b->root, "\\", -1);
    if (g_strv_length(ra) != g_strv_length(rb))
        return false;
    for (guint i = 0; ra[i]; i++)
        if (!vh_winpath_component_equal(ra[i], rb[i]))
            return false;
    return true;
}

/* If p lies under root, the number of root components to skip; -1 otherwise. */
static int under_root(const vh_winpath *p, const vh_winpath *root)
{
    if (!roots_equal(p, root))
        return -1;
    guint n = g_strv_length(root->parts);
    if (g_strv_length(p->parts) <= n)
        return -1;
    for (guint i = 0; i < n; i++)
        if (!vh_winpath_component_equal(p->parts[i], root->parts[i]))
            return -1;
    return (int)n;
}

/* ---------------------------------------------------------------------------------------- */
/* Mapping */

static bool parse_winroot(const char *winroot, vh_winpath *out);

const char *vh_wp_via_name(vh_wp_via v)
{
    switch (v) {
    case VH_WP_VIA_RELATIVE:
        return "relative";
    case VH_WP_VIA_WINROOT:
        return "winroot";
    case VH_WP_VIA_STORE:
        return "store";
    case VH_WP_VIA_TAIL:
        return "tail";
    }
    return "unknown";
}

void vh_wp_candidate_free(vh_wp_candidate *c)
{
    if (!c)
        return;
    g_free(c->rel);
    g_free(c);
}

char *vh_winpath_join(const char *dir, const char *const *parts)
{
    GPtrArray *out = g_ptr_array_new();
    g_auto(GStrv) base = g_strsplit(dir ? dir : "", "/", -1);
    for (char **c = base; *c; c++)
        if (**c && strcmp(*c, ".") != 0)
            g_ptr_array_add(out, *c);
    bool escapes = false;
    for (const char *const *c = parts; *c && !escapes; c++) {
        if (**c == '\0' || strcmp(*c, ".") == 0)
            continue;
        if (strcmp(*c, "..") == 0) {
            if (out->len == 0)
                escapes = true;
            else
                g_ptr_array_set_size(out, out->len - 1);
            continue;
        }
        g_ptr_array_add(out, (char *)*c);
    }
    char *r = NULL;
    if (!escapes) {
        g_ptr_array_add(out, NULL);
        r = g_strjoinv("/", (char **)out->pdata);
    }
    g_ptr_array_free(out, TRUE);
    return r;
}

static void add_candidate(GPtrArray *out, char *rel, vh_wp_via via, bool outside)
{
    if (rel && !outside) {
        if (*rel == '\0') {
            g_free(rel);
            return;
        }
        for (guint i = 0; i < out->len; i++) {
            vh_wp_candidate *c = out->pdata[i];
            if (c->rel && strcmp(c->rel, rel) == 0) {
                g_free(rel);
                return;
            }
        }
    }
    vh_wp_candidate *c = g_new0(vh_wp_candidate, 1);
    c->rel = rel;
    c->via = via;
    c->outside = outside;
    g_ptr_array_add(out, c);
}

/* The file name, then longer suffixes, each under the child's folder and then STORE. */
#define MAX_TAIL_COMPONENTS 8
static void add_tails(GPtrArray *out, GStrv parts, const char *child_dir)
{
    guint n = g_strv_length(parts);
    for (guint k = 1; k <= n && k <= MAX_TAIL_COMPONENTS; k++) {
        const char *const *suffix = (const char *const *)parts + (n - k);
        add_candidate(out, vh_winpath_join(child_dir, suffix), VH_WP_VIA_TAIL, false);
        add_candidate(out, vh_winpath_join("", suffix), VH_WP_VIA_TAIL, false);
    }
}

/* A POSIX path under the store's own absolute path: the components below it, or -1. */
static int under_store_abs(const vh_winpath *p, const char *store_abs)
{
    if (!store_abs)
        return -1;
    g_auto(GStrv) sp = split_parts(store_abs, true);
    guint n = g_strv_length(sp);
    if (g_strv_length(p->parts) <= n)
        return -1;
    for (guint i = 0; i < n; i++)
        if (strcmp(p->parts[i], sp[i]) != 0)
            return -1;
    return (int)n;
}

GPtrArray *vh_winpath_candidates(const char *stored, const char *child_dir, const char *winroot,
                                 const char *store_abs)
{
    GPtrArray *out = g_ptr_array_new_with_free_func((GDestroyNotify)vh_wp_candidate_free);
    vh_winpath p;
    if (!vh_winpath_parse(stored, &p))
        return out;
    if (p.kind == VH_WP_RELATIVE) {
        char *rel = vh_winpath_join(child_dir, (const char *const *)p.parts);
        add_candidate(out, rel, VH_WP_VIA_RELATIVE, rel == NULL);
        vh_winpath_clear(&p);
        return out;
    }
    if (p.kind == VH_WP_POSIX) {
        int skip = under_store_abs(&p, store_abs);
        if (skip >= 0)
            add_candidate(out, vh_winpath_join("", (const char *const *)p.parts + skip),
                          VH_WP_VIA_STORE, false);
        else
            add_candidate(out, NULL, VH_WP_VIA_STORE, true);
    } else if (winroot) {
        vh_winpath root;
        if (parse_winroot(winroot, &root)) {
            int skip = under_root(&p, &root);
            if (skip >= 0)
                add_candidate(out, vh_winpath_join("", (const char *const *)p.parts + skip),
                              VH_WP_VIA_WINROOT, false);
            else /* an absolute path that Windows hosts see outside STORE */
                add_candidate(out, NULL, VH_WP_VIA_WINROOT, true);
            vh_winpath_clear(&root);
        }
    }
    add_tails(out, p.parts, child_dir);
    vh_winpath_clear(&p);
    return out;
}

char *vh_winpath_to_windows(const char *rel, const char *winroot)
{
    g_autofree char *w = vh_winpath_from_posix(rel);
    g_autofree char *root = vh_winpath_from_posix(winroot);
    const char *r = w;
    while (*r == '\\')
        r++;
    size_t n = strlen(root);
    while (n > 0 && root[n - 1] == '\\')
        n--;
    return g_strdup_printf("%.*s\\%s", (int)n, root, r);
}

/* A winroot as given ("/" may stand for "\\": "//nas/vms", "D:/VMs"): never a POSIX path. */
static bool parse_winroot(const char *winroot, vh_winpath *out)
{
    g_autofree char *w = winroot ? vh_winpath_from_posix(winroot) : NULL;
    return w && vh_winpath_parse(w, out);
}

bool vh_winpath_is_root(const char *winroot)
{
    vh_winpath p;
    if (!parse_winroot(winroot, &p))
        return false;
    bool ok = (p.kind == VH_WP_DRIVE || p.kind == VH_WP_UNC || p.kind == VH_WP_VOLUME) && *p.root;
    vh_winpath_clear(&p);
    return ok;
}

const char *vh_path_below(const char *root, const char *path)
{
    size_t n = strlen(root);
    while (n > 0 && root[n - 1] == '/')
        n--;
    if (n == 0) { /* "/" holds every absolute path, "" every relative one */
        if (root[0] != '/')
            return path[0] == '/' ? NULL : path;
        return path[0] == '/' ? path + strspn(path, "/") : NULL;
    }
    if (strncmp(path, root, n) != 0 || (path[n] != '\0' && path[n] != '/'))
        return NULL;
    return path[n] == '/' ? path + n + 1 : path + n;
}

/* ---------------------------------------------------------------------------------------- */
/* Looking a path up strictly beneath the store */

static bool have_openat2 = true;

/* realpath-based fallback for kernels without openat2: resolves without opening the target. */
static int open_beneath_fallback(int root_fd, const char *root_real, const char *rel, int flags)
{
    g_autofree char *joined = g_build_filename(root_real, rel, NULL);
    g_autofree char *real = realpath(joined, NULL);
    if (!real)
        return -errno;
    if (!vh_path_below(root_real, real))
        return -EXDEV;
    int fd = open(real, flags | O_CLOEXEC | O_NOFOLLOW);
    return fd < 0 ? -errno : fd;
}

/* Opens rel (O_PATH or a directory) beneath the store; -EXDEV when it would leave it. */
static int open_beneath(int root_fd, const char *root_real, const char *rel, int flags)
{
    if (!*rel)
        rel = ".";
    if (have_openat2) {
        int fd = vh_openat2(root_fd, rel, (uint64_t)(flags | O_CLOEXEC), 0,
                            RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS);
        if (fd >= 0)
            return fd;
        if (fd != -ENOSYS && fd != -EPERM) /* EPERM: seccomp filters in some sandboxes */
            return fd;
        have_openat2 = false;
    }
    return open_beneath_fallback(root_fd, root_real, rel, flags);
}

/* The canonical store-relative path of an fd opened beneath the store. */
static int fd_store_path(int fd, const char *root_real, char **found)
{
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    g_autofree char *target = g_file_read_link(link, NULL);
    if (!target)
        return -ENOENT;
    const char *rel = vh_path_below(root_real, target);
    if (!rel || !*rel)
        return -EXDEV;
    *found = g_strdup(rel);
    return 0;
}

/* A name in folder `dir` equal to `want` as Windows compares names (the first in byte order). */
static int find_case_insensitive(int root_fd, const char *root_real, const char *dir,
                                 const char *want, char **name)
{
    int dfd = open_beneath(root_fd, root_real, dir, O_RDONLY | O_DIRECTORY);
    if (dfd < 0)
        return dfd;
    DIR *d = fdopendir(dfd);
    if (!d) {
        int e = -errno;
        close(dfd);
        return e;
    }
    g_autofree char *key = component_key(want);
    char *best = NULL;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        g_autofree char *k = component_key(de->d_name);
        if (strcmp(k, key) == 0 && (!best || strcmp(de->d_name, best) < 0)) {
            g_free(best);
            best = g_strdup(de->d_name);
        }
    }
    closedir(d);
    *name = best;
    return best ? 0 : -ENOENT;
}

/* Walks rel component by component, falling back to a case-insensitive match where needed. */
static int lookup_folding_case(int root_fd, const char *root_real, const char *rel, char **out)
{
    g_auto(GStrv) parts = g_strsplit(rel, "/", -1);
    g_autoptr(GString) cur = g_string_new("");
    for (char **c = parts; *c; c++) {
        if (**c == '\0')
            continue;
        g_autofree char *exact = cur->len ? g_strdup_printf("%s/%s", cur->str, *c) : g_strdup(*c);
        int fd = open_beneath(root_fd, root_real, exact, O_PATH);
        if (fd >= 0) {
            close(fd);
            g_string_assign(cur, exact);
            continue;
        }
        if (fd != -ENOENT)
            return fd;
        g_autofree char *name = NULL;
        int r = find_case_insensitive(root_fd, root_real, cur->str, *c, &name);
        if (r < 0)
            return r == -ENOTDIR ? -ENOENT : r;
        if (cur->len)
            g_string_append_c(cur, '/');
        g_string_append(cur, name);
    }
    *out = g_strdup(cur->str);
    return 0;
}

int vh_winpath_lookup(int root_fd, const char *root_real, const char *rel, char **found)
{
    *found = NULL;
    if (!rel || !*rel)
        return -ENOENT;
    g_autofree char *path = g_strdup(rel);
    int fd = open_beneath(root_fd, root_real, path, O_PATH);
    if (fd == -ENOENT || fd == -ENOTDIR) {
        g_free(path);
        path = NULL;
        int r = lookup_folding_case(root_fd, root_real, rel, &path);
        if (r < 0)
            return r == -ENOTDIR ? -ENOENT : r;
        fd = open_beneath(root_fd, root_real, path, O_PATH);
    }
    if (fd < 0)
        return fd == -ENOTDIR ? -ENOENT : fd;
    struct stat st;
    int r = fstat(fd, &st) < 0 ? -errno : 0;
    if (r == 0 && !S_ISREG(st.st_mode))
        r = -ENOENT;
    if (r == 0)
        r = fd_store_path(fd, root_real, found);
    close(fd);
    return r;
}
