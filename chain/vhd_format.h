/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * vhd_format.h - the VHD (v1) on-disk structures, parsed and serialised without any I/O
 * (doc/formats.md §1): the 512-byte footer, the 1024-byte dynamic disk header with its eight parent
 * locator entries, BAT entries, MSB-first sector bitmaps, the CHS geometry, and the decoding of
 * locator data (UTF-16LE W2ru/W2ku, single-byte Wi2r/Wi2k, MacX file URLs) and of the Parent
 * Unicode Name (UTF-16BE).
 *
 * Contract: parsers never trust the bytes (they only decode; range checks against the file are
 * the engine's, in vhd.c); serialisers keep every byte they do not own (reserved bytes, blktap's
 * hidden flag at footer+85) from the `raw` copy and recompute the checksum.
 */
#ifndef VH_VHD_FORMAT_H
#define VH_VHD_FORMAT_H

#include "disk.h"

#define VHD_SECTOR 512u
#define VHD_FOOTER_SIZE 512u
#define VHD_HEADER_SIZE 1024u
#define VHD_LOCATORS 8
#define VHD_NAME_OFF 64u    /* Parent Unicode Name, relative to the header */
#define VHD_NAME_BYTES 512u /* 256 UTF-16 units */
#define VHD_LOC_OFF 576u    /* first locator entry, relative to the header */
#define VHD_LOC_SIZE 24u
#define VHD_BAT_UNUSED 0xFFFFFFFFu
#define VHD_FIXED_DATA_OFFSET UINT64_C(0xFFFFFFFFFFFFFFFF)
#define VHD_VERSION 0x00010000u
#define VHD_FEATURES_RESERVED 0x00000002u
#define VHD_MAX_GEOMETRY_SECTORS (UINT64_C(65535) * 16 * 255)

/* Platform codes of parent locator entries (doc/formats.md §1.3). */
#define VHD_PLAT_NONE 0x00000000u
#define VHD_PLAT_WI2R 0x57693272u
#define VHD_PLAT_WI2K 0x5769326Bu
#define VHD_PLAT_W2RU 0x57327275u
#define VHD_PLAT_W2KU 0x57326B75u
#define VHD_PLAT_MAC 0x4D616320u
#define VHD_PLAT_MACX 0x4D616358u

typedef struct vhd_footer {
    uint32_t features;
    uint32_t version;
    uint64_t data_offset;
    uint32_t timestamp;
    uint8_t creator_app[4];
    uint32_t creator_version;
    uint8_t creator_host[4];
    uint64_t original_size;
    uint64_t current_size;
    uint16_t cylinders;
    uint8_t heads;
    uint8_t sectors_per_track;
    uint32_t disk_type;
    uint32_t checksum; /* as stored */
    uint8_t unique_id[16];
    uint8_t saved_state;
    bool cookie_ok;   /* "conectix" */
    bool checksum_ok; /* stored == computed */
    uint32_t checksum_computed;
    uint8_t raw[VHD_FOOTER_SIZE]; /* the bytes parsed (reserved bytes are kept from here) */
} vhd_footer;

typedef struct vhd_locator_entry {
    uint32_t code;
    uint32_t space; /* as stored: bytes or sectors, see vhd_locator_space_bytes */
    uint32_t length;
    uint32_t reserved;
    uint64_t offset;
} vhd_locator_entry;

typedef struct vhd_header {
    uint64_t data_offset; /* unused field, all ones */
    uint64_t table_offset;
    uint32_t version;
    uint32_t max_table_entries;
    uint32_t block_size;
    uint32_t checksum;
    uint8_t parent_id[16];
    uint32_t parent_timestamp;
    uint8_t parent_name[VHD_NAME_BYTES]; /* raw UTF-16 (BE normally) */
    vhd_locator_entry loc[VHD_LOCATORS];
    bool cookie_ok; /* "cxsparse" */
    bool checksum_ok;
    uint32_t checksum_computed;
    uint8_t raw[VHD_HEADER_SIZE];
} vhd_header;

/* Decodes 512 bytes; never fails (cookie_ok/checksum_ok say what is right). */
void vhd_footer_parse(const uint8_t buf[VHD_FOOTER_SIZE], vhd_footer *f);
/* Encodes f into out (starting from f->raw), recomputing the checksum (stored into f too). */
void vhd_footer_serialise(vhd_footer *f, uint8_t out[VHD_FOOTER_SIZE]);

void vhd_header_parse(const uint8_t buf[VHD_HEADER_SIZE], vhd_header *h);
void vhd_header_serialise(vhd_header *h, uint8_t out[VHD_HEADER_SIZE]);

void vhd_locator_entry_parse(const uint8_t buf[VHD_LOC_SIZE], vhd_locator_entry *e);
void vhd_locator_entry_serialise(const vhd_locator_entry *e, uint8_t out[VHD_LOC_SIZE]);

/*
 * The bytes a locator's Platform Data Space reserves (doc/formats.md §1.3, blktap's heuristic):
 * below 512 it counts sectors, a multiple of 512 counts bytes, anything else is invalid
 * (returns false).
 */
bool vhd_locator_space_bytes(uint32_t space, uint64_t *bytes);

/* The locator kind of a platform code, or -1 for none / Mac alias / unknown codes. */
int vhd_locator_kind(uint32_t code);
/* "W2ru" etc. for a code (unknown codes as hex); returns buf. */
const char *vhd_platform_name(uint32_t code, char buf[16]);

/*
 * Decodes locator data as stored (never fails; returns UTF-8):
 * W2ru/W2ku UTF-16LE, or BE when the zero bytes say so (doc/formats.md §1.3: some writers/readers
 * assumed BE); Wi2r/Wi2k single-byte (UTF-8 when valid, else Latin-1); MacX a percent-decoded
 * file URL. Stops at the first NUL character.
 */
char *vhd_locator_decode(uint32_t code, const uint8_t *data, size_t len);
/*
 * Decodes the Parent Unicode Name: UTF-16BE, except that old blktap (creator "tap\0" version
 * 0x00000001) wrote host order (little-endian); the zero bytes decide when they are clear.
 */
char *vhd_parent_name_decode(const uint8_t name[VHD_NAME_BYTES], bool writer_little_endian);
/* True when UTF-16 text looks big-endian (more zero high bytes at even offsets). */
bool vhd_utf16_looks_be(const uint8_t *buf, size_t len);
/* Percent-decodes a URL (bad escapes are kept literally); returns valid UTF-8. */
char *vhd_percent_decode(const char *s, size_t len);

/* Bytes of a block's sector bitmap: one bit a sector, rounded up to whole sectors. */
uint32_t vhd_bitmap_bytes(uint32_t block_size);
/* Bit of sector s (MSB-first: bit 7 of byte 0 is sector 0, doc/formats.md §1.4). */
static inline bool vhd_bitmap_get(const uint8_t *bm, uint32_t s)
{
    return (bm[s / 8] >> (7 - s % 8)) & 1;
}
/* Sets sectors [first, first+count); returns true when any bit changed. */
bool vhd_bitmap_set(uint8_t *bm, uint32_t first, uint32_t count);
/* How many sectors from `first` (before `limit`) have the same bit as `first`; *value = it. */
uint32_t vhd_bitmap_run(const uint8_t *bm, uint32_t first, uint32_t limit, bool *value);

/* BAT: u32 big-endian sector numbers (0xFFFFFFFF = not allocated). */
void vhd_bat_decode(const uint8_t *raw, uint32_t entries, uint32_t *out);

/* The CHS geometry of SPEC(VHD)'s appendix for a size in bytes (capped at 65535/16/255). */
void vhd_geometry(uint64_t size, uint16_t *cyl, uint8_t *heads, uint8_t *spt);

#endif
