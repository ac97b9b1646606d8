// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * cmd_check.c - vhdheal check: every chain of the named disks or store folders, with a verdict
 * per link, for people (broken links first, with the fix as a command) or as one JSON document
 * (doc/json-check.md). Exit codes: 0 all healthy, 1 broken links (or unreadable disks) found,
 * 2 usage or I/O error. Nothing is written.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "cli.h"
#include "json.h"
#include "journal.h"
#include "reconnect.h"
#include "report.h"
#include "resolve.h"

#define PROGRESS_MIN 200 /* stores with fewer disks than this show no progress */

typedef struct check_run {
    vh_store *store;
    vh_resolver *resolver;
    const char *winroot;
    GPtrArray *chains;     /* vh_chain* */
    GPtrArray *unreadable; /* vh_disk_info* */
    GHashTable *links;     /* child path -> vh_link* (the first seen, in chain order) */
    GPtrArray *link_order; /* vh_link*, in the order first seen */
    guint disks;
    bool progress;
} check_run;

static void progress_cb(void *ctx, guint done, guint total)
{
    if (total >= PROGRESS_MIN)
        fprintf(stderr, "\rvhdheal: reading %u/%u files", done, total);
}

static void progress_end(check_run *c)
{
    if (c->progress)
        fprintf(stderr, "\r\033[K");
}

/* ---------------------------------------------------------------------------------------- */
/* Collecting chains */

static void add_chain(check_run *c, vh_chain *ch, GHashTable *covered)
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
static int check_folder(check_run *c, const char *rel, GHashTable *covered, GError **err)
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

static int check_file(check_run *c, const char *rel, GHashTable *covered, GError **err)
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

/* ---------------------------------------------------------------------------------------- */
/* Reporting */

static guint broken_links(check_run *c)
{
    guint n = 0;
    for (guint k = 0; k < c->link_order->len; k++)
        n += ((vh_link *)c->link_order->pdata[k])->verdict != VH_VERDICT_OK;
    return n;
}

static char *fix_command(check_run *c, const vh_link *l, const char *parent)
{
    g_autofree char *child = g_build_filename(vh_store_root(c->store), l->child, NULL);
    g_autofree char *par = g_build_filename(vh_store_root(c->store), parent, NULL);
    g_autofree char *qc = g_shell_quote(child), *qp = g_shell_quote(par);
    g_autofree char *qw = c->winroot ? g_shell_quote(c->winroot) : NULL;
    return g_strdup_printf("vhdheal reconnect%s%s %s %s", qw ? " --winroot " : "", qw ? qw : "", qc,
                           qp);
}

static void print_link_text(check_run *c, const vh_link *l)
{
    g_autofree char *line = vh_report_link_line(l);
    printf("  %s\n", line);
    for (guint k = 0; k < l->tries->len; k++) {
        const vh_locator_try *t = l->tries->pdata[k];
        printf("    %-20s %s -> %s%s%s\n", vh_locator_kind_name(t->kind), t->stored,
               t->target ? t->target : "(not in the store)", t->detail ? ": " : "",
               t->detail ? t->detail : "");
    }
    for (guint k = 0; k < l->warnings->len; k++)
        printf("    warning: %s\n", (char *)l->warnings->pdata[k]);
    const char *fix = vh_link_fix_parent(l);
    if (fix) {
        g_autofree char *cmd = fix_command(c, l, fix);
        printf("    fix: %s\n", cmd);
    } else if (l->verdict == VH_VERDICT_AMBIGUOUS) {
        printf("    candidates (choose one):\n");
        for (guint k = 0; k < l->candidates->len; k++) {
            g_autofree char *cmd = fix_command(c, l, l->candidates->pdata[k]);
            printf("      %s\n", cmd);
        }
    } else {
        printf("    no automatic fix: no disk in the store passes the parent checks\n");
    }
}

static void print_text(check_run *c)
{
    printf("store: %s\n", vh_store_root(c->store));
    for (int broken = 1; broken >= 0; broken--) {
        for (guint k = 0; k < c->chains->len; k++) {
            const vh_chain *ch = c->chains->pdata[k];
            if ((ch->broken > 0) != broken)
                continue;
            g_autofree char *head = vh_report_headline(ch);
            printf("%s\n", head);
            if (!broken)
                continue;
            for (guint i = 0; i < ch->links->len; i++) {
                const vh_link *l = ch->links->pdata[i];
                if (l->verdict != VH_VERDICT_OK)
                    print_link_text(c, l);
            }
            g_autofree char *line = vh_report_chain_line(ch);
            printf("  chain: %s\n", line);
        }
    }
    for (guint k = 0; k < c->unreadable->len; k++) {
        const vh_disk_info *d = c->unreadable->pdata[k];
        printf("UNREADABLE %s: %s\n", d->path, d->error);
    }
    printf("%u disk%s, %u chain%s, %u link%s: %u broken%s%u unreadable\n", c->disks,
           c->disks == 1 ? "" : "s", c->chains->len, c->chains->len == 1 ? "" : "s",
           c->link_order->len, c->link_order->len == 1 ? "" : "s", broken_links(c), ", ",
           c->unreadable->len);
}

static void json_id(vh_json *j, const char *key, const vh_id *id)
{
    char s[VH_ID_STRLEN + 1];
    vh_id_format(id, s);
    vh_json_kv_string(j, key, s);
}

static void json_strings(vh_json *j, const char *key, GPtrArray *a)
{
    vh_json_key(j, key);
    vh_json_begin_array(j);
    for (guint k = 0; k < a->len; k++)
        vh_json_string(j, a->pdata[k]);
    vh_json_end_array(j);
}

static void json_link(check_run *c, vh_json *j, const vh_link *l)
{
    bool ok = l->verdict == VH_VERDICT_OK;
    vh_json_begin_object(j);
    vh_json_kv_string(j, "child", l->child);
    vh_json_kv_string(j, "status", ok ? "ok" : "broken");
    vh_json_kv_string(j, "reason", ok ? NULL : vh_verdict_name(l->verdict));
    vh_json_kv_string(j, "detail", l->detail);
    json_id(j, "expected_id", &l->expected_id);
    vh_json_kv_string(j, "parent", ok ? l->parent : NULL);
    vh_json_kv_string(j, "via",
                      ok && l->via >= 0
                          ? vh_locator_kind_name(((vh_locator_try *)l->tries->pdata[l->via])->kind)
                          : NULL);
    vh_json_kv_bool(j, "stale", l->stale);
    vh_json_kv_string(j, "heal_target", vh_link_fix_parent(l));
    json_strings(j, "candidates", l->candidates);
    const char *fix = vh_link_fix_parent(l);
    g_autofree char *cmd = fix ? fix_command(c, l, fix) : NULL;
    vh_json_kv_string(j, "fix", cmd);
    vh_json_key(j, "locators");
    vh_json_begin_array(j);
    for (guint k = 0; k < l->tries->len; k++) {
        const vh_locator_try *t = l->tries->pdata[k];
        vh_json_begin_object(j);
        vh_json_kv_string(j, "kind", vh_locator_kind_name(t->kind));
        vh_json_kv_string(j, "stored", t->stored);
        vh_json_kv_string(j, "target", t->target);
        vh_json_kv_string(
            j, "mapped_by",
            t->target || t->result == VH_VERDICT_OUTSIDE_STORE ? vh_wp_via_name(t->via) : NULL);
        vh_json_kv_string(j, "result", vh_verdict_name(t->result));
        vh_json_kv_string(j, "detail", t->detail);
        vh_json_end_object(j);
    }
    vh_json_end_array(j);
    json_strings(j, "warnings", l->warnings);
    vh_json_end_object(j);
}

static void json_chain(vh_json *j, const vh_chain *ch)
{
    vh_json_begin_object(j);
    vh_json_kv_string(j, "top", ((vh_disk_info *)ch->disks->pdata[0])->path);
    vh_json_kv_bool(j, "healthy", ch->broken == 0);
    vh_json_kv_bool(j, "complete", ch->complete);
    vh_json_key(j, "disks");
    vh_json_begin_array(j);
    for (guint k = 0; k < ch->disks->len; k++)
        vh_json_string(j, ((vh_disk_info *)ch->disks->pdata[k])->path);
    vh_json_end_array(j);
    vh_json_key(j, "broken");
    vh_json_begin_array(j);
    for (guint k = 0; k < ch->links->len; k++) {
        const vh_link *l = ch->links->pdata[k];
        if (l->verdict != VH_VERDICT_OK)
            vh_json_string(j, l->child);
    }
    vh_json_end_array(j);
    vh_json_end_object(j);
}

static void print_json(check_run *c)
{
    g_autoptr(vh_json) j = vh_json_new();
    guint broken = broken_links(c);
    vh_json_begin_object(j);
    vh_json_kv_string(j, "schema", "vhdheal-check/1");
    vh_json_kv_string(j, "store", vh_store_root(c->store));
    vh_json_kv_string(j, "winroot", c->winroot);
    vh_json_kv_bool(j, "healthy", broken == 0 && c->unreadable->len == 0);
    vh_json_key(j, "summary");
    vh_json_begin_object(j);
    vh_json_kv_uint(j, "disks", c->disks);
    vh_json_kv_uint(j, "chains", c->chains->len);
    vh_json_kv_uint(j, "links", c->link_order->len);
    vh_json_kv_uint(j, "broken", broken);
    vh_json_kv_uint(j, "unreadable", c->unreadable->len);
    vh_json_end_object(j);
    vh_json_key(j, "chains");
    vh_json_begin_array(j);
    for (guint k = 0; k < c->chains->len; k++)
        json_chain(j, c->chains->pdata[k]);
    vh_json_end_array(j);
    vh_json_key(j, "links");
    vh_json_begin_array(j);
    for (guint k = 0; k < c->link_order->len; k++)
        json_link(c, j, c->link_order->pdata[k]);
    vh_json_end_array(j);
    vh_json_key(j, "unreadable");
    vh_json_begin_array(j);
    for (guint k = 0; k < c->unreadable->len; k++) {
        const vh_disk_info *d = c->unreadable->pdata[k];
        vh_json_begin_object(j);
        vh_json_kv_string(j, "path", d->path);
        vh_json_kv_string(j, "format", vh_format_name(d->format));
        vh_json_kv_string(j, "error", d->error);
        vh_json_end_object(j);
    }
    vh_json_end_array(j);
    vh_json_end_object(j);
    g_autofree char *text = vh_json_finish(g_steal_pointer(&j));
    fputs(text, stdout);
    fputc('\n', stdout);
}

/* ---------------------------------------------------------------------------------------- */

static void run_clear(check_run *c)
{
    g_clear_pointer(&c->links, g_hash_table_unref);
    g_clear_pointer(&c->link_order, g_ptr_array_unref);
    g_clear_pointer(&c->chains, g_ptr_array_unref);
    g_clear_pointer(&c->unreadable, g_ptr_array_unref);
    g_clear_pointer(&c->resolver, vh_resolver_free);
    g_clear_pointer(&c->store, vh_store_free);
}

static int check_paths(check_run *c, char **paths, int n, GError **err)
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

typedef struct run_args {
    gboolean json, dry_run;
    gint maxdepth;
    char *store, *winroot, *trust;
} run_args;

/* Parses the options shared by check and repair, and collects every chain of the paths. */
static int collect(check_run *c, run_args *a, bool repair, int argc, char **argv)
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
    /* repair's own options: a table of their own, so that no entry ends the shared one early */
    GOptionEntry repair_entries[] = {{"dry-run", 'n', 0, G_OPTION_ARG_NONE, &a->dry_run,
                                      "Show what would change, change nothing", NULL},
                                     G_OPTION_ENTRY_NULL};
    g_autoptr(GOptionContext) oc =
        g_option_context_new(repair ? "PATH... - repair every broken link that has a heal target"
                                    : "PATH... - check the chains of disks and store folders");
    g_option_context_add_main_entries(oc, entries, NULL);
    if (repair)
        g_option_context_add_main_entries(oc, repair_entries, NULL);
    g_autoptr(GError) err = NULL;
    if (!g_option_context_parse(oc, &argc, &argv, &err))
        return vh_cli_usage("%s: %s", cmd, err->message);
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
    if (!a->dry_run)
        recover_journal(root);
    if (repair && !a->dry_run)
        vh_cli_resume_merges(root); /* a merge an interruption left is finished first */
    c->winroot = a->winroot;
    c->store = vh_store_new(root, &err);
    if (!c->store) {
        vh_cli_error(err);
        return VH_EXIT_USAGE;
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

static void run_args_clear(run_args *a)
{
    g_free(a->store);
    g_free(a->winroot);
    g_free(a->trust);
}

int vhdheal_cmd_check(int argc, char **argv)
{
    run_args a = {.maxdepth = VH_DEFAULT_MAXDEPTH};
    check_run c = {0};
    int rc = collect(&c, &a, false, argc, argv);
    if (rc == VH_EXIT_OK) {
        if (a.json)
            print_json(&c);
        else
            print_text(&c);
        rc = broken_links(&c) > 0 || c.unreadable->len > 0 ? VH_EXIT_BROKEN : VH_EXIT_OK;
    }
    run_clear(&c);
    run_args_clear(&a);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* Repair */

typedef struct repair_outcome {
    const vh_link *link;
    const char *target; /* the heal target, or NULL: not repairable automatically */
    int error;          /* 0, or the errno of a failed reconnect */
    char *message;
    vh_reconnect_result res;
} repair_outcome;

typedef struct {
    check_run *c;
    const char *rel;
} repair_cas;

/* The verdict re-run under the child's lock: the link another process healed reads as ok. */
static int repair_still_broken(void *ctx, GError **err)
{
    repair_cas *rc = ctx;
    vh_store_note_changed(rc->c->store, rc->rel);
    vh_resolver_reset(rc->c->resolver);
    g_autoptr(GError) e = NULL;
    vh_link *l = vh_resolve_link(rc->c->resolver, rc->rel, &e);
    if (!l) {
        int code = vh_error_errno(e);
        g_propagate_error(err, g_steal_pointer(&e));
        return -code;
    }
    int broken = l->verdict != VH_VERDICT_OK;
    vh_link_unref(l);
    return broken;
}

static void repair_link(check_run *c, const run_args *a, repair_outcome *o)
{
    g_autofree char *child = g_build_filename(vh_store_root(c->store), o->link->child, NULL);
    g_autofree char *parent = g_build_filename(vh_store_root(c->store), o->target, NULL);
    repair_cas cas = {c, o->link->child};
    vh_reconnect_opts ro = {.store = vh_store_root(c->store),
                            .winroot = a->winroot,
                            .dry_run = a->dry_run,
                            .maxdepth = a->maxdepth,
                            .still_broken = repair_still_broken,
                            .still_broken_ctx = &cas};
    g_autoptr(GError) err = NULL;
    if (vh_reconnect(child, parent, &ro, &o->res, &err) < 0) {
        o->error = vh_error_errno(err);
        o->message = g_strdup(err->message);
    }
}

static void print_repair_text(const repair_outcome *o, bool dry_run)
{
    const vh_link *l = o->link;
    if (!o->target) {
        printf("left    %s: %s: %s\n", l->child, vh_verdict_name(l->verdict), l->detail);
        for (guint k = 0; l->verdict == VH_VERDICT_AMBIGUOUS && k < l->candidates->len; k++)
            printf("          candidate: %s\n", (char *)l->candidates->pdata[k]);
    } else if (o->error) {
        printf("FAILED  %s -> %s: %s\n", l->child, o->target, o->message);
    } else if (o->res.already_healed) {
        printf("healed  %s: already healed (by another process or host): nothing written\n",
               l->child);
    } else {
        printf("%s %s -> %s (%s)\n", dry_run ? "would   " : "repaired", l->child, o->target,
               vh_verdict_name(l->verdict));
        printf("          was: %s\n          now: %s\n", o->res.old_link, o->res.new_link);
        if (o->res.repair_id)
            printf("          undo id: %s\n", o->res.repair_id);
    }
}

static void print_repair_json(vh_json *j, const repair_outcome *o, bool dry_run)
{
    const vh_link *l = o->link;
    vh_json_begin_object(j);
    vh_json_kv_string(j, "child", l->child);
    vh_json_kv_string(j, "reason", vh_verdict_name(l->verdict));
    vh_json_kv_string(j, "detail", l->detail);
    vh_json_kv_string(j, "parent", o->target);
    const char *status = !o->target              ? "left"
                         : o->error              ? "failed"
                         : dry_run               ? "would-repair"
                         : o->res.already_healed ? "already-healed"
                                                 : "repaired";
    vh_json_kv_string(j, "status", status);
    vh_json_kv_string(j, "error", o->message);
    vh_json_kv_string(j, "old_link", o->res.old_link);
    vh_json_kv_string(j, "new_link", o->res.new_link);
    vh_json_kv_string(j, "repair_id", o->res.repair_id);
    json_strings(j, "candidates", l->candidates);
    vh_json_end_object(j);
}

int vhdheal_cmd_repair(int argc, char **argv)
{
    run_args a = {.maxdepth = VH_DEFAULT_MAXDEPTH};
    check_run c = {0};
    int rc = collect(&c, &a, true, argc, argv);
    if (rc != VH_EXIT_OK) {
        run_clear(&c);
        run_args_clear(&a);
        return rc;
    }
    GArray *out = g_array_new(FALSE, TRUE, sizeof(repair_outcome));
    guint left = 0;
    for (guint k = 0; k < c.link_order->len; k++) {
        const vh_link *l = c.link_order->pdata[k];
        if (l->verdict == VH_VERDICT_OK)
            continue;
        repair_outcome o = {.link = l, .target = vh_link_fix_parent(l)};
        if (o.target)
            repair_link(&c, &a, &o);
        left += !o.target || o.error;
        g_array_append_val(out, o);
    }
    g_autoptr(vh_json) j = a.json ? vh_json_new() : NULL;
    if (j) {
        vh_json_begin_object(j);
        vh_json_kv_string(j, "schema", "vhdheal-repair/1");
        vh_json_kv_string(j, "store", vh_store_root(c.store));
        vh_json_kv_bool(j, "dry_run", a.dry_run);
        vh_json_key(j, "links");
        vh_json_begin_array(j);
    } else {
        printf("store: %s\n", vh_store_root(c.store));
    }
    for (guint k = 0; k < out->len; k++) {
        repair_outcome *o = &g_array_index(out, repair_outcome, k);
        if (j)
            print_repair_json(j, o, a.dry_run);
        else
            print_repair_text(o, a.dry_run);
        g_free(o->message);
        vh_reconnect_result_clear(&o->res);
    }
    if (j) {
        vh_json_end_array(j);
        vh_json_kv_uint(j, "repaired", a.dry_run ? 0 : out->len - left);
        vh_json_kv_uint(j, "left", left + c.unreadable->len);
        vh_json_end_object(j);
        g_autofree char *doc = vh_json_finish(g_steal_pointer(&j));
        printf("%s\n", doc);
    } else {
        printf("%u broken link%s: %u %s, %u left; %u unreadable disk%s\n", out->len,
               out->len == 1 ? "" : "s", out->len - left, a.dry_run ? "repairable" : "repaired",
               left, c.unreadable->len, c.unreadable->len == 1 ? "" : "s");
    }
    rc = left > 0 || c.unreadable->len > 0 ? VH_EXIT_BROKEN : VH_EXIT_OK;
    g_array_unref(out);
    run_clear(&c);
    run_args_clear(&a);
    return rc;
}
