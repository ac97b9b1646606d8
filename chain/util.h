/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * util.h - format-neutral building blocks: CRC-32C, the VHD one's-complement checksum, UTF-16
 * (both byte orders, lenient on unpaired surrogates and odd lengths), identities and their text
 * form.
 */
#ifndef VH_UTIL_H
#define VH_UTIL_H

#include "common.h"

/* CRC-32C (Castagnoli), standard form: init ~0, reflected, final xor ~0 (doc/formats.md §2). */
uint32_t vh_crc32c(const void *buf, size_t len);
/* Continues a CRC over more bytes: pass the previous return value (start with 0). */
uint32_t vh_crc32c_update(uint32_t crc, const void *buf, size_t len);
/* The same by tables; vh_crc32c_update uses the processor's crc32 instruction where it has one. */
uint32_t vh_crc32c_update_sw(uint32_t crc, const void *buf, size_t len);

/* VHD checksum: one's complement of the byte sum, with the 4 bytes at skip_off taken as 0. */
uint32_t vh_vhd_checksum(const uint8_t *buf, size_t len, size_t skip_off);

/*
 * UTF-16 -> UTF-8. Stops at the first NUL unit or after `len` bytes (an odd trailing byte is
 * ignored). Unpaired surrogates become U+FFFD. Never fails; returns a new string.
 */
char *vh_utf16le_to_utf8(const uint8_t *buf, size_t len);
char *vh_utf16be_to_utf8(const uint8_t *buf, size_t len);
/*
 * UTF-8 -> UTF-16; returns the byte length written, or -EINVAL (bad UTF-8) / -ENAMETOOLONG
 * (does not fit in cap bytes). No terminator is written.
 */
ssize_t vh_utf8_to_utf16le(const char *s, uint8_t *out, size_t cap);
ssize_t vh_utf8_to_utf16be(const char *s, uint8_t *out, size_t cap);

/*
 * An identity, held in display order: the 16 bytes exactly as the lowercase 8-4-4-4-12 text
 * shows them. A VHD unique id is the stored bytes as they are (doc/formats.md §4.14); a VHDX GUID
 * is converted from its mixed-endian storage (vh_id_from_guid_le).
 */
typedef struct vh_id {
    uint8_t b[16];
} vh_id;

#define VH_ID_STRLEN 36
void vh_id_format(const vh_id *id, char out[VH_ID_STRLEN + 1]);
/* Parses 8-4-4-4-12 hex, any case, optionally in braces; surrounding spaces are not allowed. */
bool vh_id_parse(const char *s, vh_id *out);
bool vh_id_is_zero(const vh_id *id);
bool vh_id_equal(const vh_id *a, const vh_id *b);
vh_id vh_id_from_guid_le(const uint8_t le[16]);
void vh_id_to_guid_le(const vh_id *id, uint8_t le[16]);
/* A new random (version 4) identity. */
vh_id vh_id_random(void);

/* VHD time stamps: seconds since 2000-01-01 00:00:00 UTC. */
#define VH_VHD_EPOCH INT64_C(946684800)
static inline uint32_t vh_vhd_time_from_unix(int64_t t)
{
    return t <= VH_VHD_EPOCH ? 0 : (uint32_t)(t - VH_VHD_EPOCH);
}
static inline int64_t vh_vhd_time_to_unix(uint32_t t)
{
    return (int64_t)t + VH_VHD_EPOCH;
}

#endif
