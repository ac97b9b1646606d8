// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * vhdx_create.c - new fixed, dynamic and differencing VHDX files, laid out like Hyper-V's
 * (doc/formats.md §2.1-2.5, §4.16): identifier with a creator string, two headers, two region
 * tables listing the BAT before the metadata, a 1 MiB log at 1 MiB, the metadata region at 2 MiB
 * with items in Hyper-V's order and offsets, the BAT at 3 MiB sized to fit, payload after it.
 *
 * Contract: the file is created exclusively; on any failure it is removed again.
 */
#include "vhdx_int.h"

#include <unistd.h>

#define LOG_OFF (1 * VH_MIB)
#define LOG_LEN (1 * VH_MIB)
#define MD_OFF (2 * VH_MIB)
#define MD_LEN (1 * VH_MIB)
#define BAT_OFF (3 * VH_MIB)
#define CREATOR "vhdhealfs " VHDHEAL_VERSION

typedef struct layout {
    vh_type type;
    vhdx_params p;
    uint64_t bat_entries;
    uint32_t bat_len;
    uint64_t data_off;
    uint64_t file_size;
    vhdx_locator loc; /* differencing only */
} layout;

static int plan_parent(const char *path, const vh_create_opts *o, layout *l, GError **err)
{
    vh_disk *parent = o->parent;
    if (parent->format != VH_FORMAT_VHDX)
        return vh_fail(err, EINVAL, "%s: a VHDX differencing disk needs a VHDX parent", path);
    l->p.disk_size = parent->virtual_size;
    l->p.logical_ss = parent->logical_sector_size;
    l->p.physical_ss = parent->physical_sector_size;
    /* The Virtual Disk ID is virtual-disk metadata: copied on fork (MS-VHDX 2.6.1.2). */
    l->p.disk_id = vhdx_p(parent)->p.disk_id;
    l->p.fp_flags = VHDX_FP_HAS_PARENT;
    vhdx_locator_init(&l->loc);
    char id[VH_ID_STRLEN + 1];
    vh_id_format(&parent->id, id);
    g_autofree char *linkage = g_strdup_printf("{%s}", id);
    g_autofree char *base = g_path_get_basename(parent->file.path);
    g_autofree char *rel = g_strdup_printf(".\\%s", base);
    /* Hyper-V's key order (doc/formats.md §2.5); parent_linkage2 all-zero as Hyper-V writes it. */
    vhdx_locator_add(&l->loc, "parent_linkage", linkage);
    if (o->parent_absolute)
        vhdx_locator_add(&l->loc, "absolute_win32_path", o->parent_absolute);
    vhdx_locator_add(&l->loc, "relative_path", o->parent_relative ? o->parent_relative : rel);
    if (o->parent_volume)
        vhdx_locator_add(&l->loc, "volume_path", o->parent_volume);
    vhdx_locator_add(&l->loc, "parent_linkage2", "{00000000-0000-0000-0000-000000000000}");
    return 0;
}

static int plan(const char *path, const vh_create_opts *o, layout *l, GError **err)
{
    memset(l, 0, sizeof *l);
    l->type = o->type;
    if (o->type == VH_TYPE_DIFFERENCING) {
        int r = plan_parent(path, o, l, err);
        if (r < 0)
            return r;
    } else if (o->type == VH_TYPE_FIXED || o->type == VH_TYPE_DYNAMIC) {
        l->p.disk_size = o->size;
        l->p.logical_ss = o->logical_sector_size ? o->logical_sector_size : 512;
        l->p.physical_ss = o->physical_sector_size ? o->physical_sector_size : 4096;
        l->p.disk_id = vh_id_random();
        l->p.fp_flags = o->type == VH_TYPE_FIXED ? VHDX_FP_LEAVE_ALLOCATED : 0;
    } else {
        return vh_fail(err, EINVAL, "%s: unknown disk type %d", path, (int)o->type);
    }
    l->p.block_size = o->block_size                     ? o->block_size
                      : o->type == VH_TYPE_DIFFERENCING ? 2 * VH_MIB
                                                        : 32 * VH_MIB;
    if (l->p.block_size < VH_MIB || l->p.block_size > 256 * VH_MIB || !vh_is_pow2(l->p.block_size))
        return vh_fail(err, EINVAL, "%s: block size %u is not a power of two from 1 to 256 MiB",
                       path, l->p.block_size);
    if ((l->p.logical_ss != 512 && l->p.logical_ss != 4096) ||
        (l->p.physical_ss != 512 && l->p.physical_ss != 4096))
        return vh_fail(err, EINVAL, "%s: sector sizes must be 512 or 4096", path);
    if (l->p.disk_size == 0 || l->p.disk_size % l->p.logical_ss || l->p.disk_size > VHDX_MAX_DISK)
        return vh_fail(err, EINVAL,
                       "%s: virtual size %" G_GUINT64_FORMAT
                       " must be a non-zero multiple of %u up to 64 TiB",
                       path, l->p.disk_size, l->p.logical_ss);
    l->bat_entries = vhdx_bat_entries(l->p.disk_size, l->p.block_size, l->p.logical_ss,
                                      o->type == VH_TYPE_DIFFERENCING);
    l->bat_len = (uint32_t)MAX(vh_round_up(l->bat_entries * VHDX_BAT_ENTRY_SIZE, VH_MIB), VH_MIB);
    l->data_off = BAT_OFF + l->bat_len;
    l->file_size = l->data_off;
    if (o->type == VH_TYPE_FIXED)
        l->file_size += vhdx_payload_blocks(l->p.disk_size, l->p.block_size) * l->p.block_size;
    return 0;
}

static int write_header_section(vh_file *f, const layout *l, GError **err)
{
    g_autofree uint8_t *buf = g_malloc0(VHDX_RT_SIZE);
    vhdx_ident_write(buf, CREATOR);
    int r = vh_file_write(f, buf, VHDX_IDENT_SIZE, VHDX_IDENT_OFF, "file type identifier", err);
    vhdx_header h = {.file_write = vh_id_random(),
                     .data_write = vh_id_random(),
                     .version = 1,
                     .log_length = LOG_LEN,
                     .log_offset = LOG_OFF};
    for (int i = 0; i < 2 && r == 0; i++) {
        h.seq = (uint64_t)i + 1;
        vhdx_header_write(&h, buf);
        r = vh_file_write(f, buf, VHDX_HDR_SIZE, i ? VHDX_HDR2_OFF : VHDX_HDR1_OFF, "header", err);
    }
    /* Hyper-V lists the BAT before the metadata region (doc/formats.md §4.16). */
    vhdx_region_table rt = {.count = 2};
    rt.e[0] = (vhdx_region){vhdx_guid_bat, BAT_OFF, l->bat_len, 1};
    rt.e[1] = (vhdx_region){vhdx_guid_metadata, MD_OFF, MD_LEN, 1};
    vhdx_region_table_write(&rt, buf);
    for (int i = 0; i < 2 && r == 0; i++)
        r = vh_file_write(f, buf, VHDX_RT_SIZE, i ? VHDX_RT2_OFF : VHDX_RT1_OFF, "region table",
                          err);
    return r;
}

/* Metadata items at Hyper-V's measured offsets 0x10000/08/10/14/18/28 (doc/formats.md §2.4). */
static int write_metadata(vh_file *f, const layout *l, GError **err)
{
    g_autofree uint8_t *item = NULL;
    uint32_t loc_len = 0;
    if (l->type == VH_TYPE_DIFFERENCING) {
        int r = vhdx_locator_build(&l->loc, &item, &loc_len, err);
        if (r < 0)
            return vh_fail_prefix(err, "%s", f->path);
    }
    g_autofree uint8_t *buf = g_malloc0(VHDX_HV_LOCATOR_AT + loc_len);
    vhdx_md_table t = {.count = l->type == VH_TYPE_DIFFERENCING ? 6 : 5};
    const uint32_t vdisk = VHDX_MD_IS_REQUIRED | VHDX_MD_IS_VDISK;
    t.e[0] = (vhdx_md_entry){vhdx_guid_file_params, VHDX_HV_FILE_PARAMS_AT, VHDX_FP_SIZE,
                             VHDX_MD_IS_REQUIRED};
    t.e[1] = (vhdx_md_entry){vhdx_guid_disk_size, VHDX_HV_DISK_SIZE_AT, 8, vdisk};
    t.e[2] = (vhdx_md_entry){vhdx_guid_logical_ss, VHDX_HV_LOGICAL_SS_AT, 4, vdisk};
    t.e[3] = (vhdx_md_entry){vhdx_guid_physical_ss, VHDX_HV_PHYSICAL_SS_AT, 4, vdisk};
    t.e[4] = (vhdx_md_entry){vhdx_guid_disk_id, VHDX_HV_DISK_ID_AT, 16, vdisk};
    t.e[5] =
        (vhdx_md_entry){vhdx_guid_parent_locator, VHDX_HV_LOCATOR_AT, loc_len, VHDX_MD_IS_REQUIRED};
    vhdx_md_table_write(&t, buf);
    vh_put_le32(buf + VHDX_HV_FILE_PARAMS_AT + VHDX_FP_BLOCK_SIZE_OFF, l->p.block_size);
    vh_put_le32(buf + VHDX_HV_FILE_PARAMS_AT + VHDX_FP_FLAGS_OFF, l->p.fp_flags);
    vh_put_le64(buf + VHDX_HV_DISK_SIZE_AT, l->p.disk_size);
    vh_put_le32(buf + VHDX_HV_LOGICAL_SS_AT, l->p.logical_ss);
    vh_put_le32(buf + VHDX_HV_PHYSICAL_SS_AT, l->p.physical_ss);
    vhdx_put_guid(buf + VHDX_HV_DISK_ID_AT, &l->p.disk_id);
    if (loc_len)
        memcpy(buf + VHDX_HV_LOCATOR_AT, item, loc_len);
    return vh_file_write(f, buf, VHDX_HV_LOCATOR_AT + loc_len, MD_OFF, "metadata region", err);
}

/* A fixed disk's BAT: every payload block FULLY_PRESENT, laid out in order after the BAT. */
static int write_fixed_bat(vh_file *f, const layout *l, GError **err)
{
    uint32_t cr = vhdx_chunk_ratio(l->p.block_size, l->p.logical_ss);
    uint64_t blocks = vhdx_payload_blocks(l->p.disk_size, l->p.block_size);
    const uint64_t per = VH_MIB / VHDX_BAT_ENTRY_SIZE;
    g_autofree uint8_t *buf = g_malloc(VH_MIB);
    for (uint64_t first = 0; first < l->bat_entries; first += per) {
        uint64_t n = MIN(per, l->bat_entries - first);
        memset(buf, 0, VH_MIB);
        for (uint64_t i = first; i < first + n; i++) {
            uint64_t blk = i - i / ((uint64_t)cr + 1);
            bool is_sb = i % ((uint64_t)cr + 1) == cr;
            if (!is_sb && blk < blocks)
                vh_put_le64(
                    buf + VHDX_BAT_ENTRY_SIZE * (i - first),
                    vhdx_bat_entry(VHDX_PB_FULLY_PRESENT, l->data_off + blk * l->p.block_size));
        }
        int r = vh_file_write(f, buf, n * VHDX_BAT_ENTRY_SIZE,
                              BAT_OFF + first * VHDX_BAT_ENTRY_SIZE, "BAT", err);
        if (r < 0)
            return r;
    }
    return 0;
}

int vh_vhdx_create(const char *path, const vh_create_opts *opts, GError **err)
{
    layout l;
    int r = plan(path, opts, &l, err);
    if (r < 0) {
        vhdx_locator_clear(&l.loc);
        return r;
    }
    vh_file f;
    r = vh_file_create(&f, path, err);
    if (r < 0) {
        vhdx_locator_clear(&l.loc);
        return r;
    }
    r = vh_file_truncate(&f, l.file_size, err);
    if (r == 0)
        r = write_header_section(&f, &l, err);
    if (r == 0)
        r = write_metadata(&f, &l, err);
    if (r == 0 && l.type == VH_TYPE_FIXED)
        r = write_fixed_bat(&f, &l, err);
    if (r == 0)
        r = vh_file_flush(&f, err);
    if (r < 0)
        unlink(path);
    vh_file_close(&f);
    vhdx_locator_clear(&l.loc);
    return r;
}
