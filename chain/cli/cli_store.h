/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * cli_store.h - the one place where vhdheal check and vhdheal repair (cmd_check.c,
 * cmd_repair.c) parse their shared options (--json --store --winroot --maxdepth --trust, and
 * repair's --dry-run), open the store and the resolver, recover the journal, and collect every
 * chain of the named disk files and store folders. Each command then reports (check) or acts
 * (repair) on the links collected here.
 */
#ifndef VH_CLI_STORE_H
#define VH_CLI_STORE_H

#include "cli.h"
#include "json.h"
#include "resolve.h"
#include "store.h"

/* The chains of one run, collected by vh_cli_collect(). */
typedef struct vh_cli_run {
    vh_store *store;
    vh_overlay *overlay; /* --overlay DIR: the store is read through its patch sets */
    vh_resolver *resolver;
    const char *winroot;
    GPtrArray *chains;     /* vh_chain* */
    GPtrArray *unreadable; /* vh_disk_info* */
    GHashTable *links;     /* child path -> vh_link* (the first seen, in chain order) */
    GPtrArray *link_order; /* vh_link*, in the order first seen */
    guint disks;
    bool progress;
} vh_cli_run;

typedef struct vh_cli_args {
    gboolean json, dry_run;
    gint maxdepth;
    char *store, *winroot, *trust, *overlay;
} vh_cli_args;

/*
 * Parses the options (repair adds --dry-run) into a (initialised by the caller with the
 * defaults, e.g. .maxdepth = VH_DEFAULT_MAXDEPTH), recovers the store's journal unless this is
 * a dry run, and collects into c every chain of the paths. Returns VH_EXIT_OK or the exit code
 * of a usage or I/O error (already printed). Clear c and a with the functions below either way.
 */
int vh_cli_collect(vh_cli_run *c, vh_cli_args *a, bool repair, int argc, char **argv);
void vh_cli_run_clear(vh_cli_run *c);

/* --overlay DIR (check, read): the patch sets saved in DIR for the store whose
 * realpath is root, loaded read-only (nothing is written into DIR or the store; a bad or stale
 * file is a warning on stderr). NULL with a message printed when DIR cannot be read. */
vh_overlay *vh_cli_overlay_load(const char *dir, const char *root);
void vh_cli_args_clear(vh_cli_args *a);

/* "key": [strings...] */
void vh_cli_json_strings(vh_json *j, const char *key, GPtrArray *a);

#endif
