/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * vhdx_int.h - state shared by the VHDX modules: vhdx.c (open, parse, map, read, info),
 * vhdx_write.c (header update protocol, logged metadata transactions, payload writes, parent
 * link rewrite) and vhdx_create.c. Not a public interface.
 */
#ifndef VH_VHDX_INT_H
#define VH_VHDX_INT_H

#include "vhdx.h"
#include "vhdx_format.h"
#include "tcache.h"
#include "vhdx_log.h"

typedef struct vhdx_priv {
    char *creator;
    vhdx_header slot[2]; /* as read (slot_ok says which parsed) */
    bool slot_ok[2];
    int cur;       /* index of the current header slot */
    vhdx_header h; /* the current header (kept up to date by writes) */
    vhdx_region_table *rt;
    int rt_used; /* 1 or 2: which copy of the region table is used */
    bool rt_ok[2];
    uint64_t bat_off;
    uint32_t bat_len;
    uint64_t md_off;
    uint32_t md_len;
    vhdx_md_table *md;
    vhdx_params p;
    bool differencing;
    int loc_index; /* metadata entry of the parent locator, -1 if none */
    vhdx_locator loc;
    uint32_t chunk_ratio;
    uint64_t payload_blocks;
    uint64_t bat_count;
    uint64_t *bat;       /* the whole BAT; NULL after a probe open or when paged */
    vh_table *bat_table; /* a large BAT of a read-only open, by pages (vhdx.c) */
    bool sb_warned;      /* the warning about a sector bitmap without a parent was given */
    GHashTable *bitmaps; /* payload block -> its slice of the sector bitmap (cache) */
    /* log */
    const char *log_state; /* "empty", "replayed", "replayed in memory" */
    bool overlay;          /* read-only open with a replayed log: reads go through it */
    vhdx_replay replay;
    uint64_t replayed_seq;
    uint32_t replayed_entries;
    uint64_t log_seq; /* next sequence number the writer uses */
    /* session */
    bool fwg_done;         /* FileWriteGuid renewed in this session */
    bool dwg_done;         /* DataWriteGuid renewed in this session */
    bool broken;           /* a failed metadata transaction: refuse further writes */
    uint64_t durable_size; /* file size known to be on stable storage */
} vhdx_priv;

static inline vhdx_priv *vhdx_p(vh_disk *d)
{
    return d->priv;
}

/* Reads file bytes, through the replayed-log overlay on a read-only open. */
int vhdx_read(vh_disk *d, void *buf, size_t len, uint64_t off, const char *what, GError **err);

/* The payload block's slice of its chunk's sector bitmap (cached in x->bitmaps). */
const uint8_t *vhdx_block_bitmap(vh_disk *d, uint64_t blk, GError **err);
/* Caches a block's bitmap slice (taking bm), bounded in bytes per disk. */
void vhdx_cache_bitmap(vh_disk *d, uint64_t blk, uint8_t *bm);

/* --- vhdx_write.c --- */
int vhdx_write_sectors(vh_disk *d, const void *buf, uint64_t voff, uint64_t len, GError **err);
int vhdx_set_parent_link(vh_disk *d, const vh_link_update *u, GError **err);
int vhdx_flush(vh_disk *d, GError **err);
/* Header update protocol: renews FileWriteGuid on the session's first change (and
 * DataWriteGuid when data_change is true for the first time). */
int vhdx_begin_change(vh_disk *d, bool data_change, GError **err);
/* Writes the in-memory header over both slots (non-current first), flushing after each. */
int vhdx_write_headers(vh_disk *d, GError **err);
/* Rebuilds d->link from the parsed locator. */
void vhdx_link_from_locator(vh_disk *d);

#endif
