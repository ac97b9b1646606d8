// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * vhd_create.c - new VHD files laid out as Windows 10 lays them out (doc/formats.md §1.5, the
 * Windows 10 layout; §4.12-13), so that Windows, libvhdi and qemu read them as their own:
 *  - fixed: the data (sparse), then the footer;
 *  - dynamic: footer copy at 0, header at 0x200, BAT at 0x600 padded with 0xFF to 4 KiB, the
 *    footer in the last 512 bytes of the following 4 KiB page (where the first bitmap will go);
 *  - differencing: footer copy at 0, header at 0x200, W2ku data at 0x1000 (4 KiB space), BAT at
 *    0x2000 padded with 0xFF to 4 KiB, W2ru data after it (64 KiB space), then the footer as
 *    above. Data spaces are stored in bytes (what Windows writes, §1.3).
 * Creator "win " 0x000A0000 on "Wi2k"; CHS geometry by the spec's algorithm; sizes up to
 * 2040 GiB (the spec's, Hyper-V's and qemu's VHD limit: 0xFF000000 sectors).
 */
#include "vhd_priv.h"

#include <unistd.h>

#define PAGE 4096u
#define MAX_SIZE (UINT64_C(0xFF000000) * VHD_SECTOR)
#define DEFAULT_BLOCK (2 * VH_MIB)
#define W2KU_SPACE 4096u
#define W2RU_SPACE 65536u

static void new_footer(vhd_footer *f, vh_type type, uint64_t size)
{
    memset(f, 0, sizeof *f);
    f->features = VHD_FEATURES_RESERVED;
    f->version = VHD_VERSION;
    f->data_offset = type == VH_TYPE_FIXED ? VHD_FIXED_DATA_OFFSET : VHD_FOOTER_SIZE;
    f->timestamp = vh_vhd_time_from_unix(g_get_real_time() / G_USEC_PER_SEC);
    memcpy(f->creator_app, "win ", 4);
    f->creator_version = 0x000A0000;
    memcpy(f->creator_host, "Wi2k", 4);
    f->original_size = f->current_size = size;
    vhd_geometry(size, &f->cylinders, &f->heads, &f->sectors_per_track);
    f->disk_type = type;
    vh_id id = vh_id_random();
    memcpy(f->unique_id, id.b, 16);
}

static void new_header(vhd_header *h, uint64_t table_offset, uint32_t entries, uint32_t bs)
{
    memset(h, 0, sizeof *h);
    h->data_offset = VHD_FIXED_DATA_OFFSET;
    h->table_offset = table_offset;
    h->version = VHD_VERSION;
    h->max_table_entries = entries;
    h->block_size = bs;
}

typedef struct {
    uint64_t off;
    size_t len;
    uint8_t *bytes;
    const char *what;
} piece;

/* Writes the pieces in order into a new file of `size` bytes (sparse where nothing is written). */
static int write_file(const char *path, uint64_t size, piece *pieces, int n, GError **err)
{
    vh_file f;
    int r = vh_file_create(&f, path, err);
    if (r < 0)
        return r;
    r = vh_file_truncate(&f, size, err);
    for (int i = 0; r == 0 && i < n; i++)
        if (pieces[i].len > 0)
            r = vh_file_write(&f, pieces[i].bytes, pieces[i].len, pieces[i].off, pieces[i].what,
                              err);
    if (r == 0)
        r = vh_file_flush(&f, err);
    vh_file_close(&f);
    if (r < 0)
        unlink(path);
    return r;
}

static int create_fixed(const char *path, uint64_t size, GError **err)
{
    vhd_footer f;
    uint8_t foot[VHD_FOOTER_SIZE];
    new_footer(&f, VH_TYPE_FIXED, size);
    vhd_footer_serialise(&f, foot);
    piece p[] = {{size, sizeof foot, foot, "footer"}};
    return write_file(path, size + VHD_FOOTER_SIZE, p, 1, err);
}

/* Locator text as UTF-16LE with the entry pointing at it. */
static int make_locator(const char *path, uint32_t code, const char *text, uint64_t off,
                        uint32_t space, vhd_locator_entry *e, uint8_t *buf, GError **err)
{
    ssize_t n = vhd_encode_locator(code, text, buf, space);
    if (n < 0)
        return vh_fail(err, (int)-n, "%s: parent path \"%s\" cannot be stored in a %u-byte locator",
                       path, text, space);
    *e = (vhd_locator_entry){.code = code, .space = space, .length = (uint32_t)n, .offset = off};
    return 0;
}

static uint32_t space_for(const char *text, uint32_t min_space)
{
    /* UTF-16 takes at most 2 bytes per UTF-8 byte; round to whole pages as Windows does. */
    uint64_t need = vh_round_up(MAX(strlen(text) * 2, 1), PAGE);
    return (uint32_t)MAX(need, (uint64_t)min_space);
}

static int create_sparse(const char *path, const vh_create_opts *o, vh_type type, uint64_t size,
                         uint32_t bs, GError **err)
{
    uint32_t entries = (uint32_t)((size + bs - 1) / bs);
    vhd_footer f;
    vhd_header h;
    new_footer(&f, type, size);
    uint64_t bat_off = 0x600;
    g_autofree uint8_t *w2ku = NULL, *w2ru = NULL;
    uint32_t ku_space = 0, ru_space = 0;
    if (type == VH_TYPE_DIFFERENCING) {
        const char *abs = o->parent_absolute ? o->parent_absolute : o->parent_relative;
        ku_space = space_for(abs, W2KU_SPACE);
        bat_off = PAGE + ku_space;
        ru_space = space_for(o->parent_relative, W2RU_SPACE);
        w2ku = g_malloc0(ku_space);
        w2ru = g_malloc0(ru_space);
    }
    uint64_t bat_end = vh_round_up(bat_off + (uint64_t)entries * 4, PAGE);
    uint64_t end = bat_end + ru_space + PAGE; /* W2ru (differencing), footer's page */
    new_header(&h, bat_off, entries, bs);
    if (type == VH_TYPE_DIFFERENCING) {
        const vh_disk *parent = o->parent;
        const char *abs = o->parent_absolute ? o->parent_absolute : o->parent_relative;
        int r = make_locator(path, VHD_PLAT_W2KU, abs, PAGE, ku_space, &h.loc[0], w2ku, err);
        if (r == 0)
            r = make_locator(path, VHD_PLAT_W2RU, o->parent_relative, bat_end, ru_space, &h.loc[1],
                             w2ru, err);
        if (r < 0)
            return r;
        memcpy(h.parent_id, parent->id.b, 16);
        h.parent_timestamp = vh_vhd_time_from_unix(o->parent_mtime);
        /* Windows writes the absolute path; a file name when there is none or it is too long. */
        if (!o->parent_absolute || vhd_encode_parent_name(o->parent_absolute, h.parent_name) < 0)
            if (vhd_encode_parent_name(vhd_file_name_of(o->parent_relative), h.parent_name) < 0)
                return vh_fail(err, ENAMETOOLONG,
                               "%s: the parent's file name does not fit the 256-character Parent "
                               "Unicode Name",
                               path);
    }
    uint8_t foot[VHD_FOOTER_SIZE], hdr[VHD_HEADER_SIZE];
    vhd_footer_serialise(&f, foot);
    vhd_header_serialise(&h, hdr);
    g_autofree uint8_t *bat = g_malloc(bat_end - bat_off);
    memset(bat, 0xFF, bat_end - bat_off); /* unallocated entries and 0xFF padding (§4.12) */
    piece p[] = {
        {0, sizeof foot, foot, "footer copy"},
        {VHD_FOOTER_SIZE, sizeof hdr, hdr, "dynamic disk header"},
        {bat_off, bat_end - bat_off, bat, "block allocation table"},
        {PAGE, ku_space, w2ku, "W2ku locator data"},
        {bat_end, ru_space, w2ru, "W2ru locator data"},
        {end - VHD_FOOTER_SIZE, sizeof foot, foot, "footer"},
    };
    return write_file(path, end, p, G_N_ELEMENTS(p), err);
}

static int check_opts(const char *path, const vh_create_opts *o, uint64_t *size, uint32_t *bs,
                      GError **err)
{
    if (o->type == VH_TYPE_DIFFERENCING) {
        if (!o->parent || o->parent->format != VH_FORMAT_VHD)
            return vh_fail(err, EINVAL, "%s: a differencing VHD needs a VHD parent", path);
        if (!o->parent_relative || !o->parent_relative[0])
            return vh_fail(err, EINVAL, "%s: a differencing VHD needs the parent's relative path",
                           path);
        *size = o->parent->virtual_size;
    } else if (o->type == VH_TYPE_FIXED || o->type == VH_TYPE_DYNAMIC) {
        *size = o->size;
    } else {
        return vh_fail(err, EINVAL, "%s: unknown disk type %d", path, (int)o->type);
    }
    if (*size == 0 || *size % VHD_SECTOR != 0 || *size > MAX_SIZE)
        return vh_fail(err, EINVAL,
                       "%s: a VHD's size must be a multiple of 512 bytes from 512 bytes to "
                       "2040 GiB (%" G_GUINT64_FORMAT " given)",
                       path, *size);
    *bs = o->block_size ? o->block_size : DEFAULT_BLOCK;
    if (o->type != VH_TYPE_FIXED && (!vh_is_pow2(*bs) || *bs < 512 * VH_KIB || *bs > DEFAULT_BLOCK))
        return vh_fail(err, EINVAL,
                       "%s: a VHD block size must be a power of two from 512 KiB to 2 MiB (%u "
                       "given)",
                       path, *bs);
    return 0;
}

int vh_vhd_create(const char *path, const vh_create_opts *o, GError **err)
{
    uint64_t size = 0;
    uint32_t bs = 0;
    int r = check_opts(path, o, &size, &bs, err);
    if (r < 0)
        return r;
    if (o->type == VH_TYPE_FIXED)
        return create_fixed(path, size, err);
    return create_sparse(path, o, o->type, size, bs, err);
}
