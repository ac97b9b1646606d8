/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * journal.h - the repair journal, STORE/.vhdheal/journal: before a repair overwrites anything in
 * a child, the original bytes of that range are appended to the journal and flushed. A repair
 * that did not reach its COMMIT record (a crash, a failed write) is rolled back from those
 * bytes; a committed repair can be undone later, byte for byte, as long as the child still holds
 * what the repair wrote.
 *
 * The journal is a text file of one record a line (fields separated by tabs, text fields
 * escaped with g_strescape, bytes in base64):
 *   BEGIN  id  unix-time  child(relative to STORE)  original-size  old-link  new-link
 *   RANGE  id  offset  base64(original bytes)
 *   COMMIT id  final-size  sha256(bytes the repair left in its ranges)
 *   ROLLBACK id   |   UNDO id
 * A line without its newline is a record that never finished: it is ignored (the write it
 * guards was never issued, because records are flushed before the write they protect).
 */
#ifndef VH_JOURNAL_H
#define VH_JOURNAL_H

#include "io.h"

typedef struct vh_journal vh_journal;
typedef struct vh_repair vh_repair;

typedef enum {
    VH_REPAIR_OPEN,        /* begun, not committed: to be rolled back */
    VH_REPAIR_COMMITTED,   /* done; can be undone */
    VH_REPAIR_ROLLED_BACK, /* rolled back after a failure or crash */
    VH_REPAIR_UNDONE,      /* undone by `vhdheal undo` */
} vh_repair_state;

typedef struct vh_repair_info {
    char *id;
    int64_t time;
    char *child; /* relative to the store */
    char *old_link;
    char *new_link;
    vh_repair_state state;
} vh_repair_info;

void vh_repair_info_free(vh_repair_info *r);

/* Opens (creating STORE/.vhdheal/ and the journal if needed). */
int vh_journal_open(const char *store, vh_journal **out, GError **err);
void vh_journal_close(vh_journal *j);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(vh_journal, vh_journal_close)
const char *vh_journal_store(const vh_journal *j);

/*
 * Starts a repair of `child` (opened for writing, its path under the store): writes BEGIN and
 * installs the pre-write hook on the file, so that every later write or truncate of it first
 * journals the original bytes.
 */
int vh_journal_begin(vh_journal *j, vh_file *child, const char *old_link, const char *new_link,
                     vh_repair **out, GError **err);
/* Records COMMIT (the child must have been flushed) and removes the hook. Frees r. */
int vh_journal_commit(vh_repair *r, GError **err);
/* Restores the child from the journaled bytes now, records ROLLBACK, removes the hook. Frees r. */
int vh_journal_abort(vh_repair *r, GError **err);
/* Lets go of a repair without recording its end: it stays open in the journal, for
 * vh_journal_recover to roll back (when its file is gone from under it). Frees r. */
void vh_journal_release(vh_repair *r);
const char *vh_repair_id(const vh_repair *r);
/* Moves the repair (and its hook) to another vh_file for the same file, e.g. after a disk
 * handle took over the vh_file it was begun on. */
void vh_repair_set_file(vh_repair *r, vh_file *f);

/*
 * Rolls back every open (uncommitted) repair; with child_rel only that child's. Returns the
 * number rolled back.
 */
int vh_journal_recover(vh_journal *j, const char *child_rel, GError **err);
/* All repairs, oldest first (vh_repair_info*). */
int vh_journal_list(vh_journal *j, GPtrArray **out, GError **err);
/*
 * Undoes a committed repair: refuses (EBUSY) when the child no longer holds what the repair
 * wrote (it changed since), and ENOENT for an unknown id.
 */
int vh_journal_undo(vh_journal *j, const char *id, GError **err);

#endif
