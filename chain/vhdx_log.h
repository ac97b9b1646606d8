/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * vhdx_log.h - the VHDX metadata log (MS-VHDX 2.3; doc/formats.md §2.7): finding the active
 * sequence in a log region, replaying it into the file or into an in-memory overlay, and
 * building log entries for the writer.
 *
 * Contract: vhdx_log_find works on a copy of the whole log region in memory and never trusts
 * it: every entry is checked (signature, lengths, descriptor and data-sector sequence numbers,
 * CRC-32C over the whole entry, the LogGuid of the header) before it is used, scans wrap around
 * the circular buffer, and the work is bounded so that a hostile log cannot hang the caller. A
 * log that has a LogGuid but no valid complete sequence, or a file shorter than the head's
 * FlushedFileOffset, is refused with an error naming the log's file offset.
 */
#ifndef VH_VHDX_LOG_H
#define VH_VHDX_LOG_H

#include "io.h"
#include "util.h"

#define VHDX_LOG_SECTOR 4096
#define VHDX_LOG_MAX (256 * VH_MIB) /* larger logs are refused when they need a replay */

/* One update of the file: `len` bytes at `off` (4 KiB aligned); data NULL means zeros. */
typedef struct vhdx_log_op {
    uint64_t off;
    uint64_t len;
    uint8_t *data; /* 4096 bytes, owned, or NULL */
} vhdx_log_op;

/* The active sequence, ready to be replayed. */
typedef struct vhdx_replay {
    GArray *ops;       /* of vhdx_log_op, in replay order */
    uint32_t tail_off; /* log offset of the tail entry */
    uint32_t head_off; /* log offset of the head entry */
    uint32_t entries;  /* entries replayed (tail..head) */
    uint64_t head_seq; /* sequence number of the head entry */
    uint64_t flushed;  /* head's FlushedFileOffset */
    uint64_t last;     /* head's LastFileOffset */
    uint64_t end;      /* file size after replay: max(file size, last, end of every op) */
} vhdx_replay;

void vhdx_replay_init(vhdx_replay *r);
void vhdx_replay_clear(vhdx_replay *r);

/*
 * Finds the active sequence (MS-VHDX 2.3.3) in `log` (log_len bytes, a multiple of 4 KiB, read
 * from file offset log_base) for LogGuid `guid`, and fills `out`. file_size is the current size
 * of the file (truncation check). Errors: EIO for a corrupt or truncated log, E2BIG for a log
 * too large or too complex to scan.
 */
int vhdx_log_find(const uint8_t *log, uint32_t log_len, uint64_t log_base, const vh_id *guid,
                  uint64_t file_size, vhdx_replay *out, GError **err);

/* Applies the replay to a writable file: every op in order, then extends it to r->end; flushes. */
int vhdx_replay_apply(vh_file *f, const vhdx_replay *r, GError **err);

/* Overlays the replay onto `buf`, which holds the file's bytes [off, off+len) (zeros past EOF). */
void vhdx_replay_overlay(const vhdx_replay *r, uint8_t *buf, size_t len, uint64_t off);

/* What one log entry is made of (for the writer and for tests). */
typedef struct vhdx_log_entry_params {
    uint64_t seq;
    uint32_t tail;    /* log offset of the sequence's first entry */
    vh_id guid;       /* LogGuid */
    uint64_t flushed; /* FlushedFileOffset */
    uint64_t last;    /* LastFileOffset */
} vhdx_log_entry_params;

/*
 * Builds one complete entry (descriptor sectors, then data sectors) for the ops (data ops are
 * exactly 4 KiB; zero ops a multiple of 4 KiB). Returns the entry in a new buffer.
 */
int vhdx_log_entry_build(const vhdx_log_op *ops, size_t n, const vhdx_log_entry_params *p,
                         uint8_t **out, uint32_t *out_len, GError **err);

#endif
