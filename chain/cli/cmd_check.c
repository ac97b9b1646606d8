// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * cmd_check.c - vhdheal check: every chain of the named disks or store folders, with a verdict
 * per link, for people (broken links first, with the fix as a command) or as one JSON document
 * (doc/json-check.md). Exit codes: 0 all healthy, 1 broken links (or unreadable disks) found,
 * 2 usage or I/O error. Nothing is written.
 */
#include <stdio.h>

#include "cli_store.h"
#include "report.h"

static guint broken_links(vh_cli_run *c)
{
    guint n = 0;
    for (guint k = 0; k < c->link_order->len; k++)
        n += ((vh_link *)c->link_order->pdata[k])->verdict != VH_VERDICT_OK;
    return n;
}

static char *fix_command(vh_cli_run *c, const vh_link *l, const char *parent)
{
    g_autofree char *child = g_build_filename(vh_store_root(c->store), l->child, NULL);
    g_autofree char *par = g_build_filename(vh_store_root(c->store), parent, NULL);
    g_autofree char *qc = g_shell_quote(child), *qp = g_shell_quote(par);
    g_autofree char *qw = c->winroot ? g_shell_quote(c->winroot) : NULL;
    return g_strdup_printf("vhdheal reconnect%s%s %s %s", qw ? " --winroot " : "", qw ? qw : "", qc,
                           qp);
}

static void print_link_text(vh_cli_run *c, const vh_link *l)
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

static void print_text(vh_cli_run *c)
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

static void json_link(vh_cli_run *c, vh_json *j, const vh_link *l)
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
    vh_cli_json_strings(j, "candidates", l->candidates);
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
    vh_cli_json_strings(j, "warnings", l->warnings);
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

static void print_json(vh_cli_run *c)
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

int vhdheal_cmd_check(int argc, char **argv)
{
    vh_cli_args a = {.maxdepth = VH_DEFAULT_MAXDEPTH};
    vh_cli_run c = {0};
    int rc = vh_cli_collect(&c, &a, false, argc, argv);
    if (rc == VH_EXIT_OK) {
        if (a.json)
            print_json(&c);
        else
            print_text(&c);
        rc = broken_links(&c) > 0 || c.unreadable->len > 0 ? VH_EXIT_BROKEN : VH_EXIT_OK;
    }
    vh_cli_run_clear(&c);
    vh_cli_args_clear(&a);
    return rc;
}
