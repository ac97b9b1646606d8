// SPDX-License-Identifier: GPL-2.0-or-later
/* util.c - CRC-32C, VHD checksums, UTF-16 and identities (see util.h). */
#include "util.h"

#include <uuid/uuid.h>

/*
 * CRC-32C by slicing-by-8 (eight bytes per step through eight tables): several times faster than
 * a byte at a time, which matters when a store scan checks a 64 KiB region table and two 4 KiB
 * headers of every VHDX. table[0] is the classic byte table; table[k][i] is the CRC of byte i
 * followed by k zero bytes.
 */
static uint32_t crc32c_table[8][256];
static GOnce crc32c_once = G_ONCE_INIT;

static gpointer crc32c_init(gpointer unused)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc32c_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int k = 1; k < 8; k++)
            crc32c_table[k][i] =
                (crc32c_table[k - 1][i] >> 8) ^ crc32c_table[0][crc32c_table[k - 1][i] & 0xFF];
    return NULL;
}

uint32_t vh_crc32c_update_sw(uint32_t crc, const void *buf, size_t len)
{
    g_once(&crc32c_once, crc32c_init, NULL);
    const uint32_t(*t)[256] = crc32c_table;
    const uint8_t *p = buf;
    crc = ~crc;
    for (; len >= 8; p += 8, len -= 8) {
        uint32_t lo = crc ^ vh_le32(p), hi = vh_le32(p + 4);
        crc = t[7][lo & 0xFF] ^ t[6][(lo >> 8) & 0xFF] ^ t[5][(lo >> 16) & 0xFF] ^ t[4][lo >> 24] ^
              t[3][hi & 0xFF] ^ t[2][(hi >> 8) & 0xFF] ^ t[1][(hi >> 16) & 0xFF] ^ t[0][hi >> 24];
    }
    while (len--)
        crc = t[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__)
/*
 * The SSE 4.2 crc32 instruction computes CRC-32C itself, 8 bytes per instruction: a store scan
 * spent a quarter of its time in the tables above (scripts/bench index, perf). One instruction
 * waits for the one before (3 cycles each), so long buffers are cut in three streams computed
 * side by side, then joined: the CRC of A followed by B is the CRC of A shifted over len(B) zero
 * bytes, xor the CRC of B started from zero (the register is linear). The shift over a fixed
 * length is a 32x32 bit matrix, kept as four 256-entry tables (M. Adler's crc32c.c method).
 * After the tables, the scan's remaining CRC time was mostly its 64 KiB region tables.
 */
#define CRC_LONG 8192 /* bytes per stream; 3 * CRC_LONG per step */
#define CRC_SHORT 256

static uint32_t crc32c_long[4][256], crc32c_short[4][256];
static GOnce crc32c_shift_once = G_ONCE_INIT;

/* The matrix mat (32 columns) times the bit vector vec, over GF(2). */
static uint32_t gf2_times(const uint32_t *mat, uint32_t vec)
{
    uint32_t sum = 0;
    for (; vec; vec >>= 1, mat++)
        if (vec & 1)
            sum ^= *mat;
    return sum;
}

static void gf2_square(uint32_t *square, const uint32_t *mat)
{
    for (int n = 0; n < 32; n++)
        square[n] = gf2_times(mat, mat[n]);
}

/* The tables that apply len (a power of two) zero bytes to a CRC register. */
static void crc32c_zeros(uint32_t zeros[4][256], size_t len)
{
    uint32_t odd[32], even[32];
    odd[0] = 0x82F63B78u; /* one zero bit */
    for (int n = 1; n < 32; n++)
        odd[n] = 1u << (n - 1);
    gf2_square(even, odd); /* two zero bits */
    gf2_square(odd, even); /* four */
    const uint32_t *op = odd;
    for (;;) { /* each square doubles: one zero byte, two, ... len */
        gf2_square(even, odd);
        op = even;
        len >>= 1;
        if (len == 0)
            break;
        gf2_square(odd, even);
        op = odd;
        len >>= 1;
        if (len == 0)
            break;
    }
    for (uint32_t n = 0; n < 256; n++)
        for (int k = 0; k < 4; k++)
            zeros[k][n] = gf2_times(op, n << (8 * k));
}

static gpointer crc32c_shift_init(gpointer unused)
{
    crc32c_zeros(crc32c_long, CRC_LONG);
    crc32c_zeros(crc32c_short, CRC_SHORT);
    return NULL;
}

static uint32_t crc32c_shift(const uint32_t zeros[4][256], uint32_t crc)
{
    return zeros[0][crc & 0xFF] ^ zeros[1][(crc >> 8) & 0xFF] ^ zeros[2][(crc >> 16) & 0xFF] ^
           zeros[3][crc >> 24];
}

__attribute__((target("sse4.2"))) static uint64_t crc32c_hw_u64(uint64_t c, const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8); /* x86 is little-endian, as the instruction expects */
    return __builtin_ia32_crc32di(c, v);
}

/* Three streams of `block` bytes at a time while 3 * block bytes remain. */
__attribute__((target("sse4.2"))) static uint64_t crc32c_hw_3way(uint64_t c0, const uint8_t **pp,
                                                                 size_t *lenp, size_t block,
                                                                 const uint32_t zeros[4][256])
{
    const uint8_t *p = *pp;
    size_t len = *lenp;
    for (; len >= 3 * block; p += 3 * block, len -= 3 * block) {
        uint64_t c1 = 0, c2 = 0;
        for (size_t k = 0; k < block; k += 8) {
            c0 = crc32c_hw_u64(c0, p + k);
            c1 = crc32c_hw_u64(c1, p + block + k);
            c2 = crc32c_hw_u64(c2, p + 2 * block + k);
        }
        c0 = crc32c_shift(zeros, (uint32_t)c0) ^ (uint32_t)c1;
        c0 = crc32c_shift(zeros, (uint32_t)c0) ^ (uint32_t)c2;
    }
    *pp = p;
    *lenp = len;
    return c0;
}

__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const void *buf,
                                                            size_t len)
{
    const uint8_t *p = buf;
    uint64_t c = ~crc;
    if (len >= 3 * CRC_SHORT) {
        g_once(&crc32c_shift_once, crc32c_shift_init, NULL);
        c = crc32c_hw_3way(c, &p, &len, CRC_LONG, crc32c_long);
        c = crc32c_hw_3way(c, &p, &len, CRC_SHORT, crc32c_short);
    }
    for (; len >= 8; p += 8, len -= 8)
        c = crc32c_hw_u64(c, p);
    uint32_t c32 = (uint32_t)c;
    while (len--)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}
#endif

uint32_t vh_crc32c_update(uint32_t crc, const void *buf, size_t len)
{
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2"))
        return crc32c_hw(crc, buf, len);
#endif
    return vh_crc32c_update_sw(crc, buf, len);
}

uint32_t vh_crc32c(const void *buf, size_t len)
{
    return vh_crc32c_update(0, buf, len);
}

uint32_t vh_vhd_checksum(const uint8_t *buf, size_t len, size_t skip_off)
{
    /* eight bytes at a time as four 16-bit lanes (two bytes each per word), emptied before a
     * lane can overflow (128 words add at most 128 * 510 < 65536 to each) */
    const uint64_t m = UINT64_C(0x00FF00FF00FF00FF);
    uint32_t sum = 0;
    size_t i = 0;
    while (len - i >= 8) {
        uint64_t lanes = 0;
        for (int k = 0; k < 128 && len - i >= 8; k++, i += 8) {
            uint64_t w;
            memcpy(&w, buf + i, 8);
            lanes += (w & m) + ((w >> 8) & m);
        }
        sum += (uint32_t)((lanes & 0xFFFF) + ((lanes >> 16) & 0xFFFF) + ((lanes >> 32) & 0xFFFF) +
                          (lanes >> 48));
    }
    for (; i < len; i++)
        sum += buf[i];
    for (i = skip_off; i < len && i < skip_off + 4; i++)
        sum -= buf[i];
    return ~sum;
}

/* Appends code point u (at most 0x10FFFF, not a surrogate) as UTF-8 at o; returns the end. */
static char *put_utf8(char *o, uint32_t u)
{
    if (u < 0x80) {
        *o++ = (char)u;
    } else if (u < 0x800) {
        *o++ = (char)(0xC0 | (u >> 6));
        *o++ = (char)(0x80 | (u & 0x3F));
    } else if (u < 0x10000) {
        *o++ = (char)(0xE0 | (u >> 12));
        *o++ = (char)(0x80 | ((u >> 6) & 0x3F));
        *o++ = (char)(0x80 | (u & 0x3F));
    } else {
        *o++ = (char)(0xF0 | (u >> 18));
        *o++ = (char)(0x80 | ((u >> 12) & 0x3F));
        *o++ = (char)(0x80 | ((u >> 6) & 0x3F));
        *o++ = (char)(0x80 | (u & 0x3F));
    }
    return o;
}

/* Every parent name and locator of a scan goes through here: no GString, a byte at a time. */
static char *utf16_to_utf8(const uint8_t *buf, size_t len, bool big_endian)
{
    size_t units = len / 2;
    char *out = g_malloc(3 * units + 1); /* a unit gives at most 3 bytes, a pair 4 */
    char *o = out;
    for (size_t i = 0; i < units; i++) {
        const uint8_t *p = buf + 2 * i;
        uint32_t u = big_endian ? vh_be16(p) : vh_le16(p);
        if (u == 0)
            break;
        if (u >= 0xD800 && u <= 0xDBFF && i + 1 < units) {
            const uint8_t *q = p + 2;
            uint32_t lo = big_endian ? vh_be16(q) : vh_le16(q);
            if (lo >= 0xDC00 && lo <= 0xDFFF) {
                o = put_utf8(o, 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00));
                i++;
                continue;
            }
        }
        if (u >= 0xD800 && u <= 0xDFFF)
            u = 0xFFFD; /* unpaired surrogate */
        o = put_utf8(o, u);
    }
    *o = '\0';
    return out;
}

char *vh_utf16le_to_utf8(const uint8_t *buf, size_t len)
{
    return utf16_to_utf8(buf, len, false);
}

char *vh_utf16be_to_utf8(const uint8_t *buf, size_t len)
{
    return utf16_to_utf8(buf, len, true);
}

static ssize_t utf8_to_utf16(const char *s, uint8_t *out, size_t cap, bool big_endian)
{
    if (!g_utf8_validate(s, -1, NULL))
        return -EINVAL;
    size_t n = 0;
    for (const char *p = s; *p; p = g_utf8_next_char(p)) {
        gunichar c = g_utf8_get_char(p);
        uint16_t units[2];
        int count = 1;
        if (c >= 0x10000) {
            units[0] = (uint16_t)(0xD800 + ((c - 0x10000) >> 10));
            units[1] = (uint16_t)(0xDC00 + ((c - 0x10000) & 0x3FF));
            count = 2;
        } else {
            units[0] = (uint16_t)c;
        }
        for (int k = 0; k < count; k++) {
            if (n + 2 > cap)
                return -ENAMETOOLONG;
            if (big_endian)
                vh_put_be16(out + n, units[k]);
            else
                vh_put_le16(out + n, units[k]);
            n += 2;
        }
    }
    return (ssize_t)n;
}

ssize_t vh_utf8_to_utf16le(const char *s, uint8_t *out, size_t cap)
{
    return utf8_to_utf16(s, out, cap, false);
}

ssize_t vh_utf8_to_utf16be(const char *s, uint8_t *out, size_t cap)
{
    return utf8_to_utf16(s, out, cap, true);
}

void vh_id_format(const vh_id *id, char out[VH_ID_STRLEN + 1])
{
    uuid_unparse_lower(id->b, out);
}

bool vh_id_parse(const char *s, vh_id *out)
{
    char tmp[VH_ID_STRLEN + 1];
    size_t len = strlen(s);
    if (len == VH_ID_STRLEN + 2 && s[0] == '{' && s[len - 1] == '}') {
        memcpy(tmp, s + 1, VH_ID_STRLEN);
        tmp[VH_ID_STRLEN] = '\0';
        s = tmp;
    } else if (len != VH_ID_STRLEN) {
        return false;
    }
    return uuid_parse(s, out->b) == 0;
}

bool vh_id_is_zero(const vh_id *id)
{
    static const vh_id zero;
    return memcmp(id->b, zero.b, 16) == 0;
}

bool vh_id_equal(const vh_id *a, const vh_id *b)
{
    return memcmp(a->b, b->b, 16) == 0;
}

/* GUID storage: Data1 (4, LE), Data2 (2, LE), Data3 (2, LE), Data4 (8 bytes as is). */
vh_id vh_id_from_guid_le(const uint8_t le[16])
{
    vh_id id;
    static const int map[16] = {3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15};
    for (int i = 0; i < 16; i++)
        id.b[i] = le[map[i]];
    return id;
}

void vh_id_to_guid_le(const vh_id *id, uint8_t le[16])
{
    static const int map[16] = {3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15};
    for (int i = 0; i < 16; i++)
        le[map[i]] = id->b[i];
}

vh_id vh_id_random(void)
{
    vh_id id;
    uuid_generate_random(id.b);
    return id;
}
