// SPDX-License-Identifier: GPL-2.0-or-later
/* vhd_format.c - VHD structures to and from bytes, no I/O (see vhd_format.h). */
#include "vhd_format.h"

_Static_assert(VHD_LOC_OFF + VHD_LOCATORS * VHD_LOC_SIZE <= VHD_HEADER_SIZE, "locator table");
_Static_assert(VHD_NAME_OFF + VHD_NAME_BYTES == VHD_LOC_OFF, "name before the locators");

/* Footer field offsets (doc/formats.md §1.1). */
enum {
    F_COOKIE = 0,
    F_FEATURES = 8,
    F_VERSION = 12,
    F_DATA_OFFSET = 16,
    F_TIMESTAMP = 24,
    F_CREATOR_APP = 28,
    F_CREATOR_VER = 32,
    F_CREATOR_HOST = 36,
    F_ORIG_SIZE = 40,
    F_CUR_SIZE = 48,
    F_GEOMETRY = 56,
    F_TYPE = 60,
    F_CHECKSUM = 64,
    F_UNIQUE_ID = 68,
    F_SAVED_STATE = 84,
};

/* Header field offsets (doc/formats.md §1.2). */
enum {
    H_COOKIE = 0,
    H_DATA_OFFSET = 8,
    H_TABLE_OFFSET = 16,
    H_VERSION = 24,
    H_MAX_ENTRIES = 28,
    H_BLOCK_SIZE = 32,
    H_CHECKSUM = 36,
    H_PARENT_ID = 40,
    H_PARENT_TS = 56,
};

void vhd_footer_parse(const uint8_t buf[VHD_FOOTER_SIZE], vhd_footer *f)
{
    memset(f, 0, sizeof *f);
    memcpy(f->raw, buf, VHD_FOOTER_SIZE);
    f->cookie_ok = memcmp(buf + F_COOKIE, "conectix", 8) == 0;
    f->features = vh_be32(buf + F_FEATURES);
    f->version = vh_be32(buf + F_VERSION);
    f->data_offset = vh_be64(buf + F_DATA_OFFSET);
    f->timestamp = vh_be32(buf + F_TIMESTAMP);
    memcpy(f->creator_app, buf + F_CREATOR_APP, 4);
    f->creator_version = vh_be32(buf + F_CREATOR_VER);
    memcpy(f->creator_host, buf + F_CREATOR_HOST, 4);
    f->original_size = vh_be64(buf + F_ORIG_SIZE);
    f->current_size = vh_be64(buf + F_CUR_SIZE);
    f->cylinders = vh_be16(buf + F_GEOMETRY);
    f->heads = buf[F_GEOMETRY + 2];
    f->sectors_per_track = buf[F_GEOMETRY + 3];
    f->disk_type = vh_be32(buf + F_TYPE);
    f->checksum = vh_be32(buf + F_CHECKSUM);
    memcpy(f->unique_id, buf + F_UNIQUE_ID, 16);
    f->saved_state = buf[F_SAVED_STATE];
    f->checksum_computed = vh_vhd_checksum(buf, VHD_FOOTER_SIZE, F_CHECKSUM);
    f->checksum_ok = f->checksum_computed == f->checksum;
}

void vhd_footer_serialise(vhd_footer *f, uint8_t out[VHD_FOOTER_SIZE])
{
    memcpy(out, f->raw, VHD_FOOTER_SIZE);
    memcpy(out + F_COOKIE, "conectix", 8);
    vh_put_be32(out + F_FEATURES, f->features);
    vh_put_be32(out + F_VERSION, f->version);
    vh_put_be64(out + F_DATA_OFFSET, f->data_offset);
    vh_put_be32(out + F_TIMESTAMP, f->timestamp);
    memcpy(out + F_CREATOR_APP, f->creator_app, 4);
    vh_put_be32(out + F_CREATOR_VER, f->creator_version);
    memcpy(out + F_CREATOR_HOST, f->creator_host, 4);
    vh_put_be64(out + F_ORIG_SIZE, f->original_size);
    vh_put_be64(out + F_CUR_SIZE, f->current_size);
    vh_put_be16(out + F_GEOMETRY, f->cylinders);
    out[F_GEOMETRY + 2] = f->heads;
    out[F_GEOMETRY + 3] = f->sectors_per_track;
    vh_put_be32(out + F_TYPE, f->disk_type);
    memcpy(out + F_UNIQUE_ID, f->unique_id, 16);
    out[F_SAVED_STATE] = f->saved_state;
    f->checksum = f->checksum_computed = vh_vhd_checksum(out, VHD_FOOTER_SIZE, F_CHECKSUM);
    vh_put_be32(out + F_CHECKSUM, f->checksum);
    f->cookie_ok = f->checksum_ok = true;
    memcpy(f->raw, out, VHD_FOOTER_SIZE);
}

void vhd_locator_entry_parse(const uint8_t buf[VHD_LOC_SIZE], vhd_locator_entry *e)
{
    e->code = vh_be32(buf);
    e->space = vh_be32(buf + 4);
    e->length = vh_be32(buf + 8);
    e->reserved = vh_be32(buf + 12);
    e->offset = vh_be64(buf + 16);
}

void vhd_locator_entry_serialise(const vhd_locator_entry *e, uint8_t out[VHD_LOC_SIZE])
{
    vh_put_be32(out, e->code);
    vh_put_be32(out + 4, e->space);
    vh_put_be32(out + 8, e->length);
    vh_put_be32(out + 12, e->reserved);
    vh_put_be64(out + 16, e->offset);
}

void vhd_header_parse(const uint8_t buf[VHD_HEADER_SIZE], vhd_header *h)
{
    memset(h, 0, sizeof *h);
    memcpy(h->raw, buf, VHD_HEADER_SIZE);
    h->cookie_ok = memcmp(buf + H_COOKIE, "cxsparse", 8) == 0;
    h->data_offset = vh_be64(buf + H_DATA_OFFSET);
    h->table_offset = vh_be64(buf + H_TABLE_OFFSET);
    h->version = vh_be32(buf + H_VERSION);
    h->max_table_entries = vh_be32(buf + H_MAX_ENTRIES);
    h->block_size = vh_be32(buf + H_BLOCK_SIZE);
    h->checksum = vh_be32(buf + H_CHECKSUM);
    memcpy(h->parent_id, buf + H_PARENT_ID, 16);
    h->parent_timestamp = vh_be32(buf + H_PARENT_TS);
    memcpy(h->parent_name, buf + VHD_NAME_OFF, VHD_NAME_BYTES);
    for (int i = 0; i < VHD_LOCATORS; i++)
        vhd_locator_entry_parse(buf + VHD_LOC_OFF + VHD_LOC_SIZE * i, &h->loc[i]);
    h->checksum_computed = vh_vhd_checksum(buf, VHD_HEADER_SIZE, H_CHECKSUM);
    h->checksum_ok = h->checksum_computed == h->checksum;
}

void vhd_header_serialise(vhd_header *h, uint8_t out[VHD_HEADER_SIZE])
{
    memcpy(out, h->raw, VHD_HEADER_SIZE);
    memcpy(out + H_COOKIE, "cxsparse", 8);
    vh_put_be64(out + H_DATA_OFFSET, h->data_offset);
    vh_put_be64(out + H_TABLE_OFFSET, h->table_offset);
    vh_put_be32(out + H_VERSION, h->version);
    vh_put_be32(out + H_MAX_ENTRIES, h->max_table_entries);
    vh_put_be32(out + H_BLOCK_SIZE, h->block_size);
    memcpy(out + H_PARENT_ID, h->parent_id, 16);
    vh_put_be32(out + H_PARENT_TS, h->parent_timestamp);
    memcpy(out + VHD_NAME_OFF, h->parent_name, VHD_NAME_BYTES);
    for (int i = 0; i < VHD_LOCATORS; i++)
        vhd_locator_entry_serialise(&h->loc[i], out + VHD_LOC_OFF + VHD_LOC_SIZE * i);
    h->checksum = h->checksum_computed = vh_vhd_checksum(out, VHD_HEADER_SIZE, H_CHECKSUM);
    vh_put_be32(out + H_CHECKSUM, h->checksum);
    h->cookie_ok = h->checksum_ok = true;
    memcpy(h->raw, out, VHD_HEADER_SIZE);
}

bool vhd_locator_space_bytes(uint32_t space, uint64_t *bytes)
{
    if (space < VHD_SECTOR) {
        *bytes = (uint64_t)space * VHD_SECTOR; /* the spec's sectors (old VirtualBox) */
        return true;
    }
    if (space % VHD_SECTOR == 0) {
        *bytes = space; /* what Windows, Virtual PC, blktap write */
        return true;
    }
    *bytes = 0;
    return false;
}

int vhd_locator_kind(uint32_t code)
{
    switch (code) {
    case VHD_PLAT_W2RU:
        return VH_LOC_W2RU;
    case VHD_PLAT_W2KU:
        return VH_LOC_W2KU;
    case VHD_PLAT_WI2R:
        return VH_LOC_WI2R;
    case VHD_PLAT_WI2K:
        return VH_LOC_WI2K;
    case VHD_PLAT_MACX:
        return VH_LOC_MACX;
    default:
        return -1;
    }
}

const char *vhd_platform_name(uint32_t code, char buf[16])
{
    uint8_t c[4];
    vh_put_be32(c, code);
    bool printable = true;
    for (int i = 0; i < 4; i++)
        printable = printable && c[i] >= 0x20 && c[i] < 0x7F;
    if (printable)
        g_snprintf(buf, 16, "%c%c%c%c", c[0], c[1], c[2], c[3]);
    else
        g_snprintf(buf, 16, "0x%08x", code);
    return buf;
}

bool vhd_utf16_looks_be(const uint8_t *buf, size_t len)
{
    size_t high_first = 0, high_second = 0;
    for (size_t i = 0; i + 1 < len; i += 2) {
        if (buf[i] == 0 && buf[i + 1] == 0)
            break;
        if (buf[i] == 0)
            high_first++; /* BE: the zero high byte comes first */
        else if (buf[i + 1] == 0)
            high_second++;
    }
    return high_first > high_second;
}

/* Single-byte text up to the first NUL: UTF-8 when it is valid, else Latin-1. */
static char *decode_single_byte(const uint8_t *data, size_t len)
{
    size_t n = 0;
    while (n < len && data[n] != 0)
        n++;
    if (g_utf8_validate((const char *)data, (gssize)n, NULL))
        return g_strndup((const char *)data, n);
    GString *s = g_string_sized_new(n * 2);
    for (size_t i = 0; i < n; i++)
        g_string_append_unichar(s, data[i]);
    return g_string_free(s, FALSE);
}

char *vhd_percent_decode(const char *s, size_t len)
{
    GString *out = g_string_sized_new(len);
    for (size_t i = 0; i < len && s[i]; i++) {
        int hi, lo;
        if (s[i] == '%' && i + 2 < len && (hi = g_ascii_xdigit_value(s[i + 1])) >= 0 &&
            (lo = g_ascii_xdigit_value(s[i + 2])) >= 0) {
            g_string_append_c(out, (char)(hi * 16 + lo));
            i += 2;
        } else {
            g_string_append_c(out, s[i]);
        }
    }
    char *raw = g_string_free(out, FALSE);
    char *valid = g_utf8_make_valid(raw, -1);
    g_free(raw);
    return valid;
}

char *vhd_locator_decode(uint32_t code, const uint8_t *data, size_t len)
{
    switch (code) {
    case VHD_PLAT_W2RU:
    case VHD_PLAT_W2KU:
        return vhd_utf16_looks_be(data, len) ? vh_utf16be_to_utf8(data, len)
                                             : vh_utf16le_to_utf8(data, len);
    case VHD_PLAT_MACX: {
        size_t n = 0;
        while (n < len && data[n] != 0)
            n++;
        return vhd_percent_decode((const char *)data, n);
    }
    default:
        return decode_single_byte(data, len);
    }
}

char *vhd_parent_name_decode(const uint8_t name[VHD_NAME_BYTES], bool writer_little_endian)
{
    bool be = !writer_little_endian;
    size_t high_first = 0, high_second = 0;
    for (size_t i = 0; i + 1 < VHD_NAME_BYTES; i += 2) {
        if (name[i] == 0 && name[i + 1] == 0)
            break;
        high_first += name[i] == 0;
        high_second += name[i + 1] == 0;
    }
    if (high_first != high_second)
        be = high_first > high_second; /* clear evidence wins over the writer's habit */
    return be ? vh_utf16be_to_utf8(name, VHD_NAME_BYTES) : vh_utf16le_to_utf8(name, VHD_NAME_BYTES);
}

uint32_t vhd_bitmap_bytes(uint32_t block_size)
{
    uint64_t sectors = block_size / VHD_SECTOR;
    return (uint32_t)vh_round_up((sectors + 7) / 8, VHD_SECTOR);
}

bool vhd_bitmap_set(uint8_t *bm, uint32_t first, uint32_t count)
{
    bool changed = false;
    for (uint32_t s = first; s < first + count; s++) {
        uint8_t mask = (uint8_t)(0x80 >> (s % 8));
        if (!(bm[s / 8] & mask)) {
            bm[s / 8] |= mask;
            changed = true;
        }
    }
    return changed;
}

uint32_t vhd_bitmap_run(const uint8_t *bm, uint32_t first, uint32_t limit, bool *value)
{
    bool v = vhd_bitmap_get(bm, first);
    uint8_t same = v ? 0xFF : 0x00;
    uint32_t s = first + 1;
    while (s < limit) {
        if (s % 8 == 0 && s + 8 <= limit && bm[s / 8] == same) {
            s += 8; /* whole bytes at a time */
            continue;
        }
        if (vhd_bitmap_get(bm, s) != v)
            break;
        s++;
    }
    *value = v;
    return s - first;
}

void vhd_bat_decode(const uint8_t *raw, uint32_t entries, uint32_t *out)
{
    for (uint32_t i = 0; i < entries; i++)
        out[i] = vh_be32(raw + 4 * (size_t)i);
}

void vhd_geometry(uint64_t size, uint16_t *cyl, uint8_t *heads, uint8_t *spt)
{
    /* SPEC(VHD) appendix "CHS Calculation", as Windows and qemu compute it. */
    uint64_t total = size / VHD_SECTOR;
    uint64_t s, h, cth;
    if (total > VHD_MAX_GEOMETRY_SECTORS)
        total = VHD_MAX_GEOMETRY_SECTORS;
    if (total >= UINT64_C(65535) * 16 * 63) {
        s = 255;
        h = 16;
        cth = total / s;
    } else {
        s = 17;
        cth = total / s;
        h = (cth + 1023) / 1024;
        if (h < 4)
            h = 4;
        if (cth >= h * 1024 || h > 16) {
            s = 31;
            h = 16;
            cth = total / s;
        }
        if (cth >= h * 1024) {
            s = 63;
            h = 16;
            cth = total / s;
        }
    }
    *cyl = (uint16_t)(cth / h);
    *heads = (uint8_t)h;
    *spt = (uint8_t)s;
}
