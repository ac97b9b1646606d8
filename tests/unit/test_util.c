// SPDX-License-Identifier: GPL-2.0-or-later
/* test_util.c - CRC-32C, VHD checksum, UTF-16 both ways, identities. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "util.h"

static void crc32c_known_vectors(void **state)
{
    /* RFC 3720 B.4 test vectors */
    uint8_t zeros[32] = {0}, ones[32], inc[32];
    memset(ones, 0xFF, sizeof ones);
    for (int i = 0; i < 32; i++)
        inc[i] = (uint8_t)i;
    assert_int_equal(vh_crc32c(zeros, 32), 0x8A9136AA);
    assert_int_equal(vh_crc32c(ones, 32), 0x62A8AB43);
    assert_int_equal(vh_crc32c(inc, 32), 0x46DD794E);
    assert_int_equal(vh_crc32c("123456789", 9), 0xE3069283);
    /* incremental == one shot */
    uint32_t c = vh_crc32c_update(0, inc, 10);
    assert_int_equal(vh_crc32c_update(c, inc + 10, 22), 0x46DD794E);
}

/* The bit-at-a-time definition (reflected 0x82F63B78), to check the table-driven code against. */
static uint32_t crc32c_bitwise(const uint8_t *p, size_t len)
{
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < len; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    }
    return ~c;
}

/* Every length up to 300 at every alignment, and chained updates split anywhere. */
static void crc32c_matches_the_definition(void **state)
{
    uint8_t buf[320];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof buf; i++) {
        x = x * 1103515245u + 12345u;
        buf[i] = (uint8_t)(x >> 16);
    }
    for (size_t off = 0; off < 8; off++)
        for (size_t len = 0; len <= 300; len++) {
            assert_int_equal(vh_crc32c(buf + off, len), crc32c_bitwise(buf + off, len));
            assert_int_equal(vh_crc32c_update_sw(0, buf + off, len),
                             crc32c_bitwise(buf + off, len));
        }
    uint32_t whole = crc32c_bitwise(buf, sizeof buf);
    for (size_t cut = 0; cut <= sizeof buf; cut += 7) {
        assert_int_equal(vh_crc32c_update(vh_crc32c(buf, cut), buf + cut, sizeof buf - cut), whole);
        assert_int_equal(vh_crc32c_update_sw(vh_crc32c(buf, cut), buf + cut, sizeof buf - cut),
                         whole);
    }
}

/* Long buffers (the hardware path computes three streams side by side, then joins them): every
 * length around the stream sizes (3 x 256, 3 x 8192 bytes) and a 64 KiB region table. */
static void crc32c_long_buffers_match(void **state)
{
    size_t size = 3 * 8192 * 3 + 3 * 256 * 2 + 64;
    g_autofree uint8_t *buf = g_malloc(size);
    uint32_t x = 777;
    for (size_t i = 0; i < size; i++) {
        x = x * 1103515245u + 12345u;
        buf[i] = (uint8_t)(x >> 16);
    }
    const size_t around[] = {3 * 256, 3 * 8192, 2 * 3 * 8192, 65536, 3 * 8192 + 3 * 256};
    for (size_t a = 0; a < G_N_ELEMENTS(around); a++)
        for (size_t len = around[a] - 9; len <= around[a] + 9; len++)
            for (size_t off = 0; off < 8; off += 3)
                assert_int_equal(vh_crc32c(buf + off, len), crc32c_bitwise(buf + off, len));
    uint32_t whole = crc32c_bitwise(buf, size);
    assert_int_equal(vh_crc32c(buf, size), whole);
    for (size_t cut = 1; cut < size; cut += 4099)
        assert_int_equal(vh_crc32c_update(vh_crc32c(buf, cut), buf + cut, size - cut), whole);
}

static void vhd_checksum_skips_its_field(void **state)
{
    uint8_t buf[16] = {1, 2, 3, 4, 0xFF, 0xFF, 0xFF, 0xFF, 5};
    assert_int_equal(vh_vhd_checksum(buf, sizeof buf, 4), ~(uint32_t)15);
}

/* Long buffers (summed eight bytes at a time): every length up to 1100 at every skip offset class,
 * all bytes 0xFF (the most a lane can take) and a pattern, against a byte-at-a-time sum. */
static void vhd_checksum_long_buffers(void **state)
{
    uint8_t ff[1100], pat[1100];
    memset(ff, 0xFF, sizeof ff);
    for (size_t i = 0; i < sizeof pat; i++)
        pat[i] = (uint8_t)(i * 37 + 11);
    const uint8_t *bufs[] = {ff, pat};
    for (int b = 0; b < 2; b++)
        for (size_t len = 0; len <= sizeof ff; len++)
            for (size_t skip = 0; skip <= len + 4; skip += len / 3 + 1) {
                uint32_t sum = 0;
                for (size_t i = 0; i < len; i++)
                    if (i < skip || i >= skip + 4)
                        sum += bufs[b][i];
                assert_int_equal(vh_vhd_checksum(bufs[b], len, skip), ~sum);
            }
}

static void utf16_decodes_both_orders(void **state)
{
    const uint8_t le[] = {'C', 0, ':', 0, '\\', 0, 0xE9, 0, 0x3D, 0xD8, 0x00, 0xDE, 0, 0, 'x', 0};
    g_autofree char *a = vh_utf16le_to_utf8(le, sizeof le);
    assert_string_equal(a, "C:\\\xC3\xA9\xF0\x9F\x98\x80"); /* stops at the NUL */
    const uint8_t be[] = {0, 'a', 0, 'b', 0};
    g_autofree char *b = vh_utf16be_to_utf8(be, sizeof be); /* odd trailing byte ignored */
    assert_string_equal(b, "ab");
}

static void utf16_unpaired_surrogates_become_replacement(void **state)
{
    const uint8_t lone_high[] = {0x00, 0xD8, 'a', 0};
    const uint8_t lone_low[] = {0x00, 0xDC};
    const uint8_t high_at_end[] = {'z', 0, 0x00, 0xD8};
    g_autofree char *a = vh_utf16le_to_utf8(lone_high, sizeof lone_high);
    g_autofree char *b = vh_utf16le_to_utf8(lone_low, sizeof lone_low);
    g_autofree char *c = vh_utf16le_to_utf8(high_at_end, sizeof high_at_end);
    assert_string_equal(a, "\xEF\xBF\xBD"
                           "a");
    assert_string_equal(b, "\xEF\xBF\xBD");
    assert_string_equal(c, "z\xEF\xBF\xBD");
}

static void utf16_encode_roundtrip_and_limits(void **state)
{
    uint8_t out[16];
    ssize_t n = vh_utf8_to_utf16le("a\xF0\x9F\x98\x80", out, sizeof out);
    assert_int_equal(n, 6);
    assert_memory_equal(out, ((uint8_t[]){'a', 0, 0x3D, 0xD8, 0x00, 0xDE}), 6);
    n = vh_utf8_to_utf16be("ab", out, sizeof out);
    assert_int_equal(n, 4);
    assert_memory_equal(out, ((uint8_t[]){0, 'a', 0, 'b'}), 4);
    assert_int_equal(vh_utf8_to_utf16le("abcdefghi", out, sizeof out), -ENAMETOOLONG);
    assert_int_equal(vh_utf8_to_utf16le("\xFF", out, sizeof out), -EINVAL);
}

static void ids_format_parse_and_guid_order(void **state)
{
    /* the WS2019 checkpoint's parent_linkage (doc/formats.md §2.5) */
    vh_id id;
    assert_true(vh_id_parse("{FF34003B-11ED-4CF8-A166-B2BE05E20B80}", &id));
    char s[VH_ID_STRLEN + 1];
    vh_id_format(&id, s);
    assert_string_equal(s, "ff34003b-11ed-4cf8-a166-b2be05e20b80");
    uint8_t le[16];
    vh_id_to_guid_le(&id, le);
    assert_int_equal(le[0], 0x3B);
    assert_int_equal(le[3], 0xFF);
    assert_int_equal(le[4], 0xED);
    assert_int_equal(le[6], 0xF8);
    assert_int_equal(le[8], 0xA1);
    vh_id back = vh_id_from_guid_le(le);
    assert_true(vh_id_equal(&id, &back));
    assert_false(vh_id_parse("ff34003b-11ed-4cf8-a166-b2be05e20b8", &id));
    assert_false(vh_id_parse("{ff34003b-11ed-4cf8-a166-b2be05e20b80", &id));
    assert_false(vh_id_parse("ff34003b-11ed-4cf8-a166-b2be05e20b8g", &id));
    vh_id zero = {{0}};
    assert_true(vh_id_is_zero(&zero));
    vh_id r1 = vh_id_random(), r2 = vh_id_random();
    assert_false(vh_id_equal(&r1, &r2));
}

/* common.h: the folder and the name of store-relative paths */
static void relpath_parts(void **state)
{
    const char *cases[][3] = {{"a/b/c.vhdx", "a/b", "c.vhdx"},
                              {"top.vhd", "", "top.vhd"},
                              {"vm/", "vm", ""},
                              {"", "", ""}};
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autofree char *dir = vh_relpath_dir(cases[i][0]);
        assert_string_equal(dir, cases[i][1]);
        assert_string_equal(vh_relpath_base(cases[i][0]), cases[i][2]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(crc32c_known_vectors),
        cmocka_unit_test(crc32c_matches_the_definition),
        cmocka_unit_test(crc32c_long_buffers_match),
        cmocka_unit_test(vhd_checksum_skips_its_field),
        cmocka_unit_test(vhd_checksum_long_buffers),
        cmocka_unit_test(utf16_decodes_both_orders),
        cmocka_unit_test(utf16_unpaired_surrogates_become_replacement),
        cmocka_unit_test(utf16_encode_roundtrip_and_limits),
        cmocka_unit_test(ids_format_parse_and_guid_order),
        cmocka_unit_test(relpath_parts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
