/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * vhdx_format.h - VHDX on-disk structures (MS-VHDX; doc/formats.md §2): pure parsers and writers,
 * no file I/O, so that every one of them can be unit-tested on hand-built buffers.
 *
 * Contract: parsers take untrusted bytes and either fill their output or fail with -EINVAL and
 * a GError naming the structure, the offset (the caller passes the structure's file offset as
 * `base`) and what is wrong; the caller prefixes the file name. Writers produce complete
 * structures with their checksums. GUIDs are held as vh_id (display order) and converted to the
 * mixed-endian storage form on the way in and out.
 */
#ifndef VH_VHDX_FORMAT_H
#define VH_VHDX_FORMAT_H

#include "disk.h"

/* --- the header section (doc/formats.md §2.1) --- */
#define VHDX_IDENT_OFF 0
#define VHDX_IDENT_SIZE (64 * VH_KIB)
#define VHDX_IDENT_CREATOR_OFF 8
#define VHDX_IDENT_CREATOR_LEN 512
#define VHDX_HDR1_OFF (64 * VH_KIB)
#define VHDX_HDR2_OFF (128 * VH_KIB)
#define VHDX_RT1_OFF (192 * VH_KIB)
#define VHDX_RT2_OFF (256 * VH_KIB)
#define VHDX_HEADER_SECTION (VH_MIB)
#define VHDX_HDR_SIZE 4096
#define VHDX_RT_SIZE (64 * 1024)
#define VHDX_RT_MAX 2047
#define VHDX_MD_TABLE_SIZE (64 * 1024)
#define VHDX_MD_MAX 2047
#define VHDX_MD_ITEM_MAX (1024 * 1024)
#define VHDX_SECTOR 4096 /* the log's unit and the granularity of logged updates */
#define VHDX_SB_BLOCK (VH_MIB)
#define VHDX_SB_SECTORS (UINT64_C(1) << 23) /* logical sectors described by one bitmap block */
#define VHDX_MAX_DISK (64 * VH_TIB)

/* Known region and metadata item GUIDs (display order). */
extern const vh_id vhdx_guid_bat;
extern const vh_id vhdx_guid_metadata;
extern const vh_id vhdx_guid_file_params;
extern const vh_id vhdx_guid_disk_size;
extern const vh_id vhdx_guid_disk_id;
extern const vh_id vhdx_guid_logical_ss;
extern const vh_id vhdx_guid_physical_ss;
extern const vh_id vhdx_guid_parent_locator;
extern const vh_id vhdx_guid_locator_type_vhdx;

/* A short name for a known region or item GUID, or NULL. */
const char *vhdx_guid_name(const vh_id *g);

/* Reads/stores a mixed-endian GUID. */
vh_id vhdx_get_guid(const uint8_t *p);
void vhdx_put_guid(uint8_t *p, const vh_id *id);

/* --- file type identifier --- */
bool vhdx_ident_ok(const uint8_t *buf, size_t len);
char *vhdx_ident_creator(const uint8_t *buf, size_t len); /* UTF-8, new string */
void vhdx_ident_write(uint8_t *buf /* 64 KiB */, const char *creator);

/* --- headers (doc/formats.md §2.2): field offsets from the header's start --- */
#define VHDX_HDR_SIG_OFF 0 /* "head" */
#define VHDX_HDR_CRC_OFF 4 /* CRC-32C over the 4 KiB, this field as zero */
#define VHDX_HDR_SEQ_OFF 8
#define VHDX_HDR_FILE_WRITE_OFF 16
#define VHDX_HDR_DATA_WRITE_OFF 32
#define VHDX_HDR_LOG_GUID_OFF 48
#define VHDX_HDR_LOG_VERSION_OFF 64
#define VHDX_HDR_VERSION_OFF 66
#define VHDX_HDR_LOG_LENGTH_OFF 68
#define VHDX_HDR_LOG_OFFSET_OFF 72

typedef struct vhdx_header {
    uint64_t seq;
    vh_id file_write;
    vh_id data_write;
    vh_id log_guid;
    uint16_t log_version;
    uint16_t version;
    uint32_t log_length;
    uint64_t log_offset;
} vhdx_header;

/* Signature, CRC-32C over 4 KiB, version 1, log placement sane (1 MiB multiples, past the
 * header section, inside file_size). */
int vhdx_header_parse(const uint8_t *buf, uint64_t base, uint64_t file_size, vhdx_header *h,
                      GError **err);
void vhdx_header_write(const vhdx_header *h, uint8_t *buf /* 4 KiB */);

/* --- region table (doc/formats.md §2.3): a 16-byte header, then 32-byte entries --- */
#define VHDX_RT_SIG_OFF 0 /* "regi" */
#define VHDX_RT_CRC_OFF 4 /* CRC-32C over the 64 KiB, this field as zero */
#define VHDX_RT_COUNT_OFF 8
#define VHDX_RT_HDR_SIZE 16
#define VHDX_RT_ENTRY_SIZE 32
#define VHDX_RTE_GUID_OFF 0 /* entry fields, from the entry's start */
#define VHDX_RTE_OFFSET_OFF 16
#define VHDX_RTE_LENGTH_OFF 24
#define VHDX_RTE_REQUIRED_OFF 28

typedef struct vhdx_region {
    vh_id guid;
    uint64_t offset;
    uint32_t length;
    uint32_t required;
} vhdx_region;

typedef struct vhdx_region_table {
    uint32_t count;
    vhdx_region e[VHDX_RT_MAX];
} vhdx_region_table;

int vhdx_region_table_parse(const uint8_t *buf, uint64_t base, uint64_t file_size,
                            vhdx_region_table *t, GError **err);
void vhdx_region_table_write(const vhdx_region_table *t, uint8_t *buf /* 64 KiB */);
const vhdx_region *vhdx_region_find(const vhdx_region_table *t, const vh_id *guid);

/* --- metadata table (doc/formats.md §2.4): a 32-byte header, then 32-byte entries --- */
#define VHDX_MD_SIG_OFF 0 /* "metadata" */
#define VHDX_MD_COUNT_OFF 10
#define VHDX_MD_HDR_SIZE 32
#define VHDX_MD_ENTRY_SIZE 32
#define VHDX_MDE_ITEM_OFF 0 /* entry fields, from the entry's start */
#define VHDX_MDE_OFFSET_OFF 16
#define VHDX_MDE_LENGTH_OFF 20
#define VHDX_MDE_FLAGS_OFF 24
#define VHDX_MD_IS_USER 0x1u
#define VHDX_MD_IS_VDISK 0x2u
#define VHDX_MD_IS_REQUIRED 0x4u

typedef struct vhdx_md_entry {
    vh_id item;
    uint32_t offset; /* relative to the metadata region */
    uint32_t length;
    uint32_t flags;
} vhdx_md_entry;

typedef struct vhdx_md_table {
    uint16_t count;
    vhdx_md_entry e[VHDX_MD_MAX];
} vhdx_md_table;

/*
 * Honours EntryCount only (doc/formats.md §4.15: Windows leaves a stale copy of the last entry
 * past it). Items must lie inside region_len at offsets >= 64 KiB, be <= 1 MiB, not overlap,
 * and (item id, IsUser) must be unique.
 */
int vhdx_md_table_parse(const uint8_t *buf, uint64_t base, uint32_t region_len, vhdx_md_table *t,
                        GError **err);
/* Writes the header and `count` entries over buf (64 KiB), leaving the bytes past them alone. */
void vhdx_md_table_write(const vhdx_md_table *t, uint8_t *buf);
int vhdx_md_find(const vhdx_md_table *t, const vh_id *item); /* index or -1 (system items) */

/* --- known items (doc/formats.md §2.4) --- */
#define VHDX_FP_BLOCK_SIZE_OFF 0 /* file parameters: fields from the item's start */
#define VHDX_FP_FLAGS_OFF 4
#define VHDX_FP_SIZE 8
/* Where Hyper-V (and vhdheal create) put the system items, from the metadata region's start
 * (doc/formats.md §2.4): just past the table, in this order. */
#define VHDX_HV_FILE_PARAMS_AT (VHDX_MD_TABLE_SIZE + 0x00) /* 8 bytes */
#define VHDX_HV_DISK_SIZE_AT (VHDX_MD_TABLE_SIZE + 0x08)   /* 8 bytes */
#define VHDX_HV_LOGICAL_SS_AT (VHDX_MD_TABLE_SIZE + 0x10)  /* 4 bytes */
#define VHDX_HV_PHYSICAL_SS_AT (VHDX_MD_TABLE_SIZE + 0x14) /* 4 bytes */
#define VHDX_HV_DISK_ID_AT (VHDX_MD_TABLE_SIZE + 0x18)     /* 16 bytes */
#define VHDX_HV_LOCATOR_AT (VHDX_MD_TABLE_SIZE + 0x28)
#define VHDX_FP_LEAVE_ALLOCATED 0x1u
#define VHDX_FP_HAS_PARENT 0x2u

typedef struct vhdx_params {
    uint32_t block_size;
    uint32_t fp_flags;
    uint64_t disk_size;
    uint32_t logical_ss;
    uint32_t physical_ss;
    vh_id disk_id;
} vhdx_params;

int vhdx_file_params_parse(const uint8_t *p, uint32_t len, uint64_t base, vhdx_params *out,
                           GError **err);
int vhdx_disk_size_parse(const uint8_t *p, uint32_t len, uint64_t base, vhdx_params *out,
                         GError **err);
int vhdx_sector_size_parse(const uint8_t *p, uint32_t len, uint64_t base, const char *what,
                           uint32_t *out, GError **err);
int vhdx_disk_id_parse(const uint8_t *p, uint32_t len, uint64_t base, vh_id *out, GError **err);
/* Cross-checks: size a multiple of the logical sector size, at most 64 TiB. */
int vhdx_params_check(const vhdx_params *p, uint64_t base, GError **err);

/* --- parent locator (doc/formats.md §2.5): a 20-byte header, then 12-byte entries --- */
#define VHDX_PL_TYPE_OFF 0
#define VHDX_PL_COUNT_OFF 18
#define VHDX_PL_HDR_SIZE 20u
#define VHDX_PL_ENTRY_SIZE 12
#define VHDX_PLE_KEY_OFF 0 /* entry fields, from the entry's start */
#define VHDX_PLE_VALUE_OFF 4
#define VHDX_PLE_KEY_LEN_OFF 8
#define VHDX_PLE_VALUE_LEN_OFF 10
typedef struct vhdx_kv {
    char *key;                   /* UTF-8 */
    char *value;                 /* UTF-8 */
    uint32_t key_off, value_off; /* relative to the item (as found; 0 for new ones) */
    uint16_t key_len, value_len; /* bytes of UTF-16 */
} vhdx_kv;

typedef struct vhdx_locator {
    vh_id type;
    GPtrArray *kv; /* of vhdx_kv*, in the order of the entry table */
} vhdx_locator;

void vhdx_locator_init(vhdx_locator *l);
void vhdx_locator_clear(vhdx_locator *l);
void vhdx_locator_add(vhdx_locator *l, const char *key, const char *value);
const char *vhdx_locator_get(const vhdx_locator *l, const char *key);
/* Bounded parse: entry table and every key/value inside the item; keys unique. */
int vhdx_locator_parse(const uint8_t *item, uint32_t len, uint64_t base, vhdx_locator *l,
                       GError **err);
/* Hyper-V packing: header, entry table, then key and value strings back to back (§2.5). */
int vhdx_locator_build(const vhdx_locator *l, uint8_t **out, uint32_t *out_len, GError **err);

/* --- BAT and blocks (doc/formats.md §2.6) --- */
#define VHDX_BAT_ENTRY_SIZE 8
enum {
    VHDX_PB_NOT_PRESENT = 0,
    VHDX_PB_UNDEFINED = 1,
    VHDX_PB_ZERO = 2,
    VHDX_PB_UNMAPPED = 3,
    VHDX_PB_UNMAPPED_V095 = 5, /* draft v0.95 value, read like 3 (doc/formats.md §4.8) */
    VHDX_PB_FULLY_PRESENT = 6,
    VHDX_PB_PARTIALLY_PRESENT = 7,
    VHDX_SB_NOT_PRESENT = 0,
    VHDX_SB_PRESENT = 6,
};

#define VHDX_BAT_STATE(e) ((unsigned)((e)&7u))
#define VHDX_BAT_OFFSET(e) ((e) & ~UINT64_C(0xFFFFF))
#define VHDX_BAT_RESERVED(e) ((e)&UINT64_C(0xFFFF8))
static inline uint64_t vhdx_bat_entry(unsigned state, uint64_t offset)
{
    return (offset & ~UINT64_C(0xFFFFF)) | (state & 7u);
}

/* Payload blocks per chunk: 2^23 * logical sector size / block size (>= 1 for valid input). */
uint32_t vhdx_chunk_ratio(uint32_t block_size, uint32_t logical_ss);
uint64_t vhdx_payload_blocks(uint64_t disk_size, uint32_t block_size);
uint64_t vhdx_sb_blocks(uint64_t disk_size, uint32_t block_size, uint32_t logical_ss);
/* Entries the BAT must hold: dynamic/fixed vs differencing rule (doc/formats.md §2.6). */
uint64_t vhdx_bat_entries(uint64_t disk_size, uint32_t block_size, uint32_t logical_ss,
                          bool differencing);
static inline uint64_t vhdx_bat_payload_index(uint64_t block, uint32_t chunk_ratio)
{
    return block + block / chunk_ratio;
}
static inline uint64_t vhdx_bat_sb_index(uint64_t chunk, uint32_t chunk_ratio)
{
    return chunk * ((uint64_t)chunk_ratio + 1) + chunk_ratio;
}
const char *vhdx_payload_state_name(unsigned state);

/* --- the log (doc/formats.md §2.7), in 4 KiB sectors --- */
/* Entry header (64 bytes) fields, from the entry's start. */
#define VHDX_LOGE_SIG_OFF 0 /* "loge" */
#define VHDX_LOGE_CRC_OFF 4 /* CRC-32C over the whole entry, this field as zero */
#define VHDX_LOGE_LENGTH_OFF 8
#define VHDX_LOGE_TAIL_OFF 12
#define VHDX_LOGE_SEQ_OFF 16
#define VHDX_LOGE_DESC_COUNT_OFF 24
#define VHDX_LOGE_GUID_OFF 32
#define VHDX_LOGE_FLUSHED_OFF 48
#define VHDX_LOGE_LAST_OFF 56
#define VHDX_LOGE_HDR_SIZE 64
/* Descriptors (32 bytes; the header takes the room of two): "zero" and "desc". */
#define VHDX_LOGD_SIZE 32
#define VHDX_LOGD_SIG_OFF 0
#define VHDX_LOGD_TRAILING_OFF 4 /* desc: the sector's last 4 bytes */
#define VHDX_LOGD_TRAILING_LEN 4
#define VHDX_LOGD_LEADING_OFF 8 /* desc: the sector's first 8 bytes */
#define VHDX_LOGD_LEADING_LEN 8
#define VHDX_LOGD_ZERO_LEN_OFF 8 /* zero: the length zeroed */
#define VHDX_LOGD_TARGET_OFF 16  /* the file offset written */
#define VHDX_LOGD_SEQ_OFF 24
/* Data sectors: "data", sequence high, the sector's bytes 8 to 4091, sequence low. */
#define VHDX_LOGS_SIG_OFF 0
#define VHDX_LOGS_SEQ_HIGH_OFF 4
#define VHDX_LOGS_DATA_OFF 8
#define VHDX_LOGS_DATA_LEN 4084
#define VHDX_LOGS_SEQ_LOW_OFF 4092

/* LSB-first sector bitmaps (doc/formats.md §2.6, §4.3). */
static inline bool vhdx_bit_get(const uint8_t *bm, uint64_t bit)
{
    return (bm[bit / 8] >> (bit % 8)) & 1u;
}
static inline void vhdx_bit_set(uint8_t *bm, uint64_t bit)
{
    bm[bit / 8] |= (uint8_t)(1u << (bit % 8));
}
/* Length of the run of equal bits starting at `bit`, at most `max` bits. */
uint64_t vhdx_bit_run(const uint8_t *bm, uint64_t bit, uint64_t max, bool *value);

#endif
