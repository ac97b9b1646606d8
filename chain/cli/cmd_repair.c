// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * cmd_repair.c - vhdheal repair, reconnect and undo: the reconnect engine and the journal from
 * the command line. repair collects its chains as check does (cli_store.h) and reconnects every
 * broken link that has a heal target, for people or as one JSON document.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli_store.h"
#include "journal.h"
#include "reconnect.h"
#include "store.h"

int vhdheal_cmd_reconnect(int argc, char **argv)
{
    gboolean force = FALSE, dry_run = FALSE;
    g_autofree char *store = NULL, *winroot = NULL;
    GOptionEntry entries[] = {
        {"ignore-id-mismatch", 0, 0, G_OPTION_ARG_NONE, &force,
         "Reconnect even if the parent's identity differs (as Set-VHD -IgnoreIdMismatch)", NULL},
        {"store", 0, 0, G_OPTION_ARG_FILENAME, &store, "The store (journal, boundary)", "DIR"},
        {"winroot", 0, 0, G_OPTION_ARG_STRING, &winroot, "Where Windows sees the store", "W"},
        {"dry-run", 'n', 0, G_OPTION_ARG_NONE, &dry_run, "Check and show, change nothing", NULL},
        G_OPTION_ENTRY_NULL};
    if (!vh_cli_options("reconnect", "CHILD PARENT - make PARENT the parent of CHILD", entries,
                        NULL, &argc, &argv))
        return VH_EXIT_USAGE;
    if (argc != 3)
        return vh_cli_usage("reconnect: CHILD PARENT");
    g_autoptr(GError) serr = NULL;
    /* A parent that does not exist, or lies outside an explicit store, is the engine's to
     * report (ENOENT, EXDEV): the store is determined by the paths that can take part. */
    int npaths = access(argv[2], F_OK) == 0 && !store ? 2 : 1;
    g_autofree char *st = vh_store_determine(store, argv + 1, npaths, false, &serr);
    if (!st)
        return vh_cli_usage("reconnect: %s", serr->message);
    vh_reconnect_opts o = {
        .store = st, .winroot = winroot, .ignore_id_mismatch = force, .dry_run = dry_run};
    vh_reconnect_result res;
    g_autoptr(GError) err = NULL;
    if (vh_reconnect(argv[1], argv[2], &o, &res, &err) < 0) {
        vh_cli_error(err);
        return VH_EXIT_USAGE;
    }
    if (res.already_healed)
        printf("%s already links to %s: nothing written\n", argv[1], argv[2]);
    else
        printf("%s%s\n  was: %s\n  now: %s\n", dry_run ? "would reconnect " : "reconnected ",
               argv[1], res.old_link, res.new_link);
    if (res.repair_id)
        printf("  undo: vhdheal undo --store '%s' %s\n", st, res.repair_id);
    vh_reconnect_result_clear(&res);
    return VH_EXIT_OK;
}

static const char *state_name(vh_repair_state s)
{
    switch (s) {
    case VH_REPAIR_OPEN:
        return "unfinished";
    case VH_REPAIR_COMMITTED:
        return "done";
    case VH_REPAIR_ROLLED_BACK:
        return "rolled-back";
    case VH_REPAIR_UNDONE:
        return "undone";
    }
    return "?";
}

static int list_repairs(vh_journal *j)
{
    g_autoptr(GPtrArray) list = NULL;
    g_autoptr(GError) err = NULL;
    if (vh_journal_list(j, &list, &err) < 0) {
        vh_cli_error(err);
        return VH_EXIT_USAGE;
    }
    for (guint i = 0; i < list->len; i++) {
        vh_repair_info *r = list->pdata[i];
        g_autoptr(GDateTime) t = g_date_time_new_from_unix_utc(r->time);
        g_autofree char *when = t ? g_date_time_format_iso8601(t) : g_strdup("?");
        g_autofree char *child = vh_cli_printable(r->child);
        g_autofree char *old_link = vh_cli_printable(r->old_link);
        g_autofree char *new_link = vh_cli_printable(r->new_link);
        printf("%s %s %s%s %s: %s -> %s\n", r->id, when, state_name(r->state),
               r->damaged ? ",journal-damaged" : "", child, old_link, new_link);
    }
    return VH_EXIT_OK;
}

int vhdheal_cmd_undo(int argc, char **argv)
{
    gboolean list = FALSE;
    g_autofree char *store = NULL;
    GOptionEntry entries[] = {
        {"store", 0, 0, G_OPTION_ARG_FILENAME, &store, "The store", "DIR"},
        {"list", 0, 0, G_OPTION_ARG_NONE, &list, "List journaled repairs, oldest first", NULL},
        G_OPTION_ENTRY_NULL};
    if (!vh_cli_options("undo", "(--list | ID...) - revert repairs", entries, NULL, &argc, &argv))
        return VH_EXIT_USAGE;
    if (list == (argc > 1))
        return vh_cli_usage("undo: either --list or one or more IDs");
    char *here[] = {"."};
    g_autoptr(GError) serr = NULL;
    g_autofree char *st = vh_store_determine(store, here, store ? 0 : 1, false, &serr);
    if (!st)
        return vh_cli_usage("undo: %s", serr->message);
    g_autoptr(vh_journal) j = NULL;
    g_autoptr(GError) err = NULL;
    if (vh_journal_open(st, &j, &err) < 0) {
        vh_cli_error(err);
        return VH_EXIT_USAGE;
    }
    if (list)
        return list_repairs(j);
    int rc = VH_EXIT_OK;
    for (int i = 1; i < argc; i++) {
        g_clear_error(&err);
        if (vh_journal_undo(j, argv[i], &err) < 0) {
            vh_cli_error(err);
            rc = VH_EXIT_USAGE;
        } else {
            printf("undone %s\n", argv[i]);
        }
    }
    return rc;
}

typedef struct repair_outcome {
    const vh_link *link;
    const char *target; /* the heal target, or NULL: not repairable automatically */
    int error;          /* 0, or the errno of a failed reconnect */
    char *message;
    vh_reconnect_result res;
} repair_outcome;

typedef struct {
    vh_cli_run *c;
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

static void repair_link(vh_cli_run *c, const vh_cli_args *a, repair_outcome *o)
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
    vh_cli_json_strings(j, "candidates", l->candidates);
    vh_json_end_object(j);
}

int vhdheal_cmd_repair(int argc, char **argv)
{
    vh_cli_args a = {.maxdepth = VH_DEFAULT_MAXDEPTH};
    vh_cli_run c = {0};
    int rc = vh_cli_collect(&c, &a, true, argc, argv);
    if (rc != VH_EXIT_OK) {
        vh_cli_run_clear(&c);
        vh_cli_args_clear(&a);
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
    vh_cli_run_clear(&c);
    vh_cli_args_clear(&a);
    return rc;
}
