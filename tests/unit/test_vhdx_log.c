// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * test_vhdx_log.c - the VHDX log: active-sequence search on hand-built logs (one entry, several
 * sequences, wrap-around, torn entries, bad checksums, foreign LogGuids, truncated files), entry
 * building, replay into the file and in memory, and crash safety of every logged change (block
 * allocation, sector-bitmap allocation, parent-link rewrite) by stopping or tearing the writer at
 * each write and flush.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "disk.h"
#include "tmpfix.h"
#include "vhdx_format.h"
#include "vhdx_log.h"

#define LOG_LEN (64 * 4096)
#define S 4096

static const vh_id GUID_A = {{0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x47, 0x88, 0x99, 0xaa, 0xbb,
                              0xcc, 0xdd, 0xee, 0xff, 0x01}};
static const vh_id GUID_B = {{0xa1, 0x22, 0x33, 0x44, 0x55, 0x66, 0x47, 0x88, 0x99, 0xaa, 0xbb,
                              0xcc, 0xdd, 0xee, 0xff, 0x02}};

/* A 4 KiB update whose bytes all differ (so leading/trailing byte handling shows). */
static uint8_t *pattern(uint8_t seed)
{
    uint8_t *p = g_malloc(S);
    for (int i = 0; i < S; i++)
        p[i] = (uint8_t)(seed * 31 + i * 7 + (i >> 8));
    return p;
}

/* Builds an entry and stores it in the log at `at` (wrapping around the end). */
static uint32_t put_entry(uint8_t *log, uint32_t at, const vhdx_log_op *ops, size_t n, uint64_t seq,
                          uint32_t tail, const vh_id *guid, uint64_t flushed)
{
    vhdx_log_entry_params p = {
        .seq = seq, .tail = tail, .guid = *guid, .flushed = flushed, .last = flushed};
    uint8_t *e = NULL;
    uint32_t len = 0;
    assert_int_equal(vhdx_log_entry_build(ops, n, &p, &e, &len, NULL), 0);
    for (uint32_t i = 0; i < len; i += S)
        memcpy(log + (at + i) % LOG_LEN, e + i, S);
    g_free(e);
    return len;
}

/* Two one-sector entries of log session GUID_A at the start of the log, sequences seq and
 * seq + 1, both writing sector 2 MiB (a, then b); returns where the second starts. */
static uint32_t put_two_entries(uint8_t *log, uint8_t *a, uint8_t *b, uint64_t seq)
{
    vhdx_log_op oa = {2 * VH_MIB, S, a}, ob = {2 * VH_MIB, S, b};
    uint32_t l1 = put_entry(log, 0, &oa, 1, seq, 0, &GUID_A, VH_MIB);
    put_entry(log, l1, &ob, 1, seq + 1, 0, &GUID_A, VH_MIB);
    return l1;
}

/* The usual log of these tests: LOG_LEN bytes at 1 MiB, session GUID_A, a 1 MiB file. */
static int find_log(const uint8_t *log, vhdx_replay *r, GError **err)
{
    return vhdx_log_find(log, LOG_LEN, VH_MIB, &GUID_A, VH_MIB, r, err);
}

static void expect_op(const vhdx_replay *r, guint i, uint64_t off, uint64_t len,
                      const uint8_t *data)
{
    assert_true(i < r->ops->len);
    const vhdx_log_op *op = &g_array_index(r->ops, vhdx_log_op, i);
    assert_int_equal(op->off, off);
    assert_int_equal(op->len, len);
    if (data)
        assert_memory_equal(op->data, data, S);
    else
        assert_null(op->data);
}

static void one_entry_data_and_zero(void **state)
{
    g_autofree uint8_t *log = g_malloc0(LOG_LEN);
    g_autofree uint8_t *a = pattern(1);
    vhdx_log_op ops[] = {{3 * VH_MIB, S, a}, {3 * VH_MIB + 8 * S, 3 * S, NULL}};
    put_entry(log, 0, ops, 2, 7, 0, &GUID_A, 4 * VH_MIB);
    vhdx_replay r;
    assert_int_equal(vhdx_log_find(log, LOG_LEN, VH_MIB, &GUID_A, 4 * VH_MIB, &r, NULL), 0);
    assert_int_equal(r.entries, 1);
    assert_int_equal(r.head_seq, 7);
    assert_int_equal(r.ops->len, 2);
    expect_op(&r, 0, 3 * VH_MIB, S, a); /* leading 8 and trailing 4 bytes restored */
    expect_op(&r, 1, 3 * VH_MIB + 8 * S, 3 * S, NULL);
    assert_int_equal(r.end, 4 * VH_MIB);
    /* the overlay applies in order */
    g_autofree uint8_t *buf = g_malloc(12 * S);
    memset(buf, 0xEE, 12 * S);
    vhdx_replay_overlay(&r, buf, 12 * S, 3 * VH_MIB - S);
    assert_memory_equal(buf + S, a, S);
    assert_int_equal(buf[0], 0xEE);
    assert_int_equal(buf[9 * S], 0);
    assert_int_equal(buf[12 * S - 1], 0);
    vhdx_replay_clear(&r);
}

static void many_descriptors_span_sectors(void **state)
{
    /* 130 data descriptors need two descriptor sectors (126 + 128 per sector). */
    g_autofree uint8_t *log = g_malloc0(LOG_LEN * 4);
    vhdx_log_op ops[130];
    for (int i = 0; i < 130; i++)
        ops[i] = (vhdx_log_op){4 * VH_MIB + (uint64_t)i * S, S, pattern((uint8_t)i)};
    vhdx_log_entry_params p = {.seq = 1, .guid = GUID_A, .flushed = VH_MIB, .last = VH_MIB};
    uint8_t *e = NULL;
    uint32_t len = 0;
    assert_int_equal(vhdx_log_entry_build(ops, 130, &p, &e, &len, NULL), 0);
    assert_int_equal(len, (2 + 130) * S);
    memcpy(log, e, len);
    g_free(e);
    vhdx_replay r;
    assert_int_equal(vhdx_log_find(log, LOG_LEN * 4, VH_MIB, &GUID_A, VH_MIB, &r, NULL), 0);
    assert_int_equal(r.ops->len, 130);
    for (int i = 0; i < 130; i++) {
        expect_op(&r, (guint)i, ops[i].off, S, ops[i].data);
        g_free(ops[i].data);
    }
    vhdx_replay_clear(&r);
}

static void newest_sequence_wins(void **state)
{
    g_autofree uint8_t *log = g_malloc0(LOG_LEN);
    g_autofree uint8_t *a = pattern(1), *b = pattern(2), *c = pattern(3);
    vhdx_log_op oa = {2 * VH_MIB, S, a}, ob = {2 * VH_MIB, S, b}, oc = {2 * VH_MIB + S, S, c};
    /* an old sequence at 0 (seq 10), then a newer one of two entries at 16 KiB (seq 20, 21) whose
     * head's tail points at its first entry */
    put_entry(log, 0, &oa, 1, 10, 0, &GUID_A, VH_MIB);
    uint32_t l1 = put_entry(log, 4 * S, &ob, 1, 20, 4 * S, &GUID_A, VH_MIB);
    put_entry(log, 4 * S + l1, &oc, 1, 21, 4 * S, &GUID_A, VH_MIB);
    vhdx_replay r;
    assert_int_equal(find_log(log, &r, NULL), 0);
    assert_int_equal(r.head_seq, 21);
    assert_int_equal(r.entries, 2);
    assert_int_equal(r.tail_off, 4 * S);
    expect_op(&r, 0, 2 * VH_MIB, S, b);
    expect_op(&r, 1, 2 * VH_MIB + S, S, c);
    vhdx_replay_clear(&r);
}

static void tail_inside_sequence_replays_from_tail(void **state)
{
    /* Three consecutive entries, the head's tail names the second: only 2 and 3 replay. */
    g_autofree uint8_t *log = g_malloc0(LOG_LEN);
    g_autofree uint8_t *a = pattern(1), *b = pattern(2), *c = pattern(3);
    vhdx_log_op o[3] = {{2 * VH_MIB, S, a}, {2 * VH_MIB + S, S, b}, {2 * VH_MIB + 2 * S, S, c}};
    uint32_t l1 = put_entry(log, 0, &o[0], 1, 5, 0, &GUID_A, VH_MIB);
    uint32_t l2 = put_entry(log, l1, &o[1], 1, 6, 0, &GUID_A, VH_MIB);
    put_entry(log, l1 + l2, &o[2], 1, 7, l1, &GUID_A, VH_MIB);
    vhdx_replay r;
    assert_int_equal(find_log(log, &r, NULL), 0);
    assert_int_equal(r.head_seq, 7);
    assert_int_equal(r.entries, 2);
    expect_op(&r, 0, 2 * VH_MIB + S, S, b);
    expect_op(&r, 1, 2 * VH_MIB + 2 * S, S, c);
    vhdx_replay_clear(&r);
}

static void wrap_around(void **state)
{
    /* The tail entry starts 2 sectors before the end and spans the wrap (desc + 2 data sectors);
     * the head follows at log offset 4 KiB. */
    g_autofree uint8_t *log = g_malloc0(LOG_LEN);
    g_autofree uint8_t *a = pattern(1), *b = pattern(2), *c = pattern(3);
    vhdx_log_op o1[2] = {{5 * VH_MIB, S, a}, {5 * VH_MIB + S, S, b}};
    vhdx_log_op o2 = {5 * VH_MIB, S, c};
    uint32_t tail = LOG_LEN - 2 * S;
    uint32_t l1 = put_entry(log, tail, o1, 2, 100, tail, &GUID_A, VH_MIB);
    assert_int_equal(l1, 3 * S);
    put_entry(log, S, &o2, 1, 101, tail, &GUID_A, VH_MIB);
    vhdx_replay r;
    assert_int_equal(find_log(log, &r, NULL), 0);
    assert_int_equal(r.head_seq, 101);
    assert_int_equal(r.entries, 2);
    assert_int_equal(r.tail_off, tail);
    assert_int_equal(r.head_off, S);
    expect_op(&r, 0, 5 * VH_MIB, S, a);
    expect_op(&r, 1, 5 * VH_MIB + S, S, b);
    expect_op(&r, 2, 5 * VH_MIB, S, c);
    vhdx_replay_clear(&r);
}

static void torn_head_falls_back(void **state)
{
    g_autofree uint8_t *log = g_malloc0(LOG_LEN);
    g_autofree uint8_t *a = pattern(1), *b = pattern(2);
    uint32_t l1 = put_two_entries(log, a, b, 30);
    /* tear the second entry's data sector: its sequence low half is lost */
    memset(log + l1 + S + 4092, 0, 4);
    vhdx_replay r;
    assert_int_equal(find_log(log, &r, NULL), 0);
    assert_int_equal(r.head_seq, 30);
    expect_op(&r, 0, 2 * VH_MIB, S, a);
    vhdx_replay_clear(&r);
}

static void bad_checksum_is_not_an_entry(void **state)
{
    g_autofree uint8_t *log = g_malloc0(LOG_LEN);
    g_autofree uint8_t *a = pattern(1), *b = pattern(2);
    uint32_t l1 = put_two_entries(log, a, b, 40);
    log[l1 + S + 100] ^= 1; /* payload byte of entry 2: only the CRC can tell */
    vhdx_replay r;
    assert_int_equal(find_log(log, &r, NULL), 0);
    assert_int_equal(r.head_seq, 40);
    vhdx_replay_clear(&r);
    /* corrupt the first one too: nothing valid is left, the file is refused */
    log[S + 100] ^= 1;
    g_autoptr(GError) err = NULL;
    assert_int_equal(find_log(log, &r, &err), -EIO);
    assert_non_null(strstr(err->message, "log at offset 1048576"));
    assert_non_null(strstr(err->message, "checksum"));
}

static void foreign_guid_is_ignored(void **state)
{
    g_autofree uint8_t *log = g_malloc0(LOG_LEN);
    g_autofree uint8_t *a = pattern(1), *b = pattern(2);
    vhdx_log_op oa = {2 * VH_MIB, S, a}, ob = {2 * VH_MIB, S, b};
    put_entry(log, 0, &oa, 1, 50, 0, &GUID_A, VH_MIB);
    /* a newer, complete entry of another log session (a stale GUID) */
    put_entry(log, 8 * S, &ob, 1, 99, 8 * S, &GUID_B, VH_MIB);
    vhdx_replay r;
    assert_int_equal(find_log(log, &r, NULL), 0);
    assert_int_equal(r.head_seq, 50);
    vhdx_replay_clear(&r);
    g_autoptr(GError) err = NULL;
    memset(log, 0, S); /* only the foreign entry is left */
    assert_int_equal(find_log(log, &r, &err), -EIO);
}

static void broken_sequences_are_rejected(void **state)
{
    g_autofree uint8_t *log = g_malloc0(LOG_LEN);
    g_autofree uint8_t *a = pattern(1);
    vhdx_log_op oa = {2 * VH_MIB, S, a};
    vhdx_replay r;
    /* a head whose tail is not inside its sequence */
    put_entry(log, 0, &oa, 1, 60, 16 * S, &GUID_A, VH_MIB);
    assert_int_equal(find_log(log, &r, NULL), -EIO);
    /* a descriptor aimed at the header area */
    memset(log, 0, LOG_LEN);
    vhdx_log_op bad = {64 * VH_KIB, S, a};
    put_entry(log, 0, &bad, 1, 61, 0, &GUID_A, VH_MIB);
    assert_int_equal(find_log(log, &r, NULL), -EIO);
    /* an entry length past the log */
    memset(log, 0, LOG_LEN);
    put_entry(log, 0, &oa, 1, 62, 0, &GUID_A, VH_MIB);
    vh_put_le32(log + 8, LOG_LEN * 2);
    assert_int_equal(find_log(log, &r, NULL), -EIO);
    /* a log length that is not a 4 KiB multiple */
    assert_int_equal(vhdx_log_find(log, LOG_LEN - 1, VH_MIB, &GUID_A, VH_MIB, &r, NULL), -E2BIG);
    /* sequences that are not consecutive are two sequences: the newer alone is invalid */
    memset(log, 0, LOG_LEN);
    uint32_t l1 = put_entry(log, 0, &oa, 1, 70, 0, &GUID_A, VH_MIB);
    put_entry(log, l1, &oa, 1, 72, 0, &GUID_A, VH_MIB);
    assert_int_equal(find_log(log, &r, NULL), 0);
    assert_int_equal(r.head_seq, 70);
    vhdx_replay_clear(&r);
}

static void truncated_file_is_refused(void **state)
{
    g_autofree uint8_t *log = g_malloc0(LOG_LEN);
    g_autofree uint8_t *a = pattern(1);
    vhdx_log_op oa = {2 * VH_MIB, S, a};
    put_entry(log, 0, &oa, 1, 80, 0, &GUID_A, 8 * VH_MIB);
    vhdx_replay r;
    g_autoptr(GError) err = NULL;
    assert_int_equal(vhdx_log_find(log, LOG_LEN, VH_MIB, &GUID_A, 4 * VH_MIB, &r, &err), -EIO);
    assert_non_null(strstr(err->message, "truncated"));
}

static void full_log_sequence_terminates(void **state)
{
    /* One sequence filling the whole log exactly: the scan must stop (no endless loop). */
    g_autofree uint8_t *log = g_malloc0(LOG_LEN);
    uint32_t at = 0;
    for (uint64_t seq = 1; at < LOG_LEN; seq++)
        at += put_entry(log, at, NULL, 0, seq, 0, &GUID_A, VH_MIB);
    vhdx_replay r;
    assert_int_equal(find_log(log, &r, NULL), 0);
    assert_int_equal(r.entries, LOG_LEN / S);
    assert_int_equal(r.ops->len, 0);
    vhdx_replay_clear(&r);
}

static void builder_rejects_bad_updates(void **state)
{
    vhdx_log_entry_params p = {.seq = 1, .guid = GUID_A};
    uint8_t *e = NULL;
    uint32_t len;
    g_autofree uint8_t *a = pattern(1);
    vhdx_log_op unaligned = {2 * VH_MIB + 512, S, a};
    assert_int_equal(vhdx_log_entry_build(&unaligned, 1, &p, &e, &len, NULL), -EINVAL);
    vhdx_log_op zero_len = {2 * VH_MIB, 0, NULL};
    assert_int_equal(vhdx_log_entry_build(&zero_len, 1, &p, &e, &len, NULL), -EINVAL);
}

/* ---------------- files: replay on open ---------------- */

static void put_bytes(const char *path, GBytes *b)
{
    gsize len;
    const char *data = g_bytes_get_data(b, &len);
    assert_true(g_file_set_contents(path, data, (gssize)len, NULL));
}

/* Writes a log entry into a closed VHDX and makes the headers name it (as a crash would leave). */
static void inject_log(const char *path, const vhdx_log_op *ops, size_t n, uint64_t last)
{
    vh_file f;
    assert_int_equal(vh_file_open(&f, path, true, NULL), 0);
    uint8_t hb[2][VHDX_HDR_SIZE];
    vhdx_header h[2];
    for (int i = 0; i < 2; i++) {
        assert_int_equal(
            vh_file_read(&f, hb[i], VHDX_HDR_SIZE, i ? VHDX_HDR2_OFF : VHDX_HDR1_OFF, "h", NULL),
            0);
        assert_int_equal(vhdx_header_parse(hb[i], 0, f.size, &h[i], NULL), 0);
    }
    vhdx_header cur = h[1].seq > h[0].seq ? h[1] : h[0];
    vhdx_log_entry_params p = {
        .seq = 1000, .tail = 0, .guid = GUID_A, .flushed = f.size, .last = last};
    uint8_t *e = NULL;
    uint32_t len = 0;
    assert_int_equal(vhdx_log_entry_build(ops, n, &p, &e, &len, NULL), 0);
    assert_int_equal(vh_file_write(&f, e, len, cur.log_offset, "log", NULL), 0);
    g_free(e);
    cur.log_guid = GUID_A;
    for (int i = 0; i < 2; i++) {
        cur.seq++;
        uint8_t buf[VHDX_HDR_SIZE];
        vhdx_header_write(&cur, buf);
        assert_int_equal(
            vh_file_write(&f, buf, VHDX_HDR_SIZE, i ? VHDX_HDR2_OFF : VHDX_HDR1_OFF, "h", NULL), 0);
    }
    vh_file_close(&f);
}

static void replay_on_open(void **state)
{
    g_autofree char *path = tpath("d.vhdx");
    vh_create_opts o = {.format = VH_FORMAT_VHDX,
                        .type = VH_TYPE_DYNAMIC,
                        .size = 64 * VH_MIB,
                        .block_size = 2 * VH_MIB};
    assert_int_equal(vh_disk_create(path, &o, NULL), 0);
    /* A logged BAT update: block 1 FULLY_PRESENT at 4 MiB, past the end of the file (the replay
     * must extend it to LastFileOffset), and its content. */
    g_autofree uint8_t *bat = g_malloc0(S);
    vh_put_le64(bat + 8, vhdx_bat_entry(VHDX_PB_FULLY_PRESENT, 4 * VH_MIB));
    g_autofree uint8_t *data = pattern(9);
    vhdx_log_op ops[] = {{3 * VH_MIB, S, bat}, {4 * VH_MIB + 8 * S, S, data}};
    inject_log(path, ops, 2, 6 * VH_MIB);
    g_autoptr(GBytes) before = file_bytes(path);

    /* read-only: replayed in memory, the file is untouched */
    {
        g_autoptr(vh_disk) d = NULL;
        g_autoptr(GError) err = NULL;
        assert_int_equal(vh_disk_open(path, VH_OPEN_READ, &d, &err), 0);
        g_autoptr(GHashTable) info = info_of(d);
        assert_string_equal(g_hash_table_lookup(info, "log"), "replayed in memory");
        g_autofree uint8_t *buf = g_malloc(S);
        assert_int_equal(vh_disk_read(d, buf, 2 * VH_MIB + 8 * S, S, NULL), 0);
        assert_memory_equal(buf, data, S);
        assert_int_equal(vh_disk_read(d, buf, 2 * VH_MIB, S, NULL), 0);
        for (int i = 0; i < S; i++)
            assert_int_equal(buf[i], 0);
    }
    g_autoptr(GBytes) after = file_bytes(path);
    assert_true(g_bytes_equal(before, after));

    /* writable: replayed into the file, the log marked empty, FileWriteGuid renewed */
    {
        g_autoptr(vh_disk) d = NULL;
        assert_int_equal(vh_disk_open(path, VH_OPEN_WRITE, &d, NULL), 0);
        g_autoptr(GHashTable) info = info_of(d);
        assert_string_equal(g_hash_table_lookup(info, "log"), "replayed");
        assert_string_equal(g_hash_table_lookup(info, "log_guid"),
                            "00000000-0000-0000-0000-000000000000");
        assert_int_equal(d->file.size, 6 * VH_MIB);
    }
    {
        g_autoptr(vh_disk) d = NULL;
        assert_int_equal(vh_disk_open(path, VH_OPEN_READ, &d, NULL), 0);
        g_autoptr(GHashTable) info = info_of(d);
        assert_string_equal(g_hash_table_lookup(info, "log"), "empty");
        g_autofree uint8_t *buf = g_malloc(S);
        assert_int_equal(vh_disk_read(d, buf, 2 * VH_MIB + 8 * S, S, NULL), 0);
        assert_memory_equal(buf, data, S);
    }
}

/*
 * A probe of a disk whose log needs replay sees the replayed metadata (in memory, the file
 * untouched), as a full read-only open does: here a logged change of the virtual disk size.
 */
static void probe_honours_the_log(void **state)
{
    g_autofree char *path = tpath("p.vhdx");
    vh_create_opts o = {.format = VH_FORMAT_VHDX, .type = VH_TYPE_DYNAMIC, .size = 64 * VH_MIB};
    assert_int_equal(vh_disk_create(path, &o, NULL), 0);
    uint64_t md_off;
    {
        g_autoptr(vh_disk) d = NULL;
        assert_int_equal(vh_disk_open(path, VH_OPEN_READ, &d, NULL), 0);
        g_autoptr(GHashTable) info = info_of(d);
        md_off = g_ascii_strtoull(g_hash_table_lookup(info, "metadata_offset"), NULL, 10);
    }
    g_autoptr(GBytes) file = file_bytes(path);
    const uint8_t *bytes = g_bytes_get_data(file, NULL);
    g_autofree vhdx_md_table *md = g_new0(vhdx_md_table, 1);
    assert_int_equal(vhdx_md_table_parse(bytes + md_off, md_off, VH_MIB, md, NULL), 0);
    int i = vhdx_md_find(md, &vhdx_guid_disk_size);
    assert_true(i >= 0);
    uint64_t item = md_off + md->e[i].offset;
    uint64_t sector = item / S * S;
    g_autofree uint8_t *upd = g_memdup2(bytes + sector, S);
    vh_put_le64(upd + (item - sector), 32 * VH_MIB);
    vhdx_log_op op = {sector, S, upd};
    inject_log(path, &op, 1, g_bytes_get_size(file));
    g_autoptr(GBytes) before = file_bytes(path);
    for (int probe = 1; probe >= 0; probe--) {
        g_autoptr(vh_disk) d = NULL;
        assert_int_equal(vh_disk_open(path, probe ? VH_OPEN_PROBE : VH_OPEN_READ, &d, NULL), 0);
        assert_int_equal(d->virtual_size, 32 * VH_MIB);
        g_autoptr(GHashTable) info = info_of(d);
        assert_string_equal(g_hash_table_lookup(info, "log"), "replayed in memory");
    }
    g_autoptr(GBytes) after = file_bytes(path);
    assert_true(g_bytes_equal(before, after));
}

static void corrupt_log_is_refused_with_location(void **state)
{
    g_autofree char *path = tpath("c.vhdx");
    vh_create_opts o = {.format = VH_FORMAT_VHDX, .type = VH_TYPE_DYNAMIC, .size = 64 * VH_MIB};
    assert_int_equal(vh_disk_create(path, &o, NULL), 0);
    g_autofree uint8_t *bat = g_malloc0(S);
    vhdx_log_op op = {3 * VH_MIB, S, bat};
    inject_log(path, &op, 1, 4 * VH_MIB);
    /* flip one byte in the entry's data sector */
    vh_file f;
    assert_int_equal(vh_file_open(&f, path, true, NULL), 0);
    uint8_t b = 0x5A;
    assert_int_equal(vh_file_write(&f, &b, 1, VH_MIB + S + 200, "x", NULL), 0);
    vh_file_close(&f);
    g_autoptr(GBytes) before = file_bytes(path);
    for (int w = 0; w < 2; w++) {
        g_autoptr(vh_disk) d = NULL;
        g_autoptr(GError) err = NULL;
        assert_int_equal(vh_disk_open(path, w ? VH_OPEN_WRITE : VH_OPEN_READ, &d, &err), -EIO);
        assert_non_null(strstr(err->message, path));
        assert_non_null(strstr(err->message, "log at offset 1048576"));
    }
    g_autoptr(GBytes) after = file_bytes(path);
    assert_true(g_bytes_equal(before, after)); /* a refused open writes nothing */
}

/* ---------------- crash safety of logged changes ---------------- */

static bool have_qemu_img(void)
{
    g_autofree char *p = g_find_program_in_path("qemu-img");
    return p != NULL;
}

static void qemu_check(const char *path)
{
    g_autofree char *cmd = g_strdup_printf("qemu-img check -q -f vhdx '%s'", path);
    int st = system(cmd);
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        fail_msg("qemu-img check found errors in %s", path);
}

typedef struct {
    GArray *write_len; /* per mutating op (1-based index): bytes written, 0 for flush/truncate */
} op_log;

static int record_hook(void *ctx, vh_file *f, uint64_t off, size_t len, const void *buf,
                       GError **err)
{
    op_log *l = ctx;
    long n = vh_fault_ops() + 1; /* the op about to be counted */
    while ((long)l->write_len->len < n)
        g_array_append_val(l->write_len, (size_t){0});
    g_array_index(l->write_len, size_t, n - 1) = len;
    return 0;
}

/* Opens path writable; with rec, every write of the change is recorded in it. */
static int open_recorded(const char *path, op_log *rec, vh_disk **d, GError **err)
{
    int r = vh_disk_open(path, VH_OPEN_WRITE, d, err);
    if (r == 0 && rec) {
        (*d)->file.hook = record_hook;
        (*d)->file.hook_ctx = rec;
    }
    return r;
}

/* The change under test: opens `path` writable, does it, closes. */
typedef int (*change_fn)(const char *path, void *ctx, op_log *rec, GError **err);

typedef struct {
    uint64_t voff;
    size_t len;
    uint8_t seed;
} write_change;

static int do_write(const char *path, void *ctx, op_log *rec, GError **err)
{
    write_change *w = ctx;
    g_autoptr(vh_disk) d = NULL;
    int r = open_recorded(path, rec, &d, err);
    if (r < 0)
        return r;
    g_autofree uint8_t *buf = g_malloc(w->len);
    for (size_t i = 0; i < w->len; i++)
        buf[i] = (uint8_t)(w->seed + i * 13);
    r = vh_disk_write(d, buf, w->voff, w->len, err);
    return r < 0 ? r : vh_disk_flush(d, err);
}

static int do_relink(const char *path, void *ctx, op_log *rec, GError **err)
{
    vh_link_update *u = ctx;
    g_autoptr(vh_disk) d = NULL;
    int r = open_recorded(path, rec, &d, err);
    if (r < 0)
        return r;
    return d->ops->set_parent_link(d, u, err);
}

static char *link_text(const char *path)
{
    g_autoptr(vh_disk) d = NULL;
    if (vh_disk_open(path, VH_OPEN_READ, &d, NULL) < 0)
        return NULL;
    GString *s = g_string_new(NULL);
    char id[VH_ID_STRLEN + 1];
    vh_id_format(&d->link.parent_id, id);
    g_string_append(s, id);
    for (guint i = 0; i < d->link.locators->len; i++) {
        vh_locator *l = d->link.locators->pdata[i];
        g_string_append_printf(s, "|%s=%s", vh_locator_kind_name(l->kind), l->path);
    }
    return g_string_free(s, FALSE);
}

/* The state a file is in: its virtual content (as read without parents) and parent link. */
typedef struct {
    GBytes *content;
    char *link;
} disk_state;

static bool state_read(const char *path, disk_state *st)
{
    g_autoptr(vh_disk) d = NULL;
    st->content = NULL;
    st->link = NULL;
    if (vh_disk_open(path, VH_OPEN_READ, &d, NULL) < 0)
        return false;
    uint8_t *buf = g_malloc(d->virtual_size);
    if (vh_disk_read(d, buf, 0, d->virtual_size, NULL) < 0) {
        g_free(buf);
        return false;
    }
    st->content = g_bytes_new_take(buf, d->virtual_size);
    st->link = link_text(path);
    return true;
}

static void state_clear(disk_state *st)
{
    if (st->content)
        g_bytes_unref(st->content);
    g_free(st->link);
}

static bool state_equal(const disk_state *a, const disk_state *b)
{
    return g_bytes_equal(a->content, b->content) && g_strcmp0(a->link, b->link) == 0;
}

/*
 * Runs the change once to learn its ops and the new state, then for every op n: stop there,
 * and for every write also tear it at 512-byte boundaries. Each crashed file must reopen
 * (read-only: log replayed in memory; then writable: replayed into the file) in the old or the
 * new state; qemu-img check must pass when the disk has no parent. Returns the crash points.
 */
static int crash_everywhere(const char *path, change_fn fn, void *ctx, bool check_qemu)
{
    g_autoptr(GBytes) original = file_bytes(path);
    disk_state old_state, new_state;
    assert_true(state_read(path, &old_state));
    op_log rec = {g_array_new(FALSE, TRUE, sizeof(size_t))};
    vh_fault_arm(VH_FAULT_NONE, 0, 0);
    assert_int_equal(fn(path, ctx, &rec, NULL), 0);
    long total = vh_fault_ops();
    vh_fault_disarm();
    assert_true(state_read(path, &new_state));
    assert_false(state_equal(&old_state, &new_state));
    int covered = 0;
    for (long n = 1; n <= total; n++) {
        size_t wlen =
            (size_t)n <= rec.write_len->len ? g_array_index(rec.write_len, size_t, n - 1) : 0;
        /* stop at the op, then torn variants of a write (every 512 bytes; big writes sampled) */
        size_t step = wlen <= 16384 ? 512 : wlen / 8 / 512 * 512;
        for (size_t tear = 0; tear == 0 || (wlen && tear < wlen); tear += step) {
            put_bytes(path, original);
            vh_fault_arm(tear ? VH_FAULT_TEAR : VH_FAULT_STOP, n, tear);
            g_autoptr(GError) err = NULL;
            int r = fn(path, ctx, NULL, &err);
            bool fired = vh_fault_fired();
            vh_fault_disarm();
            assert_true(fired);
            assert_true(r < 0);
            disk_state ro, rw;
            if (!state_read(path, &ro) ||
                (!state_equal(&ro, &old_state) && !state_equal(&ro, &new_state)))
                fail_msg("crash at op %ld/%ld (tear %zu): %s", n, total, tear,
                         ro.content ? "neither the old nor the new state" : "does not open");
            {
                g_autoptr(vh_disk) d = NULL; /* writable open: replays into the file */
                assert_int_equal(vh_disk_open(path, VH_OPEN_WRITE, &d, NULL), 0);
            }
            assert_true(state_read(path, &rw));
            assert_true(state_equal(&rw, &ro));
            state_clear(&ro);
            state_clear(&rw);
            if (check_qemu)
                qemu_check(path);
            covered++;
            if (step == 0)
                break;
        }
    }
    g_array_unref(rec.write_len);
    state_clear(&old_state);
    state_clear(&new_state);
    put_bytes(path, original);
    return covered;
}

static void crash_block_allocation(void **state)
{
    g_autofree char *path = tpath("alloc.vhdx");
    vh_create_opts o = {.format = VH_FORMAT_VHDX,
                        .type = VH_TYPE_DYNAMIC,
                        .size = 4 * VH_MIB,
                        .block_size = 2 * VH_MIB};
    assert_int_equal(vh_disk_create(path, &o, NULL), 0);
    /* whole sectors inside one block: one allocation, one logged BAT update */
    write_change w = {.voff = 3 * VH_MIB + 4096, .len = 8192, .seed = 3};
    bool q = have_qemu_img();
    int n = crash_everywhere(path, do_write, &w, q);
    print_message("# VHDX crash points covered: %d (dynamic block allocation%s)\n", n,
                  q ? ", qemu-img check on each" : "");
    assert_true(n > 10);
}

static char *make_child(const char *name, const char *parent_path)
{
    g_autoptr(vh_disk) p = NULL;
    assert_int_equal(vh_disk_open(parent_path, VH_OPEN_READ, &p, NULL), 0);
    char *path = tpath(name);
    g_autofree char *base = g_path_get_basename(parent_path);
    g_autofree char *rel = g_strdup_printf(".\\%s", base);
    vh_create_opts o = {.type = VH_TYPE_DIFFERENCING, .parent = p, .parent_relative = rel};
    assert_int_equal(vh_disk_create(path, &o, NULL), 0);
    return path;
}

static void crash_sector_bitmap_allocation(void **state)
{
    g_autofree char *base = tpath("sbbase.vhdx");
    vh_create_opts o = {.format = VH_FORMAT_VHDX, .type = VH_TYPE_DYNAMIC, .size = 4 * VH_MIB};
    assert_int_equal(vh_disk_create(base, &o, NULL), 0);
    g_autofree char *child = make_child("sbchild.vhdx", base);
    write_change w = {.voff = 3 * VH_MIB + 512, .len = 3 * 512, .seed = 7};
    int n = crash_everywhere(child, do_write, &w, false);
    print_message("# VHDX crash points covered: %d (differencing partial block + bitmap)\n", n);
    assert_true(n > 10);
}

static void crash_set_parent_link(void **state)
{
    g_autofree char *base = tpath("lbase.vhdx");
    vh_create_opts o = {.format = VH_FORMAT_VHDX, .type = VH_TYPE_DYNAMIC, .size = 4 * VH_MIB};
    assert_int_equal(vh_disk_create(base, &o, NULL), 0);
    g_autofree char *child = make_child("lchild.vhdx", base);
    g_autoptr(vh_disk) p = NULL;
    assert_int_equal(vh_disk_open(base, VH_OPEN_READ, &p, NULL), 0);
    /* short: fits in place; long: moves to free space in the metadata region */
    GString *longp = g_string_new("D:\\");
    for (int i = 0; i < 40; i++)
        g_string_append(longp, "very long folder name\\");
    g_string_append(longp, "lbase.vhdx");
    vh_link_update shortu = {.parent_id = p->id, .relative = ".\\x\\lbase.vhdx"};
    vh_link_update longu = {.parent_id = p->id,
                            .relative = ".\\lbase.vhdx",
                            .absolute = longp->str,
                            .volume = "\\\\?\\Volume{0eba351e-5634-46d6-a8cf-4ddc2d6ac0b9}\\b"};
    int n1 = crash_everywhere(child, do_relink, &shortu, false);
    int n2 = crash_everywhere(child, do_relink, &longu, false);
    print_message("# VHDX crash points covered: %d (set_parent_link in place), %d (moved)\n", n1,
                  n2);
    assert_true(n1 > 10 && n2 > 10);
    g_string_free(longp, TRUE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(one_entry_data_and_zero),
        cmocka_unit_test(many_descriptors_span_sectors),
        cmocka_unit_test(newest_sequence_wins),
        cmocka_unit_test(tail_inside_sequence_replays_from_tail),
        cmocka_unit_test(wrap_around),
        cmocka_unit_test(torn_head_falls_back),
        cmocka_unit_test(bad_checksum_is_not_an_entry),
        cmocka_unit_test(foreign_guid_is_ignored),
        cmocka_unit_test(broken_sequences_are_rejected),
        cmocka_unit_test(truncated_file_is_refused),
        cmocka_unit_test(full_log_sequence_terminates),
        cmocka_unit_test(builder_rejects_bad_updates),
        cmocka_unit_test_setup_teardown(replay_on_open, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(probe_honours_the_log, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(corrupt_log_is_refused_with_location, tmp_setup,
                                        tmp_teardown),
        cmocka_unit_test_setup_teardown(crash_block_allocation, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(crash_sector_bitmap_allocation, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(crash_set_parent_link, tmp_setup, tmp_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
