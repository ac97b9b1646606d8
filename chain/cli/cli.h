/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * cli.h - what the vhdheal subcommands share: exit codes, argument helpers, opening a chain
 * for the CLI.
 */
#ifndef VH_CLI_H
#define VH_CLI_H

#include "disk.h"

enum { VH_EXIT_OK = 0, VH_EXIT_BROKEN = 1, VH_EXIT_USAGE = 2 };

/* Prints "vhdheal: message" for an error and frees nothing. */
void vh_cli_error(const GError *err);
/* Prints a usage error and returns VH_EXIT_USAGE. */
int vh_cli_usage(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
/*
 * Parses a command's options (entries, then extra unless NULL; params is the synopsis --help
 * shows), leaving the operands in argc and argv. On an error prints "vhdheal: CMD: message" as a
 * usage error and returns false: the caller returns VH_EXIT_USAGE.
 */
bool vh_cli_options(const char *cmd, const char *params, GOptionEntry *entries, GOptionEntry *extra,
                    int *argc, char ***argv);
/*
 * A name as one line of text (new string): control characters are escaped (\n, \t, \r, \xHH),
 * so that a file name holding a newline cannot pass for two lines of a listing. Backslashes stay
 * as they are (Windows paths are full of them). NULL gives "".
 */
char *vh_cli_printable(const char *s);
/* Parses "10M", "1G", "4096", "2TiB" (binary suffixes). */
bool vh_cli_parse_size(const char *s, uint64_t *out);
/*
 * Creates a differencing disk at path on the parent at parent_path (opened read-only: the child
 * takes its format, size, sector size and identity) with the given locator paths (Windows form;
 * absolute may be NULL). For `create --parent` and `mkstore`.
 */
int vh_cli_create_child(const char *path, const char *parent_path, const char *relative,
                        const char *absolute, GError **err);

int vhdheal_cmd_info(int argc, char **argv);
int vhdheal_cmd_check(int argc, char **argv);
int vhdheal_cmd_mkstore(int argc, char **argv); /* hidden: tests, benchmarks */
int vhdheal_cmd_reconnect(int argc, char **argv);
int vhdheal_cmd_repair(int argc, char **argv);
int vhdheal_cmd_undo(int argc, char **argv);
int vhdheal_cmd_create(int argc, char **argv);
int vhdheal_cmd_read(int argc, char **argv);
int vhdheal_cmd_write(int argc, char **argv);
int vhdheal_cmd_convert(int argc, char **argv);
int vhdheal_cmd_merge(int argc, char **argv);
/* Finishes the merges an interruption left in the store (repair calls it first); a warning on
 * stderr when one cannot be finished. Returns how many were finished, or -errno. */
int vh_cli_resume_merges(const char *store);

#endif
