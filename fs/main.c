/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * main.c - vhdhealfs: parses the command line (one fuse_opt table), checks every option's value,
 * mounts STORE at MOUNTPOINT and runs the session until it is unmounted or signalled.
 *
 *   vhdhealfs [-f] [-d] [-s] [-o OPTION[,OPTION...]] STORE MOUNTPOINT
 *
 * Contract: exit status 0 after a clean unmount (fusermount3 -u, umount, SIGTERM, SIGINT,
 * SIGHUP), 2 for usage errors (unknown option, bad value, missing or unusable STORE), 1 when the
 * mount or the session fails. mount(8) runs it as `vhdhealfs STORE MNT -o OPTIONS` through
 * mount.fuse3 for type fuse.vhdhealfs, so the options fstab adds for mount(8) itself are accepted
 * and ignored.
 */
#include "fs.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "overlay_file.h"
#include "winpath.h"

#define EXIT_USAGE 2

/* The command line as written, before its values are checked. */
struct cmdline {
    char *store;
    char *mountpoint;
    char *heal;
    char *healmode;
    char *winroot;
    char *overlaydir;
    char *views;
    char *passthrough;
    char *maxdepth;
    char *trust;
    int ro;
    int allow_other;
    int allow_parent_writes;
    int foreground;
    int debug;
    int singlethread;
    int help;
    int version;
    int bad; /* a usage error was reported */
};

enum {
    KEY_HELP,
    KEY_VERSION,
    KEY_FOREGROUND,
    KEY_DEBUG,
    KEY_SINGLE,
    KEY_RO,
    KEY_ALLOW_OTHER,
    KEY_ALLOW_PARENT_WRITES,
};

#define CMD_OPT(t, m)                                                                              \
    {                                                                                              \
        t, offsetof(struct cmdline, m), 0                                                          \
    }

static const struct fuse_opt vhfs_opts[] = {
    CMD_OPT("heal=%s", heal),
    CMD_OPT("healmode=%s", healmode),
    CMD_OPT("winroot=%s", winroot),
    CMD_OPT("overlaydir=%s", overlaydir),
    CMD_OPT("views=%s", views),
    CMD_OPT("passthrough=%s", passthrough),
    CMD_OPT("maxdepth=%s", maxdepth),
    CMD_OPT("trust=%s", trust),
    /* Noted and also handed to the kernel. */
    FUSE_OPT_KEY("ro", KEY_RO),
    FUSE_OPT_KEY("allow_other", KEY_ALLOW_OTHER),
    FUSE_OPT_KEY("allow_parent_writes", KEY_ALLOW_PARENT_WRITES),
    FUSE_OPT_KEY("-f", KEY_FOREGROUND),
    FUSE_OPT_KEY("-d", KEY_DEBUG),
    FUSE_OPT_KEY("debug", KEY_DEBUG),
    FUSE_OPT_KEY("-s", KEY_SINGLE),
    FUSE_OPT_KEY("-h", KEY_HELP),
    FUSE_OPT_KEY("--help", KEY_HELP),
    FUSE_OPT_KEY("-V", KEY_VERSION),
    FUSE_OPT_KEY("--version", KEY_VERSION),
    /* Always on; accepted so that fstab lines that name it keep working. */
    FUSE_OPT_KEY("default_permissions", FUSE_OPT_KEY_DISCARD),
    /* What mount(8) and fstab may pass to a helper: they are for mount(8), not for the mount. */
    FUSE_OPT_KEY("defaults", FUSE_OPT_KEY_DISCARD),
    FUSE_OPT_KEY("auto", FUSE_OPT_KEY_DISCARD),
    FUSE_OPT_KEY("noauto", FUSE_OPT_KEY_DISCARD),
    FUSE_OPT_KEY("nofail", FUSE_OPT_KEY_DISCARD),
    FUSE_OPT_KEY("_netdev", FUSE_OPT_KEY_DISCARD),
    FUSE_OPT_KEY("user", FUSE_OPT_KEY_DISCARD),
    FUSE_OPT_KEY("users", FUSE_OPT_KEY_DISCARD),
    FUSE_OPT_KEY("nouser", FUSE_OPT_KEY_DISCARD),
    FUSE_OPT_KEY("owner", FUSE_OPT_KEY_DISCARD),
    FUSE_OPT_KEY("group", FUSE_OPT_KEY_DISCARD),
    FUSE_OPT_END,
};

static void usage_error(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
static void usage_error(const char *fmt, ...)
{
    va_list ap;

    fputs("vhdhealfs: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry 'vhdhealfs --help' for more information.\n", stderr);
}

static int opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
    struct cmdline *c = data;

    switch (key) {
    case FUSE_OPT_KEY_NONOPT:
        if (c->store == NULL) {
            c->store = g_strdup(arg);
            return 0;
        }
        if (c->mountpoint == NULL) {
            c->mountpoint = g_strdup(arg);
            return 0;
        }
        usage_error("unexpected argument '%s'", arg);
        c->bad = 1;
        return -1;
    case FUSE_OPT_KEY_OPT:
        if (arg[0] == '-') {
            usage_error("unknown option '%s'", arg);
            c->bad = 1;
            return -1;
        }
        /* x-systemd.*, x-gvfs-*, comment=: notes in fstab for other programs. */
        if (g_str_has_prefix(arg, "x-") || g_str_has_prefix(arg, "comment="))
            return 0;
        return 1; /* a mount option for libfuse and the kernel (rw, nodev, fsname=, ...) */
    case KEY_RO:
        c->ro = 1;
        return 1;
    case KEY_ALLOW_OTHER:
        c->allow_other = 1;
        return 1;
    case KEY_ALLOW_PARENT_WRITES:
        c->allow_parent_writes = 1;
        return 0;
    case KEY_FOREGROUND:
        c->foreground = 1;
        return 0;
    case KEY_DEBUG:
        c->debug = 1;
        c->foreground = 1;
        return 0;
    case KEY_SINGLE:
        c->singlethread = 1;
        return 0;
    case KEY_HELP:
        c->help = 1;
        return 0;
    case KEY_VERSION:
        c->version = 1;
        return 0;
    default:
        return 1;
    }
}

static void print_help(void)
{
    printf(
        "usage: vhdhealfs [-f] [-d] [-s] [-o OPTION[,OPTION...]] STORE MOUNTPOINT\n"
        "\n"
        "Serves the folder STORE at MOUNTPOINT, unchanged and writable, and heals broken\n"
        "VHD/VHDX differencing-disk chains in it.\n"
        "\n"
        "Options:\n"
        "  -h, --help              print this help and exit\n"
        "  -V, --version           print the version and exit\n"
        "  -f                      stay in the foreground, log to stderr\n"
        "  -d                      log every request and every failure (implies -f)\n"
        "  -s                      serve requests in one thread\n"
        "  -o heal=auto|manual|off repair broken chains on open (auto, the default), only\n"
        "                          when asked through user.vhd.parent (manual), or never\n"
        "  -o healmode=persist|overlay\n"
        "                          write repairs into the child file (persist, the default),\n"
        "                          or only present them, leaving STORE unchanged (overlay)\n"
        "  -o overlaydir=DIR       keep overlay repairs in DIR too (outside STORE), so that a\n"
        "                          remount presents them again (implies healmode=overlay)\n"
        "  -o winroot=PATH         where Windows hosts see STORE, e.g. \\\\nas\\vms or D:\\VMs\n"
        "                          (in -o, write \\\\ for each \\, or use /: //nas/vms, D:/VMs)\n"
        "  -o views=on|off         the @raw and @chains folders (default on)\n"
        "  -o passthrough=on|off   let the kernel read and write store files other than\n"
        "                          disks directly where it can (Linux 6.9+, daemon run as\n"
        "                          root; default on)\n"
        "  -o maxdepth=N           longest chain followed, 1 to %u (default %u)\n"
        "  -o trust=owner|group|any\n"
        "                          whose disks may be a child's parent: its owner's and\n"
        "                          root's (owner, the default), also its group's, or anyone's\n"
        "  -o ro                   read-only mount (implies healmode=overlay)\n"
        "  -o allow_other          let other users use the mount\n"
        "  -o allow_parent_writes  let a disk that other disks use as parent be opened for\n"
        "                          writing (refused with EBUSY by default)\n"
        "\n"
        "Permissions are always checked by the kernel (default_permissions). mount(8)'s own\n"
        "options (defaults, noauto, nofail, _netdev, user, users, x-*) are accepted and\n"
        "ignored. Other FUSE mount options (nodev, nosuid, noexec, fsname=, ...) are passed\n"
        "on.\n"
        "\n"
        "/etc/fstab:\n"
        "  /srv/vms  /mnt/vms  fuse.vhdhealfs  heal=auto,allow_other  0 0\n",
        VHFS_MAXDEPTH_LIMIT, (unsigned)VH_DEFAULT_MAXDEPTH);
}

static void print_version(void)
{
    printf("vhdhealfs %s\n", VHDHEAL_VERSION);
    printf("libfuse %s\n", fuse_pkgversion());
    fflush(stdout);
    fuse_lowlevel_version();
}

/* Picks one of names[] for value; the index, or -1. */
static int pick(const char *value, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (strcmp(value, names[i]) == 0)
            return i;
    return -1;
}

/* "\\server\share[\...]", "\\?\...", "D:" or "D:\...". */
static bool winroot_ok(const char *w)
{
    return vh_winpath_is_root(w); /* parsed as the resolver parses it */
}

/* winroot as given ('/' or '\'), in Windows form without a trailing separator ("D:\" kept). */
static char *winroot_normalise(const char *given)
{
    char *w = g_strdup(given);
    size_t len;

    g_strdelimit(w, "/", '\\');
    len = strlen(w);
    while (len > 3 && w[len - 1] == '\\' && !(len == 4 && g_str_has_prefix(w, "\\\\?\\")))
        w[--len] = '\0';
    if (len == 2 && g_ascii_isalpha(w[0]) && w[1] == ':') {
        char *root = g_strconcat(w, "\\", NULL);

        g_free(w);
        w = root;
    }
    return w;
}

/* True when path lies strictly inside dir (both canonical). */
static bool path_inside(const char *path, const char *dir)
{
    const char *rel = vh_path_below(dir, path);

    return rel != NULL && *rel != '\0';
}

/* Is STORE's folder (by device and inode) DIR or one of its parents? A bind mount, or another
   mount of the same file system, shows STORE under a path realpath does not relate to it. */
static bool store_holds(const char *store, const char *dir)
{
    struct stat s, d;

    if (stat(store, &s) < 0)
        return false;
    g_autofree char *at = g_strdup(dir);
    for (;;) {
        if (stat(at, &d) == 0 && d.st_dev == s.st_dev && d.st_ino == s.st_ino)
            return true;
        if (strcmp(at, "/") == 0)
            return false;
        char *up = g_path_get_dirname(at);
        g_free(at);
        at = up;
    }
}

static void overlaydir_note(void *ctx, const char *line)
{
    (void)ctx;
    vhfs_log(LOG_NOTICE, "%s", line);
}

/* One overlay folder per STORE (doc/design.md "The marker"): DIR's marker must name STORE, and
   DIR without one gets one now, before the mount; a folder of another store, or one whose marker
   cannot be trusted, is a usage error and nothing in it is touched. */
static bool overlaydir_claim(const struct cmdline *c, const struct vhfs_config *cfg)
{
    g_autoptr(GError) err = NULL;
    int fd = open(cfg->overlaydir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    if (fd < 0) {
        usage_error("overlaydir '%s': %s", c->overlaydir, g_strerror(errno));
        return false;
    }
    int r =
        vh_overlay_dir_claim(fd, cfg->overlaydir, cfg->store, true, overlaydir_note, NULL, &err);
    close(fd);
    if (r < 0) {
        usage_error("overlaydir '%s': %s", c->overlaydir, err->message);
        return false;
    }
    return true;
}

/* overlaydir=DIR (doc/design.md "Overlay healing"): an existing folder outside STORE (a patch
   file inside it would be a write into STORE); implies healmode=overlay. After STORE is set. */
static bool overlaydir_from_cmdline(const struct cmdline *c, struct vhfs_config *cfg)
{
    struct stat st;

    if (cfg->healmode == VHFS_HEALMODE_PERSIST && c->healmode != NULL) {
        usage_error("overlaydir= keeps the repairs of healmode=overlay; healmode=persist writes "
                    "them into STORE");
        return false;
    }
    cfg->healmode = VHFS_HEALMODE_OVERLAY;
    cfg->overlaydir = realpath(c->overlaydir, NULL);
    if (cfg->overlaydir == NULL) {
        usage_error("overlaydir '%s': %s", c->overlaydir, g_strerror(errno));
        return false;
    }
    if (stat(cfg->overlaydir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        usage_error("overlaydir '%s': not a folder", c->overlaydir);
        return false;
    }
    if (vh_path_below(cfg->store, cfg->overlaydir) != NULL ||
        store_holds(cfg->store, cfg->overlaydir)) {
        usage_error("overlaydir '%s' %s STORE '%s': it must lie outside it (STORE is never "
                    "written in overlay mode)",
                    c->overlaydir, strcmp(cfg->overlaydir, cfg->store) == 0 ? "is" : "lies inside",
                    cfg->store);
        return false;
    }
    return true;
}

/* Checks the values of c into cfg. Reports each problem; false on a usage error. */
static bool config_from_cmdline(struct cmdline *c, struct vhfs_config *cfg)
{
    static const char *const heal_names[] = {"auto", "manual", "off"};
    static const char *const mode_names[] = {"persist", "overlay"};
    static const char *const onoff[] = {"off", "on"};
    g_autoptr(GError) err = NULL;
    g_autofree char *mnt = NULL;
    guint64 depth = VH_DEFAULT_MAXDEPTH;
    struct stat st;
    struct statvfs vfs;
    int v;

    memset(cfg, 0, sizeof(*cfg));
    if (c->store == NULL || c->mountpoint == NULL) {
        usage_error("%s", c->store == NULL ? "missing STORE and MOUNTPOINT" : "missing MOUNTPOINT");
        return false;
    }
    cfg->heal = VHFS_HEAL_AUTO;
    if (c->heal != NULL) {
        if ((v = pick(c->heal, heal_names, 3)) < 0) {
            usage_error("invalid value for heal: '%s' (use auto, manual or off)", c->heal);
            return false;
        }
        cfg->heal = (enum vhfs_heal)v;
    }
    cfg->healmode = VHFS_HEALMODE_PERSIST;
    if (c->healmode != NULL) {
        if ((v = pick(c->healmode, mode_names, 2)) < 0) {
            usage_error("invalid value for healmode: '%s' (use persist or overlay)", c->healmode);
            return false;
        }
        cfg->healmode = (enum vhfs_healmode)v;
    }
    cfg->views = true;
    if (c->views != NULL) {
        if ((v = pick(c->views, onoff, 2)) < 0) {
            usage_error("invalid value for views: '%s' (use on or off)", c->views);
            return false;
        }
        cfg->views = v == 1;
    }
    cfg->passthrough = true;
    if (c->passthrough != NULL) {
        if ((v = pick(c->passthrough, onoff, 2)) < 0) {
            usage_error("invalid value for passthrough: '%s' (use on or off)", c->passthrough);
            return false;
        }
        cfg->passthrough = v == 1;
    }
    if (c->maxdepth != NULL &&
        !g_ascii_string_to_unsigned(c->maxdepth, 10, 1, VHFS_MAXDEPTH_LIMIT, &depth, &err)) {
        usage_error("invalid value for maxdepth: '%s' (use a number from 1 to %u)", c->maxdepth,
                    VHFS_MAXDEPTH_LIMIT);
        return false;
    }
    cfg->maxdepth = (unsigned)depth;
    if (c->trust != NULL && !vh_trust_parse(c->trust, &cfg->trust)) {
        usage_error("invalid value for trust: '%s' (use owner, group or any)", c->trust);
        return false;
    }
    if (c->winroot != NULL) {
        cfg->winroot = winroot_normalise(c->winroot);
        if (!winroot_ok(cfg->winroot)) {
            usage_error("invalid value for winroot: '%s' (use a drive path such as D:\\VMs or a "
                        "share such as \\\\nas\\vms; in -o write each \\ as \\\\, or use /)",
                        c->winroot);
            return false;
        }
    }
    cfg->ro = c->ro;
    if (cfg->ro && cfg->healmode == VHFS_HEALMODE_PERSIST) {
        if (c->healmode != NULL)
            vhfs_log(LOG_NOTICE, "ro: repairs are presented, not written (healmode=overlay)");
        cfg->healmode = VHFS_HEALMODE_OVERLAY;
    }
    cfg->allow_other = c->allow_other;
    cfg->allow_parent_writes = c->allow_parent_writes;
    cfg->foreground = c->foreground;
    cfg->debug = c->debug;
    cfg->singlethread = c->singlethread;

    cfg->store = realpath(c->store, NULL);
    if (cfg->store == NULL) {
        usage_error("STORE '%s': %s", c->store, g_strerror(errno));
        return false;
    }
    if (stat(cfg->store, &st) < 0 || !S_ISDIR(st.st_mode)) {
        usage_error("STORE '%s': not a folder", c->store);
        return false;
    }
    /* A store on a read-only file system (read-only media, a read-only bind mount) cannot be
       written: its repairs are presented (doc/design.md "Overlay healing"). */
    if (statvfs(cfg->store, &vfs) == 0 && (vfs.f_flag & ST_RDONLY) &&
        cfg->healmode == VHFS_HEALMODE_PERSIST) {
        vhfs_log(LOG_NOTICE, "STORE is on a read-only file system: repairs are presented, not "
                             "written (healmode=overlay)");
        cfg->healmode = VHFS_HEALMODE_OVERLAY;
    }
    if (c->overlaydir != NULL && !overlaydir_from_cmdline(c, cfg))
        return false;
    /* Absolute: unmounting happens after libfuse may have changed to "/". */
    cfg->mountpoint = g_canonicalize_filename(c->mountpoint, NULL);
    /* A mount point inside STORE would make the mount look itself up. */
    mnt = realpath(c->mountpoint, NULL);
    if (mnt != NULL && path_inside(mnt, cfg->store)) {
        usage_error("MOUNTPOINT '%s' lies inside STORE '%s'", c->mountpoint, cfg->store);
        return false;
    }
    /* ... and an overlay folder under the mount point would be opened through the mount itself,
       before it serves anything */
    if (mnt != NULL && cfg->overlaydir != NULL && vh_path_below(mnt, cfg->overlaydir) != NULL) {
        usage_error("overlaydir '%s' lies inside MOUNTPOINT '%s'", c->overlaydir, c->mountpoint);
        return false;
    }
    /* after every check of the values: a command line refused here writes nothing */
    return cfg->overlaydir == NULL || overlaydir_claim(c, cfg);
}

static void config_clear(struct vhfs_config *cfg)
{
    free(cfg->store); /* from realpath */
    g_free(cfg->mountpoint);
    g_free(cfg->winroot);
    free(cfg->overlaydir); /* from realpath */
    memset(cfg, 0, sizeof(*cfg));
}

static void cmdline_clear(struct cmdline *c)
{
    g_free(c->store);
    g_free(c->mountpoint);
    free(c->heal); /* fuse_opt strdup()s %s values */
    free(c->healmode);
    free(c->winroot);
    free(c->overlaydir);
    free(c->views);
    free(c->passthrough);
    free(c->maxdepth);
    free(c->trust);
}

/* The session's arguments: our fixed options first, so that the user's fsname= wins. */
static void session_args(const struct vhfs_config *cfg, const struct fuse_args *rest,
                         struct fuse_args *out)
{
    char *opts = NULL;
    g_autofree char *fsname = g_strconcat("fsname=", cfg->store, NULL);
    g_autofree char *max_read = g_strdup_printf("max_read=%u", VHFS_MAX_READ);

    fuse_opt_add_arg(out, rest->argc > 0 ? rest->argv[0] : "vhdhealfs");
    fuse_opt_add_opt(&opts, "default_permissions");
    fuse_opt_add_opt(&opts, "subtype=vhdhealfs");
    fuse_opt_add_opt_escaped(&opts, fsname);
    fuse_opt_add_opt(&opts, max_read);
    if (cfg->debug)
        fuse_opt_add_opt(&opts, "debug");
    fuse_opt_add_arg(out, "-o");
    fuse_opt_add_arg(out, opts);
    free(opts);
    for (int i = 1; i < rest->argc; i++)
        fuse_opt_add_arg(out, rest->argv[i]);
}

/* Descriptors for open files and the inodes' cache (fs.h, VHFS_MAX_PATH_FDS): all we may have. */
static void raise_fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            vhfs_debug("setrlimit(RLIMIT_NOFILE): %s", g_strerror(errno));
    }
}

/*
 * libfuse ends its worker threads with pthread_cancel, for which glibc loads libgcc_s on first
 * use; with no descriptor free at that moment glibc aborts ("libgcc_s.so.1 must be installed for
 * pthread_cancel to work"). Load it while descriptors are plentiful.
 */
static void preload_unwinder(void)
{
    if (dlopen("libgcc_s.so.1", RTLD_NOW | RTLD_NODELETE) == NULL)
        vhfs_log(LOG_WARNING, "cannot load libgcc_s.so.1 (%s): unmounting may abort", dlerror());
}

/*
 * The kernel reads a FUSE file ahead by at most its bdi's default of 128 KiB (the init reply's
 * max_readahead can only lower it): a cold sequential read makes one round trip through the
 * daemon per 128 KiB, which on a loaded machine waits for a core each time. Raise the mount's
 * readahead (/sys/class/bdi/MAJ:MIN/read_ahead_kb) to VHFS_READAHEAD_KB, sent as requests of
 * VHFS_MAX_IO; before FUSE_INIT, whose max_readahead (lo_init) caps it. Best effort: only root
 * may. The device number comes from /proc/self/mountinfo,
 * since a stat of the mount point would ask this daemon, which serves nothing yet.
 */
static void raise_readahead(const char *mountpoint)
{
    g_autoptr(GString) want = g_string_new(NULL);
    g_autofree char *line = NULL;
    unsigned major = 0, minor = 0;
    bool found = false;
    size_t cap = 0;
    FILE *f;

    /* mountinfo escapes space, tab, newline and backslash as \ooo */
    for (const char *c = mountpoint; *c; c++) {
        if (*c == ' ' || *c == '\t' || *c == '\n' || *c == '\\')
            g_string_append_printf(want, "\\%03o", (unsigned char)*c);
        else
            g_string_append_c(want, *c);
    }
    f = fopen("/proc/self/mountinfo", "re");
    if (f == NULL)
        return;
    while (getline(&line, &cap, f) > 0) {
        char mp[PATH_MAX * 4];
        unsigned a, b;

        /* ID PARENT MAJ:MIN ROOT MOUNTPOINT ... - fuse.vhdhealfs ...; the last match is on top */
        if (sscanf(line, "%*u %*u %u:%u %*s %16383s", &a, &b, mp) == 3 &&
            strcmp(mp, want->str) == 0 && strstr(line, " - fuse") != NULL) {
            major = a;
            minor = b;
            found = true;
        }
    }
    fclose(f);
    if (!found)
        return;
    g_autofree char *path = g_strdup_printf("/sys/class/bdi/%u:%u/read_ahead_kb", major, minor);
    g_autofree char *kb = g_strdup_printf("%u\n", VHFS_READAHEAD_KB);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, kb, strlen(kb)) < 0)
        vhfs_debug("%s: %s: readahead stays at the kernel's default", path, g_strerror(errno));
    if (fd >= 0)
        close(fd);
}

static int run_session(struct vhfs *fs)
{
    struct fuse_loop_config *lc;
    long ncpu;
    int res;

    if (fs->cfg.singlethread)
        return fuse_session_loop(fs->se);
    /* Reads are short and mostly served by the page cache: a few threads per core. */
    ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (ncpu < 1)
        ncpu = 1;
    lc = fuse_loop_cfg_create();
    fuse_loop_cfg_set_clone_fd(lc, 0);
    /* Idle workers stay: with fewer idle than busy ones, libfuse starts a thread for each burst
       of readahead requests and ends it afterwards. Measured here: a cold sequential read of a
       1 GiB @raw chain made 2300 threads for 8200 requests and ran at 290 MB/s; 1 GB/s without
       that churn. */
    fuse_loop_cfg_set_idle_threads(lc, (unsigned)(2 * ncpu));
    fuse_loop_cfg_set_max_threads(lc, (unsigned)(2 * ncpu));
    res = fuse_session_loop_mt(fs->se, lc);
    fuse_loop_cfg_destroy(lc);
    return res;
}

int main(int argc, char *argv[])
{
    struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
    struct fuse_args sargs = FUSE_ARGS_INIT(0, NULL);
    struct cmdline c = {0};
    struct vhfs fs = {.root.fd = -1, .mount_fd = -1};
    struct fuse_lowlevel_ops ops = vhfs_ops;
    int status = 1, res;

    /* Until the daemon detaches, everything goes to the terminal. */
    vhfs_log_init(true, false);
    fuse_set_log_func(vhfs_fuse_log);
    if (fuse_opt_parse(&args, &c, vhfs_opts, opt_proc) < 0) {
        if (!c.bad)
            usage_error("invalid command line");
        status = EXIT_USAGE;
        goto out;
    }
    if (c.help) {
        print_help();
        status = 0;
        goto out;
    }
    if (c.version) {
        print_version();
        status = 0;
        goto out;
    }
    vhfs_log_init(true, c.debug);
    if (!config_from_cmdline(&c, &fs.cfg)) {
        status = EXIT_USAGE;
        goto out;
    }
    /* The kernel has applied the caller's umask to every mode it sends. */
    umask(0);
    raise_fd_limit();
    preload_unwinder();
    if (vhfs_init(&fs) < 0) {
        status = EXIT_USAGE;
        goto out;
    }
    if (fs.cfg.views && vhfs_views_init(&fs) < 0) {
        status = EXIT_USAGE;
        goto out_fs;
    }
    if (fs.cfg.views)
        vhfs_views_wrap(&ops);
    session_args(&fs.cfg, &args, &sargs);
    fs.se = fuse_session_new(&sargs, &ops, sizeof(ops), &fs);
    if (fs.se == NULL) { /* libfuse said which option it did not know */
        status = EXIT_USAGE;
        goto out_fs;
    }
    if (fuse_set_signal_handlers(fs.se) != 0)
        goto out_session;
    if (fuse_session_mount(fs.se, fs.cfg.mountpoint) != 0)
        goto out_signals;
    raise_readahead(fs.cfg.mountpoint);
    if (vhfs_backing_attach(&fs) < 0)
        goto out_unmount;
    vhfs_log(LOG_INFO, "serving %s at %s (heal=%s, healmode=%s, views=%s, maxdepth=%u%s)",
             fs.cfg.store, fs.cfg.mountpoint,
             (const char *[]){"auto", "manual", "off"}[fs.cfg.heal],
             fs.cfg.healmode == VHFS_HEALMODE_PERSIST ? "persist" : "overlay",
             fs.cfg.views ? "on" : "off", fs.cfg.maxdepth, fs.cfg.ro ? ", ro" : "");
    if (fuse_daemonize(fs.cfg.foreground) != 0)
        goto out_unmount;
    vhfs_log_init(fs.cfg.foreground, fs.cfg.debug);
    /* After the fork: the service's scan runs in a thread of the daemon. Its threads (and the
     * ones they start) block the stop signals: libfuse's handler only ends the loop when the
     * signal lands in the main thread or a worker, not in a thread of ours. */
    sigset_t stop_signals, old_mask;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &stop_signals, &old_mask);
    int started = vhfs_heal_start(&fs);
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    if (started < 0)
        goto out_unmount;

    res = run_session(&fs);
    vhfs_heal_stop(&fs);
    /* The loop ends with 0 when unmounted, or with the number of the signal that stopped it. */
    if (res == 0 || res == SIGTERM || res == SIGINT || res == SIGHUP) {
        status = 0;
        if (res != 0)
            vhfs_log(LOG_INFO, "signal %d: unmounting %s", res, fs.cfg.mountpoint);
    } else {
        vhfs_log(LOG_ERR, "session ended: %s", g_strerror(res < 0 ? -res : res));
    }
out_unmount:
    fuse_session_unmount(fs.se);
out_signals:
    fuse_remove_signal_handlers(fs.se);
out_session:
    fuse_session_destroy(fs.se);
    fs.se = NULL;
out_fs:
    vhfs_backing_fini(&fs);
    vhfs_views_fini(&fs);
    vhfs_fini(&fs);
out:
    config_clear(&fs.cfg);
    cmdline_clear(&c);
    fuse_opt_free_args(&sargs);
    fuse_opt_free_args(&args);
    return status;
}
