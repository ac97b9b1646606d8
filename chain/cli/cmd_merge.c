// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * cmd_merge.c - the vhdheal subcommands that rewrite whole disks: convert (Convert-VHD) and
 * merge (Merge-VHD), with progress on a terminal and a clean stop on SIGINT/SIGTERM.
 */
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include "chain.h"
#include "cli.h"
#include "convert.h"
#include "merge.h"

/* ---------- progress and interruption ---------- */

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* SIGINT and SIGTERM end the operation at its next step, cleanly (no half file left). */
static void catch_signals(void)
{
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

typedef struct progress {
    bool on;
    const char *what;
    gint64 start_us, last_us;
    bool shown;
} progress;

static void progress_init(progress *p, const char *what, bool forced)
{
    p->on = forced || isatty(STDERR_FILENO);
    p->what = what;
    p->start_us = p->last_us = g_get_monotonic_time();
    p->shown = false;
}

/* "  1.2 GiB / 8.0 GiB (15%), 310.4 MiB/s, 0:22 left" on stderr, at most 5 times a second. */
static void progress_cb(void *ctx, uint64_t done, uint64_t total)
{
    progress *p = ctx;
    gint64 now = g_get_monotonic_time();
    if (!p->on || (now - p->last_us < 200000 && done < total))
        return;
    p->last_us = now;
    double secs = (double)(now - p->start_us) / 1e6;
    double rate = secs > 0 ? (double)done / secs : 0;
    g_autofree char *d = g_format_size_full(done, G_FORMAT_SIZE_IEC_UNITS);
    g_autofree char *t = g_format_size_full(total, G_FORMAT_SIZE_IEC_UNITS);
    g_autofree char *r = g_format_size_full((guint64)rate, G_FORMAT_SIZE_IEC_UNITS);
    long left = rate > 0 ? (long)((double)(total - done) / rate) : 0;
    fprintf(stderr, "\r%s: %s / %s (%u%%), %s/s, %ld:%02ld left   ", p->what, d, t,
            total ? (unsigned)(done * 100 / total) : 100, r, left / 60, left % 60);
    p->shown = true;
}

static void progress_end(progress *p)
{
    if (p->shown)
        fputc('\n', stderr);
    p->shown = false;
}

/* ---------- convert ---------- */

static int parse_convert_target(const char *dst, const char *format, const char *type,
                                const char *block_size, vh_convert_opts *o)
{
    bool raw = false;
    if (format) {
        if (strcmp(format, "vhd") == 0)
            o->format = VH_FORMAT_VHD;
        else if (strcmp(format, "vhdx") == 0)
            o->format = VH_FORMAT_VHDX;
        else if (strcmp(format, "raw") == 0)
            raw = true;
        else
            return vh_cli_usage("convert: --format must be vhd, vhdx or raw");
    } else if (!vh_convert_format_from_name(dst, &o->format, &raw)) {
        return vh_cli_usage("convert: name the format with --format (DST does not end in .vhd, "
                            ".vhdx, .raw or .img)");
    }
    if (raw)
        o->format = VH_FORMAT_NONE;
    o->type = VH_TYPE_DYNAMIC;
    if (type && raw)
        return vh_cli_usage("convert: --type applies to vhd and vhdx, not to raw");
    if (type && strcmp(type, "fixed") == 0)
        o->type = VH_TYPE_FIXED;
    else if (type && strcmp(type, "dynamic") != 0)
        return vh_cli_usage("convert: --type must be fixed or dynamic");
    uint64_t bs = 0;
    if (block_size && (raw || (o->type == VH_TYPE_FIXED && o->format == VH_FORMAT_VHD)))
        return vh_cli_usage("convert: --block-size applies to dynamic disks (and fixed VHDX)");
    if (block_size && (!vh_cli_parse_size(block_size, &bs) || bs == 0 || bs > UINT32_MAX))
        return vh_cli_usage("convert: bad --block-size");
    o->block_size = (uint32_t)bs;
    return VH_EXIT_OK;
}

int vhdheal_cmd_convert(int argc, char **argv)
{
    g_autofree char *format = NULL, *type = NULL, *block_size = NULL, *store = NULL;
    gboolean show = FALSE;
    GOptionEntry entries[] = {
        {"format", 0, 0, G_OPTION_ARG_STRING, &format,
         "vhd, vhdx or raw (default: DST's extension)", "FORMAT"},
        {"type", 0, 0, G_OPTION_ARG_STRING, &type, "fixed or dynamic (default dynamic)", "TYPE"},
        {"block-size", 0, 0, G_OPTION_ARG_STRING, &block_size, "Block size, e.g. 2M", "N"},
        {"store", 0, 0, G_OPTION_ARG_FILENAME, &store, "The store (no parent outside it)", "DIR"},
        {"progress", 0, 0, G_OPTION_ARG_NONE, &show, "Show progress also when not on a terminal",
         NULL},
        G_OPTION_ENTRY_NULL};
    g_autoptr(GOptionContext) oc =
        g_option_context_new("SRC DST - one standalone disk with SRC's content (its whole chain)");
    g_option_context_add_main_entries(oc, entries, NULL);
    g_autoptr(GError) perr = NULL;
    if (!g_option_context_parse(oc, &argc, &argv, &perr))
        return vh_cli_usage("%s", perr->message);
    if (argc != 3)
        return vh_cli_usage("convert: SRC DST");
    vh_convert_opts o = {0};
    int rc = parse_convert_target(argv[2], format, type, block_size, &o);
    if (rc != VH_EXIT_OK)
        return rc;
    g_autoptr(GError) err = NULL;
    g_autoptr(vh_disk) src = NULL;
    vh_chain_open_opts co = {.store = store};
    if (vh_chain_open(argv[1], &co, &src, &err) < 0) {
        vh_cli_error(err);
        return VH_EXIT_USAGE;
    }
    progress p;
    progress_init(&p, "convert", show);
    catch_signals();
    o.progress = progress_cb;
    o.progress_ctx = &p;
    o.cancel = &interrupted;
    int r = vh_convert(src, argv[2], &o, &err);
    progress_end(&p);
    if (r < 0) {
        vh_cli_error(err);
        return VH_EXIT_USAGE;
    }
    return VH_EXIT_OK;
}

/* ---------- merge ---------- */

static void merge_log(void *ctx, const char *line)
{
    progress *p = ctx;
    progress_end(p);
    g_autofree char *shown = vh_cli_printable(line);
    printf("%s\n", shown);
    fflush(stdout);
}

/* For repair: its stdout is its report (or its JSON document), so these lines go to stderr. */
static void merge_log_stderr(void *ctx, const char *line)
{
    progress_end(ctx);
    g_autofree char *shown = vh_cli_printable(line);
    fprintf(stderr, "vhdheal: %s\n", shown);
}

int vh_cli_resume_merges(const char *store)
{
    progress p;
    progress_init(&p, "merge", false);
    vh_merge_opts o = {
        .progress = progress_cb, .progress_ctx = &p, .log = merge_log_stderr, .log_ctx = &p};
    g_autoptr(GError) err = NULL;
    int n = vh_merge_resume(store, &o, &err);
    progress_end(&p);
    if (n < 0)
        fprintf(stderr, "vhdheal: warning: an interrupted merge was not finished: %s\n",
                err->message);
    return n;
}

int vhdheal_cmd_merge(int argc, char **argv)
{
    g_autofree char *into = NULL, *store = NULL;
    gboolean force = FALSE, dry_run = FALSE, resume = FALSE, show = FALSE;
    GOptionEntry entries[] = {
        {"into", 0, 0, G_OPTION_ARG_FILENAME, &into,
         "The ancestor to merge into (default: CHILD's parent)", "ANCESTOR"},
        {"force", 0, 0, G_OPTION_ARG_NONE, &force,
         "Merge although the ancestor has other children (what they read changes)", NULL},
        {"dry-run", 'n', 0, G_OPTION_ARG_NONE, &dry_run, "Show what would be done, do nothing",
         NULL},
        {"resume", 0, 0, G_OPTION_ARG_NONE, &resume, "Finish the merges an interruption left",
         NULL},
        {"store", 0, 0, G_OPTION_ARG_FILENAME, &store, "The store (nothing outside is opened)",
         "DIR"},
        {"progress", 0, 0, G_OPTION_ARG_NONE, &show, "Show progress also when not on a terminal",
         NULL},
        G_OPTION_ENTRY_NULL};
    g_autoptr(GOptionContext) oc = g_option_context_new(
        "CHILD | --resume - merge a differencing disk into its parent (or an ancestor)");
    g_option_context_add_main_entries(oc, entries, NULL);
    g_autoptr(GError) perr = NULL;
    if (!g_option_context_parse(oc, &argc, &argv, &perr))
        return vh_cli_usage("%s", perr->message);
    if (resume ? argc != 1 || into || force || dry_run : argc != 2)
        return vh_cli_usage("merge: CHILD [--into ANCESTOR] [--force] [--dry-run], or --resume");
    progress p;
    progress_init(&p, "merge", show);
    catch_signals();
    vh_merge_opts o = {.store = store,
                       .into = into,
                       .force = force,
                       .dry_run = dry_run,
                       .progress = progress_cb,
                       .progress_ctx = &p,
                       .log = merge_log,
                       .log_ctx = &p,
                       .cancel = &interrupted};
    g_autoptr(GError) err = NULL;
    int r;
    if (resume) {
        g_autofree char *cwd = g_get_current_dir();
        char *paths[] = {cwd};
        g_autofree char *root =
            store ? g_strdup(store) : vh_store_determine(NULL, paths, 1, true, &err);
        r = root ? vh_merge_resume(root, &o, &err) : -vh_error_errno(err);
        if (r == 0)
            printf("no interrupted merge in %s\n", root);
    } else {
        r = vh_merge(argv[1], &o, &err);
    }
    progress_end(&p);
    if (r < 0) {
        vh_cli_error(err);
        return VH_EXIT_USAGE;
    }
    return VH_EXIT_OK;
}
