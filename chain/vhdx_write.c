// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * vhdx_write.c - changing a VHDX: the header update protocol (MS-VHDX 2.2.2.1), metadata
 * transactions through the log (2.3), payload writes with block and sector-bitmap allocation,
 * and the parent-link rewrite (doc/design.md "Reconnect rules").
 *
 * Contract: nothing is written before the first change of a session; that change first renews
 * FileWriteGuid in both header slots (and DataWriteGuid when virtual content changes; never for a
 * parent-link rewrite, doc/formats.md §2.8). Every metadata change (BAT, sector bitmaps, metadata
 * region) is one log entry: the entry is written and flushed while the header still says the log
 * is empty, then the headers name its LogGuid, then the updates are applied and flushed, then the
 * headers mark the log empty again. A crash at any write or flush therefore leaves either the old
 * state (no LogGuid, or a LogGuid whose entry replays nothing new) or the new one (the entry
 * replays), and never a LogGuid without a valid entry. Payload data is written in place before
 * the metadata that makes it visible.
 */
#include "vhdx_int.h"

/* ---------------- headers ---------------- */

int vhdx_write_headers(vh_disk *d, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    uint8_t buf[VHDX_HDR_SIZE];
    for (int k = 0; k < 2; k++) {
        int slot = !x->cur;
        vhdx_header h = x->h;
        h.seq = x->h.seq + 1;
        vhdx_header_write(&h, buf);
        int r = vh_file_write(&d->file, buf, sizeof buf, slot ? VHDX_HDR2_OFF : VHDX_HDR1_OFF,
                              "header", err);
        if (r == 0)
            r = vh_file_flush(&d->file, err);
        if (r < 0) {
            x->broken = true;
            return r;
        }
        x->h = h;
        x->slot[slot] = h;
        x->slot_ok[slot] = true;
        x->cur = slot;
    }
    x->durable_size = d->file.size;
    return 0;
}

int vhdx_begin_change(vh_disk *d, bool data_change, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    if (!d->writable)
        return vh_fail(err, EROFS, "%s: opened read-only", d->file.path);
    if (x->broken)
        return vh_fail(err, EIO,
                       "%s: an earlier update failed; reopen the file (the log "
                       "brings it to a consistent state)",
                       d->file.path);
    bool need = false;
    if (!x->fwg_done) {
        x->h.file_write = vh_id_random();
        need = true;
    }
    if (data_change && !x->dwg_done) {
        x->h.data_write = vh_id_random();
        need = true;
    }
    if (!need)
        return 0;
    int r = vhdx_write_headers(d, err);
    if (r < 0)
        return r;
    x->fwg_done = true;
    if (data_change) {
        x->dwg_done = true;
        d->id = x->h.data_write;
    }
    return 0;
}

/* ---------------- metadata transactions ---------------- */

typedef struct vhdx_tx {
    GHashTable *sectors; /* file offset (4 KiB aligned) -> 4 KiB of new content */
} vhdx_tx;

static void tx_init(vhdx_tx *tx)
{
    tx->sectors = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, g_free);
}

static void tx_clear(vhdx_tx *tx)
{
    g_hash_table_unref(tx->sectors);
}

/* Changes `len` bytes at `off` in the transaction (the rest of each sector as it is now). */
static int tx_patch(vh_disk *d, vhdx_tx *tx, uint64_t off, const void *src, size_t len,
                    GError **err)
{
    const uint8_t *p = src;
    while (len > 0) {
        uint64_t s = off / VHDX_SECTOR * VHDX_SECTOR;
        uint8_t *buf = g_hash_table_lookup(tx->sectors, &s);
        if (!buf) {
            buf = g_malloc0(VHDX_SECTOR);
            uint64_t have = s < d->file.size ? MIN(VHDX_SECTOR, d->file.size - s) : 0;
            int r = have ? vh_file_read(&d->file, buf, have, s, "metadata sector", err) : 0;
            if (r < 0) {
                g_free(buf);
                return r;
            }
            g_hash_table_insert(tx->sectors, g_memdup2(&s, sizeof s), buf);
        }
        size_t n = (size_t)MIN((uint64_t)len, s + VHDX_SECTOR - off);
        memcpy(buf + (off - s), p, n);
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

static int cmp_op(const void *a, const void *b)
{
    const vhdx_log_op *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

static int tx_write_entry(vh_disk *d, const vhdx_log_op *ops, size_t n, const vh_id *guid,
                          GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    vhdx_log_entry_params p = {
        .seq = x->log_seq++,
        .tail = 0, /* the log is empty: the entry starts it, at the log's start */
        .guid = *guid,
        .flushed = d->file.size / VH_MIB * VH_MIB,
        .last = vh_round_up(d->file.size, VH_MIB),
    };
    g_autofree uint8_t *entry = NULL;
    uint32_t len;
    int r = vhdx_log_entry_build(ops, n, &p, &entry, &len, err);
    if (r < 0)
        return vh_fail_prefix(err, "%s", d->file.path);
    if (len > x->h.log_length)
        return vh_fail(err, E2BIG,
                       "%s: log at offset %" G_GUINT64_FORMAT
                       ": an entry of %u bytes does not fit in the %u-byte log",
                       d->file.path, x->h.log_offset, len, x->h.log_length);
    r = vh_file_write(&d->file, entry, len, x->h.log_offset, "log entry", err);
    if (r == 0)
        r = vh_file_flush(&d->file, err);
    return r;
}

static int tx_commit_ops(vh_disk *d, const vhdx_log_op *ops, size_t n, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    int r = vhdx_begin_change(d, false, err);
    if (r < 0)
        return r;
    vh_id guid = vh_id_random();
    if ((r = tx_write_entry(d, ops, n, &guid, err)) < 0)
        return r;
    x->h.log_guid = guid;
    if ((r = vhdx_write_headers(d, err)) < 0)
        return r;
    for (size_t i = 0; i < n && r == 0; i++)
        r = vh_file_write(&d->file, ops[i].data, VHDX_SECTOR, ops[i].off,
                          "metadata (through the log)", err);
    if (r == 0)
        r = vh_file_flush(&d->file, err);
    if (r < 0)
        return r;
    x->h.log_guid = (vh_id){{0}};
    return vhdx_write_headers(d, err);
}

static int tx_commit(vh_disk *d, vhdx_tx *tx, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    g_autoptr(GArray) ops = g_array_new(FALSE, FALSE, sizeof(vhdx_log_op));
    GHashTableIter it;
    gpointer k, v;
    g_hash_table_iter_init(&it, tx->sectors);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        vhdx_log_op op = {.off = *(uint64_t *)k, .len = VHDX_SECTOR, .data = v};
        g_array_append_val(ops, op);
    }
    g_array_sort(ops, cmp_op);
    int r = tx_commit_ops(d, (vhdx_log_op *)ops->data, ops->len, err);
    if (r < 0)
        x->broken = true;
    return r;
}

/* ---------------- payload writes ---------------- */

static int tx_set_bat(vh_disk *d, vhdx_tx *tx, uint64_t idx, uint64_t entry, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    uint8_t b[VHDX_BAT_ENTRY_SIZE];
    vh_put_le64(b, entry);
    return tx_patch(d, tx, x->bat_off + VHDX_BAT_ENTRY_SIZE * idx, b, sizeof b, err);
}

/* Sectors of block blk that lie inside the virtual disk. */
static uint64_t block_sectors(vhdx_priv *x, uint64_t blk)
{
    uint64_t bytes = MIN((uint64_t)x->p.block_size, x->p.disk_size - blk * x->p.block_size);
    return bytes / x->p.logical_ss;
}

/*
 * Sets the bitmap bits of [in, in+n) of block blk in the transaction, writing them to the bitmap
 * block at sb_off. With `old` (the block's current slice) only the changed bytes are logged;
 * without, the block's whole slice is written as zeros plus the new bits. Returns the new slice;
 * *full tells whether every sector of the block is now present.
 */
static uint8_t *tx_set_bits(vh_disk *d, vhdx_tx *tx, uint64_t blk, uint64_t sb_off,
                            const uint8_t *old, uint64_t in, uint64_t n, bool *full, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    uint32_t ss = x->p.logical_ss;
    uint64_t bits = x->p.block_size / ss, bytes = bits / 8;
    uint8_t *bm = old ? g_memdup2(old, bytes) : g_malloc0(bytes);
    for (uint64_t s = in / ss; s < (in + n) / ss; s++)
        vhdx_bit_set(bm, s);
    bool value;
    uint64_t want = block_sectors(x, blk);
    *full = vhdx_bit_run(bm, 0, want, &value) == want && value;
    uint64_t first = old ? in / ss / 8 : 0, last = old ? ((in + n) / ss + 7) / 8 : bytes;
    uint64_t slice_off = sb_off + (blk % x->chunk_ratio) * bytes;
    if (tx_patch(d, tx, slice_off + first, bm + first, last - first, err) < 0) {
        g_free(bm);
        return NULL;
    }
    return bm;
}

/* A write into a PARTIALLY_PRESENT block: data in place, then its bits (and state) logged. */
static int write_partial(vh_disk *d, const uint8_t *buf, uint64_t blk, uint64_t in, uint64_t n,
                         GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    uint64_t idx = vhdx_bat_payload_index(blk, x->chunk_ratio);
    uint64_t off = VHDX_BAT_OFFSET(x->bat[idx]);
    int r = vh_file_write(&d->file, buf, n, off + in, "payload block", err);
    if (r < 0)
        return r;
    const uint8_t *old = vhdx_block_bitmap(d, blk, err);
    if (!old)
        return -vh_error_errno(*err);
    uint64_t sb_off =
        VHDX_BAT_OFFSET(x->bat[vhdx_bat_sb_index(blk / x->chunk_ratio, x->chunk_ratio)]);
    vhdx_tx tx;
    tx_init(&tx);
    bool full;
    uint8_t *bm = tx_set_bits(d, &tx, blk, sb_off, old, in, n, &full, err);
    uint64_t entry = vhdx_bat_entry(VHDX_PB_FULLY_PRESENT, off);
    r = bm ? 0 : -vh_error_errno(*err);
    if (r == 0 && full)
        r = tx_set_bat(d, &tx, idx, entry, err);
    if (r == 0 && g_hash_table_size(tx.sectors) > 0)
        r = tx_commit(d, &tx, err);
    tx_clear(&tx);
    if (r < 0) {
        g_free(bm);
        return r;
    }
    vhdx_cache_bitmap(d, blk, bm);
    if (full)
        x->bat[idx] = entry;
    return 0;
}

/* A write into a block that has no space in the file: allocate it at the end (1 MiB aligned). */
static int write_new_block(vh_disk *d, const uint8_t *buf, uint64_t blk, uint64_t in, uint64_t n,
                           GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    uint64_t bs = x->p.block_size;
    uint64_t idx = vhdx_bat_payload_index(blk, x->chunk_ratio);
    uint64_t sb_idx = vhdx_bat_sb_index(blk / x->chunk_ratio, x->chunk_ratio);
    unsigned st = VHDX_BAT_STATE(x->bat[idx]);
    /* Only a NOT_PRESENT block of a differencing disk keeps reading its other sectors from the
     * parent; every other state reads as zeros, which the newly allocated space holds. */
    bool partial = x->differencing && st == VHDX_PB_NOT_PRESENT && n < bs;
    bool new_sb = partial && VHDX_BAT_STATE(x->bat[sb_idx]) != VHDX_SB_PRESENT;
    uint64_t off = vh_round_up(d->file.size, VH_MIB);
    /* (a disk without a parent may have no SB entry for its last chunk: only look when used) */
    uint64_t sb_off = !partial ? 0 : new_sb ? off + bs : VHDX_BAT_OFFSET(x->bat[sb_idx]);
    int r = vh_file_truncate(&d->file, off + bs + (new_sb ? VHDX_SB_BLOCK : 0), err);
    if (r == 0)
        r = vh_file_write(&d->file, buf, n, off + in, "payload block", err);
    if (r < 0)
        return r;
    vhdx_tx tx;
    tx_init(&tx);
    uint8_t *bm = NULL;
    bool full = !partial;
    if (partial) {
        /* A NOT_PRESENT block's bits are meaningless: its whole slice is rewritten. */
        if (!(bm = tx_set_bits(d, &tx, blk, sb_off, NULL, in, n, &full, err)))
            r = -vh_error_errno(*err);
    }
    uint64_t entry = vhdx_bat_entry(full ? VHDX_PB_FULLY_PRESENT : VHDX_PB_PARTIALLY_PRESENT, off);
    uint64_t sb_entry = vhdx_bat_entry(VHDX_SB_PRESENT, sb_off);
    if (r == 0 && new_sb)
        r = tx_set_bat(d, &tx, sb_idx, sb_entry, err);
    if (r == 0)
        r = tx_set_bat(d, &tx, idx, entry, err);
    if (r == 0)
        r = tx_commit(d, &tx, err);
    tx_clear(&tx);
    if (r < 0) {
        g_free(bm);
        return r;
    }
    x->bat[idx] = entry;
    if (new_sb)
        x->bat[sb_idx] = sb_entry;
    if (bm)
        vhdx_cache_bitmap(d, blk, bm);
    return 0;
}

static int write_in_block(vh_disk *d, const uint8_t *buf, uint64_t blk, uint64_t in, uint64_t n,
                          GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    int r = vhdx_begin_change(d, true, err);
    if (r < 0)
        return r;
    uint64_t e = x->bat[vhdx_bat_payload_index(blk, x->chunk_ratio)];
    switch (VHDX_BAT_STATE(e)) {
    case VHDX_PB_FULLY_PRESENT:
        return vh_file_write(&d->file, buf, n, VHDX_BAT_OFFSET(e) + in, "payload block", err);
    case VHDX_PB_PARTIALLY_PRESENT:
        return write_partial(d, buf, blk, in, n, err);
    default:
        return write_new_block(d, buf, blk, in, n, err);
    }
}

int vhdx_write_sectors(vh_disk *d, const void *buf, uint64_t voff, uint64_t len, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    if (!d->writable)
        return vh_fail(err, EROFS, "%s: opened read-only", d->file.path);
    if (!x->bat)
        return vh_fail(err, EINVAL, "%s: opened for identity only (no block table)", d->file.path);
    if (voff % x->p.logical_ss || len % x->p.logical_ss || !vh_range_ok(voff, len, x->p.disk_size))
        return vh_fail(err, EINVAL,
                       "%s: write of %" G_GUINT64_FORMAT "+%" G_GUINT64_FORMAT
                       " is not whole sectors inside the disk",
                       d->file.path, voff, len);
    const uint8_t *p = buf;
    while (len > 0) {
        uint64_t blk = voff / x->p.block_size, in = voff % x->p.block_size;
        uint64_t n = MIN(len, x->p.block_size - in);
        int r = write_in_block(d, p, blk, in, n, err);
        if (r < 0)
            return r;
        p += n;
        voff += n;
        len -= n;
    }
    return 0;
}

int vhdx_flush(vh_disk *d, GError **err)
{
    int r = vh_file_flush(&d->file, err);
    if (r == 0)
        vhdx_p(d)->durable_size = d->file.size;
    return r;
}

/* ---------------- parent link ---------------- */

/* The new locator (doc/design.md "Reconnect rules"): Hyper-V's key order, linkage2 and unknown
 * keys kept as found, stale absolute/volume paths dropped. */
static void build_new_locator(const vhdx_locator *old, const vh_link_update *u, vhdx_locator *l)
{
    vhdx_locator_init(l);
    l->type = old->type;
    char id[VH_ID_STRLEN + 1];
    vh_id_format(&u->parent_id, id);
    g_autofree char *linkage = g_strdup_printf("{%s}", id);
    vhdx_locator_add(l, "parent_linkage", linkage);
    if (u->absolute)
        vhdx_locator_add(l, "absolute_win32_path", u->absolute);
    vhdx_locator_add(l, "relative_path", u->relative);
    if (u->volume)
        vhdx_locator_add(l, "volume_path", u->volume);
    const char *l2 = vhdx_locator_get(old, "parent_linkage2");
    if (l2)
        vhdx_locator_add(l, "parent_linkage2", l2);
    static const char *const ours[] = {"parent_linkage", "parent_linkage2", "relative_path",
                                       "volume_path", "absolute_win32_path"};
    for (guint i = 0; i < old->kv->len; i++) {
        const vhdx_kv *kv = old->kv->pdata[i];
        bool known = false;
        for (size_t k = 0; k < G_N_ELEMENTS(ours); k++)
            known = known || strcmp(kv->key, ours[k]) == 0;
        if (!known)
            vhdx_locator_add(l, kv->key, kv->value);
    }
}

static int cmp_u32pair(const void *a, const void *b)
{
    const uint32_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

/*
 * Where the new locator item goes: its old place when it fits, else the lowest free range of the
 * metadata region (offset >= 64 KiB, inside the region, overlapping no other item; doc/formats.md
 * §2.8). The old item's own space counts as free: the whole change is one log entry.
 */
static int place_locator(vh_disk *d, uint32_t len, uint32_t *offset, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    const vhdx_md_entry *old = &x->md->e[x->loc_index];
    if (len <= old->length) {
        *offset = old->offset;
        return 0;
    }
    g_autofree uint32_t *used = g_new(uint32_t, 2 * (x->md->count + 1));
    size_t n = 0;
    for (int i = 0; i < x->md->count; i++)
        if (i != x->loc_index && x->md->e[i].length > 0) {
            used[2 * n] = x->md->e[i].offset;
            used[2 * n + 1] = x->md->e[i].length;
            n++;
        }
    qsort(used, n, 2 * sizeof(uint32_t), cmp_u32pair);
    uint64_t pos = VHDX_MD_TABLE_SIZE;
    for (size_t i = 0; i <= n; i++) {
        uint64_t next = i < n ? used[2 * i] : x->md_len;
        if (next >= pos && next - pos >= len) {
            *offset = (uint32_t)pos;
            return 0;
        }
        if (i < n)
            pos = MAX(pos, (uint64_t)used[2 * i] + used[2 * i + 1]);
    }
    return vh_fail(err, ENOSPC,
                   "%s: metadata region at offset %" G_GUINT64_FORMAT
                   ": no free range of %u bytes for the parent locator",
                   d->file.path, x->md_off, len);
}

int vhdx_set_parent_link(vh_disk *d, const vh_link_update *u, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    if (!x->differencing || x->loc_index < 0)
        return vh_fail(err, EINVAL, "%s: not a differencing disk", d->file.path);
    if (!d->writable)
        return vh_fail(err, EROFS, "%s: opened read-only", d->file.path);
    if (!u->relative || !*u->relative)
        return vh_fail(err, EINVAL, "%s: the new parent link has no relative path", d->file.path);
    vhdx_locator nl;
    build_new_locator(&x->loc, u, &nl);
    g_autofree uint8_t *item = NULL;
    uint32_t len = 0, offset = 0;
    int r = vhdx_locator_build(&nl, &item, &len, err);
    vhdx_locator_clear(&nl);
    if (r < 0)
        return vh_fail_prefix(err, "%s", d->file.path);
    if ((r = place_locator(d, len, &offset, err)) < 0)
        return r;
    vhdx_tx tx;
    tx_init(&tx);
    /* the locator's entry: offset and length, side by side */
    uint8_t ent[VHDX_MDE_FLAGS_OFF - VHDX_MDE_OFFSET_OFF];
    vh_put_le32(ent, offset);
    vh_put_le32(ent + (VHDX_MDE_LENGTH_OFF - VHDX_MDE_OFFSET_OFF), len);
    uint64_t entry = VHDX_MD_HDR_SIZE + VHDX_MD_ENTRY_SIZE * (uint64_t)x->loc_index;
    r = tx_patch(d, &tx, x->md_off + offset, item, len, err);
    if (r == 0)
        r = tx_patch(d, &tx, x->md_off + entry + VHDX_MDE_OFFSET_OFF, ent, sizeof ent, err);
    if (r == 0)
        r = tx_commit(d, &tx, err);
    tx_clear(&tx);
    if (r < 0)
        return r;
    vhdx_md_entry *e = &x->md->e[x->loc_index];
    e->offset = offset;
    e->length = len;
    vhdx_locator_clear(&x->loc);
    if ((r = vhdx_locator_parse(item, len, x->md_off + offset, &x->loc, err)) < 0)
        return vh_fail_prefix(err, "%s", d->file.path);
    vhdx_link_from_locator(d);
    return 0;
}
