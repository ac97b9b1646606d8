// SPDX-License-Identifier: GPL-2.0-or-later
/* report.c - chain tops and the wording of chains, shared by `vhdheal check` and @chains (see
 * report.h). */
#include "report.h"

void vh_report_top_free(vh_report_top *t)
{
    if (!t)
        return;
    vh_disk_info_unref(t->disk);
    if (t->chain)
        vh_chain_free(t->chain);
    g_free(t->why);
    g_free(t);
}

/* The disk a differencing disk's chain continues with (resolved parent or heal target). */
static char *next_of(vh_resolver *r, const vh_disk_info *d)
{
    if (!vh_disk_info_is_disk(d) || d->type != VH_TYPE_DIFFERENCING)
        return NULL;
    g_autoptr(vh_link) l = vh_resolve_link(r, d->path, NULL);
    if (!l)
        return NULL;
    return g_strdup(l->parent ? l->parent : l->heal_target);
}

static vh_report_top *top_new(vh_resolver *r, vh_disk_info *d, GHashTable *covered)
{
    vh_report_top *t = g_new0(vh_report_top, 1);
    t->disk = vh_disk_info_ref(d);
    g_hash_table_add(covered, g_strdup(d->path));
    if (d->error) {
        t->error = EIO;
        t->why = g_strdup(d->error);
        return t;
    }
    g_autoptr(GError) err = NULL;
    t->chain = vh_resolve_chain(r, d->path, &err);
    if (!t->chain) {
        t->error = err ? vh_error_errno(err) : EIO;
        t->why = g_strdup(err ? err->message : "cannot be read");
        return t;
    }
    for (guint k = 0; k < t->chain->disks->len; k++)
        g_hash_table_add(covered, g_strdup(((vh_disk_info *)t->chain->disks->pdata[k])->path));
    return t;
}

GPtrArray *vh_report_tops(vh_resolver *r, GPtrArray *disks, bool unreadable,
                          vh_progress_fn progress, void *ctx)
{
    GPtrArray *out = g_ptr_array_new_with_free_func((GDestroyNotify)vh_report_top_free);
    g_autoptr(GHashTable) parents = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    g_autoptr(GHashTable) covered = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    for (guint k = 0; k < disks->len; k++) {
        char *p = next_of(r, disks->pdata[k]);
        if (p)
            g_hash_table_add(parents, p);
        if (progress && (k % 256 == 0 || k + 1 == disks->len))
            progress(ctx, k + 1, disks->len);
    }
    for (int pass = 0; pass < 2; pass++)
        for (guint k = 0; k < disks->len; k++) {
            vh_disk_info *d = disks->pdata[k];
            if ((d->error && !unreadable) || g_hash_table_contains(covered, d->path) ||
                (pass == 0 && g_hash_table_contains(parents, d->path)))
                continue;
            g_ptr_array_add(out, top_new(r, d, covered));
        }
    return out;
}

bool vh_report_healthy(const vh_chain *c)
{
    return c->broken == 0 && c->complete;
}

char *vh_report_headline(const vh_chain *c)
{
    const char *top = ((const vh_disk_info *)c->disks->pdata[0])->path;
    if (vh_report_healthy(c))
        return g_strdup_printf("ok      %s (%u disk%s)", top, c->disks->len,
                               c->disks->len == 1 ? "" : "s");
    return g_strdup_printf("BROKEN  %s (%u broken link%s)", top, c->broken,
                           c->broken == 1 ? "" : "s");
}

char *vh_report_chain_line(const vh_chain *c)
{
    GString *s = g_string_new(NULL);
    for (guint k = 0; k < c->disks->len; k++)
        g_string_append_printf(s, "%s%s", k ? " -> " : "",
                               ((const vh_disk_info *)c->disks->pdata[k])->path);
    if (!c->complete)
        g_string_append(s, " -> ?");
    return g_string_free(s, FALSE);
}

char *vh_report_link_line(const vh_link *l)
{
    return g_strdup_printf("%s: %s: %s", l->child, vh_verdict_name(l->verdict),
                           l->detail ? l->detail : vh_verdict_name(l->verdict));
}

char *vh_report_status(const vh_disk_info *top, const vh_chain *c, const char *why)
{
    GString *s = g_string_new(NULL);
    if (!c) {
        g_string_append_printf(s, "UNREADABLE  %s\n%s: unreadable: %s\n", top->path, top->path,
                               why ? why : "cannot be read");
        return g_string_free(s, FALSE);
    }
    g_autofree char *head = vh_report_headline(c);
    g_string_append_printf(s, "%s\n", head);
    for (guint k = 0; k < c->links->len; k++) {
        g_autofree char *line = vh_report_link_line(c->links->pdata[k]);
        g_string_append_printf(s, "%s\n", line);
    }
    const vh_disk_info *last = c->disks->pdata[c->disks->len - 1];
    if (c->complete)
        g_string_append_printf(s, "%s: base: %s %s, %" G_GUINT64_FORMAT " bytes\n", last->path,
                               vh_type_name(last->type), vh_format_name(last->format),
                               last->virtual_size);
    g_autofree char *line = vh_report_chain_line(c);
    g_string_append_printf(s, "chain: %s\n", line);
    return g_string_free(s, FALSE);
}
