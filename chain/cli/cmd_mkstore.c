// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * cmd_mkstore.c - `vhdheal mkstore` (hidden, for tests and benchmarks): builds a synthetic store
 * of small dynamic disks in chains of a chosen depth with planted breaks, and writes what it
 * planted as JSON. Disks are created through the engine's C API (far faster than one process
 * per disk).
 *
 * The store is synthetic and thrown away after the test, so its files are not flushed to stable
 * storage (vh_io_set_durable(false); most of the time went to one fdatasync per created disk).
 *
 * Layout: DIR/gGGG/cCCCCC/dK.EXT, K = 0 the base (.vhd/.vhdx), K > 0 differencing (.avhd/.avhdx)
 * with relative locators (".\dK-1.EXT") and, with --winroot, absolute ones under it. A break is
 * planted on the link of d1 (the base's child) so that it is the only broken link of its chain:
 *   move    the base goes to DIR/moved/gGGG-cCCCCC/        parent-missing, heal target there
 *   rename  the base is renamed in place to d0-renamed.EXT parent-missing, heal target
 *   replace the base goes to DIR/backup/gGGG-cCCCCC/ and a new disk of the same size takes its
 *           place                                          id-mismatch, heal target in backup/
 *   delete  the base is removed                            parent-missing, no heal target
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "json.h"
#include "winpath.h"

#define CHAINS_PER_GROUP 100

typedef struct mk {
    char *dir;
    char *winroot;
    vh_format format; /* VH_FORMAT_NONE: alternate */
    uint64_t size;
    vh_json *plan;
} mk;

static const char *ext_of(vh_format f, bool base)
{
    if (f == VH_FORMAT_VHDX)
        return base ? "vhdx" : "avhdx";
    return base ? "vhd" : "avhd";
}

static char *disk_rel(guint chain, guint k, vh_format f)
{
    return g_strdup_printf("g%03u/c%06u/d%u.%s", chain / CHAINS_PER_GROUP, chain, k,
                           ext_of(f, k == 0));
}

static int create_base(mk *m, const char *rel, vh_format f, GError **err)
{
    g_autofree char *abs = g_build_filename(m->dir, rel, NULL);
    g_autofree char *dir = g_path_get_dirname(abs);
    if (g_mkdir_with_parents(dir, 0755) < 0)
        return vh_fail(err, errno, "%s: %s", dir, g_strerror(errno));
    vh_create_opts o = {.format = f, .type = VH_TYPE_DYNAMIC, .size = m->size};
    return vh_disk_create(abs, &o, err);
}

static int create_child(mk *m, const char *rel, const char *parent_rel, GError **err)
{
    g_autofree char *abs = g_build_filename(m->dir, rel, NULL);
    g_autofree char *pabs = g_build_filename(m->dir, parent_rel, NULL);
    g_autofree char *relpath = vh_winpath_relative(rel, parent_rel);
    g_autofree char *winabs = m->winroot ? vh_winpath_to_windows(parent_rel, m->winroot) : NULL;
    return vh_cli_create_child(abs, pabs, relpath, winabs, err);
}

static int move_file(mk *m, const char *from, const char *to, GError **err)
{
    g_autofree char *a = g_build_filename(m->dir, from, NULL);
    g_autofree char *b = g_build_filename(m->dir, to, NULL);
    g_autofree char *dir = g_path_get_dirname(b);
    if (g_mkdir_with_parents(dir, 0755) < 0 || rename(a, b) < 0)
        return vh_fail(err, errno, "%s -> %s: %s", a, b, g_strerror(errno));
    return 0;
}

/* Plants break number `n` (kind n % 4) on the chain; records it in the plan. */
static int plant(mk *m, guint chain, guint n, vh_format f, GError **err)
{
    static const char *const kinds[] = {"move", "rename", "replace", "delete"};
    const char *kind = kinds[n % 4];
    g_autofree char *base = disk_rel(chain, 0, f);
    g_autofree char *child = disk_rel(chain, 1, f);
    g_autofree char *target = NULL;
    const char *reason = "parent-missing";
    int r = 0;
    if (strcmp(kind, "move") == 0) {
        target = g_strdup_printf("moved/g%03u-c%06u/d0.%s", chain / CHAINS_PER_GROUP, chain,
                                 ext_of(f, true));
        r = move_file(m, base, target, err);
    } else if (strcmp(kind, "rename") == 0) {
        target = g_strdup_printf("g%03u/c%06u/d0-renamed.%s", chain / CHAINS_PER_GROUP, chain,
                                 ext_of(f, true));
        r = move_file(m, base, target, err);
    } else if (strcmp(kind, "replace") == 0) {
        target = g_strdup_printf("backup/g%03u-c%06u/d0.%s", chain / CHAINS_PER_GROUP, chain,
                                 ext_of(f, true));
        reason = "id-mismatch";
        r = move_file(m, base, target, err);
        if (r == 0)
            r = create_base(m, base, f, err);
    } else {
        g_autofree char *abs = g_build_filename(m->dir, base, NULL);
        if (unlink(abs) < 0)
            r = vh_fail(err, errno, "%s: %s", abs, g_strerror(errno));
    }
    vh_json_begin_object(m->plan);
    vh_json_kv_string(m->plan, "kind", kind);
    vh_json_kv_string(m->plan, "child", child);
    vh_json_kv_string(m->plan, "reason", reason);
    vh_json_kv_string(m->plan, "heal_target", target);
    vh_json_end_object(m->plan);
    return r;
}

static int build_chain(mk *m, guint chain, guint depth, vh_format f, GError **err)
{
    g_autofree char *base = disk_rel(chain, 0, f);
    int r = create_base(m, base, f, err);
    for (guint k = 1; r == 0 && k < depth; k++) {
        g_autofree char *child = disk_rel(chain, k, f);
        g_autofree char *parent = disk_rel(chain, k - 1, f);
        r = create_child(m, child, parent, err);
    }
    return r;
}

static bool parse_format(const char *s, vh_format *f)
{
    if (!s || strcmp(s, "mixed") == 0)
        *f = VH_FORMAT_NONE;
    else if (strcmp(s, "vhd") == 0)
        *f = VH_FORMAT_VHD;
    else if (strcmp(s, "vhdx") == 0)
        *f = VH_FORMAT_VHDX;
    else
        return false;
    return true;
}

int vhdheal_cmd_mkstore(int argc, char **argv)
{
    gint disks = 100, depth = 3, breaks = 0;
    g_autofree char *format = NULL, *size = NULL, *plan_path = NULL, *winroot = NULL;
    GOptionEntry entries[] = {
        {"disks", 0, 0, G_OPTION_ARG_INT, &disks, "Number of disks (100)", "N"},
        {"depth", 0, 0, G_OPTION_ARG_INT, &depth, "Disks per chain, base included (3)", "D"},
        {"breaks", 0, 0, G_OPTION_ARG_INT, &breaks, "Broken links to plant (0)", "B"},
        {"format", 0, 0, G_OPTION_ARG_STRING, &format, "vhd, vhdx or mixed (mixed)", "F"},
        {"size", 0, 0, G_OPTION_ARG_STRING, &size, "Virtual size (16M)", "SIZE"},
        {"winroot", 0, 0, G_OPTION_ARG_STRING, &winroot, "Also write absolute locators", "W"},
        {"plan", 0, 0, G_OPTION_ARG_FILENAME, &plan_path, "Write the plan here (else stdout)",
         "FILE"},
        G_OPTION_ENTRY_NULL};
    if (!vh_cli_options("mkstore", "DIR - build a synthetic store (tests, benchmarks)", entries,
                        NULL, &argc, &argv))
        return VH_EXIT_USAGE;
    g_autoptr(GError) err = NULL;
    mk m = {.dir = argc == 2 ? argv[1] : NULL, .winroot = winroot, .size = 16 * VH_MIB};
    if (!m.dir || disks < 1 || depth < 1 || breaks < 0)
        return vh_cli_usage("mkstore: [--disks N] [--depth D] [--breaks B] DIR");
    if (!parse_format(format, &m.format) || (size && !vh_cli_parse_size(size, &m.size)))
        return vh_cli_usage("mkstore: bad --format or --size");
    guint chains = (guint)disks / (guint)depth;
    if ((guint)breaks > (depth >= 2 ? chains : 0))
        return vh_cli_usage("mkstore: at most one break per chain, and chains need depth >= 2");
    if (g_mkdir_with_parents(m.dir, 0755) < 0)
        return vh_cli_usage("mkstore: %s: %s", m.dir, g_strerror(errno));
    vh_io_set_durable(false); /* synthetic data only: see above */
    m.plan = vh_json_new();
    vh_json_begin_object(m.plan);
    vh_json_kv_uint(m.plan, "disks", (uint64_t)chains * (guint)depth);
    vh_json_kv_uint(m.plan, "chains", chains);
    vh_json_kv_uint(m.plan, "depth", (guint)depth);
    vh_json_key(m.plan, "planted");
    vh_json_begin_array(m.plan);
    int r = 0;
    /* breaks spread evenly over the chains */
    guint step = breaks ? chains / (guint)breaks : 0, planted = 0;
    for (guint c = 0; r == 0 && c < chains; c++) {
        vh_format f = m.format ? m.format : (c % 2 ? VH_FORMAT_VHDX : VH_FORMAT_VHD);
        r = build_chain(&m, c, (guint)depth, f, &err);
        if (r == 0 && planted < (guint)breaks && c % step == 0)
            r = plant(&m, c, planted++, f, &err);
    }
    vh_json_end_array(m.plan);
    vh_json_end_object(m.plan);
    g_autofree char *text = vh_json_finish(m.plan);
    if (r < 0) {
        vh_cli_error(err);
        return VH_EXIT_USAGE;
    }
    if (plan_path) {
        if (!g_file_set_contents(plan_path, text, -1, &err)) {
            vh_cli_error(err);
            return VH_EXIT_USAGE;
        }
    } else {
        printf("%s\n", text);
    }
    return VH_EXIT_OK;
}
