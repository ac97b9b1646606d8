// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * vhdheal.c - the offline front of the engine: one table of subcommands, each in its own
 * module (cmd_*.c). Exit codes: 0 success/healthy, 1 broken links found or left, 2 usage or
 * I/O error (doc/design.md "vhdheal").
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *synopsis;
} command;

static const command commands[] = {
    {"info", vhdheal_cmd_info, "info [--json] [--overlay ODIR [--store DIR]] FILE..."},
    {"check", vhdheal_cmd_check,
     "check [--json] [--store DIR] [--winroot W] [--maxdepth N] [--trust WHO]\n"
     "    [--overlay ODIR] PATH..."},
    {"repair", vhdheal_cmd_repair,
     "repair [--dry-run] [--json] [--store DIR] [--winroot W] [--maxdepth N] [--trust WHO]\n"
     "    PATH..."},
    {"create", vhdheal_cmd_create,
     "create [--format vhd|vhdx] [--type fixed|dynamic] [--block-size N]\n"
     "    [--logical-sector-size N] [--physical-sector-size N] --size SIZE FILE\n"
     "  vhdheal create --parent PARENT FILE"},
    {"write", vhdheal_cmd_write, "write [--force] [--store DIR] [--winroot W] FILE OFFSET [INPUT]"},
    {"read", vhdheal_cmd_read,
     "read [--store DIR] [--winroot W] [--trust WHO] [--overlay ODIR]\n"
     "    [-o OUT] FILE [OFFSET LENGTH]"},
    {"reconnect", vhdheal_cmd_reconnect,
     "reconnect [--ignore-id-mismatch] [--store DIR] [--winroot W] [--dry-run] CHILD PARENT"},
    {"convert", vhdheal_cmd_convert,
     "convert [--format vhd|vhdx|raw] [--type fixed|dynamic] [--block-size N] [--store DIR]\n"
     "    [--progress] SRC DST"},
    {"merge", vhdheal_cmd_merge,
     "merge [--into ANCESTOR] [--force] [--dry-run] [--progress] [--store DIR] CHILD\n"
     "  vhdheal merge --resume [--store DIR]"},
    {"undo", vhdheal_cmd_undo, "undo [--store DIR] (--list | ID...)"},
    {"mkstore", vhdheal_cmd_mkstore, NULL}, /* hidden: synthetic stores for tests */
};

void vh_cli_error(const GError *err)
{
    fprintf(stderr, "vhdheal: %s\n", err ? err->message : "unknown error");
}

int vh_cli_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("vhdheal: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\n(see vhdheal --help)\n", stderr);
    va_end(ap);
    return VH_EXIT_USAGE;
}

bool vh_cli_options(const char *cmd, const char *params, GOptionEntry *entries, GOptionEntry *extra,
                    int *argc, char ***argv)
{
    g_autoptr(GOptionContext) oc = g_option_context_new(params);
    g_option_context_add_main_entries(oc, entries, NULL);
    if (extra)
        g_option_context_add_main_entries(oc, extra, NULL);
    g_autoptr(GError) err = NULL;
    if (g_option_context_parse(oc, argc, argv, &err))
        return true;
    vh_cli_usage("%s: %s", cmd, err->message);
    return false;
}

char *vh_cli_printable(const char *s)
{
    GString *out = g_string_sized_new(s ? strlen(s) : 0);
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        if (*p == '\n')
            g_string_append(out, "\\n");
        else if (*p == '\t')
            g_string_append(out, "\\t");
        else if (*p == '\r')
            g_string_append(out, "\\r");
        else if (*p < 0x20 || *p == 0x7f)
            g_string_append_printf(out, "\\x%02x", *p);
        else
            g_string_append_c(out, (char)*p);
    }
    return g_string_free(out, FALSE);
}

bool vh_cli_parse_size(const char *s, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    if (!s || !g_ascii_isdigit(s[0]))
        return false;
    guint64 v = g_ascii_strtoull(s, &end, 0);
    if (errno)
        return false;
    int shift = 0;
    switch (g_ascii_toupper(*end)) {
    case 'K':
        shift = 10;
        break;
    case 'M':
        shift = 20;
        break;
    case 'G':
        shift = 30;
        break;
    case 'T':
        shift = 40;
        break;
    case '\0':
        break;
    default:
        return false;
    }
    if (shift) {
        end++;
        if (g_ascii_strcasecmp(end, "iB") == 0 || g_ascii_strcasecmp(end, "B") == 0)
            end += strlen(end);
    }
    if (*end != '\0' || (shift && v > (UINT64_MAX >> shift)))
        return false;
    *out = v << shift;
    return true;
}

static void print_help(FILE *f)
{
    fprintf(f, "Usage: vhdheal COMMAND [OPTIONS] ...\n\n"
               "Inspect, create and repair VHD/VHDX disks and their differencing chains.\n\n");
    for (size_t i = 0; i < G_N_ELEMENTS(commands); i++)
        if (commands[i].synopsis)
            fprintf(f, "  vhdheal %s\n", commands[i].synopsis);
    fprintf(f, "\n`vhdheal COMMAND --help` describes a command's options.\n"
               "Exit status: 0 success, 1 broken links found or left, 2 usage or I/O error.\n");
}

/* The engine's warnings (g_warning: recovery's notes, a journal compaction that failed) as the
 * CLI's own: one line on stderr, control characters escaped (paths come from the store). */
static void engine_warning(const gchar *domain, GLogLevelFlags level, const gchar *msg,
                           gpointer data)
{
    g_autofree char *shown = vh_cli_printable(msg);
    fprintf(stderr, "vhdheal: warning: %s\n", shown);
}

int main(int argc, char **argv)
{
    g_log_set_handler(NULL, G_LOG_LEVEL_WARNING, engine_warning, NULL);
    if (argc < 2) {
        print_help(stderr);
        return VH_EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        print_help(stdout);
        return VH_EXIT_OK;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("vhdheal %s\n", VHDHEAL_VERSION);
        return VH_EXIT_OK;
    }
    for (size_t i = 0; i < G_N_ELEMENTS(commands); i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    return vh_cli_usage("unknown command '%s'", argv[1]);
}
