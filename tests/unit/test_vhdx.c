// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * test_vhdx.c - VHDX structures and the engine: CRC-32C over real structures, GUID byte order,
 * every parser and writer with its rejection paths, chunk-ratio and BAT arithmetic over every
 * block size and both sector sizes, every payload state, LSB-first bitmaps, the Hyper-V layout
 * of created files, header/region-table fallback, DataWriteGuid/FileWriteGuid rules and the
 * parent-link rewrite.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>

#include "disk.h"
#include "needs.h"
#include "readlog.h"
#include "tmpfix.h"
#include "vhdx_format.h"

/* ---------------- helpers ---------------- */

/* Decompresses a corpus file into the temp dir; NULL without one (the test skips, or fails
 * under CI). */
static char *corpus(void **state, const char *rel, const char *name)
{
    const char *c = g_getenv("VH_CORPUS");
    g_autofree char *src = c ? g_build_filename(c, rel, NULL) : NULL;
    if (!src || !g_file_test(src, G_FILE_TEST_EXISTS))
        return NULL;
    char *dst = tpath(name);
    g_autofree char *cmd = g_strdup_printf("gzip -dc '%s' > '%s'", src, dst);
    assert_int_equal(system(cmd), 0);
    return dst;
}

static uint8_t *read_at(const char *path, uint64_t off, size_t len)
{
    vh_file f;
    assert_int_equal(vh_file_open(&f, path, false, NULL), 0);
    uint8_t *buf = g_malloc(len);
    assert_int_equal(vh_file_read(&f, buf, len, off, "test", NULL), 0);
    vh_file_close(&f);
    return buf;
}

static void write_at(const char *path, uint64_t off, const void *buf, size_t len)
{
    vh_file f;
    assert_int_equal(vh_file_open(&f, path, true, NULL), 0);
    assert_int_equal(vh_file_write(&f, buf, len, off, "test", NULL), 0);
    vh_file_close(&f);
}

static void make_disk(const char *path, vh_type type, uint64_t size, uint32_t bs, uint32_t lss)
{
    vh_create_opts o = {.format = VH_FORMAT_VHDX,
                        .type = type,
                        .size = size,
                        .block_size = bs,
                        .logical_sector_size = lss};
    g_autoptr(GError) err = NULL;
    if (vh_disk_create(path, &o, &err) < 0)
        fail_msg("create %s: %s", path, err->message);
}

static void make_child(const char *path, const char *parent, const char *abs)
{
    g_autoptr(vh_disk) p = NULL;
    assert_int_equal(vh_disk_open(parent, VH_OPEN_READ, &p, NULL), 0);
    g_autofree char *base = g_path_get_basename(parent);
    g_autofree char *rel = g_strdup_printf(".\\%s", base);
    vh_create_opts o = {
        .type = VH_TYPE_DIFFERENCING, .parent = p, .parent_relative = rel, .parent_absolute = abs};
    assert_int_equal(vh_disk_create(path, &o, NULL), 0);
}

static vh_disk *open_ok(const char *path, vh_open_flags fl)
{
    vh_disk *d = NULL;
    g_autoptr(GError) err = NULL;
    if (vh_disk_open(path, fl, &d, &err) < 0)
        fail_msg("open %s: %s", path, err->message);
    return d;
}

static void expect_open_error(const char *path, int code, const char *text)
{
    vh_disk *d = NULL;
    g_autoptr(GError) err = NULL;
    int r = vh_disk_open(path, VH_OPEN_READ, &d, &err);
    if (r != -code)
        fail_msg("open %s: want %s, got %d (%s)", path, g_strerror(code), r,
                 err ? err->message : "opened");
    if (text && !strstr(err->message, text))
        fail_msg("message '%s' lacks '%s'", err->message, text);
    assert_non_null(strstr(err->message, path));
}

/* Rewrites a header slot with a fresh checksum after `edit`. */
static void edit_header(const char *path, uint64_t off, void (*edit)(vhdx_header *))
{
    g_autofree uint8_t *b = read_at(path, off, VHDX_HDR_SIZE);
    vhdx_header h;
    assert_int_equal(vhdx_header_parse(b, off, UINT64_MAX, &h, NULL), 0);
    edit(&h);
    vhdx_header_write(&h, b);
    write_at(path, off, b, VHDX_HDR_SIZE);
}

/* Sets BAT entry idx of a file laid out by vh_vhdx_create (BAT at 3 MiB). */
static void set_bat(const char *path, uint64_t idx, uint64_t entry)
{
    uint8_t b[8];
    vh_put_le64(b, entry);
    write_at(path, 3 * VH_MIB + 8 * idx, b, 8);
}

/* ---------------- structures ---------------- */

static void guid_byte_order(void **state)
{
    /* The BAT region GUID as stored on disk (mixed-endian) and as text. */
    const uint8_t stored[16] = {0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42,
                                0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08};
    vh_id g = vhdx_get_guid(stored);
    assert_true(vh_id_equal(&g, &vhdx_guid_bat));
    char s[VH_ID_STRLEN + 1];
    vh_id_format(&g, s);
    assert_string_equal(s, "2dc27766-f623-4200-9d64-115e9bfd4a08");
    uint8_t back[16];
    vhdx_put_guid(back, &g);
    assert_memory_equal(back, stored, 16);
    assert_string_equal(vhdx_guid_name(&vhdx_guid_parent_locator), "parent_locator");
}

static void real_structures_parse(void **state)
{
    g_autofree char *p = corpus(state, "dissect.hypervisor/dynamic.vhdx.gz", "dyn.vhdx");
    if (!p)
        skip_unless_ci("corpus file dissect.hypervisor/dynamic.vhdx.gz is missing");
    g_autofree uint8_t *f = read_at(p, 0, 3 * VH_MIB);
    /* CRC-32C of real headers and region tables (checksum field zeroed) */
    vhdx_header h1, h2;
    assert_int_equal(vhdx_header_parse(f + VHDX_HDR1_OFF, VHDX_HDR1_OFF, 36 * VH_MIB, &h1, NULL),
                     0);
    assert_int_equal(vhdx_header_parse(f + VHDX_HDR2_OFF, VHDX_HDR2_OFF, 36 * VH_MIB, &h2, NULL),
                     0);
    assert_int_equal(h1.seq, 14);
    assert_int_equal(h2.seq, 15);
    char s[VH_ID_STRLEN + 1];
    vh_id_format(&h2.data_write, s);
    assert_string_equal(s, "28e09ae1-ab94-4815-a155-f143e2d00a3f");
    /* the writer reproduces Windows' bytes, checksum included */
    uint8_t out[VHDX_HDR_SIZE];
    vhdx_header_write(&h2, out);
    assert_memory_equal(out, f + VHDX_HDR2_OFF, VHDX_HDR_SIZE);
    g_autofree vhdx_region_table *rt = g_new0(vhdx_region_table, 1);
    assert_int_equal(vhdx_region_table_parse(f + VHDX_RT1_OFF, VHDX_RT1_OFF, 36 * VH_MIB, rt, NULL),
                     0);
    assert_int_equal(rt->count, 2);
    assert_true(vh_id_equal(&rt->e[0].guid, &vhdx_guid_bat)); /* BAT listed first */
    assert_int_equal(rt->e[0].offset, 3 * VH_MIB);
    assert_int_equal(rt->e[1].offset, 2 * VH_MIB);
    g_autofree uint8_t *rtout = g_malloc(VHDX_RT_SIZE);
    vhdx_region_table_write(rt, rtout);
    assert_memory_equal(rtout, f + VHDX_RT1_OFF, VHDX_RT_SIZE);
    /* metadata table: 5 entries, a stale copy of the last one past the count (§4.15) */
    g_autofree vhdx_md_table *md = g_new0(vhdx_md_table, 1);
    assert_int_equal(vhdx_md_table_parse(f + 2 * VH_MIB, 2 * VH_MIB, VH_MIB, md, NULL), 0);
    assert_int_equal(md->count, 5);
    assert_memory_equal(f + 2 * VH_MIB + 32 + 5 * 32, f + 2 * VH_MIB + 32 + 4 * 32, 32);
    vhdx_params prm = {0};
    assert_int_equal(vhdx_file_params_parse(f + 2 * VH_MIB + 0x10000, 8, 0, &prm, NULL), 0);
    assert_int_equal(prm.block_size, 32 * VH_MIB);
}

static void header_rejections(void **state)
{
    vhdx_header h = {.seq = 3, .version = 1, .log_length = VH_MIB, .log_offset = VH_MIB};
    uint8_t b[VHDX_HDR_SIZE];
    vhdx_header_write(&h, b);
    vhdx_header out;
    assert_int_equal(vhdx_header_parse(b, 0, 4 * VH_MIB, &out, NULL), 0);
    assert_int_equal(out.seq, 3);
    uint8_t c[VHDX_HDR_SIZE];
    memcpy(c, b, sizeof c);
    c[2000] ^= 1; /* reserved byte: only the CRC sees it */
    g_autoptr(GError) e1 = NULL;
    assert_int_equal(vhdx_header_parse(c, 65536, 4 * VH_MIB, &out, &e1), -EINVAL);
    assert_non_null(strstr(e1->message, "offset 65536"));
    assert_non_null(strstr(e1->message, "checksum"));
    memcpy(c, b, sizeof c);
    c[0] = 'x';
    assert_int_equal(vhdx_header_parse(c, 0, 4 * VH_MIB, &out, NULL), -EINVAL);
    h.version = 2;
    vhdx_header_write(&h, c);
    assert_int_equal(vhdx_header_parse(c, 0, 4 * VH_MIB, &out, NULL), -EINVAL);
    h.version = 1;
    h.log_offset = VH_MIB + 4096; /* not 1 MiB aligned */
    vhdx_header_write(&h, c);
    assert_int_equal(vhdx_header_parse(c, 0, 4 * VH_MIB, &out, NULL), -EINVAL);
    h.log_offset = 4 * VH_MIB; /* past the end of the file */
    vhdx_header_write(&h, c);
    assert_int_equal(vhdx_header_parse(c, 0, 4 * VH_MIB, &out, NULL), -EINVAL);
}

static void region_table_rejections(void **state)
{
    g_autofree vhdx_region_table *t = g_new0(vhdx_region_table, 1);
    g_autofree vhdx_region_table *o = g_new0(vhdx_region_table, 1);
    g_autofree uint8_t *b = g_malloc(VHDX_RT_SIZE);
    t->count = 2;
    t->e[0] = (vhdx_region){vhdx_guid_bat, 3 * VH_MIB, VH_MIB, 1};
    t->e[1] = (vhdx_region){vhdx_guid_metadata, 2 * VH_MIB, VH_MIB, 1};
    vhdx_region_table_write(t, b);
    assert_int_equal(vhdx_region_table_parse(b, 0, 4 * VH_MIB, o, NULL), 0);
    assert_int_equal(o->e[0].length, VH_MIB);
    /* past the end of the file */
    assert_int_equal(vhdx_region_table_parse(b, 0, 3 * VH_MIB, o, NULL), -EINVAL);
    /* unaligned, inside the header section, duplicate, too many entries */
    const vhdx_region bad[] = {{vhdx_guid_bat, 3 * VH_MIB + 512, VH_MIB, 1},
                               {vhdx_guid_bat, 0, VH_MIB, 1},
                               {vhdx_guid_metadata, 2 * VH_MIB, VH_MIB, 1}};
    for (int i = 0; i < 3; i++) {
        t->e[0] = bad[i];
        vhdx_region_table_write(t, b);
        assert_int_equal(vhdx_region_table_parse(b, 0, 4 * VH_MIB, o, NULL), -EINVAL);
    }
    t->e[0] = (vhdx_region){vhdx_guid_bat, 3 * VH_MIB, VH_MIB, 1};
    vhdx_region_table_write(t, b);
    vh_put_le32(b + 8, 2048);
    vh_put_le32(b + 4, 0);
    uint32_t crc = vh_crc32c(b, VHDX_RT_SIZE);
    vh_put_le32(b + 4, crc);
    assert_int_equal(vhdx_region_table_parse(b, 0, 4 * VH_MIB, o, NULL), -EINVAL);
}

static void metadata_table_rules(void **state)
{
    g_autofree vhdx_md_table *t = g_new0(vhdx_md_table, 1);
    g_autofree vhdx_md_table *o = g_new0(vhdx_md_table, 1);
    g_autofree uint8_t *b = g_malloc0(VHDX_MD_TABLE_SIZE);
    t->count = 2;
    t->e[0] = (vhdx_md_entry){vhdx_guid_file_params, 0x10000, 8, VHDX_MD_IS_REQUIRED};
    t->e[1] = (vhdx_md_entry){vhdx_guid_disk_size, 0x10008, 8, 6};
    vhdx_md_table_write(t, b);
    /* a stale third entry past EntryCount that overlaps: ignored (doc/formats.md §4.15) */
    memcpy(b + 32 + 64, b + 32 + 32, 32);
    assert_int_equal(vhdx_md_table_parse(b, 0, VH_MIB, o, NULL), 0);
    assert_int_equal(o->count, 2);
    assert_int_equal(vhdx_md_find(o, &vhdx_guid_disk_size), 1);
    assert_int_equal(vhdx_md_find(o, &vhdx_guid_disk_id), -1);
    const vhdx_md_entry bad[] = {
        {vhdx_guid_disk_size, 0x10004, 8, 6},          /* overlaps entry 0 */
        {vhdx_guid_disk_size, 0x8000, 8, 6},           /* inside the table area */
        {vhdx_guid_disk_size, VH_MIB - 4, 8, 6},       /* past the region */
        {vhdx_guid_disk_size, 0x10008, VH_MIB + 1, 6}, /* longer than 1 MiB */
        {vhdx_guid_file_params, 0x20000, 8, 4},        /* duplicate item */
    };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        t->e[1] = bad[i];
        vhdx_md_table_write(t, b);
        g_autoptr(GError) err = NULL;
        assert_int_equal(vhdx_md_table_parse(b, 2 * VH_MIB, VH_MIB, o, &err), -EINVAL);
        assert_non_null(strstr(err->message, "offset"));
    }
    /* the same id as a user item is another item */
    t->e[1] = (vhdx_md_entry){vhdx_guid_file_params, 0x20000, 8, VHDX_MD_IS_USER};
    vhdx_md_table_write(t, b);
    assert_int_equal(vhdx_md_table_parse(b, 0, VH_MIB, o, NULL), 0);
    assert_int_equal(vhdx_md_find(o, &vhdx_guid_file_params), 0);
    memcpy(b, "metadatX", 8);
    assert_int_equal(vhdx_md_table_parse(b, 0, VH_MIB, o, NULL), -EINVAL);
}

static void known_items(void **state)
{
    uint8_t b[16] = {0};
    vhdx_params p = {0};
    for (uint32_t bs = 512 * 1024; bs <= 512 * VH_MIB; bs *= 2) {
        vh_put_le32(b, bs);
        int want = bs >= VH_MIB && bs <= 256 * VH_MIB ? 0 : -EINVAL;
        assert_int_equal(vhdx_file_params_parse(b, 8, 0, &p, NULL), want);
    }
    vh_put_le32(b, 3 * VH_MIB); /* not a power of two */
    assert_int_equal(vhdx_file_params_parse(b, 8, 0, &p, NULL), -EINVAL);
    vh_put_le32(b, 2 * VH_MIB);
    vh_put_le32(b + 4, VHDX_FP_HAS_PARENT);
    assert_int_equal(vhdx_file_params_parse(b, 8, 0, &p, NULL), 0);
    assert_int_equal(p.fp_flags, VHDX_FP_HAS_PARENT);
    assert_int_equal(vhdx_file_params_parse(b, 7, 0, &p, NULL), -EINVAL); /* too short */
    uint32_t ss;
    const uint32_t sizes[] = {512, 4096, 1024, 0, 8192};
    for (int i = 0; i < 5; i++) {
        vh_put_le32(b, sizes[i]);
        assert_int_equal(vhdx_sector_size_parse(b, 4, 0, "x", &ss, NULL), i < 2 ? 0 : -EINVAL);
    }
    vhdx_params q = {.logical_ss = 4096, .disk_size = 4096 * 5};
    assert_int_equal(vhdx_params_check(&q, 0, NULL), 0);
    q.disk_size = 4096 * 5 + 512;
    assert_int_equal(vhdx_params_check(&q, 0, NULL), -EINVAL);
    q.disk_size = VHDX_MAX_DISK + 4096;
    assert_int_equal(vhdx_params_check(&q, 0, NULL), -EINVAL);
    q.disk_size = 0;
    assert_int_equal(vhdx_params_check(&q, 0, NULL), -EINVAL);
}

/* A locator item written by hand: keys in any order, offsets relative to the item. */
static uint32_t hand_locator(uint8_t *item, const char *const *kv, int n, bool packed_backwards)
{
    memset(item, 0, 4096);
    vhdx_put_guid(item, &vhdx_guid_locator_type_vhdx);
    vh_put_le16(item + 18, (uint16_t)n);
    uint32_t pos = packed_backwards ? 4096 : 20 + 12 * (uint32_t)n;
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < 2; k++) {
            uint8_t tmp[1024];
            ssize_t len = vh_utf8_to_utf16le(kv[2 * i + k], tmp, sizeof tmp);
            assert_true(len > 0);
            if (packed_backwards)
                pos -= (uint32_t)len;
            memcpy(item + pos, tmp, (size_t)len);
            vh_put_le32(item + 20 + 12 * i + 4 * k, pos);
            vh_put_le16(item + 20 + 12 * i + 8 + 2 * k, (uint16_t)len);
            if (!packed_backwards)
                pos += (uint32_t)len;
        }
    }
    return packed_backwards ? 4096 : pos;
}

static void parent_locator_parse_and_build(void **state)
{
    const char *kv[] = {"volume_path",    "\\\\?\\Volume{1}\\a\\p.vhdx",
                        "relative_path",  "..\\p.vhdx",
                        "parent_linkage", "{83ed0ec3-24c8-49a6-a959-5e4bf1288bfb}",
                        "vendor_key",     "kept"};
    uint8_t item[4096];
    uint32_t len = hand_locator(item, kv, 4, true);
    vhdx_locator l;
    assert_int_equal(vhdx_locator_parse(item, len, 0, &l, NULL), 0);
    assert_int_equal(l.kv->len, 4);
    assert_string_equal(vhdx_locator_get(&l, "relative_path"), "..\\p.vhdx");
    assert_string_equal(vhdx_locator_get(&l, "vendor_key"), "kept");
    assert_null(vhdx_locator_get(&l, "absolute_win32_path"));
    /* build: Hyper-V packing, first key right after the entry table, round trip */
    uint8_t *out = NULL;
    uint32_t olen = 0;
    assert_int_equal(vhdx_locator_build(&l, &out, &olen, NULL), 0);
    assert_int_equal(vh_le32(out + 20), 20 + 12 * 4);
    vhdx_locator l2;
    assert_int_equal(vhdx_locator_parse(out, olen, 0, &l2, NULL), 0);
    for (int i = 0; i < 4; i++)
        assert_string_equal(vhdx_locator_get(&l2, kv[2 * i]), kv[2 * i + 1]);
    g_free(out);
    vhdx_locator_clear(&l2);
    vhdx_locator_clear(&l);
    /* rejections: value past the item, zero offset, duplicate key, odd length, other type */
    len = hand_locator(item, kv, 4, false);
    g_autoptr(GError) err = NULL;
    assert_int_equal(vhdx_locator_parse(item, len - 2, 2 * VH_MIB, &l, &err), -EINVAL);
    assert_non_null(strstr(err->message, "outside"));
    vhdx_locator_clear(&l);
    uint8_t c[4096];
    memcpy(c, item, sizeof c);
    vh_put_le32(c + 20, 0);
    assert_int_equal(vhdx_locator_parse(c, len, 0, &l, NULL), -EINVAL);
    vhdx_locator_clear(&l);
    const char *dup[] = {"relative_path", "a", "relative_path", "b"};
    uint32_t dl = hand_locator(c, dup, 2, false);
    assert_int_equal(vhdx_locator_parse(c, dl, 0, &l, NULL), -EINVAL);
    vhdx_locator_clear(&l);
    memcpy(c, item, sizeof c);
    vh_put_le16(c + 20 + 8, 3);
    assert_int_equal(vhdx_locator_parse(c, len, 0, &l, NULL), -EINVAL);
    vhdx_locator_clear(&l);
    memcpy(c, item, sizeof c);
    c[0] ^= 1;
    assert_int_equal(vhdx_locator_parse(c, len, 0, &l, NULL), -EINVAL);
    vhdx_locator_clear(&l);
    memcpy(c, item, sizeof c);
    vh_put_le16(c + 18, 400); /* more entries than fit */
    assert_int_equal(vhdx_locator_parse(c, len, 0, &l, NULL), -EINVAL);
    vhdx_locator_clear(&l);
}

static void chunk_ratio_arithmetic(void **state)
{
    for (uint32_t lss = 512; lss <= 4096; lss *= 8) {
        for (uint32_t bs = VH_MIB; bs <= 256 * VH_MIB; bs *= 2) {
            uint32_t cr = vhdx_chunk_ratio(bs, lss);
            assert_int_equal((uint64_t)cr * bs, (UINT64_C(1) << 23) * lss);
            /* one sector bitmap block (1 MiB = 2^23 bits) covers exactly one chunk */
            assert_int_equal((uint64_t)cr * (bs / lss), VHDX_SB_BLOCK * 8);
            for (uint64_t blocks = 1; blocks <= 3 * (uint64_t)cr + 1; blocks += cr / 2 + 1) {
                uint64_t size = blocks * bs - lss;
                uint64_t pb = vhdx_payload_blocks(size, bs);
                assert_int_equal(pb, blocks);
                uint64_t sbb = (pb + cr - 1) / cr;
                assert_int_equal(vhdx_sb_blocks(size, bs, lss), sbb);
                assert_int_equal(vhdx_bat_entries(size, bs, lss, false), pb + (pb - 1) / cr);
                assert_int_equal(vhdx_bat_entries(size, bs, lss, true), sbb * (cr + 1));
                /* the last payload block's entry is the last entry of a dynamic BAT */
                assert_int_equal(vhdx_bat_payload_index(pb - 1, cr) + 1,
                                 vhdx_bat_entries(size, bs, lss, false));
                /* the last chunk's SB entry is the last entry of a differencing BAT */
                assert_int_equal(vhdx_bat_sb_index(sbb - 1, cr) + 1,
                                 vhdx_bat_entries(size, bs, lss, true));
            }
        }
    }
    assert_int_equal(vhdx_chunk_ratio(2 * VH_MIB, 512), 2048);
    assert_int_equal(vhdx_chunk_ratio(32 * VH_MIB, 512), 128);
    assert_int_equal(vhdx_chunk_ratio(VH_MIB, 4096), 32768);
    assert_int_equal(vhdx_chunk_ratio(256 * VH_MIB, 512), 16);
    /* MEASURED (doc/formats.md §2.6): 8 GiB differencing, 2 MiB blocks: 4098 entries, SB at 2048 */
    assert_int_equal(vhdx_bat_entries(8 * VH_GIB, 2 * VH_MIB, 512, true), 4098);
    assert_int_equal(vhdx_bat_sb_index(0, 2048), 2048);
    assert_int_equal(vhdx_bat_sb_index(1, 2048), 4097);
    assert_int_equal(vhdx_bat_payload_index(2048, 2048), 2049);
}

static void bitmap_bits_lsb_first(void **state)
{
    uint8_t bm[4] = {0x01, 0x80, 0xFF, 0x00};
    assert_true(vhdx_bit_get(bm, 0));
    assert_false(vhdx_bit_get(bm, 1));
    assert_true(vhdx_bit_get(bm, 15));
    bool v;
    assert_int_equal(vhdx_bit_run(bm, 1, 31, &v), 14);
    assert_false(v);
    assert_int_equal(vhdx_bit_run(bm, 15, 17, &v), 9);
    assert_true(v);
    assert_int_equal(vhdx_bit_run(bm, 24, 8, &v), 8);
    assert_false(v);
    vhdx_bit_set(bm, 25);
    assert_int_equal(bm[3], 0x02);
}

/* ---------------- files ---------------- */

static void created_layout_is_hyperv_like(void **state)
{
    g_autofree char *base = tpath("base.vhdx");
    g_autofree char *child = tpath("child.avhdx");
    make_disk(base, VH_TYPE_DYNAMIC, 10 * VH_MIB, 0, 0);
    make_child(child, base, "D:\\vms\\base.vhdx");
    g_autofree uint8_t *f = read_at(child, 0, 4 * VH_MIB);
    assert_memory_equal(f, "vhdxfile", 8);
    g_autofree char *creator = vhdx_ident_creator(f, 520);
    assert_true(g_str_has_prefix(creator, "vhdhealfs "));
    vhdx_header h1, h2;
    assert_int_equal(vhdx_header_parse(f + VHDX_HDR1_OFF, 0, 4 * VH_MIB, &h1, NULL), 0);
    assert_int_equal(vhdx_header_parse(f + VHDX_HDR2_OFF, 0, 4 * VH_MIB, &h2, NULL), 0);
    assert_int_equal(h2.seq, h1.seq + 1);
    assert_true(vh_id_equal(&h1.data_write, &h2.data_write));
    assert_true(vh_id_is_zero(&h1.log_guid));
    assert_int_equal(h1.log_offset, VH_MIB);
    assert_int_equal(h1.log_length, VH_MIB);
    g_autofree vhdx_region_table *rt = g_new0(vhdx_region_table, 1);
    assert_int_equal(vhdx_region_table_parse(f + VHDX_RT2_OFF, 0, 4 * VH_MIB, rt, NULL), 0);
    assert_true(vh_id_equal(&rt->e[0].guid, &vhdx_guid_bat));
    assert_int_equal(rt->e[0].offset, 3 * VH_MIB);
    assert_int_equal(rt->e[1].offset, 2 * VH_MIB);
    g_autofree vhdx_md_table *md = g_new0(vhdx_md_table, 1);
    assert_int_equal(vhdx_md_table_parse(f + 2 * VH_MIB, 0, VH_MIB, md, NULL), 0);
    const vh_id *order[] = {&vhdx_guid_file_params, &vhdx_guid_disk_size,
                            &vhdx_guid_logical_ss,  &vhdx_guid_physical_ss,
                            &vhdx_guid_disk_id,     &vhdx_guid_parent_locator};
    const uint32_t offs[] = {0x10000, 0x10008, 0x10010, 0x10014, 0x10018, 0x10028};
    assert_int_equal(md->count, 6);
    for (int i = 0; i < 6; i++) {
        assert_true(vh_id_equal(&md->e[i].item, order[i]));
        assert_int_equal(md->e[i].offset, offs[i]);
    }
    vhdx_locator l;
    assert_int_equal(vhdx_locator_parse(f + 2 * VH_MIB + 0x10028, md->e[5].length, 0, &l, NULL), 0);
    const char *keys[] = {"parent_linkage", "absolute_win32_path", "relative_path",
                          "parent_linkage2"};
    assert_int_equal(l.kv->len, 4);
    for (int i = 0; i < 4; i++)
        assert_string_equal(((vhdx_kv *)l.kv->pdata[i])->key, keys[i]);
    assert_int_equal(((vhdx_kv *)l.kv->pdata[0])->key_off, 20 + 12 * 4); /* packed */
    assert_string_equal(vhdx_locator_get(&l, "relative_path"), ".\\base.vhdx");
    assert_string_equal(vhdx_locator_get(&l, "parent_linkage2"),
                        "{00000000-0000-0000-0000-000000000000}");
    g_autoptr(vh_disk) b = open_ok(base, VH_OPEN_READ);
    g_autoptr(vh_disk) c = open_ok(child, VH_OPEN_READ);
    char id[VH_ID_STRLEN + 1], want[VH_ID_STRLEN + 3];
    vh_id_format(&b->id, id);
    g_snprintf(want, sizeof want, "{%s}", id);
    assert_string_equal(vhdx_locator_get(&l, "parent_linkage"), want);
    vhdx_locator_clear(&l);
    /* the child: HasParent, 2 MiB blocks, Virtual Disk ID copied, sizes from the parent */
    assert_int_equal(c->type, VH_TYPE_DIFFERENCING);
    assert_int_equal(c->block_size, 2 * VH_MIB);
    assert_int_equal(b->block_size, 32 * VH_MIB);
    assert_int_equal(c->virtual_size, 10 * VH_MIB);
    assert_int_equal(c->physical_sector_size, 4096);
    assert_true(vh_id_equal(&c->link.parent_id, &b->id));
    assert_false(c->link.has_parent_id2);
    g_autoptr(GHashTable) bi = info_of(b), ci = info_of(c);
    assert_string_equal(g_hash_table_lookup(bi, "virtual_disk_id"),
                        g_hash_table_lookup(ci, "virtual_disk_id"));
    assert_string_equal(g_hash_table_lookup(ci, "bat_entries"), "2049");
    assert_int_equal(c->file.size, 4 * VH_MIB);
    /* fixed: every block FULLY_PRESENT after the BAT */
    g_autofree char *fixed = tpath("fixed.vhdx");
    make_disk(fixed, VH_TYPE_FIXED, 10 * VH_MIB, 2 * VH_MIB, 4096);
    g_autoptr(vh_disk) fx = open_ok(fixed, VH_OPEN_READ);
    assert_int_equal(fx->type, VH_TYPE_FIXED);
    assert_int_equal(fx->file.size, 14 * VH_MIB);
    assert_int_equal(fx->logical_sector_size, 4096);
    vh_run run;
    assert_int_equal(fx->ops->map(fx, 0, 10 * VH_MIB, &run, NULL), 0);
    assert_int_equal(run.kind, VH_RUN_DATA); /* contiguous blocks: one run */
    assert_int_equal(run.length, 10 * VH_MIB);
    assert_int_equal(run.file_offset, 4 * VH_MIB);
}

static void probe_open_skips_the_bat(void **state)
{
    g_autofree char *base = tpath("pb.vhdx");
    g_autofree char *child = tpath("pc.avhdx");
    make_disk(base, VH_TYPE_DYNAMIC, 8 * VH_MIB, 0, 0);
    make_child(child, base, NULL);
    /* a BAT entry in a reserved state: a full open refuses it, a probe never reads the BAT */
    set_bat(child, 0, vhdx_bat_entry(4, 0));
    expect_open_error(child, EINVAL, "reserved payload state");
    g_autoptr(vh_disk) c = open_ok(child, VH_OPEN_PROBE);
    g_autoptr(vh_disk) b = open_ok(base, VH_OPEN_PROBE);
    assert_int_equal(c->type, VH_TYPE_DIFFERENCING);
    assert_true(vh_id_equal(&c->link.parent_id, &b->id));
    assert_int_equal(c->virtual_size, 8 * VH_MIB);
    vh_run run;
    g_autoptr(GError) err = NULL;
    assert_int_equal(c->ops->map(c, 0, 512, &run, &err), -EINVAL);
    /* reads and writes fail cleanly too, and a probe open for writing writes nothing */
    uint8_t buf[512] = {0};
    assert_int_equal(vh_disk_read(c, buf, 0, sizeof buf, NULL), -EINVAL);
    assert_int_equal(vh_disk_read(b, buf, 0, sizeof buf, NULL), -EINVAL);
    g_autoptr(GBytes) before = file_bytes(child);
    {
        g_autoptr(vh_disk) w = open_ok(child, VH_OPEN_PROBE | VH_OPEN_WRITE);
        assert_int_equal(vh_disk_write(w, buf, 0, sizeof buf, NULL), -EINVAL);
        assert_int_equal(vh_disk_write(w, buf, 100, 10, NULL), -EINVAL);
        assert_int_equal(w->ops->write_sectors(w, buf, 0, sizeof buf, NULL), -EINVAL);
    }
    g_autoptr(GBytes) after = file_bytes(child);
    assert_true(g_bytes_equal(before, after));
}

static uint64_t info_u64(GHashTable *info, const char *key)
{
    const char *v = g_hash_table_lookup(info, key);
    assert_non_null(v);
    return g_ascii_strtoull(v, NULL, 10);
}

static void assert_same_identity(vh_disk *a, vh_disk *b)
{
    assert_int_equal(a->type, b->type);
    assert_int_equal(a->virtual_size, b->virtual_size);
    assert_int_equal(a->logical_sector_size, b->logical_sector_size);
    assert_int_equal(a->physical_sector_size, b->physical_sector_size);
    assert_int_equal(a->block_size, b->block_size);
    assert_true(vh_id_equal(&a->id, &b->id));
    assert_true(vh_id_equal(&a->link.parent_id, &b->link.parent_id));
    assert_int_equal(a->link.locators->len, b->link.locators->len);
    for (guint i = 0; i < a->link.locators->len; i++) {
        const vh_locator *x = a->link.locators->pdata[i], *y = b->link.locators->pdata[i];
        assert_int_equal(x->kind, y->kind);
        assert_string_equal(x->path, y->path);
    }
}

/*
 * A probe (what the store index does for every file of a store) reads the identifier, both
 * headers, region table 1, the used part of the metadata table and the items: never the BAT,
 * an empty log, or region table 2 while table 1 is good. It answers what a full open answers.
 */
static void probe_reads_only_identity(void **state)
{
    g_autofree char *base = tpath("rb.vhdx");
    g_autofree char *child = tpath("rc.avhdx");
    make_disk(base, VH_TYPE_DYNAMIC, 8 * VH_MIB, 0, 0);
    make_child(child, base, "C:\\vm\\rb.vhdx");
    g_autoptr(vh_disk) full = open_ok(child, VH_OPEN_READ);
    g_autoptr(GHashTable) info = info_of(full);
    readlog_start();
    g_autoptr(vh_disk) p = open_ok(child, VH_OPEN_PROBE);
    g_autoptr(GArray) reads = readlog_stop();
    assert_same_identity(p, full);
    assert_int_equal(p->link.locators->len, 2);
    assert_true(reads->len <= 8);
    assert_true(readlog_bytes(reads) <= 80 * VH_KIB);
    assert_false(
        readlog_touches(reads, info_u64(info, "bat_offset"), info_u64(info, "bat_length")));
    assert_false(
        readlog_touches(reads, info_u64(info, "log_offset"), info_u64(info, "log_length")));
    assert_false(readlog_touches(reads, VHDX_RT2_OFF, VHDX_RT_SIZE));
    assert_true(readlog_touches(reads, VHDX_RT1_OFF, VHDX_RT_SIZE));
    /* region table 1 damaged: the probe checks table 2 and uses it, as the full open does */
    uint8_t junk[64] = {1};
    write_at(child, VHDX_RT1_OFF + 100, junk, sizeof junk);
    readlog_start();
    g_autoptr(vh_disk) p2 = open_ok(child, VH_OPEN_PROBE);
    g_autoptr(GArray) reads2 = readlog_stop();
    assert_true(readlog_touches(reads2, VHDX_RT2_OFF, VHDX_RT_SIZE));
    g_autoptr(GHashTable) info2 = info_of(p2);
    assert_string_equal(g_hash_table_lookup(info2, "region_table"), "2");
    assert_same_identity(p2, full);
    /* both damaged: the probe fails like the full open */
    write_at(child, VHDX_RT2_OFF + 100, junk, sizeof junk);
    vh_disk *d = NULL;
    g_autoptr(GError) err = NULL;
    assert_int_equal(vh_disk_open(child, VH_OPEN_PROBE, &d, &err), -EIO);
    assert_non_null(strstr(err->message, "no valid region table"));
}

static void create_rejects_bad_options(void **state)
{
    g_autofree char *p = tpath("bad.vhdx");
    vh_create_opts o = {.format = VH_FORMAT_VHDX, .type = VH_TYPE_DYNAMIC, .size = 1000};
    assert_int_equal(vh_disk_create(p, &o, NULL), -EINVAL); /* not a sector multiple */
    o.size = VH_MIB;
    o.block_size = 3 * VH_MIB;
    assert_int_equal(vh_disk_create(p, &o, NULL), -EINVAL);
    o.block_size = 0;
    o.logical_sector_size = 1024;
    assert_int_equal(vh_disk_create(p, &o, NULL), -EINVAL);
    assert_false(g_file_test(p, G_FILE_TEST_EXISTS));
}

static void every_payload_state(void **state)
{
    g_autofree char *p = tpath("states.vhdx");
    const uint64_t bs = VH_MIB;
    make_disk(p, VH_TYPE_DYNAMIC, 8 * bs, VH_MIB, 512);
    /* block i at BAT index i (chunk ratio 4096 > 8). Give every block a state; present ones
     * point at data written at 4 MiB + i MiB */
    const unsigned states[8] = {0, 1, 2, 3, 5, 6, 6, 0};
    g_autofree uint8_t *blk = g_malloc(bs);
    for (int i = 0; i < 8; i++) {
        memset(blk, 0x10 + i, bs);
        write_at(p, 4 * VH_MIB + (uint64_t)i * bs, blk, bs);
        set_bat(p, (uint64_t)i, vhdx_bat_entry(states[i], 4 * VH_MIB + (uint64_t)i * bs));
    }
    g_autoptr(vh_disk) d = open_ok(p, VH_OPEN_READ);
    const vh_run_kind want[8] = {VH_RUN_ZERO, VH_RUN_ZERO, VH_RUN_ZERO, VH_RUN_ZERO,
                                 VH_RUN_ZERO, VH_RUN_DATA, VH_RUN_DATA, VH_RUN_ZERO};
    for (int i = 0; i < 8; i++) {
        vh_run run;
        assert_int_equal(d->ops->map(d, (uint64_t)i * bs + 512, bs, &run, NULL), 0);
        assert_int_equal(run.kind, want[i]);
        if (want[i] == VH_RUN_DATA)
            assert_int_equal(run.file_offset, 4 * VH_MIB + (uint64_t)i * bs + 512);
        uint8_t b[512];
        assert_int_equal(vh_disk_read(d, b, (uint64_t)i * bs + 4096, sizeof b, NULL), 0);
        assert_int_equal(b[0], want[i] == VH_RUN_DATA ? 0x10 + i : 0);
    }
    /* blocks 5 and 6 are contiguous in the file: one run; 0-4 zero: one run */
    vh_run run;
    assert_int_equal(d->ops->map(d, 5 * bs, 3 * bs, &run, NULL), 0);
    assert_int_equal(run.length, 2 * bs);
    assert_int_equal(d->ops->map(d, 0, 8 * bs, &run, NULL), 0);
    assert_int_equal(run.kind, VH_RUN_ZERO);
    assert_int_equal(run.length, 5 * bs);
    vh_disk_close(g_steal_pointer(&d));
    /* reserved state 4, and PARTIALLY_PRESENT without a parent, are refused with the entry */
    set_bat(p, 3, vhdx_bat_entry(4, 0));
    expect_open_error(p, EINVAL, "BAT entry 3 at offset 3145752");
    set_bat(p, 3, vhdx_bat_entry(VHDX_PB_PARTIALLY_PRESENT, 4 * VH_MIB));
    expect_open_error(p, EINVAL, "PARTIALLY_PRESENT");
    /* a present block past the end of the file */
    set_bat(p, 3, vhdx_bat_entry(VHDX_PB_FULLY_PRESENT, 64 * VH_MIB));
    expect_open_error(p, EINVAL, "past the end");
}

static void differencing_bitmaps(void **state)
{
    g_autofree char *base = tpath("b.vhdx");
    g_autofree char *child = tpath("c.vhdx");
    for (uint32_t lss = 512; lss <= 4096; lss *= 8) {
        unlink(base);
        unlink(child);
        make_disk(base, VH_TYPE_DYNAMIC, 8 * VH_MIB, VH_MIB, lss);
        make_child(child, base, NULL);
        g_autoptr(vh_disk) b = open_ok(base, VH_OPEN_WRITE);
        g_autofree uint8_t *fill = g_malloc(8 * VH_MIB);
        memset(fill, 0xBB, 8 * VH_MIB);
        assert_int_equal(vh_disk_write(b, fill, 0, 8 * VH_MIB, NULL), 0);
        vh_disk_close(g_steal_pointer(&b));
        g_autoptr(vh_disk) c = open_ok(child, VH_OPEN_WRITE);
        assert_int_equal(c->block_size, 2 * VH_MIB);
        uint8_t sec[4096];
        memset(sec, 0xCC, sizeof sec);
        /* sector 1 and sector 3 of block 1 */
        assert_int_equal(vh_disk_write(c, sec, 2 * VH_MIB + lss, lss, NULL), 0);
        assert_int_equal(vh_disk_write(c, sec, 2 * VH_MIB + 3 * lss, lss, NULL), 0);
        /* block 2 entirely: FULLY_PRESENT */
        g_autofree uint8_t *whole = g_malloc(2 * VH_MIB);
        memset(whole, 0xDD, 2 * VH_MIB);
        assert_int_equal(vh_disk_write(c, whole, 4 * VH_MIB, 2 * VH_MIB, NULL), 0);
        vh_disk_close(g_steal_pointer(&c));
        c = open_ok(child, VH_OPEN_READ);
        g_autoptr(GHashTable) info = info_of(c);
        assert_string_equal(g_hash_table_lookup(info, "blocks.partially_present"), "1");
        assert_string_equal(g_hash_table_lookup(info, "blocks.fully_present"), "1");
        assert_string_equal(g_hash_table_lookup(info, "sector_bitmap_blocks_present"), "1");
        /* runs: parent, data (1 sector), parent, data, parent... */
        vh_run run;
        assert_int_equal(c->ops->map(c, 2 * VH_MIB, 2 * VH_MIB, &run, NULL), 0);
        assert_int_equal(run.kind, VH_RUN_PARENT);
        assert_int_equal(run.length, lss);
        assert_int_equal(c->ops->map(c, 2 * VH_MIB + lss, 2 * VH_MIB, &run, NULL), 0);
        assert_int_equal(run.kind, VH_RUN_DATA);
        assert_int_equal(run.length, lss);
        assert_int_equal(c->ops->map(c, 2 * VH_MIB + 4 * lss, 2 * VH_MIB, &run, NULL), 0);
        assert_int_equal(run.kind, VH_RUN_PARENT);
        assert_int_equal(run.length, 2 * VH_MIB - 4 * lss);
        /* the bits on disk: LSB-first, bits 1 and 3 of the block's first byte; block 1 of
         * chunk 0 starts at bit 2 MiB / lss */
        uint32_t cr = vhdx_chunk_ratio(2 * VH_MIB, lss);
        g_autofree uint8_t *bat = read_at(child, 3 * VH_MIB, 8 * ((size_t)cr + 1));
        uint64_t sb_off = VHDX_BAT_OFFSET(vh_le64(bat + 8 * cr));
        assert_int_equal(VHDX_BAT_STATE(vh_le64(bat + 8 * cr)), VHDX_SB_PRESENT);
        g_autofree uint8_t *bits = read_at(child, sb_off + (2 * VH_MIB / lss) / 8, 2);
        assert_int_equal(bits[0], 0x0A);
        assert_int_equal(bits[1], 0x00);
        /* and through the chain */
        vh_disk_set_parent(c, open_ok(base, VH_OPEN_READ));
        uint8_t got[4 * 4096];
        assert_int_equal(vh_disk_read(c, got, 2 * VH_MIB, 4 * lss, NULL), 0);
        for (int s = 0; s < 4; s++)
            assert_int_equal(got[s * lss], s == 1 || s == 3 ? 0xCC : 0xBB);
        /* writing the rest of the block makes it FULLY_PRESENT */
        vh_disk_close(g_steal_pointer(&c));
        c = open_ok(child, VH_OPEN_WRITE);
        assert_int_equal(vh_disk_write(c, whole, 2 * VH_MIB, lss, NULL), 0);
        assert_int_equal(vh_disk_write(c, whole, 2 * VH_MIB + 2 * lss, lss, NULL), 0);
        assert_int_equal(vh_disk_write(c, whole, 2 * VH_MIB + 4 * lss, 2 * VH_MIB - 4 * lss, NULL),
                         0);
        assert_int_equal(c->ops->map(c, 2 * VH_MIB, 4 * VH_MIB, &run, NULL), 0);
        assert_int_equal(run.kind, VH_RUN_DATA);
        assert_int_equal(run.length, 2 * VH_MIB);
        vh_disk_close(g_steal_pointer(&c));
        c = open_ok(child, VH_OPEN_READ);
        g_autoptr(GHashTable) info2 = info_of(c);
        assert_string_equal(g_hash_table_lookup(info2, "blocks.fully_present"), "2");
        assert_null(g_hash_table_lookup(info2, "blocks.partially_present"));
    }
}

/*
 * An open reads only the used part of the metadata table and the items together when they lie
 * close: a table of 300 entries (past the first 4 KiB) with a known item last, and an item far
 * from the others, still read right, by a probe and a full open alike.
 */
static void long_metadata_table_and_far_items(void **state)
{
    g_autofree char *p = tpath("md.vhdx");
    make_disk(p, VH_TYPE_DYNAMIC, 8 * VH_MIB, VH_MIB, 512);
    const uint64_t md_off = 2 * VH_MIB; /* vh_vhdx_create's layout */
    g_autofree uint8_t *tb = read_at(p, md_off, VHDX_MD_TABLE_SIZE);
    g_autofree vhdx_md_table *t = g_new0(vhdx_md_table, 1);
    assert_int_equal(vhdx_md_table_parse(tb, md_off, VH_MIB, t, NULL), 0);
    int known = t->count;
    while (t->count < 300) {
        vhdx_md_entry *e = &t->e[t->count];
        *e = (vhdx_md_entry){.flags = VHDX_MD_IS_USER};
        e->item.b[0] = 0xEE;
        vh_put_le16(e->item.b + 1, t->count);
        t->count++;
    }
    vhdx_md_entry first = t->e[0]; /* file parameters: last in the table */
    t->e[0] = t->e[t->count - 1];
    t->e[t->count - 1] = first;
    /* the disk size item moved 512 KiB away from the others */
    int ds = vhdx_md_find(t, &vhdx_guid_disk_size);
    assert_true(ds >= 0 && ds < known);
    g_autofree uint8_t *item = read_at(p, md_off + t->e[ds].offset, 8);
    t->e[ds].offset = 0x80000;
    write_at(p, md_off + 0x80000, item, 8);
    vhdx_md_table_write(t, tb);
    write_at(p, md_off, tb, VHDX_MD_TABLE_SIZE);
    for (int probe = 0; probe < 2; probe++) {
        g_autoptr(vh_disk) d = open_ok(p, probe ? VH_OPEN_PROBE : VH_OPEN_READ);
        assert_int_equal(d->block_size, VH_MIB);
        assert_int_equal(d->virtual_size, 8 * VH_MIB);
        g_autoptr(GHashTable) info = info_of(d);
        assert_string_equal(g_hash_table_lookup(info, "metadata_items"), "300");
    }
}

static void header_and_region_fallback(void **state)
{
    g_autofree char *p = tpath("fb.vhdx");
    make_disk(p, VH_TYPE_DYNAMIC, 8 * VH_MIB, 0, 0);
    uint8_t junk[64] = {1};
    /* header 2 (current, seq 2) broken: header 1 is used, with a warning */
    write_at(p, VHDX_HDR2_OFF + 100, junk, sizeof junk);
    {
        g_autoptr(vh_disk) d = open_ok(p, VH_OPEN_READ);
        assert_non_null(d->warnings);
        assert_non_null(strstr(d->warnings->pdata[0], "header 2"));
        g_autoptr(GHashTable) info = info_of(d);
        assert_string_equal(g_hash_table_lookup(info, "current_header"), "1");
        assert_string_equal(g_hash_table_lookup(info, "header2.sequence"), "invalid");
    }
    /* a write repairs both slots */
    {
        g_autoptr(vh_disk) d = open_ok(p, VH_OPEN_WRITE);
        uint8_t s[512] = {7};
        assert_int_equal(vh_disk_write(d, s, 0, sizeof s, NULL), 0);
    }
    {
        g_autoptr(vh_disk) d = open_ok(p, VH_OPEN_READ);
        assert_null(d->warnings);
    }
    /* region table 1 broken: table 2 used */
    write_at(p, VHDX_RT1_OFF + 100, junk, sizeof junk);
    {
        g_autoptr(vh_disk) d = open_ok(p, VH_OPEN_READ);
        g_autoptr(GHashTable) info = info_of(d);
        assert_string_equal(g_hash_table_lookup(info, "region_table"), "2");
    }
    write_at(p, VHDX_RT2_OFF + 100, junk, sizeof junk);
    expect_open_error(p, EIO, "no valid region table");
    write_at(p, VHDX_HDR1_OFF + 100, junk, sizeof junk);
    write_at(p, VHDX_HDR2_OFF + 100, junk, sizeof junk);
    expect_open_error(p, EIO, "no valid header");
}

static void set_version2(vhdx_header *h)
{
    h->version = 2;
}

static void set_log_version(vhdx_header *h)
{
    h->log_version = 1;
    h->log_guid = vh_id_random();
}

static void refuse_unknown_required(void **state)
{
    g_autofree char *p = tpath("req.vhdx");
    make_disk(p, VH_TYPE_DYNAMIC, 8 * VH_MIB, 0, 0);
    g_autoptr(GBytes) orig = file_bytes(p);
    /* an unknown metadata item: fine unless marked required */
    g_autofree uint8_t *t = read_at(p, 2 * VH_MIB, 64 * 1024);
    vhdx_md_table md;
    assert_int_equal(vhdx_md_table_parse(t, 0, VH_MIB, &md, NULL), 0);
    md.e[md.count++] = (vhdx_md_entry){vh_id_random(), 0x20000, 16, 0};
    vhdx_md_table_write(&md, t);
    write_at(p, 2 * VH_MIB, t, 64 * 1024);
    vh_disk_close(open_ok(p, VH_OPEN_READ));
    md.e[md.count - 1].flags = VHDX_MD_IS_REQUIRED;
    vhdx_md_table_write(&md, t);
    write_at(p, 2 * VH_MIB, t, 64 * 1024);
    expect_open_error(p, ENOTSUP, "marked required");
    /* an unknown required region */
    gsize len;
    g_file_set_contents(p, g_bytes_get_data(orig, &len), (gssize)g_bytes_get_size(orig), NULL);
    g_autofree uint8_t *r = read_at(p, VHDX_RT1_OFF, VHDX_RT_SIZE);
    vhdx_region_table rt;
    assert_int_equal(vhdx_region_table_parse(r, 0, UINT64_MAX, &rt, NULL), 0);
    rt.e[rt.count++] = (vhdx_region){vh_id_random(), 3 * VH_MIB, VH_MIB, 1};
    vhdx_region_table_write(&rt, r);
    write_at(p, VHDX_RT1_OFF, r, VHDX_RT_SIZE);
    write_at(p, VHDX_RT2_OFF, r, VHDX_RT_SIZE);
    expect_open_error(p, ENOTSUP, "marked required");
    /* header version 2; a log of an unknown version */
    g_file_set_contents(p, g_bytes_get_data(orig, &len), (gssize)g_bytes_get_size(orig), NULL);
    edit_header(p, VHDX_HDR1_OFF, set_version2);
    edit_header(p, VHDX_HDR2_OFF, set_version2);
    expect_open_error(p, EIO, "version 2");
    g_file_set_contents(p, g_bytes_get_data(orig, &len), (gssize)g_bytes_get_size(orig), NULL);
    edit_header(p, VHDX_HDR2_OFF, set_log_version);
    expect_open_error(p, ENOTSUP, "log version");
    /* shorter than the header section; not a VHDX */
    assert_int_equal(truncate(p, 512 * 1024), 0);
    expect_open_error(p, EINVAL, "shorter than 1 MiB");
}

static void guids_follow_the_header_protocol(void **state)
{
    g_autofree char *p = tpath("g.vhdx");
    make_disk(p, VH_TYPE_DYNAMIC, 8 * VH_MIB, 0, 0);
    g_autoptr(GBytes) before = file_bytes(p);
    char fw0[64], dw0[64];
    {
        /* a writable open that changes nothing writes nothing */
        g_autoptr(vh_disk) d = open_ok(p, VH_OPEN_WRITE);
        g_autoptr(GHashTable) i = info_of(d);
        g_strlcpy(fw0, g_hash_table_lookup(i, "file_write_guid"), sizeof fw0);
        g_strlcpy(dw0, g_hash_table_lookup(i, "data_write_guid"), sizeof dw0);
    }
    g_autoptr(GBytes) after = file_bytes(p);
    assert_true(g_bytes_equal(before, after));
    {
        g_autoptr(vh_disk) d = open_ok(p, VH_OPEN_WRITE);
        uint8_t s[4096] = {9};
        assert_int_equal(vh_disk_write(d, s, 8192, sizeof s, NULL), 0);
        assert_int_equal(vh_disk_write(d, s, 3 * VH_MIB, sizeof s, NULL), 0);
        char id[VH_ID_STRLEN + 1];
        vh_id_format(&d->id, id);
        assert_string_not_equal(id, dw0); /* a payload write renews DataWriteGuid */
    }
    g_autoptr(vh_disk) d = open_ok(p, VH_OPEN_READ);
    g_autoptr(GHashTable) i = info_of(d);
    assert_string_not_equal(g_hash_table_lookup(i, "file_write_guid"), fw0);
    assert_string_not_equal(g_hash_table_lookup(i, "data_write_guid"), dw0);
    /* one session: headers updated once for the GUIDs, then twice per logged change */
    assert_string_equal(g_hash_table_lookup(i, "log_guid"), "00000000-0000-0000-0000-000000000000");
    assert_int_equal(d->virtual_size, 8 * VH_MIB);
    uint8_t s[4096];
    assert_int_equal(vh_disk_read(d, s, 8192, sizeof s, NULL), 0);
    assert_int_equal(s[0], 9);
}

static void set_parent_link_rules(void **state)
{
    g_autofree char *base = tpath("p.vhdx");
    g_autofree char *child = tpath("c.avhdx");
    make_disk(base, VH_TYPE_DYNAMIC, 8 * VH_MIB, 0, 0);
    make_child(child, base, "D:\\old\\p.vhdx");
    /* a vendor key and a non-zero parent_linkage2 must survive; a user item right after the
     * locator makes a longer locator move */
    uint32_t moved_to = 0;
    {
        g_autofree uint8_t *t = read_at(child, 2 * VH_MIB, 64 * 1024);
        vhdx_md_table md;
        assert_int_equal(vhdx_md_table_parse(t, 0, VH_MIB, &md, NULL), 0);
        vhdx_locator l;
        vhdx_locator_init(&l);
        vhdx_locator_add(&l, "parent_linkage", "{11111111-2222-3333-4444-555555555555}");
        vhdx_locator_add(&l, "relative_path", ".\\old.vhdx");
        vhdx_locator_add(&l, "vendor", "v");
        vhdx_locator_add(&l, "parent_linkage2", "{aaaaaaaa-2222-3333-4444-555555555555}");
        uint8_t *item;
        uint32_t len;
        assert_int_equal(vhdx_locator_build(&l, &item, &len, NULL), 0);
        write_at(child, 2 * VH_MIB + md.e[5].offset, item, len);
        md.e[5].length = len;
        md.e[md.count++] =
            (vhdx_md_entry){vh_id_random(), md.e[5].offset + len, 16, VHDX_MD_IS_USER};
        moved_to = md.e[5].offset + len + 16;
        vhdx_md_table_write(&md, t);
        write_at(child, 2 * VH_MIB, t, 64 * 1024);
        g_free(item);
        vhdx_locator_clear(&l);
    }
    g_autoptr(vh_disk) p = open_ok(base, VH_OPEN_READ);
    char dw_before[VH_ID_STRLEN + 1], fw_before[64];
    {
        g_autoptr(vh_disk) c = open_ok(child, VH_OPEN_READ);
        assert_true(c->link.has_parent_id2);
        vh_id_format(&c->id, dw_before);
        g_autoptr(GHashTable) i = info_of(c);
        g_strlcpy(fw_before, g_hash_table_lookup(i, "file_write_guid"), sizeof fw_before);
    }
    GString *longp = g_string_new("D:\\");
    for (int i = 0; i < 200; i++)
        g_string_append(longp, "folder\\");
    g_string_append(longp, "p.vhdx");
    vh_link_update u = {.parent_id = p->id, .relative = ".\\p.vhdx", .absolute = longp->str};
    {
        g_autoptr(vh_disk) c = open_ok(child, VH_OPEN_WRITE);
        g_autoptr(GError) err = NULL;
        if (c->ops->set_parent_link(c, &u, &err) < 0)
            fail_msg("%s", err->message);
        assert_true(vh_id_equal(&c->link.parent_id, &p->id)); /* d->link updated */
    }
    g_autoptr(vh_disk) c = open_ok(child, VH_OPEN_READ);
    char dw[VH_ID_STRLEN + 1];
    vh_id_format(&c->id, dw);
    assert_string_equal(dw, dw_before); /* the child's DataWriteGuid never changes */
    g_autoptr(GHashTable) i = info_of(c);
    assert_string_not_equal(g_hash_table_lookup(i, "file_write_guid"), fw_before);
    assert_true(vh_id_equal(&c->link.parent_id, &p->id));
    assert_true(c->link.has_parent_id2);
    char pid[VH_ID_STRLEN + 1], want[64];
    vh_id_format(&p->id, pid);
    g_snprintf(want, sizeof want, "{%s}", pid);
    assert_string_equal(g_hash_table_lookup(i, "locator.0.parent_linkage"), want);
    assert_string_equal(g_hash_table_lookup(i, "locator.1.absolute_win32_path"), longp->str);
    assert_string_equal(g_hash_table_lookup(i, "locator.2.relative_path"), ".\\p.vhdx");
    assert_string_equal(g_hash_table_lookup(i, "locator.3.parent_linkage2"),
                        "{aaaaaaaa-2222-3333-4444-555555555555}");
    assert_string_equal(g_hash_table_lookup(i, "locator.4.vendor"), "v");
    /* the longer locator moved to free space past the other items */
    g_autofree char *where = g_strdup_printf("offset=0x%x ", moved_to);
    assert_non_null(strstr(g_hash_table_lookup(i, "metadata.5"), where));
    /* relinked without an absolute path: the stale one is dropped, the item stays in place */
    vh_link_update u2 = {.parent_id = p->id, .relative = ".\\q.vhdx"};
    {
        g_autoptr(vh_disk) w = open_ok(child, VH_OPEN_WRITE);
        assert_int_equal(w->ops->set_parent_link(w, &u2, NULL), 0);
    }
    g_autoptr(vh_disk) c2 = open_ok(child, VH_OPEN_READ);
    assert_int_equal(c2->link.locators->len, 1);
    assert_string_equal(((vh_locator *)c2->link.locators->pdata[0])->path, ".\\q.vhdx");
    g_autoptr(GHashTable) i2 = info_of(c2);
    assert_non_null(strstr(g_hash_table_lookup(i2, "metadata.5"), where));
    /* refusals: read-only, no relative path, not differencing */
    assert_int_equal(c2->ops->set_parent_link(c2, &u2, NULL), -EROFS);
    g_autoptr(vh_disk) w = open_ok(child, VH_OPEN_WRITE);
    vh_link_update u3 = {.parent_id = p->id};
    assert_int_equal(w->ops->set_parent_link(w, &u3, NULL), -EINVAL);
    g_autoptr(vh_disk) pw = open_ok(base, VH_OPEN_WRITE);
    assert_int_equal(pw->ops->set_parent_link(pw, &u2, NULL), -EINVAL);
    g_string_free(longp, TRUE);
}

static void web01_chain(void **state)
{
    const char *c = g_getenv("VH_CORPUS");
    g_autofree char *tarball =
        c ? g_build_filename(c, "hyperv-style", "Web01-vhdx.tar.gz", NULL) : NULL;
    if (!tarball || !g_file_test(tarball, G_FILE_TEST_EXISTS)) {
        g_clear_pointer(&tarball, g_free); /* skip_unless_ci() leaves the test */
        skip_unless_ci("corpus file hyperv-style/Web01-vhdx.tar.gz is missing");
    }
    g_autofree char *cmd = g_strdup_printf("tar xzf '%s' -C '%s'", tarball, tmp_dir);
    assert_int_equal(system(cmd), 0);
    g_autofree char *dir = tpath("Virtual Hard Disks");
    g_autofree char *b = g_build_filename(dir, "Web01.vhdx", NULL);
    g_autofree char *c1 =
        g_build_filename(dir, "Web01_9A1DE644-815E-46D1-BB8F-AA1837F8A88B.avhdx", NULL);
    g_autofree char *c2 =
        g_build_filename(dir, "Web01_6C307511-B2B9-437A-A8DF-6EC4CE4A2BBD.avhdx", NULL);
    vh_disk *top = open_ok(c2, VH_OPEN_READ);
    vh_disk *mid = open_ok(c1, VH_OPEN_READ);
    vh_disk *bot = open_ok(b, VH_OPEN_READ);
    assert_true(vh_id_equal(&top->link.parent_id, &mid->id));
    assert_true(vh_id_equal(&mid->link.parent_id, &bot->id));
    assert_false(top->link.has_parent_id2); /* all-zero parent_linkage2 */
    assert_int_equal(top->link.locators->len, 3);
    vh_locator *l0 = top->link.locators->pdata[0];
    assert_int_equal(l0->kind, VH_LOC_ABSOLUTE_WIN32_PATH);
    vh_disk_set_parent(mid, bot);
    vh_disk_set_parent(top, mid);
    g_autofree uint8_t *buf = g_malloc(top->virtual_size);
    assert_int_equal(vh_disk_read(top, buf, 0, top->virtual_size, NULL), 0);
    g_autofree char *sum = g_compute_checksum_for_data(G_CHECKSUM_SHA256, buf, top->virtual_size);
    assert_string_equal(sum, "36a0c96698e57541bc1fb9ab8f32aed45e1843c6d29af0820fb3b89b8ed50669");
    vh_disk_close(top);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, tmp_setup, tmp_teardown)
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(guid_byte_order),
        T(real_structures_parse),
        cmocka_unit_test(header_rejections),
        cmocka_unit_test(region_table_rejections),
        cmocka_unit_test(metadata_table_rules),
        cmocka_unit_test(known_items),
        cmocka_unit_test(parent_locator_parse_and_build),
        cmocka_unit_test(chunk_ratio_arithmetic),
        cmocka_unit_test(bitmap_bits_lsb_first),
        T(created_layout_is_hyperv_like),
        T(probe_open_skips_the_bat),
        T(probe_reads_only_identity),
        T(create_rejects_bad_options),
        T(every_payload_state),
        T(differencing_bitmaps),
        T(long_metadata_table_and_far_items),
        T(header_and_region_fallback),
        T(refuse_unknown_required),
        T(guids_follow_the_header_protocol),
        T(set_parent_link_rules),
        T(web01_chain),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
