// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * test_vhd.c - the VHD engine: structures to and from bytes (vhd_format.c), the data-space
 * heuristic, text decoding, bitmaps, geometry; opening small files built in a temp folder,
 * including every rejection path; runs from map; Windows-style allocation and its crash
 * ordering; create layouts; set_parent_link (in place, new space, missing slot, crash at every
 * write).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "readlog.h"
#include "tmpfix.h"
#include "vhd_priv.h"

#define MIB VH_MIB

/* ------------------------------------------------------------------ helpers */

static void raw_write(const char *path, uint64_t off, const void *buf, size_t len)
{
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, buf, len, (off_t)off), (ssize_t)len);
    close(fd);
}

static void raw_read(const char *path, uint64_t off, void *buf, size_t len)
{
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, buf, len, (off_t)off), (ssize_t)len);
    close(fd);
}

static uint64_t file_size(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return (uint64_t)st.st_size;
}

static void raw_put_be32(const char *path, uint64_t off, uint32_t v)
{
    uint8_t b[4];
    vh_put_be32(b, v);
    raw_write(path, off, b, 4);
}

static void raw_put_be64(const char *path, uint64_t off, uint64_t v)
{
    uint8_t b[8];
    vh_put_be64(b, v);
    raw_write(path, off, b, 8);
}

/* Recomputes the header checksum (at 0x200) after a test changed header bytes. */
static void fix_header(const char *path)
{
    uint8_t b[VHD_HEADER_SIZE];
    raw_read(path, 0x200, b, sizeof b);
    vh_put_be32(b + 36, vh_vhd_checksum(b, sizeof b, 36));
    raw_write(path, 0x200, b, sizeof b);
}

/* Recomputes both footer copies' checksums of a dynamic disk after edits. */
static void fix_footers(const char *path)
{
    uint8_t b[VHD_FOOTER_SIZE];
    uint64_t tail = file_size(path) - VHD_FOOTER_SIZE;
    raw_read(path, tail, b, sizeof b);
    vh_put_be32(b + 64, vh_vhd_checksum(b, sizeof b, 64));
    raw_write(path, tail, b, sizeof b);
    raw_write(path, 0, b, sizeof b);
}

static void create_disk(const char *path, vh_type type, uint64_t size, uint32_t bs)
{
    vh_create_opts o = {.format = VH_FORMAT_VHD, .type = type, .size = size, .block_size = bs};
    g_autoptr(GError) err = NULL;
    assert_int_equal(vh_disk_create(path, &o, &err), 0);
}

static void create_child(const char *path, const char *parent_path, const char *rel,
                         const char *abs, int64_t mtime)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(vh_disk) parent = NULL;
    assert_int_equal(vh_disk_open(parent_path, VH_OPEN_READ, &parent, &err), 0);
    vh_create_opts o = {.format = VH_FORMAT_VHD,
                        .type = VH_TYPE_DIFFERENCING,
                        .parent = parent,
                        .parent_relative = rel,
                        .parent_absolute = abs,
                        .parent_mtime = mtime};
    assert_int_equal(vh_disk_create(path, &o, &err), 0);
}

static vh_disk *open_ok(const char *path, vh_open_flags flags)
{
    g_autoptr(GError) err = NULL;
    vh_disk *d = NULL;
    int r = vh_disk_open(path, flags, &d, &err);
    if (r < 0)
        fail_msg("%s", err->message);
    return d;
}

/* Opens expecting failure with errnum and a message naming the file (and `needle`). */
static void open_fails(const char *path, vh_open_flags flags, int errnum, const char *needle)
{
    g_autoptr(GError) err = NULL;
    vh_disk *d = NULL;
    int r = vh_disk_open(path, flags, &d, &err);
    if (r == 0) {
        vh_disk_close(d);
        fail_msg("%s opened but should not", path);
    }
    assert_int_equal(r, -errnum);
    assert_non_null(err);
    assert_non_null(strstr(err->message, path));
    if (needle && !strstr(err->message, needle))
        fail_msg("\"%s\" not in \"%s\"", needle, err->message);
}

static bool has_warning(vh_disk *d, const char *needle)
{
    for (guint i = 0; d->warnings && i < d->warnings->len; i++)
        if (strstr(d->warnings->pdata[i], needle))
            return true;
    return false;
}

static const vh_locator *find_loc(vh_disk *d, vh_locator_kind k)
{
    for (guint i = 0; i < d->link.locators->len; i++) {
        const vh_locator *l = d->link.locators->pdata[i];
        if (l->kind == k)
            return l;
    }
    return NULL;
}

/* ------------------------------------------------------------------ structures */

static void footer_roundtrip_keeps_reserved(void **state)
{
    vhd_footer f = {0};
    f.features = 2;
    f.version = VHD_VERSION;
    f.data_offset = 512;
    f.timestamp = 12345;
    memcpy(f.creator_app, "tap", 4);
    f.creator_version = 0x00010003;
    memcpy(f.creator_host, "Wi2k", 4);
    f.original_size = f.current_size = 8 * MIB;
    f.cylinders = 240;
    f.heads = 4;
    f.sectors_per_track = 17;
    f.disk_type = 4;
    for (int i = 0; i < 16; i++)
        f.unique_id[i] = (uint8_t)(i * 17);
    f.raw[85] = 1; /* blktap's hidden flag lives in the reserved bytes */
    uint8_t b[VHD_FOOTER_SIZE];
    vhd_footer_serialise(&f, b);
    assert_memory_equal(b, "conectix", 8);
    assert_int_equal(vh_be64(b + 48), 8 * MIB);
    assert_int_equal(vh_be32(b + 56), (240u << 16) | (4 << 8) | 17);
    assert_int_equal(b[85], 1);
    vhd_footer g;
    vhd_footer_parse(b, &g);
    assert_true(g.cookie_ok && g.checksum_ok);
    assert_int_equal(g.current_size, 8 * MIB);
    assert_int_equal(g.disk_type, 4);
    assert_int_equal(g.cylinders, 240);
    assert_memory_equal(g.unique_id, f.unique_id, 16);
    assert_int_equal(g.checksum, vh_vhd_checksum(b, sizeof b, 64));
    b[100] ^= 1; /* any change breaks the checksum */
    vhd_footer_parse(b, &g);
    assert_false(g.checksum_ok);
    assert_int_not_equal(g.checksum, g.checksum_computed);
    b[0] = 'C';
    vhd_footer_parse(b, &g);
    assert_false(g.cookie_ok);
}

static void header_roundtrip_with_locators(void **state)
{
    vhd_header h = {0};
    h.data_offset = VHD_FIXED_DATA_OFFSET;
    h.table_offset = 0x2000;
    h.version = VHD_VERSION;
    h.max_table_entries = 5;
    h.block_size = 2 * MIB;
    h.parent_timestamp = 77;
    memset(h.parent_id, 0xAB, 16);
    h.loc[0] = (vhd_locator_entry){VHD_PLAT_W2KU, 4096, 90, 0, 0x1000};
    h.loc[7] = (vhd_locator_entry){VHD_PLAT_W2RU, 65536, 22, 0, 0x3000};
    h.raw[1000] = 9; /* reserved, kept */
    uint8_t b[VHD_HEADER_SIZE];
    vhd_header_serialise(&h, b);
    assert_memory_equal(b, "cxsparse", 8);
    assert_int_equal(vh_be32(b + VHD_LOC_OFF), VHD_PLAT_W2KU);
    assert_int_equal(vh_be64(b + VHD_LOC_OFF + 7 * 24 + 16), 0x3000);
    assert_int_equal(b[1000], 9);
    vhd_header g;
    vhd_header_parse(b, &g);
    assert_true(g.cookie_ok && g.checksum_ok);
    assert_int_equal(g.table_offset, 0x2000);
    assert_int_equal(g.max_table_entries, 5);
    assert_int_equal(g.block_size, 2 * MIB);
    assert_int_equal(g.parent_timestamp, 77);
    assert_int_equal(g.loc[0].length, 90);
    assert_int_equal(g.loc[7].space, 65536);
    assert_int_equal(g.loc[3].code, 0);
    b[600] ^= 0x40;
    vhd_header_parse(b, &g);
    assert_false(g.checksum_ok);
    uint8_t e[24];
    vhd_locator_entry le = {VHD_PLAT_MACX, 1, 30, 0, UINT64_C(0x123456789)};
    vhd_locator_entry_serialise(&le, e);
    vhd_locator_entry back;
    vhd_locator_entry_parse(e, &back);
    assert_memory_equal(&le, &back, sizeof le);
    assert_memory_equal(e, "MacX", 4);
}

static void data_space_heuristic(void **state)
{
    uint64_t b;
    assert_true(vhd_locator_space_bytes(1, &b));
    assert_int_equal(b, 512); /* sectors (spec, old VirtualBox) */
    assert_true(vhd_locator_space_bytes(8, &b));
    assert_int_equal(b, 4096);
    assert_true(vhd_locator_space_bytes(511, &b));
    assert_int_equal(b, 511 * 512);
    assert_true(vhd_locator_space_bytes(512, &b));
    assert_int_equal(b, 512); /* bytes (Windows, blktap) */
    assert_true(vhd_locator_space_bytes(65536, &b));
    assert_int_equal(b, 65536);
    assert_true(vhd_locator_space_bytes(0, &b));
    assert_int_equal(b, 0);
    assert_false(vhd_locator_space_bytes(513, &b));
    assert_false(vhd_locator_space_bytes(1000, &b));
    assert_false(vhd_locator_space_bytes(UINT32_MAX, &b));
}

static void locator_text_decoding(void **state)
{
    const uint8_t le[] = {'.', 0, '\\', 0, 'p', 0, '.', 0, 'v', 0, 'h', 0, 'd', 0};
    g_autofree char *a = vhd_locator_decode(VHD_PLAT_W2RU, le, sizeof le);
    assert_string_equal(a, ".\\p.vhd");
    const uint8_t be[] = {0, 'C', 0, ':', 0, '\\', 0, 'x'}; /* a writer that used BE */
    g_autofree char *b = vhd_locator_decode(VHD_PLAT_W2KU, be, sizeof be);
    assert_string_equal(b, "C:\\x");
    /* a surrogate pair (U+1F600) and an odd trailing byte */
    const uint8_t sur[] = {'a', 0, 0x3D, 0xD8, 0x00, 0xDE, 'b', 0, 'z'};
    g_autofree char *c = vhd_locator_decode(VHD_PLAT_W2KU, sur, sizeof sur);
    assert_string_equal(c, "a\xF0\x9F\x98\x80"
                           "b");
    const uint8_t lone[] = {'a', 0, 0x00, 0xDC, 0, 0, 'q', 0}; /* stops at the NUL unit */
    g_autofree char *d = vhd_locator_decode(VHD_PLAT_W2RU, lone, sizeof lone);
    assert_string_equal(d, "a\xEF\xBF\xBD");
    const uint8_t latin[] = {'C', ':', '\\', 0xE9, 't', 0xE9, 0, 'x'};
    g_autofree char *e = vhd_locator_decode(VHD_PLAT_WI2K, latin, sizeof latin);
    assert_string_equal(e, "C:\\\xC3\xA9t\xC3\xA9");
    const char *url = "file://localhost/Users/me/My%20Disks/p%C3%A9re.vhd%zz";
    g_autofree char *f = vhd_locator_decode(VHD_PLAT_MACX, (const uint8_t *)url, strlen(url));
    assert_string_equal(f, "file://localhost/Users/me/My Disks/p\xC3\xA9re.vhd%zz");
    g_autofree char *g = vhd_percent_decode("%2", 2); /* cut escape kept literally */
    assert_string_equal(g, "%2");
    g_autofree char *h = vhd_percent_decode("%ff", 3); /* invalid UTF-8 made valid */
    assert_true(g_utf8_validate(h, -1, NULL));
}

static void parent_name_decoding(void **state)
{
    uint8_t name[VHD_NAME_BYTES] = {0};
    assert_int_equal(vhd_encode_parent_name("D:\\VMs\\p\xC3\xA9.vhd", name), 0);
    assert_int_equal(name[0], 0); /* big-endian */
    assert_int_equal(name[1], 'D');
    g_autofree char *a = vhd_parent_name_decode(name, false);
    assert_string_equal(a, "D:\\VMs\\p\xC3\xA9.vhd");
    /* old blktap "tap" 0.1 wrote host order (little-endian) */
    uint8_t tap[VHD_NAME_BYTES] = {'p', 0, '.', 0, 'v', 0, 'h', 0, 'd', 0};
    g_autofree char *b = vhd_parent_name_decode(tap, true);
    assert_string_equal(b, "p.vhd");
    g_autofree char *c = vhd_parent_name_decode(tap, false); /* the zero bytes decide */
    assert_string_equal(c, "p.vhd");
    uint8_t cjk[VHD_NAME_BYTES] = {0x4E, 0x2D, 0x65, 0x87}; /* no zero bytes: BE as specified */
    g_autofree char *d = vhd_parent_name_decode(cjk, false);
    assert_string_equal(d, "\xE4\xB8\xAD\xE6\x96\x87");
    uint8_t full[VHD_NAME_BYTES];
    for (size_t i = 0; i < sizeof full; i += 2) {
        full[i] = 0;
        full[i + 1] = 'x'; /* 256 units, no terminator */
    }
    g_autofree char *e = vhd_parent_name_decode(full, false);
    assert_int_equal(strlen(e), 256);
    g_autofree char *long_name = g_strnfill(257, 'y');
    assert_int_equal(vhd_encode_parent_name(long_name, name), -ENAMETOOLONG);
}

static void bitmap_msb_first(void **state)
{
    uint8_t bm[4] = {0x80, 0x01, 0xFF, 0x00};
    assert_true(vhd_bitmap_get(bm, 0));
    assert_false(vhd_bitmap_get(bm, 1));
    assert_true(vhd_bitmap_get(bm, 15));
    assert_false(vhd_bitmap_get(bm, 14));
    bool v;
    assert_int_equal(vhd_bitmap_run(bm, 0, 32, &v), 1);
    assert_true(v);
    assert_int_equal(vhd_bitmap_run(bm, 1, 32, &v), 14);
    assert_false(v);
    assert_int_equal(vhd_bitmap_run(bm, 15, 32, &v), 9);
    assert_true(v);
    assert_int_equal(vhd_bitmap_run(bm, 24, 32, &v), 8);
    assert_int_equal(vhd_bitmap_run(bm, 24, 28, &v), 4); /* the limit is honoured */
    uint8_t z[2] = {0};
    assert_true(vhd_bitmap_set(z, 6, 4));
    assert_int_equal(z[0], 0x03);
    assert_int_equal(z[1], 0xC0);
    assert_false(vhd_bitmap_set(z, 7, 2));
    assert_int_equal(vhd_bitmap_bytes(2 * MIB), 512);
    assert_int_equal(vhd_bitmap_bytes(512 * 1024), 512);
    assert_int_equal(vhd_bitmap_bytes(4 * MIB), 1024);
    assert_int_equal(vhd_bitmap_bytes(4096), 512);
}

static void bat_and_geometry(void **state)
{
    const uint8_t raw[] = {0, 0, 0, 0x0F, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x50, 0x37};
    uint32_t bat[3];
    vhd_bat_decode(raw, 3, bat);
    assert_int_equal(bat[0], 0x0F);
    assert_int_equal(bat[1], VHD_BAT_UNUSED);
    assert_int_equal(bat[2], 0x5037);
    uint16_t c;
    uint8_t h, s;
    vhd_geometry(4 * MIB, &c, &h, &s); /* MEASURED 120x4x17 (doc/formats.md §1.1) */
    assert_int_equal(c, 120);
    assert_int_equal(h, 4);
    assert_int_equal(s, 17);
    vhd_geometry(10 * MIB, &c, &h, &s); /* dissect fixed.vhd: 0x012d0411 */
    assert_int_equal(((uint32_t)c << 16) | ((uint32_t)h << 8) | s, 0x012d0411);
    vhd_geometry(UINT64_C(136365211648), &c, &h, &s); /* Hyper-V 127 GiB: 0xfefe10ff */
    assert_int_equal(((uint32_t)c << 16) | ((uint32_t)h << 8) | s, 0xfefe10ff);
    vhd_geometry(2000 * VH_GIB, &c, &h, &s); /* capped at 65535/16/255 */
    assert_int_equal(c, 65535);
    assert_int_equal(h, 16);
    assert_int_equal(s, 255);
    vhd_geometry(1 * VH_GIB, &c, &h, &s);
    assert_int_equal((uint64_t)c * h * s, 2096640); /* 2080/16/63 */
}

static void platform_names(void **state)
{
    char b[16];
    assert_string_equal(vhd_platform_name(VHD_PLAT_W2KU, b), "W2ku");
    assert_string_equal(vhd_platform_name(0x01020304, b), "0x01020304");
    assert_int_equal(vhd_locator_kind(VHD_PLAT_MACX), VH_LOC_MACX);
    assert_int_equal(vhd_locator_kind(VHD_PLAT_MAC), -1);
}

/* ------------------------------------------------------------------ create and open */

static void create_dynamic_windows_layout(void **state)
{
    g_autofree char *p = tpath("dyn.vhd");
    create_disk(p, VH_TYPE_DYNAMIC, 10 * MIB, 0);
    assert_int_equal(file_size(p), 0x2000); /* footer in the last 512 of the page after BAT */
    uint8_t head[512], tail[512], bat[0x1000 - 0x600];
    raw_read(p, 0, head, 512);
    raw_read(p, 0x1E00, tail, 512);
    assert_memory_equal(head, tail, 512);
    assert_memory_equal(tail + 28, "win ", 4);
    assert_int_equal(vh_be32(tail + 32), 0x000A0000);
    assert_memory_equal(tail + 36, "Wi2k", 4);
    assert_int_equal(vh_be32(tail + 56), 0x012d0411);
    raw_read(p, 0x600, bat, sizeof bat);
    for (size_t i = 0; i < sizeof bat; i++)
        assert_int_equal(bat[i], 0xFF);
    g_autoptr(vh_disk) d = open_ok(p, VH_OPEN_READ);
    assert_int_equal(d->type, VH_TYPE_DYNAMIC);
    assert_int_equal(d->virtual_size, 10 * MIB);
    assert_int_equal(d->block_size, 2 * MIB);
    assert_null(d->warnings);
    assert_memory_equal(d->id.b, tail + 68, 16);
    vh_run run;
    g_autoptr(GError) err = NULL;
    assert_int_equal(d->ops->map(d, 0, 10 * MIB, &run, &err), 0);
    assert_int_equal(run.kind, VH_RUN_ZERO); /* one run for the whole empty disk */
    assert_int_equal(run.length, 10 * MIB);
}

static void create_fixed_and_rw(void **state)
{
    g_autofree char *p = tpath("fixed.vhd");
    create_disk(p, VH_TYPE_FIXED, 1 * MIB, 0);
    assert_int_equal(file_size(p), MIB + 512);
    g_autoptr(vh_disk) d = open_ok(p, VH_OPEN_WRITE);
    assert_int_equal(d->type, VH_TYPE_FIXED);
    assert_int_equal(d->block_size, 0);
    uint8_t buf[1000], back[1000];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)(i * 7 + 1);
    g_autoptr(GError) err = NULL;
    assert_int_equal(vh_disk_write(d, buf, 777, sizeof buf, &err), 0);
    assert_int_equal(vh_disk_read(d, back, 777, sizeof back, &err), 0);
    assert_memory_equal(buf, back, sizeof buf);
    raw_read(p, 777, back, sizeof back); /* in place */
    assert_memory_equal(buf, back, sizeof buf);
    vh_run run;
    assert_int_equal(d->ops->map(d, 100, 5 * MIB, &run, &err), 0);
    assert_int_equal(run.kind, VH_RUN_DATA);
    assert_int_equal(run.length, MIB - 100);
    assert_int_equal(run.file_offset, 100);
    assert_int_equal(file_size(p), MIB + 512);
}

static void create_rejects_bad_options(void **state)
{
    g_autofree char *p = tpath("bad.vhd");
    vh_create_opts o = {.format = VH_FORMAT_VHD, .type = VH_TYPE_DYNAMIC, .size = 1000};
    g_autoptr(GError) e1 = NULL, e2 = NULL, e3 = NULL, e4 = NULL;
    assert_int_equal(vh_disk_create(p, &o, &e1), -EINVAL);
    o.size = 2 * VH_TIB; /* more than 2040 GiB */
    assert_int_equal(vh_disk_create(p, &o, &e2), -EINVAL);
    o.size = 10 * MIB;
    o.block_size = 3 * MIB;
    assert_int_equal(vh_disk_create(p, &o, &e3), -EINVAL);
    o.block_size = 256 * 1024;
    assert_int_equal(vh_disk_create(p, &o, &e4), -EINVAL);
    assert_false(g_file_test(p, G_FILE_TEST_EXISTS));
}

static void create_differencing_windows_layout(void **state)
{
    g_autofree char *pp = tpath("parent.vhd"), *cp = tpath("child.vhd");
    create_disk(pp, VH_TYPE_DYNAMIC, 16 * MIB, 0);
    create_child(cp, pp, ".\\parent.vhd", "D:\\VMs\\parent.vhd", 0);
    assert_int_equal(file_size(cp), 0x14000); /* MEASURED: first bitmap at 0x13E00 */
    g_autoptr(vh_disk) parent = open_ok(pp, VH_OPEN_READ);
    g_autoptr(vh_disk) d = open_ok(cp, VH_OPEN_READ);
    vhd_priv *p = vhd_p(d);
    assert_int_equal(d->type, VH_TYPE_DIFFERENCING);
    assert_int_equal(d->virtual_size, 16 * MIB);
    assert_true(vh_id_equal(&d->link.parent_id, &parent->id));
    assert_int_equal(d->link.parent_timestamp, 0);
    assert_int_equal(p->hdr.table_offset, 0x2000);
    assert_int_equal(p->hdr.loc[0].code, VHD_PLAT_W2KU);
    assert_int_equal(p->hdr.loc[0].offset, 0x1000);
    assert_int_equal(p->hdr.loc[0].space, 4096);
    assert_int_equal(p->hdr.loc[0].length, 34); /* 17 UTF-16 units, no terminator */
    assert_int_equal(p->hdr.loc[1].code, VHD_PLAT_W2RU);
    assert_int_equal(p->hdr.loc[1].offset, 0x3000);
    assert_int_equal(p->hdr.loc[1].space, 65536);
    assert_int_equal(p->hdr.loc[1].length, 24);
    assert_string_equal(find_loc(d, VH_LOC_W2KU)->path, "D:\\VMs\\parent.vhd");
    assert_string_equal(find_loc(d, VH_LOC_W2RU)->path, ".\\parent.vhd");
    assert_string_equal(find_loc(d, VH_LOC_PARENT_NAME)->path, "D:\\VMs\\parent.vhd");
    assert_int_equal(find_loc(d, VH_LOC_PARENT_NAME)->slot, -1);
    assert_int_equal(find_loc(d, VH_LOC_W2RU)->slot, 1);
    uint8_t bat[0x1000];
    raw_read(cp, 0x2000, bat, sizeof bat);
    for (size_t i = 0; i < sizeof bat; i++)
        assert_int_equal(bat[i], 0xFF);
    vh_run run;
    g_autoptr(GError) err = NULL;
    assert_int_equal(d->ops->map(d, 4096, 16 * MIB - 4096, &run, &err), 0);
    assert_int_equal(run.kind, VH_RUN_PARENT);
    assert_int_equal(run.length, 16 * MIB - 4096);
    /* without an absolute path: W2ku = relative, name = file name; a time stamp */
    g_autofree char *cp2 = tpath("child2.vhd");
    create_child(cp2, pp, ".\\sub\\parent.vhd", NULL, VH_VHD_EPOCH + 1000);
    g_autoptr(vh_disk) d2 = open_ok(cp2, VH_OPEN_READ);
    assert_string_equal(find_loc(d2, VH_LOC_W2KU)->path, ".\\sub\\parent.vhd");
    assert_string_equal(find_loc(d2, VH_LOC_PARENT_NAME)->path, "parent.vhd");
    assert_int_equal(d2->link.parent_timestamp, 1000);
}

static void probe_open_skips_bat(void **state)
{
    g_autofree char *pp = tpath("pp.vhd"), *cp = tpath("pc.vhd");
    create_disk(pp, VH_TYPE_DYNAMIC, 4 * MIB, 0);
    create_child(cp, pp, ".\\pp.vhd", NULL, 0);
    raw_put_be32(cp, 0x2000, 0x7FFFFFF0); /* a BAT entry far past the end */
    open_fails(cp, VH_OPEN_READ, EINVAL, NULL);
    g_autoptr(vh_disk) d = open_ok(cp, VH_OPEN_PROBE);
    assert_string_equal(find_loc(d, VH_LOC_W2RU)->path, ".\\pp.vhd");
    vh_run run;
    g_autoptr(GError) err = NULL;
    assert_true(d->ops->map(d, 0, 512, &run, &err) < 0);
    /* reads and writes fail cleanly too, and a probe open for writing writes nothing */
    uint8_t buf[512] = {0};
    assert_int_equal(vh_disk_read(d, buf, 0, sizeof buf, NULL), -EINVAL);
    raw_put_be32(cp, 0x2000, 0xFFFFFFFF);
    g_autoptr(vh_disk) pd = open_ok(pp, VH_OPEN_PROBE);
    assert_int_equal(vh_disk_read(pd, buf, 0, sizeof buf, NULL), -EINVAL);
    uint8_t before[8192], after[8192];
    uint64_t size = file_size(cp);
    raw_read(cp, size - sizeof before, before, sizeof before);
    {
        g_autoptr(vh_disk) w = open_ok(cp, VH_OPEN_PROBE | VH_OPEN_WRITE);
        assert_int_equal(vh_disk_write(w, buf, 0, sizeof buf, NULL), -EINVAL);
        assert_int_equal(vh_disk_write(w, buf, 100, 10, NULL), -EINVAL);
        assert_int_equal(w->ops->write_sectors(w, buf, 0, sizeof buf, NULL), -EINVAL);
    }
    assert_int_equal(file_size(cp), size);
    raw_read(cp, size - sizeof after, after, sizeof after);
    assert_memory_equal(before, after, sizeof before);
}

/*
 * A probe (what the store index does for every file of a store) reads the footer, its copy
 * with the header after it, and the locator data; never the BAT. It answers what a full open
 * answers.
 */
static void probe_reads_only_identity(void **state)
{
    g_autofree char *pp = tpath("rp.vhd"), *cp = tpath("rc.vhd");
    create_disk(pp, VH_TYPE_DYNAMIC, 4 * MIB, 0);
    create_child(cp, pp, ".\\rp.vhd", "C:\\vm\\rp.vhd", 0);
    g_autoptr(vh_disk) full = open_ok(cp, VH_OPEN_READ);
    readlog_start();
    g_autoptr(vh_disk) d = open_ok(cp, VH_OPEN_PROBE);
    g_autoptr(GArray) reads = readlog_stop();
    assert_int_equal(d->type, VH_TYPE_DIFFERENCING);
    assert_int_equal(d->virtual_size, full->virtual_size);
    assert_int_equal(d->block_size, full->block_size);
    assert_true(vh_id_equal(&d->id, &full->id));
    assert_true(vh_id_equal(&d->link.parent_id, &full->link.parent_id));
    assert_int_equal(d->link.locators->len, 3); /* W2ru, W2ku, the Parent Unicode Name */
    for (guint i = 0; i < d->link.locators->len; i++) {
        const vh_locator *a = d->link.locators->pdata[i], *b = full->link.locators->pdata[i];
        assert_int_equal(a->kind, b->kind);
        assert_string_equal(a->path, b->path);
    }
    /* sniffing (2), tail footer, copy + header, two locators */
    assert_true(reads->len <= 6);
    assert_true(readlog_bytes(reads) <= 4096);
    assert_false(readlog_touches(reads, vhd_p(full)->hdr.table_offset, vhd_p(full)->bat_bytes));
}

/* A dynamic disk header somewhere else than right after the footer copy is read from there. */
static void header_not_after_the_copy(void **state)
{
    g_autofree char *p = tpath("moved.vhd");
    create_disk(p, VH_TYPE_DYNAMIC, 4 * MIB, 0);
    uint64_t tail = file_size(p) - VHD_FOOTER_SIZE;
    uint8_t hdr[VHD_HEADER_SIZE], footer[VHD_FOOTER_SIZE];
    raw_read(p, 0x200, hdr, sizeof hdr);
    raw_read(p, tail, footer, sizeof footer);
    raw_write(p, tail, hdr, sizeof hdr); /* the header past the old end, then the footer */
    raw_write(p, tail + sizeof hdr, footer, sizeof footer);
    raw_put_be64(p, tail + sizeof hdr + 16, tail); /* data offset */
    fix_footers(p);
    raw_write(p, 0x200, "cxsparsX", 8); /* the old place no longer holds a header */
    for (int probe = 0; probe < 2; probe++) {
        g_autoptr(vh_disk) d = open_ok(p, probe ? VH_OPEN_PROBE : VH_OPEN_READ);
        assert_int_equal(vhd_p(d)->header_off, tail);
        assert_int_equal(d->block_size, 2 * MIB);
        assert_null(d->warnings);
    }
}

/* ------------------------------------------------------------------ footer fallbacks */

static void tail_footer_bad_uses_head_copy(void **state)
{
    g_autofree char *p = tpath("tail.vhd");
    create_disk(p, VH_TYPE_DYNAMIC, 4 * MIB, 0);
    uint64_t tail = file_size(p) - 512;
    uint8_t x = 0x55;
    raw_write(p, tail + 100, &x, 1); /* checksum no longer matches */
    g_autoptr(vh_disk) d = open_ok(p, VH_OPEN_READ);
    assert_true(has_warning(d, "using the copy at offset 0"));
    assert_true(vhd_p(d)->footer.checksum_ok);
    vh_disk_close(g_steal_pointer(&d));
    uint8_t zeros[512] = {0};
    raw_write(p, tail, zeros, 512); /* tail gone entirely */
    d = open_ok(p, VH_OPEN_WRITE);  /* a cosmetic problem: writing is fine */
    assert_true(has_warning(d, "no \"conectix\" cookie"));
    uint8_t buf[512];
    memset(buf, 0xA5, sizeof buf);
    g_autoptr(GError) err = NULL;
    assert_int_equal(vh_disk_write(d, buf, 0, sizeof buf, &err), 0);
    vh_disk_close(g_steal_pointer(&d));
    d = open_ok(p, VH_OPEN_READ); /* the allocation rewrote a good tail */
    assert_null(d->warnings);
    uint8_t back[512];
    assert_int_equal(vh_disk_read(d, back, 0, sizeof back, &err), 0);
    assert_memory_equal(buf, back, 512);
}

static void checksum_bad_on_both_copies(void **state)
{
    g_autofree char *p = tpath("both.vhd");
    create_disk(p, VH_TYPE_DYNAMIC, 4 * MIB, 0);
    uint64_t tail = file_size(p) - 512;
    uint8_t x = 0x55;
    raw_write(p, tail + 200, &x, 1);
    raw_write(p, 200, &x, 1);
    open_fails(p, VH_OPEN_WRITE, EIO, "checksum");
    open_fails(p, VH_OPEN_WRITE, EIO, "footer at offset");
    g_autoptr(vh_disk) d = open_ok(p, VH_OPEN_READ); /* forensic reading still works */
    assert_true(has_warning(d, "checksum"));
    assert_int_equal(d->virtual_size, 4 * MIB);
    g_autoptr(GError) err = NULL;
    uint8_t b[512];
    assert_int_equal(vh_disk_read(d, b, 0, 512, &err), 0);
    /* a bad header checksum is the same kind of problem */
    g_autofree char *q = tpath("hdr.vhd");
    create_disk(q, VH_TYPE_DYNAMIC, 4 * MIB, 0);
    raw_write(q, 0x200 + 1100 - 512, &x, 1); /* header reserved area */
    open_fails(q, VH_OPEN_WRITE, EIO, "dynamic disk header at offset 512");
    g_autoptr(vh_disk) e = open_ok(q, VH_OPEN_READ);
    assert_true(has_warning(e, "dynamic disk header"));
}

static void footer_511_bytes(void **state)
{
    g_autofree char *p = tpath("old.vhd");
    create_disk(p, VH_TYPE_FIXED, 1 * MIB, 0);
    assert_int_equal(truncate(p, MIB + 511), 0); /* pre-Virtual-PC-2004 */
    g_autoptr(vh_disk) d = open_ok(p, VH_OPEN_READ);
    assert_int_equal(d->virtual_size, MIB);
    assert_int_equal(vhd_p(d)->footer_off, MIB);
    assert_null(d->warnings);
}

static void rejects_unusable_footers(void **state)
{
    g_autofree char *p = tpath("nf.vhd");
    create_disk(p, VH_TYPE_FIXED, 1 * MIB, 0);
    raw_write(p, MIB, "CONECTIX", 8);
    open_fails(p, VH_OPEN_READ, EINVAL, "conectix"); /* no cookie anywhere */
    assert_false(vh_sniff_path(p) == VH_FORMAT_VHD);
    /* a fixed disk's footer claiming more data than the file holds */
    g_autofree char *q = tpath("short.vhd");
    create_disk(q, VH_TYPE_FIXED, 1 * MIB, 0);
    raw_put_be64(q, MIB + 48, 2 * MIB);
    fix_footers(q); /* also writes a copy at 0, which says "fixed": never used */
    open_fails(q, VH_OPEN_READ, EINVAL, "current size");
    /* unknown disk type, odd size */
    g_autofree char *r = tpath("type.vhd");
    create_disk(r, VH_TYPE_DYNAMIC, 1 * MIB, 0);
    uint64_t tail = file_size(r) - 512;
    raw_put_be32(r, tail + 60, 6);
    fix_footers(r);
    open_fails(r, VH_OPEN_READ, EINVAL, "disk type 6");
    raw_put_be32(r, tail + 60, 3);
    raw_put_be64(r, tail + 48, MIB + 1);
    fix_footers(r);
    open_fails(r, VH_OPEN_READ, EINVAL, NULL);
    /* too small to be anything */
    g_autofree char *s = tpath("tiny.vhd");
    g_file_set_contents(s, "conectix", 8, NULL);
    open_fails(s, VH_OPEN_READ, EINVAL, NULL);
}

/* ------------------------------------------------------------------ header, BAT rejections */

static void rejects_bad_headers(void **state)
{
    g_autofree char *p = tpath("h.vhd");
    create_disk(p, VH_TYPE_DYNAMIC, 4 * MIB, 0);
    uint64_t tail = file_size(p) - 512;
    /* data offset past the end */
    raw_put_be64(p, tail + 16, 0x100000);
    fix_footers(p);
    open_fails(p, VH_OPEN_READ, EINVAL, "data offset");
    raw_put_be64(p, tail + 16, 0x200);
    fix_footers(p);
    /* cookie */
    raw_write(p, 0x200, "cxsparsX", 8);
    fix_header(p);
    open_fails(p, VH_OPEN_READ, EINVAL, "cxsparse");
    raw_write(p, 0x200, "cxsparse", 8);
    /* block size not a power of two, too small */
    raw_put_be32(p, 0x200 + 32, 3 * MIB);
    fix_header(p);
    open_fails(p, VH_OPEN_READ, EINVAL, "block size");
    raw_put_be32(p, 0x200 + 32, 2048);
    fix_header(p);
    open_fails(p, VH_OPEN_READ, EINVAL, NULL);
    raw_put_be32(p, 0x200 + 32, 2 * MIB);
    /* table entries too many for the file / too few for the size */
    raw_put_be32(p, 0x200 + 28, 100000);
    fix_header(p);
    open_fails(p, VH_OPEN_READ, EINVAL, "block allocation table");
    raw_put_be32(p, 0x200 + 28, 1);
    fix_header(p);
    open_fails(p, VH_OPEN_READ, EINVAL, "do not cover");
    raw_put_be32(p, 0x200 + 28, 2);
    /* table offset past the end, or over the header */
    raw_put_be64(p, 0x200 + 16, UINT64_C(0xFFFFFFFFFFFFFF00));
    fix_header(p);
    open_fails(p, VH_OPEN_READ, EINVAL, NULL);
    raw_put_be64(p, 0x200 + 16, 0x300);
    fix_header(p);
    open_fails(p, VH_OPEN_READ, EINVAL, "overlaps the dynamic disk header");
    raw_put_be64(p, 0x200 + 16, 0x600);
    /* unsupported header version */
    raw_put_be32(p, 0x200 + 24, 0x00020000);
    fix_header(p);
    open_fails(p, VH_OPEN_READ, EINVAL, NULL);
    raw_put_be32(p, 0x200 + 24, VHD_VERSION);
    fix_header(p);
    g_autoptr(vh_disk) d = open_ok(p, VH_OPEN_READ); /* and back to good */
    assert_null(d->warnings);
}

static void rejects_bad_bat_entries(void **state)
{
    g_autofree char *p = tpath("b.vhd");
    create_disk(p, VH_TYPE_DYNAMIC, 4 * MIB, 0);
    g_autoptr(GError) err = NULL;
    {
        g_autoptr(vh_disk) d = open_ok(p, VH_OPEN_WRITE);
        uint8_t buf[4096] = {1};
        assert_int_equal(vh_disk_write(d, buf, 0, sizeof buf, &err), 0);
        assert_int_equal(vh_disk_write(d, buf, 2 * MIB, sizeof buf, &err), 0);
    }
    uint32_t e0 = 0x1E00 / 512;
    uint32_t good[2];
    raw_read(p, 0x600, good, 8);
    raw_put_be32(p, 0x600, 0x00FFFFFF); /* past EOF */
    open_fails(p, VH_OPEN_READ, EINVAL, "BAT entry 0");
    raw_put_be32(p, 0x600, 1); /* over the header */
    open_fails(p, VH_OPEN_READ, EINVAL, NULL);
    raw_put_be32(p, 0x600, 3); /* over the BAT */
    open_fails(p, VH_OPEN_READ, EINVAL, NULL);
    raw_write(p, 0x600, good, 8);
    raw_write(p, 0x604, good, 4); /* both entries on one block */
    open_fails(p, VH_OPEN_READ, EINVAL, "overlap");
    raw_put_be32(p, 0x604, e0 + 8); /* overlapping by a page */
    open_fails(p, VH_OPEN_READ, EINVAL, NULL);
    raw_write(p, 0x600, good, 8);
    g_autoptr(vh_disk) d = open_ok(p, VH_OPEN_READ);
    assert_int_equal(vhd_p(d)->allocated, 2);
}

/* Entries allocated past the virtual size are dropped with one warning, not one each: a
 * hostile BAT of millions of them made an open take seconds and hundreds of MiB (fuzz_vhd). */
static void bat_entries_past_the_size_warn_once(void **state)
{
    g_autofree char *p = tpath("past.vhd");
    create_disk(p, VH_TYPE_DYNAMIC, 4 * MIB, 0); /* 2 blocks; BAT room 0x600..0x1E00 */
    uint8_t bat[0x1800];
    memset(bat, 0, sizeof bat);
    raw_read(p, 0x600, bat, 8);
    raw_write(p, 0x600, bat, sizeof bat); /* entries 2..1535 name sector 0 */
    raw_put_be32(p, 0x200 + 28, sizeof bat / 4);
    fix_header(p);
    g_autoptr(vh_disk) d = open_ok(p, VH_OPEN_READ);
    assert_non_null(d->warnings);
    assert_int_equal(d->warnings->len, 1);
    assert_true(has_warning(d, "1534 BAT entries from entry 2 at offset 1544"));
    assert_int_equal(vhd_p(d)->allocated, 0);
}

/* ------------------------------------------------------------------ locator rejections */

static void locator_problems_warn_or_refuse(void **state)
{
    g_autofree char *pp = tpath("lp.vhd"), *cp = tpath("lc.vhd");
    create_disk(pp, VH_TYPE_DYNAMIC, 4 * MIB, 0);
    create_child(cp, pp, ".\\lp.vhd", "C:\\x\\lp.vhd", 0);
    const uint64_t e0 = 0x200 + VHD_LOC_OFF, e1 = e0 + 24;
    struct {
        uint64_t at;
        int size; /* 4 or 8 */
        uint64_t bad, good;
        const char *why;
    } cases[] = {
        {e1 + 16, 8, 0x7FFFFFFF0, 0x3000, "past the footer"},
        {e1 + 16, 8, 0x2000, 0x3000, "overlaps the footer copy, header or BAT"},
        {e1 + 16, 8, 0x200, 0x3000, "overlaps the footer copy, header or BAT"},
        {e0 + 16, 8, 0x3000, 0x1000, "overlaps the data of locator"},
        {e1 + 4, 4, 1000, 65536, "neither a sector count"},
        {e1 + 8, 4, 65537, 24, "exceeds its data space"},
        {e1 + 4, 4, 400, 65536, "past the footer"}, /* 400 sectors = 200 KiB */
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        if (cases[i].size == 8)
            raw_put_be64(cp, cases[i].at, cases[i].bad);
        else
            raw_put_be32(cp, cases[i].at, (uint32_t)cases[i].bad);
        fix_header(cp);
        open_fails(cp, VH_OPEN_WRITE, EIO, cases[i].why);
        g_autoptr(vh_disk) d = open_ok(cp, VH_OPEN_READ);
        assert_true(has_warning(d, cases[i].why));
        /* the bad locator is left out; the parent name is still there */
        assert_non_null(find_loc(d, VH_LOC_PARENT_NAME));
        if (cases[i].size == 8)
            raw_put_be64(cp, cases[i].at, cases[i].good);
        else
            raw_put_be32(cp, cases[i].at, (uint32_t)cases[i].good);
    }
    fix_header(cp);
    g_autoptr(vh_disk) d = open_ok(cp, VH_OPEN_WRITE);
    assert_null(d->warnings);
    /* a space in sectors (old VirtualBox) is accepted: 8 sectors = 4096 bytes */
    raw_put_be32(cp, e0 + 4, 8);
    fix_header(cp);
    g_autoptr(vh_disk) s = open_ok(cp, VH_OPEN_READ);
    assert_int_equal(find_loc(s, VH_LOC_W2KU)->data_space, 4096);
    assert_null(s->warnings);
    /* unknown platform code: a warning, and ignored */
    raw_put_be32(cp, e0, 0x41424344);
    fix_header(cp);
    g_autoptr(vh_disk) u = open_ok(cp, VH_OPEN_READ);
    assert_true(has_warning(u, "unknown platform code ABCD"));
    assert_null(find_loc(u, VH_LOC_W2KU));
}

/* ------------------------------------------------------------------ map and write */

static void differencing_runs_and_bitmaps(void **state)
{
    g_autofree char *pp = tpath("rp.vhd"), *cp = tpath("rc.vhd");
    create_disk(pp, VH_TYPE_DYNAMIC, 8 * MIB, 0);
    create_child(cp, pp, ".\\rp.vhd", NULL, 0);
    g_autoptr(vh_disk) d = open_ok(cp, VH_OPEN_WRITE);
    g_autoptr(GError) err = NULL;
    uint8_t buf[1024];
    memset(buf, 0x5A, sizeof buf);
    uint64_t old_footer = vhd_p(d)->footer_off;
    assert_int_equal(d->ops->write_sectors(d, buf, 2 * MIB + 5 * 512, 1024, &err), 0);
    vhd_priv *p = vhd_p(d);
    /* Windows allocation: bitmap at the old footer, data 4 KiB aligned, footer one page on */
    assert_int_equal((uint64_t)p->bat[1] * 512, old_footer);
    assert_int_equal(old_footer, 0x13E00);
    uint64_t data = old_footer + 512;
    assert_int_equal(data % 4096, 0);
    assert_int_equal(file_size(cp), data + 2 * MIB + 4096);
    uint8_t bm[512];
    raw_read(cp, old_footer, bm, sizeof bm);
    assert_int_equal(bm[0], 0x06); /* sectors 5, 6: MSB-first */
    for (int i = 1; i < 512; i++)
        assert_int_equal(bm[i], 0);
    vh_run run;
    assert_int_equal(d->ops->map(d, 0, 8 * MIB, &run, &err), 0);
    assert_int_equal(run.kind, VH_RUN_PARENT); /* block 0 unallocated + sectors 0..4 */
    assert_int_equal(run.length, 2 * MIB + 5 * 512);
    assert_int_equal(d->ops->map(d, 2 * MIB + 5 * 512 + 100, 8 * MIB, &run, &err), 0);
    assert_int_equal(run.kind, VH_RUN_DATA);
    assert_int_equal(run.length, 1024 - 100);
    assert_int_equal(run.file_offset, data + 5 * 512 + 100);
    assert_int_equal(d->ops->map(d, 2 * MIB + 7 * 512, 8 * MIB, &run, &err), 0);
    assert_int_equal(run.kind, VH_RUN_PARENT);
    assert_int_equal(run.length, 6 * MIB - 7 * 512); /* to the end, across blocks */
    /* a second write into the same block: data in place, bit set, no new block */
    uint64_t size_before = file_size(cp);
    assert_int_equal(d->ops->write_sectors(d, buf, 2 * MIB, 512, &err), 0);
    assert_int_equal(file_size(cp), size_before);
    raw_read(cp, old_footer, bm, 1);
    assert_int_equal(bm[0], 0x86);
    /* the head footer copy is untouched and still matches */
    uint8_t head[512], tail[512];
    raw_read(cp, 0, head, 512);
    raw_read(cp, file_size(cp) - 512, tail, 512);
    assert_memory_equal(head, tail, 512);
    /* a dynamic disk: new blocks get all-ones bitmaps, the rest reads zeros */
    g_autoptr(vh_disk) base = open_ok(pp, VH_OPEN_WRITE);
    assert_int_equal(base->ops->write_sectors(base, buf, 512, 512, &err), 0);
    raw_read(pp, (uint64_t)vhd_p(base)->bat[0] * 512, bm, sizeof bm);
    for (int i = 0; i < 512; i++)
        assert_int_equal(bm[i], 0xFF);
    assert_int_equal(base->ops->map(base, 0, 8 * MIB, &run, &err), 0);
    assert_int_equal(run.kind, VH_RUN_DATA);
    assert_int_equal(run.length, 2 * MIB);
    assert_int_equal(base->ops->map(base, 2 * MIB, 8 * MIB, &run, &err), 0);
    assert_int_equal(run.kind, VH_RUN_ZERO);
    assert_int_equal(run.length, 6 * MIB);
}

static void read_only_never_writes(void **state)
{
    g_autofree char *p = tpath("ro.vhd");
    create_disk(p, VH_TYPE_DYNAMIC, 4 * MIB, 0);
    g_autoptr(vh_disk) d = open_ok(p, VH_OPEN_READ);
    uint8_t buf[512] = {1};
    g_autoptr(GError) e1 = NULL, e2 = NULL;
    assert_int_equal(d->ops->write_sectors(d, buf, 0, 512, &e1), -EROFS);
    vh_link_update u = {.relative = ".\\x.vhd"};
    assert_int_equal(d->ops->set_parent_link(d, &u, &e2), -EROFS);
    assert_int_equal(file_size(p), 0x2000);
}

/* Content through a fresh read-only open (a crash may leave odd states: must still open). */
static void read_all(const char *path, const char *parent, uint8_t *out, uint64_t size)
{
    g_autoptr(GError) err = NULL;
    vh_disk *d = open_ok(path, VH_OPEN_READ);
    if (parent)
        vh_disk_set_parent(d, open_ok(parent, VH_OPEN_READ));
    assert_int_equal(vh_disk_read(d, out, 0, size, &err), 0);
    vh_disk_close(d);
}

static void allocation_crash_at_every_write(void **state)
{
    const uint64_t size = 4 * MIB;
    g_autofree char *pp = tpath("cp.vhd"), *cp = tpath("cc.vhd");
    create_disk(pp, VH_TYPE_DYNAMIC, size, 0);
    {
        g_autoptr(vh_disk) b = open_ok(pp, VH_OPEN_WRITE);
        g_autofree uint8_t *fill = g_malloc(size);
        for (uint64_t i = 0; i < size; i++)
            fill[i] = (uint8_t)(i / 512 + 1);
        g_autoptr(GError) err = NULL;
        assert_int_equal(vh_disk_write(b, fill, 0, size, &err), 0);
    }
    create_child(cp, pp, ".\\cp.vhd", NULL, 0);
    g_autofree uint8_t *before = g_malloc(size), *after = g_malloc(size), *got = g_malloc(size);
    read_all(cp, pp, before, size);
    uint8_t data[1536];
    memset(data, 0xC3, sizeof data);
    memcpy(after, before, size);
    memcpy(after + MIB + 100, data, sizeof data);
    g_autofree char *bytes = NULL;
    gsize blen;
    assert_true(g_file_get_contents(cp, &bytes, &blen, NULL));
    for (int tear = 0; tear < 2; tear++) {
        for (long n = 1;; n++) {
            assert_true(g_file_set_contents(cp, bytes, (gssize)blen, NULL));
            vh_disk *d = open_ok(cp, VH_OPEN_WRITE);
            vh_disk_set_parent(d, open_ok(pp, VH_OPEN_READ));
            vh_fault_arm(tear ? VH_FAULT_TEAR : VH_FAULT_STOP, n, 512);
            g_autoptr(GError) err = NULL;
            int r = vh_disk_write(d, data, MIB + 100, sizeof data, &err);
            bool fired = vh_fault_fired();
            vh_fault_disarm();
            vh_disk_close(d);
            read_all(cp, pp, got, size);
            if (!fired) {
                assert_int_equal(r, 0);
                assert_memory_equal(got, after, size);
                assert_true(n > 3);
                break;
            }
            assert_true(r < 0);
            /* the write covers 3 sectors at one place: old or new content, per sector */
            for (uint64_t s = 0; s < size / 512; s++) {
                bool old = memcmp(got + s * 512, before + s * 512, 512) == 0;
                bool new = memcmp(got + s * 512, after + s * 512, 512) == 0;
                if (!old && !new)
                    fail_msg("fault %ld (tear %d): sector %" G_GUINT64_FORMAT " is neither", n,
                             tear, s);
            }
        }
    }
}

/* ------------------------------------------------------------------ set_parent_link */

static void relink_in_place(void **state)
{
    g_autofree char *pp = tpath("base.vhd"), *cp = tpath("kid.vhd");
    create_disk(pp, VH_TYPE_DYNAMIC, 4 * MIB, 0);
    create_child(cp, pp, ".\\older\\folder\\old.vhd", "D:\\Old\\old.vhd", 0);
    uint64_t size_before = file_size(cp);
    g_autoptr(vh_disk) d = open_ok(cp, VH_OPEN_WRITE);
    vh_link_update u = {.parent_id = vh_id_random(),
                        .parent_mtime = VH_VHD_EPOCH + 5000,
                        .relative = ".\\dir\\base.vhd",
                        .absolute = "E:\\VMs\\dir\\base.vhd",
                        .file_name = "base.vhd"};
    g_autoptr(GError) err = NULL;
    assert_int_equal(d->ops->set_parent_link(d, &u, &err), 0);
    assert_true(vh_id_equal(&d->link.parent_id, &u.parent_id));
    assert_int_equal(d->link.parent_timestamp, 0); /* stays 0 where it was 0 */
    assert_string_equal(find_loc(d, VH_LOC_W2RU)->path, ".\\dir\\base.vhd");
    assert_string_equal(find_loc(d, VH_LOC_W2KU)->path, "E:\\VMs\\dir\\base.vhd");
    assert_string_equal(find_loc(d, VH_LOC_PARENT_NAME)->path, "E:\\VMs\\dir\\base.vhd");
    assert_int_equal(file_size(cp), size_before); /* all in place */
    vh_disk_close(g_steal_pointer(&d));
    g_autoptr(vh_disk) r = open_ok(cp, VH_OPEN_WRITE); /* checksums recomputed */
    assert_null(r->warnings);
    assert_true(vh_id_equal(&r->link.parent_id, &u.parent_id));
    assert_int_equal(find_loc(r, VH_LOC_W2RU)->data_offset, 0x3000);
    assert_int_equal(vhd_p(r)->hdr.loc[1].length, 28);
    uint8_t tailbytes[64];
    raw_read(cp, 0x3000 + 28, tailbytes, sizeof tailbytes); /* the old text is gone */
    for (size_t i = 0; i < sizeof tailbytes; i++)
        assert_int_equal(tailbytes[i], 0);
    /* no absolute path: W2ku = relative, name = file name; non-zero time stamp follows mtime */
    raw_put_be32(cp, 0x200 + 56, 1);
    fix_header(cp);
    vh_disk_close(g_steal_pointer(&r));
    r = open_ok(cp, VH_OPEN_WRITE);
    vh_link_update v = {.parent_id = u.parent_id,
                        .parent_mtime = VH_VHD_EPOCH + 777,
                        .relative = ".\\base.vhd",
                        .file_name = "base.vhd"};
    assert_int_equal(r->ops->set_parent_link(r, &v, &err), 0);
    assert_int_equal(r->link.parent_timestamp, 777);
    assert_string_equal(find_loc(r, VH_LOC_W2KU)->path, ".\\base.vhd");
    assert_string_equal(find_loc(r, VH_LOC_PARENT_NAME)->path, "base.vhd");
    /* not a differencing disk */
    g_autoptr(vh_disk) b = open_ok(pp, VH_OPEN_WRITE);
    g_autoptr(GError) e2 = NULL;
    assert_int_equal(b->ops->set_parent_link(b, &v, &e2), -ENOTSUP);
}

static void relink_long_path_and_missing_slot(void **state)
{
    g_autofree char *pp = tpath("lb.vhd"), *cp = tpath("lk.vhd");
    create_disk(pp, VH_TYPE_DYNAMIC, 4 * MIB, 0);
    create_child(cp, pp, ".\\lb.vhd", NULL, 0);
    /* drop the W2ru entry (slot 1): it must come back in a free slot */
    uint8_t zero[24] = {0};
    raw_write(cp, 0x200 + VHD_LOC_OFF + 24, zero, 24);
    fix_header(cp);
    {
        g_autoptr(vh_disk) d = open_ok(cp, VH_OPEN_WRITE);
        g_autoptr(GError) err = NULL;
        uint8_t buf[4096];
        memset(buf, 0x77, sizeof buf);
        assert_int_equal(vh_disk_write(d, buf, 3 * MIB, sizeof buf, &err), 0);
    }
    g_autofree uint8_t *before = g_malloc(4 * MIB), *after = g_malloc(4 * MIB);
    read_all(cp, NULL, before, 4 * MIB);
    GString *lp = g_string_new("Z:\\");
    while (lp->len < 3000)
        g_string_append(lp, "very long folder name\\");
    g_string_append(lp, "lb.vhd"); /* > 4096 bytes of UTF-16: does not fit W2ku's space */
    g_autofree char *longpath = g_string_free(lp, FALSE);
    g_autoptr(vh_disk) d = open_ok(cp, VH_OPEN_WRITE);
    uint64_t old_footer = vhd_p(d)->footer_off;
    uint32_t blk_before = vhd_p(d)->bat[1];
    vh_link_update u = {.parent_id = vh_id_random(),
                        .relative = ".\\lb.vhd",
                        .absolute = longpath,
                        .file_name = "lb.vhd"};
    g_autoptr(GError) err = NULL;
    assert_int_equal(d->ops->set_parent_link(d, &u, &err), 0);
    const vh_locator *ku = find_loc(d, VH_LOC_W2KU), *ru = find_loc(d, VH_LOC_W2RU);
    assert_string_equal(ku->path, longpath);
    assert_true(ku->data_offset >= old_footer); /* new space where the footer was */
    assert_true(ku->data_space >= strlen(longpath) * 2);
    assert_int_equal(ku->slot, 0);
    assert_string_equal(ru->path, ".\\lb.vhd");
    assert_int_equal(ru->slot, 1); /* the first free slot */
    assert_true(ru->data_offset >= old_footer);
    /* the name falls back to the file name: the path is longer than 256 units */
    assert_string_equal(find_loc(d, VH_LOC_PARENT_NAME)->path, "lb.vhd");
    assert_int_equal(vhd_p(d)->bat[1], blk_before); /* data blocks did not move */
    uint64_t ku_end = ku->data_offset + ku->data_space;
    vh_disk_close(g_steal_pointer(&d));
    g_autoptr(vh_disk) r = open_ok(cp, VH_OPEN_WRITE);
    assert_null(r->warnings);
    assert_string_equal(find_loc(r, VH_LOC_W2KU)->path, longpath);
    read_all(cp, NULL, after, 4 * MIB);
    assert_memory_equal(before, after, 4 * MIB);
    /* the next block goes after the new space */
    uint8_t buf[512] = {9};
    assert_int_equal(vh_disk_write(r, buf, 0, 512, &err), 0);
    assert_true((uint64_t)vhd_p(r)->bat[0] * 512 >= ku_end);
}

/* The whole link as text: parent id, time stamp, every locator with its place. */
static char *link_text(const char *path)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(vh_disk) d = NULL;
    if (vh_disk_open(path, VH_OPEN_READ, &d, &err) < 0)
        return g_strdup_printf("(does not open: %s)", err->message);
    char id[VH_ID_STRLEN + 1];
    vh_id_format(&d->link.parent_id, id);
    GString *s = g_string_new(NULL);
    g_string_append_printf(s, "%s %u", id, d->link.parent_timestamp);
    for (guint i = 0; i < d->link.locators->len; i++) {
        const vh_locator *l = d->link.locators->pdata[i];
        g_string_append_printf(s, "; %s %s", vh_locator_kind_name(l->kind), l->path);
    }
    return g_string_free(s, FALSE);
}

/*
 * Every fault point of a relink (stop, and writes torn after 512 and 1024 bytes): without any
 * journal the file opens with exactly the old link or exactly the new one, same content.
 */
static void relink_crash_at_every_write(void **state)
{
    g_autofree char *pp = tpath("fb.vhd"), *cp = tpath("fk.vhd");
    create_disk(pp, VH_TYPE_DYNAMIC, 4 * MIB, 512 * 1024);
    create_child(cp, pp, ".\\fb.vhd", "C:\\a\\fb.vhd", 0);
    {
        g_autoptr(vh_disk) d = open_ok(cp, VH_OPEN_WRITE);
        uint8_t buf[3000];
        memset(buf, 0x3C, sizeof buf);
        g_autoptr(GError) err = NULL;
        assert_int_equal(vh_disk_write(d, buf, 1000, sizeof buf, &err), 0);
    }
    g_autofree char *bytes = NULL;
    gsize blen;
    assert_true(g_file_get_contents(cp, &bytes, &blen, NULL));
    g_autofree char *old_link = link_text(cp);
    g_autofree uint8_t *content = g_malloc(4 * MIB), *got = g_malloc(4 * MIB);
    read_all(cp, NULL, content, 4 * MIB);
    GString *lp = g_string_new("C:\\");
    while (lp->len < 2500)
        g_string_append(lp, "a rather long folder\\");
    g_string_append(lp, "fb.vhd");
    g_autofree char *longpath = g_string_free(lp, FALSE);
    const char *abs_paths[] = {"C:\\b\\fb.vhd", longpath, NULL};
    vh_id new_id = vh_id_random();
    for (int which = 0; which < 3; which++) {
        vh_link_update u = {.parent_id = new_id,
                            .relative = ".\\x\\fb.vhd",
                            .absolute = abs_paths[which],
                            .file_name = "fb.vhd"};
        /* a clean run gives the new link */
        vh_disk *d = open_ok(cp, VH_OPEN_WRITE);
        g_autoptr(GError) err = NULL;
        vh_fault_arm(VH_FAULT_NONE, 0, 0);
        assert_int_equal(d->ops->set_parent_link(d, &u, &err), 0);
        long total = vh_fault_ops();
        vh_disk_close(d);
        g_autofree char *new_link = link_text(cp);
        assert_string_not_equal(new_link, old_link);
        assert_true(total > 8);
        for (size_t tear = 0; tear <= 1024; tear += 512) {
            for (long n = 1; n <= total; n++) {
                assert_true(g_file_set_contents(cp, bytes, (gssize)blen, NULL));
                d = open_ok(cp, VH_OPEN_WRITE);
                vh_fault_arm(tear ? VH_FAULT_TEAR : VH_FAULT_STOP, n, tear);
                g_autoptr(GError) e2 = NULL;
                int r = d->ops->set_parent_link(d, &u, &e2);
                assert_true(vh_fault_fired());
                vh_fault_disarm();
                assert_true(r < 0);
                /* the handle refuses further writes after a failed relink */
                uint8_t sector[512] = {0};
                g_autoptr(GError) e3 = NULL;
                assert_true(d->ops->write_sectors(d, sector, 0, 512, &e3) < 0);
                vh_disk_close(d);
                g_autofree char *link = link_text(cp);
                if (strcmp(link, old_link) != 0 && strcmp(link, new_link) != 0)
                    fail_msg("path %d, fault at op %ld/%ld (tear %zu): link is '%s'", which, n,
                             total, tear, link);
                read_all(cp, NULL, got, 4 * MIB);
                assert_memory_equal(got, content, 4 * MIB);
            }
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(footer_roundtrip_keeps_reserved),
        cmocka_unit_test(header_roundtrip_with_locators),
        cmocka_unit_test(data_space_heuristic),
        cmocka_unit_test(locator_text_decoding),
        cmocka_unit_test(parent_name_decoding),
        cmocka_unit_test(bitmap_msb_first),
        cmocka_unit_test(bat_and_geometry),
        cmocka_unit_test(platform_names),
        cmocka_unit_test_setup_teardown(create_dynamic_windows_layout, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(create_fixed_and_rw, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(create_rejects_bad_options, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(create_differencing_windows_layout, tmp_setup,
                                        tmp_teardown),
        cmocka_unit_test_setup_teardown(probe_open_skips_bat, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(probe_reads_only_identity, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(header_not_after_the_copy, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(tail_footer_bad_uses_head_copy, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(checksum_bad_on_both_copies, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(footer_511_bytes, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(rejects_unusable_footers, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(rejects_bad_headers, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(rejects_bad_bat_entries, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(bat_entries_past_the_size_warn_once, tmp_setup,
                                        tmp_teardown),
        cmocka_unit_test_setup_teardown(locator_problems_warn_or_refuse, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(differencing_runs_and_bitmaps, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(read_only_never_writes, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(allocation_crash_at_every_write, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(relink_in_place, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(relink_long_path_and_missing_slot, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(relink_crash_at_every_write, tmp_setup, tmp_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
