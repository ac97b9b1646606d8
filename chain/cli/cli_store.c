// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * cli_store.c - what vhdheal check (cmd_check.c) and vhdheal repair (cmd_repair.c) share: their
 * option table, the store and resolver they open, the journal recovery before a run, and the
 * collection of every chain of the named disks and folders (cli_store.h).
 */
#include <stdio.h>
#include <unistd.h>

#include "cli_store.h"
#include "journal.h"
#include "overlay.h"
#include "report.h"

#define PROGRESS_MIN 200 /* stores with fewer disks than this show no progress */

static void progress_cb(void *ctx, guint done, guint total)
{
    if (total >= PROGRESS_MIN)
        fprintf(stderr, "\rvhdheal: reading %u/%u files", done, total);
}

static void progress_end(vh_cli_run *c)
{
    if (c->progress)
        fprintf(stderr, "\r\033[K");
}

/* ---------------------------------------------------------------------------------------- */
/* Collecting chains */

static void add_chain(vh_cli_run *c, vh_chain *ch, GHashTable *covered)
{
    for (guint k = 0; k < ch->disks->len; k++)
        g_hash_table_add(covered, g_strdup(((vh_disk_info *)ch->disks->pdata[k])->path));
    for (guint k = 0; k < ch->links->len; k++) {
        vh_link *l = ch->links->pdata[k];
        if (g_hash_table_contains(c->links, l->child))
            continue;
        g_hash_table_insert(c->links, l->child, vh_link_ref(l));
        g_ptr_array_add(c->link_order, l);
    }
    g_ptr_array_add(c->chains, ch);
}

static void checking_cb(void *ctx, guint done, guint total)
{
    if (total >= PROGRESS_MIN)
        fprintf(stderr, "\rvhdheal: checking %u/%u disks", done, total);
}

/* Chains of every disk at or below a store folder, from each top (report.h) not covered yet. */
static int check_folder(vh_cli_run *c, const char *rel, GHashTable *covered, GError **err)
{
    g_autoptr(GPtrArray) disks = vh_store_list(c->store, rel);
    for (guint k = 0; k < disks->len; k++) {
        vh_disk_info *d = disks->pdata[k];
        if (d->error)
            g_ptr_array_add(c->unreadable, vh_disk_info_ref(d));
        else
            c->disks++;
    }
    g_autoptr(GPtrArray) tops =
        vh_report_tops(c->resolver, disks, false, c->progress ? checking_cb : NULL, NULL);
    for (guint k = 0; k < tops->len; k++) {
        vh_report_top *t = tops->pdata[k];
        if (g_hash_table_contains(covered, t->disk->path))
            continue;
        if (!t->chain)
            return vh_fail(err, t->error, "%s", t->why);
        add_chain(c, g_steal_pointer(&t->chain), covered);
    }
    return 0;
}

static int check_file(vh_cli_run *c, const char *rel, GHashTable *covered, GError **err)
{
    g_autoptr(vh_disk_info) d = vh_store_describe(c->store, rel, err);
    if (!d)
        return -vh_error_errno(*err);
    if (d->format == VH_FORMAT_NONE)
        return vh_fail(err, EINVAL, "%s: not a VHD or VHDX file", rel);
    if (d->error) {
        g_ptr_array_add(c->unreadable, vh_disk_info_ref(d));
        return 0;
    }
    c->disks++;
    vh_chain *ch = vh_resolve_chain(c->resolver, rel, err);
    if (!ch)
        return -vh_error_errno(*err);
    add_chain(c, ch, covered);
    return 0;
}

void vh_cli_run_clear(vh_cli_run *c)
{
    g_clear_pointer(&c->links, g_hash_table_unref);
    g_clear_pointer(&c->link_order, g_ptr_array_unref);
    g_clear_pointer(&c->chains, g_ptr_array_unref);
    g_clear_pointer(&c->unreadable, g_ptr_array_unref);
    g_clear_pointer(&c->resolver, vh_resolver_free);
    g_clear_pointer(&c->store, vh_store_free);
    g_clear_pointer(&c->overlay, vh_overlay_free); /* after the store that reads through it */
}

static void overlay_warning(void *ctx, const char *line)
{
    fprintf(stderr, "vhdheal: warning: %s\n", line);
}

vh_overlay *vh_cli_overlay_load(const char *dir, const char *root)
{
    g_autoptr(GError) err = NULL;
    vh_overlay *o = vh_overlay_new(overlay_warning, NULL);
    if (vh_overlay_set_dir(o, root, dir, false, &err) < 0 ||
        vh_overlay_load(o, NULL, NULL, &err) < 0) {
        vh_cli_error(err);
        vh_overlay_free(o);
        return NULL;
    }
    return o;
}

static int check_paths(vh_cli_run *c, char **paths, int n, GError **err)
{
    g_autoptr(GHashTable) covered = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    bool scanned = false;
    for (int k = 0; k < n; k++) {
        g_autofree char *rel = vh_store_relpath(vh_store_root(c->store), paths[k]);
        if (!rel)
            return vh_fail(err, EINVAL, "%s: lies outside the store %s", paths[k],
                           vh_store_root(c->store));
        g_autofree char *abs = g_build_filename(vh_store_root(c->store), rel, NULL);
        int r;
        if (g_file_test(abs, G_FILE_TEST_IS_DIR)) {
            if (!scanned && (r = vh_store_scan(c->store, err)) < 0)
                return r;
            scanned = true;
            r = check_folder(c, rel, covered, err);
        } else {
            r = check_file(c, rel, covered, err);
        }
        if (r < 0)
            return r;
    }
    return 0;
}

/* Recovers repairs a crash interrupted (doc/design.md "Journal"), where the store has a journal;
 * a live repair of another process (its child locked) is left to it. */
static void recover_journal(const char *root)
{
    g_autoptr(vh_journal) j = NULL;
    g_autoptr(GError) err = NULL;
    vh_recover_stats st = {0};
    int n = vh_journal_open_existing(root, &j, &err);
    if (n == 0 && j)
        n = vh_journal_recover(j, NULL, &st, &err);
    if (n < 0)
        fprintf(stderr, "vhdheal: warning: unfinished repairs not recovered: %s\n", err->message);
    else if (st.rolled_back > 0)
        fprintf(stderr, "vhdheal: rolled back %d repair%s a crash interrupted\n", st.rolled_back,
                st.rolled_back == 1 ? "" : "s");
    for (guint k = 0; st.notes && k < st.notes->len; k++)
        fprintf(stderr, "vhdheal: warning: %s\n", (char *)st.notes->pdata[k]);
    vh_recover_stats_clear(&st);
}

/* Parses the options shared by check and repair, and collects every chain of the paths. */
int vh_cli_collect(vh_cli_run *c, vh_cli_args *a, bool repair, int argc, char **argv)
{
    const char *cmd = repair ? "repair" : "check";
    GOptionEntry entries[] = {
        {"json", 0, 0, G_OPTION_ARG_NONE, &a->json, "One JSON document (README)", NULL},
        {"store", 0, 0, G_OPTION_ARG_FILENAME, &a->store, "The store (nothing outside is opened)",
         "DIR"},
        {"winroot", 0, 0, G_OPTION_ARG_STRING, &a->winroot, "Where Windows hosts see the store",
         "W"},
        {"maxdepth", 0, 0, G_OPTION_ARG_INT, &a->maxdepth,
         "Longest chain followed (" G_STRINGIFY(VH_DEFAULT_MAXDEPTH) ")", "N"},
        {"trust", 0, 0, G_OPTION_ARG_STRING, &a->trust,
         "Whose disks may be a child's parent: owner (its owner's and root's, the default), "
         "group, any",
         "WHO"},
        G_OPTION_ENTRY_NULL};
    /* check's own: a table of its own, as repair's */
    GOptionEntry check_entries[] = {{"overlay", 0, 0, G_OPTION_ARG_FILENAME, &a->overlay,
                                     "Read the store through the repairs saved in DIR "
                                     "(vhdhealfs -o overlaydir=DIR)",
                                     "DIR"},
                                    G_OPTION_ENTRY_NULL};
    /* repair's own options: a table of their own, so that no entry ends the shared one early */
    GOptionEntry repair_entries[] = {{"dry-run", 'n', 0, G_OPTION_ARG_NONE, &a->dry_run,
                                      "Show what would change, change nothing", NULL},
                                     G_OPTION_ENTRY_NULL};
    const char *params = repair ? "PATH... - repair every broken link that has a heal target"
                                : "PATH... - check the chains of disks and store folders";
    if (!vh_cli_options(cmd, params, entries, repair ? repair_entries : check_entries, &argc,
                        &argv))
        return VH_EXIT_USAGE;
    g_autoptr(GError) err = NULL;
    if (argc < 2)
        return vh_cli_usage("%s: PATH... (disk files or store folders)", cmd);
    if (a->maxdepth < 1)
        return vh_cli_usage("%s: --maxdepth must be at least 1", cmd);
    vh_trust trust = VH_TRUST_OWNER;
    if (a->trust && !vh_trust_parse(a->trust, &trust))
        return vh_cli_usage("%s: --trust must be owner, group or any", cmd);
    g_autofree char *root = vh_store_determine(a->store, argv + 1, argc - 1, true, &err);
    if (!root)
        return vh_cli_usage("%s: %s", cmd, err->message);
    if (!a->dry_run && !a->overlay) /* --overlay writes nothing, not even a recovery */
        recover_journal(root);
    if (repair && !a->dry_run)
        vh_cli_resume_merges(root); /* a merge an interruption left is finished first */
    c->winroot = a->winroot;
    c->store = vh_store_new(root, &err);
    if (!c->store) {
        vh_cli_error(err);
        return VH_EXIT_USAGE;
    }
    if (a->overlay) {
        c->overlay = vh_cli_overlay_load(a->overlay, root);
        if (!c->overlay)
            return VH_EXIT_USAGE;
        vh_store_set_overlay(c->store, c->overlay);
    }
    c->progress = isatty(STDERR_FILENO);
    if (c->progress)
        vh_store_set_progress(c->store, progress_cb, NULL);
    vh_resolve_opts ro = {.winroot = a->winroot, .maxdepth = (guint)a->maxdepth, .trust = trust};
    c->resolver = vh_resolver_new(c->store, &ro);
    c->chains = g_ptr_array_new_with_free_func((GDestroyNotify)vh_chain_free);
    c->unreadable = g_ptr_array_new_with_free_func((GDestroyNotify)vh_disk_info_unref);
    c->links = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, (GDestroyNotify)vh_link_unref);
    c->link_order = g_ptr_array_new();
    int r = check_paths(c, argv + 1, argc - 1, &err);
    progress_end(c);
    if (r < 0) {
        vh_cli_error(err);
        return VH_EXIT_USAGE;
    }
    return VH_EXIT_OK;
}

void vh_cli_args_clear(vh_cli_args *a)
{
    g_free(a->store);
    g_free(a->winroot);
    g_free(a->trust);
    g_free(a->overlay);
}

void vh_cli_json_strings(vh_json *j, const char *key, GPtrArray *a)
{
    vh_json_key(j, key);
    vh_json_begin_array(j);
    for (guint k = 0; k < a->len; k++)
        vh_json_string(j, a->pdata[k]);
    vh_json_end_array(j);
}
