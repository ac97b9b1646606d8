// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * cmd_repair.c - vhdheal reconnect and undo: the reconnect engine and the journal from the
 * command line.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
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
    g_autoptr(GOptionContext) oc =
        g_option_context_new("CHILD PARENT - make PARENT the parent of CHILD");
    g_option_context_add_main_entries(oc, entries, NULL);
    g_autoptr(GError) perr = NULL;
    if (!g_option_context_parse(oc, &argc, &argv, &perr))
        return vh_cli_usage("%s", perr->message);
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
    g_autoptr(GOptionContext) oc = g_option_context_new("(--list | ID...) - revert repairs");
    g_option_context_add_main_entries(oc, entries, NULL);
    g_autoptr(GError) perr = NULL;
    if (!g_option_context_parse(oc, &argc, &argv, &perr))
        return vh_cli_usage("%s", perr->message);
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
