/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * journal.h - the repair journal, STORE/.vhdheal/journal (format and recovery rules:
 * doc/journal.md). Before a repair overwrites anything in a child, the original bytes of that
 * range and a hash of the bytes about to be written are appended to the journal and flushed.
 * A repair that did not reach its COMMIT record is rolled back by recovery, but only under the
 * child's OFD write lock (a held lock is a live repair) and only when the child holds exactly
 * what the repair found or what it wrote; a committed repair can be undone later, byte for
 * byte, as long as the child still holds what the repair wrote.
 *
 * Records are self-delimiting ("@VHJ2 <len> <crc32c>\n<payload>\n"), appended under an OFD
 * write lock on the journal at the end read under that lock, so appends from many processes
 * and hosts never interleave; a torn record is skipped and never merges with the next one.
 * Journals in the old one-line-a-record text format are read as legacy records.
 */
#ifndef VH_JOURNAL_H
#define VH_JOURNAL_H

#include "io.h"

typedef struct vh_journal vh_journal;
typedef struct vh_repair vh_repair;

typedef enum {
    VH_REPAIR_OPEN,        /* begun, not committed: to be recovered */
    VH_REPAIR_COMMITTED,   /* done; can be undone */
    VH_REPAIR_ROLLED_BACK, /* rolled back (or found never applied) after a failure or crash */
    VH_REPAIR_UNDONE,      /* undone by `vhdheal undo` */
} vh_repair_state;

typedef struct vh_repair_info {
    char *id;
    int64_t time;
    char *child; /* relative to the store */
    char *old_link;
    char *new_link;
    vh_repair_state state;
    bool damaged; /* a damaged journal record may be one of its own: never restored in part */
} vh_repair_info;

void vh_repair_info_free(vh_repair_info *r);

/*
 * Opens (creating STORE/.vhdheal/ 0700 and the journal 0600 if needed) beneath the store
 * without following symbolic links; a link or a non-regular file there, or one owned by
 * another user (root excepted), is refused (ELOOP, EINVAL, EPERM) and never written through.
 */
int vh_journal_open(const char *store, vh_journal **out, GError **err);
/* The same, but creates nothing: 0 with *out NULL when the store has no journal. */
int vh_journal_open_existing(const char *store, vh_journal **out, GError **err);
void vh_journal_close(vh_journal *j);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(vh_journal, vh_journal_close)
const char *vh_journal_store(const vh_journal *j);

/*
 * Starts a repair of `child` (opened for writing and locked by the caller, its path under the
 * store): writes BEGIN and installs the pre-write hook on the file, so that every later write
 * or truncate of it first journals the original bytes and the new bytes' hashes. When an
 * append fails (ENOSPC, EIO) the write it guards is not made.
 */
int vh_journal_begin(vh_journal *j, vh_file *child, const char *old_link, const char *new_link,
                     vh_repair **out, GError **err);
/* Records COMMIT (the child must have been flushed) and removes the hook. Frees r. */
int vh_journal_commit(vh_repair *r, GError **err);
/* Restores the child from the journaled bytes now, records ROLLBACK, removes the hook. Frees r. */
int vh_journal_abort(vh_repair *r, GError **err);
/* Lets go of a repair without recording its end: it stays open in the journal, for
 * vh_journal_recover_locked to resolve. Frees r. */
void vh_journal_release(vh_repair *r);
const char *vh_repair_id(const vh_repair *r);
/* Moves the repair (and its hook) to another vh_file for the same file, e.g. after a disk
 * handle took over the vh_file it was begun on. */
void vh_repair_set_file(vh_repair *r, vh_file *f);

/* What a recovery did. */
typedef struct vh_recover_stats {
    int rolled_back;  /* the child held (part of) what the repair wrote: original bytes restored */
    int resolved;     /* the child held what the repair found: only recorded as rolled back */
    int busy;         /* the child is locked: a live repair (or undo) of another process */
    int left;         /* the child changed since (or is gone), or a record of the repair is
                       * damaged: left alone, reported in notes */
    GPtrArray *notes; /* char*: one line per record left alone (NULL: not collected) */
} vh_recover_stats;

void vh_recover_stats_clear(vh_recover_stats *st);

/*
 * Resolves every unfinished repair (with child_rel, only that child's) whose child it can
 * lock (F_OFD_SETLK: a held lock is a live repair, left alone). Under the lock the journal is
 * re-read (a record is resolved once) and the child compared with the record: when every byte
 * in its ranges and the size are what the repair found or what it wrote, the original bytes
 * are restored (ROLLBACK); otherwise the record is left and reported. Returns the number of
 * repairs whose bytes were restored; st (may be NULL) gets the details.
 */
int vh_journal_recover(vh_journal *j, const char *child_rel, vh_recover_stats *st, GError **err);
/* The same for one child that the caller holds open for writing under its OFD write lock. */
int vh_journal_recover_locked(vh_journal *j, vh_file *child, const char *child_rel,
                              vh_recover_stats *st, GError **err);
/* All repairs, oldest first (vh_repair_info*). */
int vh_journal_list(vh_journal *j, GPtrArray **out, GError **err);
/*
 * Undoes a committed repair under the child's OFD write lock: refuses (EBUSY) when the child
 * is locked or no longer holds what the repair wrote (it changed since), and ENOENT for an
 * unknown id.
 */
int vh_journal_undo(vh_journal *j, const char *id, GError **err);

#endif
