// SPDX-License-Identifier: GPL-2.0-or-later
/* vhdx_format.c - VHDX structure parsers and writers (see vhdx_format.h); no I/O here. */
#include "vhdx_format.h"

/* clang-format off */
const vh_id vhdx_guid_bat = {{0x2d, 0xc2, 0x77, 0x66, 0xf6, 0x23, 0x42, 0x00,
                              0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08}};
const vh_id vhdx_guid_metadata = {{0x8b, 0x7c, 0xa2, 0x06, 0x47, 0x90, 0x4b, 0x9a,
                                   0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e}};
const vh_id vhdx_guid_file_params = {{0xca, 0xa1, 0x67, 0x37, 0xfa, 0x36, 0x4d, 0x43,
                                      0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b}};
const vh_id vhdx_guid_disk_size = {{0x2f, 0xa5, 0x42, 0x24, 0xcd, 0x1b, 0x48, 0x76,
                                    0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8}};
const vh_id vhdx_guid_disk_id = {{0xbe, 0xca, 0x12, 0xab, 0xb2, 0xe6, 0x45, 0x23,
                                  0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46}};
const vh_id vhdx_guid_logical_ss = {{0x81, 0x41, 0xbf, 0x1d, 0xa9, 0x6f, 0x47, 0x09,
                                     0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f}};
const vh_id vhdx_guid_physical_ss = {{0xcd, 0xa3, 0x48, 0xc7, 0x44, 0x5d, 0x44, 0x71,
                                      0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56}};
const vh_id vhdx_guid_parent_locator = {{0xa8, 0xd3, 0x5f, 0x2d, 0xb3, 0x0b, 0x45, 0x4d,
                                         0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c}};
const vh_id vhdx_guid_locator_type_vhdx = {{0xb0, 0x4a, 0xef, 0xb7, 0xd1, 0x9e, 0x4a, 0x81,
                                            0xb7, 0x89, 0x25, 0xb8, 0xe9, 0x44, 0x59, 0x13}};
/* clang-format on */

const char *vhdx_guid_name(const vh_id *g)
{
    static const struct {
        const vh_id *id;
        const char *name;
    } names[] = {
        {&vhdx_guid_bat, "bat"},
        {&vhdx_guid_metadata, "metadata"},
        {&vhdx_guid_file_params, "file_parameters"},
        {&vhdx_guid_disk_size, "virtual_disk_size"},
        {&vhdx_guid_disk_id, "virtual_disk_id"},
        {&vhdx_guid_logical_ss, "logical_sector_size"},
        {&vhdx_guid_physical_ss, "physical_sector_size"},
        {&vhdx_guid_parent_locator, "parent_locator"},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(names); i++)
        if (vh_id_equal(g, names[i].id))
            return names[i].name;
    return NULL;
}

vh_id vhdx_get_guid(const uint8_t *p)
{
    return vh_id_from_guid_le(p);
}

void vhdx_put_guid(uint8_t *p, const vh_id *id)
{
    vh_id_to_guid_le(id, p);
}

/* CRC-32C of a structure with its 4-byte checksum field taken as zero. */
static uint32_t crc_skip(const uint8_t *buf, size_t len, size_t field)
{
    static const uint8_t zero[4];
    uint32_t c = vh_crc32c_update(0, buf, field);
    c = vh_crc32c_update(c, zero, 4);
    return vh_crc32c_update(c, buf + field + 4, len - field - 4);
}

/* ---------------- file type identifier ---------------- */

bool vhdx_ident_ok(const uint8_t *buf, size_t len)
{
    return len >= 8 && memcmp(buf, "vhdxfile", 8) == 0;
}

char *vhdx_ident_creator(const uint8_t *buf, size_t len)
{
    if (len < VHDX_IDENT_CREATOR_OFF + VHDX_IDENT_CREATOR_LEN)
        return g_strdup("");
    return vh_utf16le_to_utf8(buf + VHDX_IDENT_CREATOR_OFF, VHDX_IDENT_CREATOR_LEN);
}

void vhdx_ident_write(uint8_t *buf, const char *creator)
{
    memset(buf, 0, VHDX_IDENT_SIZE);
    memcpy(buf, "vhdxfile", 8);
    /* The creator is diagnostic only; a too long one is cut (the field is 512 bytes). */
    if (vh_utf8_to_utf16le(creator, buf + VHDX_IDENT_CREATOR_OFF, VHDX_IDENT_CREATOR_LEN - 2) < 0)
        memset(buf + VHDX_IDENT_CREATOR_OFF, 0, VHDX_IDENT_CREATOR_LEN);
}

/* ---------------- headers ---------------- */

int vhdx_header_parse(const uint8_t *buf, uint64_t base, uint64_t file_size, vhdx_header *h,
                      GError **err)
{
    if (memcmp(buf + VHDX_HDR_SIG_OFF, "head", 4) != 0)
        return vh_fail(err, EINVAL, "header at offset %" G_GUINT64_FORMAT ": no \"head\" signature",
                       base);
    uint32_t stored = vh_le32(buf + VHDX_HDR_CRC_OFF),
             crc = crc_skip(buf, VHDX_HDR_SIZE, VHDX_HDR_CRC_OFF);
    if (stored != crc)
        return vh_fail(err, EINVAL,
                       "header at offset %" G_GUINT64_FORMAT
                       ": checksum mismatch (stored 0x%08x, computed 0x%08x)",
                       base, stored, crc);
    h->seq = vh_le64(buf + VHDX_HDR_SEQ_OFF);
    h->file_write = vhdx_get_guid(buf + VHDX_HDR_FILE_WRITE_OFF);
    h->data_write = vhdx_get_guid(buf + VHDX_HDR_DATA_WRITE_OFF);
    h->log_guid = vhdx_get_guid(buf + VHDX_HDR_LOG_GUID_OFF);
    h->log_version = vh_le16(buf + VHDX_HDR_LOG_VERSION_OFF);
    h->version = vh_le16(buf + VHDX_HDR_VERSION_OFF);
    h->log_length = vh_le32(buf + VHDX_HDR_LOG_LENGTH_OFF);
    h->log_offset = vh_le64(buf + VHDX_HDR_LOG_OFFSET_OFF);
    if (h->version != 1)
        return vh_fail(err, EINVAL,
                       "header at offset %" G_GUINT64_FORMAT ": version %u (only 1 is known)", base,
                       h->version);
    if (h->log_offset % VH_MIB || h->log_length % VH_MIB || h->log_length == 0 ||
        h->log_offset < VHDX_HEADER_SECTION ||
        !vh_range_ok(h->log_offset, h->log_length, file_size))
        return vh_fail(
            err, EINVAL,
            "header at offset %" G_GUINT64_FORMAT ": log at %" G_GUINT64_FORMAT
            " (%u bytes) is not 1 MiB aligned or lies outside the file (%" G_GUINT64_FORMAT
            " bytes)",
            base, h->log_offset, h->log_length, file_size);
    return 0;
}

void vhdx_header_write(const vhdx_header *h, uint8_t *buf)
{
    memset(buf, 0, VHDX_HDR_SIZE);
    memcpy(buf + VHDX_HDR_SIG_OFF, "head", 4);
    vh_put_le64(buf + VHDX_HDR_SEQ_OFF, h->seq);
    vhdx_put_guid(buf + VHDX_HDR_FILE_WRITE_OFF, &h->file_write);
    vhdx_put_guid(buf + VHDX_HDR_DATA_WRITE_OFF, &h->data_write);
    vhdx_put_guid(buf + VHDX_HDR_LOG_GUID_OFF, &h->log_guid);
    vh_put_le16(buf + VHDX_HDR_LOG_VERSION_OFF, h->log_version);
    vh_put_le16(buf + VHDX_HDR_VERSION_OFF, h->version);
    vh_put_le32(buf + VHDX_HDR_LOG_LENGTH_OFF, h->log_length);
    vh_put_le64(buf + VHDX_HDR_LOG_OFFSET_OFF, h->log_offset);
    vh_put_le32(buf + VHDX_HDR_CRC_OFF, crc_skip(buf, VHDX_HDR_SIZE, VHDX_HDR_CRC_OFF));
}

/* ---------------- region table ---------------- */

int vhdx_region_table_parse(const uint8_t *buf, uint64_t base, uint64_t file_size,
                            vhdx_region_table *t, GError **err)
{
    if (memcmp(buf + VHDX_RT_SIG_OFF, "regi", 4) != 0)
        return vh_fail(err, EINVAL,
                       "region table at offset %" G_GUINT64_FORMAT ": no \"regi\" signature", base);
    uint32_t stored = vh_le32(buf + VHDX_RT_CRC_OFF),
             crc = crc_skip(buf, VHDX_RT_SIZE, VHDX_RT_CRC_OFF);
    if (stored != crc)
        return vh_fail(err, EINVAL,
                       "region table at offset %" G_GUINT64_FORMAT
                       ": checksum mismatch (stored 0x%08x, computed 0x%08x)",
                       base, stored, crc);
    uint32_t n = vh_le32(buf + VHDX_RT_COUNT_OFF);
    if (n > VHDX_RT_MAX)
        return vh_fail(err, EINVAL,
                       "region table at offset %" G_GUINT64_FORMAT ": %u entries (at most %d)",
                       base, n, VHDX_RT_MAX);
    t->count = n;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *p = buf + VHDX_RT_HDR_SIZE + VHDX_RT_ENTRY_SIZE * (size_t)i;
        vhdx_region *r = &t->e[i];
        r->guid = vhdx_get_guid(p + VHDX_RTE_GUID_OFF);
        r->offset = vh_le64(p + VHDX_RTE_OFFSET_OFF);
        r->length = vh_le32(p + VHDX_RTE_LENGTH_OFF);
        r->required = vh_le32(p + VHDX_RTE_REQUIRED_OFF);
        uint64_t eoff = base + VHDX_RT_HDR_SIZE + VHDX_RT_ENTRY_SIZE * (uint64_t)i;
        if (r->offset < VHDX_HEADER_SECTION || r->offset % VH_MIB || r->length % VH_MIB ||
            r->length == 0)
            return vh_fail(err, EINVAL,
                           "region table entry %u at offset %" G_GUINT64_FORMAT
                           ": region at %" G_GUINT64_FORMAT
                           " (%u bytes) is not 1 MiB aligned past the header section",
                           i, eoff, r->offset, r->length);
        if (!vh_range_ok(r->offset, r->length, file_size))
            return vh_fail(err, EINVAL,
                           "region table entry %u at offset %" G_GUINT64_FORMAT
                           ": region at %" G_GUINT64_FORMAT
                           " (%u bytes) lies past the end of the file (%" G_GUINT64_FORMAT
                           " bytes)",
                           i, eoff, r->offset, r->length, file_size);
        for (uint32_t k = 0; k < i; k++)
            if (vh_id_equal(&t->e[k].guid, &r->guid))
                return vh_fail(err, EINVAL,
                               "region table entry %u at offset %" G_GUINT64_FORMAT
                               ": duplicate region GUID",
                               i, eoff);
    }
    return 0;
}

void vhdx_region_table_write(const vhdx_region_table *t, uint8_t *buf)
{
    memset(buf, 0, VHDX_RT_SIZE);
    memcpy(buf + VHDX_RT_SIG_OFF, "regi", 4);
    vh_put_le32(buf + VHDX_RT_COUNT_OFF, t->count);
    for (uint32_t i = 0; i < t->count; i++) {
        uint8_t *p = buf + VHDX_RT_HDR_SIZE + VHDX_RT_ENTRY_SIZE * (size_t)i;
        vhdx_put_guid(p + VHDX_RTE_GUID_OFF, &t->e[i].guid);
        vh_put_le64(p + VHDX_RTE_OFFSET_OFF, t->e[i].offset);
        vh_put_le32(p + VHDX_RTE_LENGTH_OFF, t->e[i].length);
        vh_put_le32(p + VHDX_RTE_REQUIRED_OFF, t->e[i].required);
    }
    vh_put_le32(buf + VHDX_RT_CRC_OFF, crc_skip(buf, VHDX_RT_SIZE, VHDX_RT_CRC_OFF));
}

const vhdx_region *vhdx_region_find(const vhdx_region_table *t, const vh_id *guid)
{
    for (uint32_t i = 0; i < t->count; i++)
        if (vh_id_equal(&t->e[i].guid, guid))
            return &t->e[i];
    return NULL;
}

/* ---------------- metadata table ---------------- */

static int cmp_entry_offset(const void *a, const void *b)
{
    const vhdx_md_entry *x = *(const vhdx_md_entry *const *)a;
    const vhdx_md_entry *y = *(const vhdx_md_entry *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int md_check_overlaps(const vhdx_md_table *t, uint64_t base, GError **err)
{
    g_autofree const vhdx_md_entry **v = g_new(const vhdx_md_entry *, t->count + 1);
    size_t n = 0;
    for (uint16_t i = 0; i < t->count; i++)
        if (t->e[i].length > 0)
            v[n++] = &t->e[i];
    qsort(v, n, sizeof *v, cmp_entry_offset);
    for (size_t i = 1; i < n; i++)
        if ((uint64_t)v[i - 1]->offset + v[i - 1]->length > v[i]->offset)
            return vh_fail(err, EINVAL,
                           "metadata table at offset %" G_GUINT64_FORMAT
                           ": items at region offsets %u and %u overlap",
                           base, v[i - 1]->offset, v[i]->offset);
    return 0;
}

int vhdx_md_table_parse(const uint8_t *buf, uint64_t base, uint32_t region_len, vhdx_md_table *t,
                        GError **err)
{
    if (memcmp(buf + VHDX_MD_SIG_OFF, "metadata", 8) != 0)
        return vh_fail(err, EINVAL,
                       "metadata table at offset %" G_GUINT64_FORMAT ": no \"metadata\" signature",
                       base);
    uint16_t n = vh_le16(buf + VHDX_MD_COUNT_OFF);
    if (n > VHDX_MD_MAX)
        return vh_fail(err, EINVAL,
                       "metadata table at offset %" G_GUINT64_FORMAT ": %u entries (at most %d)",
                       base, n, VHDX_MD_MAX);
    t->count = n;
    unsigned user_items = 0;
    for (uint16_t i = 0; i < n; i++) {
        const uint8_t *p = buf + VHDX_MD_HDR_SIZE + VHDX_MD_ENTRY_SIZE * (size_t)i;
        vhdx_md_entry *e = &t->e[i];
        uint64_t eoff = base + VHDX_MD_HDR_SIZE + VHDX_MD_ENTRY_SIZE * (uint64_t)i;
        e->item = vhdx_get_guid(p + VHDX_MDE_ITEM_OFF);
        e->offset = vh_le32(p + VHDX_MDE_OFFSET_OFF);
        e->length = vh_le32(p + VHDX_MDE_LENGTH_OFF);
        e->flags = vh_le32(p + VHDX_MDE_FLAGS_OFF);
        if (e->length > VHDX_MD_ITEM_MAX)
            return vh_fail(err, EINVAL,
                           "metadata entry %u at offset %" G_GUINT64_FORMAT
                           ": item length %u exceeds 1 MiB",
                           i, eoff, e->length);
        if (e->length > 0 &&
            (e->offset < VHDX_MD_TABLE_SIZE || !vh_range_ok(e->offset, e->length, region_len)))
            return vh_fail(err, EINVAL,
                           "metadata entry %u at offset %" G_GUINT64_FORMAT
                           ": item at region offset %u (%u bytes) lies outside the item area "
                           "(64 KiB .. %u)",
                           i, eoff, e->offset, e->length, region_len);
        if (e->flags & VHDX_MD_IS_USER)
            user_items++;
        for (uint16_t k = 0; k < i; k++)
            if (vh_id_equal(&t->e[k].item, &e->item) &&
                ((t->e[k].flags ^ e->flags) & VHDX_MD_IS_USER) == 0)
                return vh_fail(err, EINVAL,
                               "metadata entry %u at offset %" G_GUINT64_FORMAT
                               ": duplicate item (same id as entry %u)",
                               i, eoff, k);
    }
    if (user_items > 1024)
        return vh_fail(err, EINVAL,
                       "metadata table at offset %" G_GUINT64_FORMAT
                       ": %u user items (at most 1024)",
                       base, user_items);
    return md_check_overlaps(t, base, err);
}

void vhdx_md_table_write(const vhdx_md_table *t, uint8_t *buf)
{
    memset(buf, 0, VHDX_MD_HDR_SIZE);
    memcpy(buf + VHDX_MD_SIG_OFF, "metadata", 8);
    vh_put_le16(buf + VHDX_MD_COUNT_OFF, t->count);
    for (uint16_t i = 0; i < t->count; i++) {
        uint8_t *p = buf + VHDX_MD_HDR_SIZE + VHDX_MD_ENTRY_SIZE * (size_t)i;
        memset(p, 0, VHDX_MD_ENTRY_SIZE);
        vhdx_put_guid(p + VHDX_MDE_ITEM_OFF, &t->e[i].item);
        vh_put_le32(p + VHDX_MDE_OFFSET_OFF, t->e[i].offset);
        vh_put_le32(p + VHDX_MDE_LENGTH_OFF, t->e[i].length);
        vh_put_le32(p + VHDX_MDE_FLAGS_OFF, t->e[i].flags);
    }
}

int vhdx_md_find(const vhdx_md_table *t, const vh_id *item)
{
    for (uint16_t i = 0; i < t->count; i++)
        if (vh_id_equal(&t->e[i].item, item) && !(t->e[i].flags & VHDX_MD_IS_USER))
            return i;
    return -1;
}

/* ---------------- known items ---------------- */

static int item_len_ok(uint32_t len, uint32_t need, uint64_t base, const char *what, GError **err)
{
    if (len < need)
        return vh_fail(err, EINVAL, "%s item at offset %" G_GUINT64_FORMAT ": %u bytes (needs %u)",
                       what, base, len, need);
    return 0;
}

int vhdx_file_params_parse(const uint8_t *p, uint32_t len, uint64_t base, vhdx_params *out,
                           GError **err)
{
    int r = item_len_ok(len, VHDX_FP_SIZE, base, "file parameters", err);
    if (r < 0)
        return r;
    uint32_t bs = vh_le32(p + VHDX_FP_BLOCK_SIZE_OFF);
    if (bs < VH_MIB || bs > 256 * VH_MIB || !vh_is_pow2(bs))
        return vh_fail(err, EINVAL,
                       "file parameters item at offset %" G_GUINT64_FORMAT
                       ": block size %u is not a power of two from 1 MiB to 256 MiB",
                       base, bs);
    out->block_size = bs;
    out->fp_flags = vh_le32(p + VHDX_FP_FLAGS_OFF);
    return 0;
}

int vhdx_disk_size_parse(const uint8_t *p, uint32_t len, uint64_t base, vhdx_params *out,
                         GError **err)
{
    int r = item_len_ok(len, 8, base, "virtual disk size", err);
    if (r < 0)
        return r;
    out->disk_size = vh_le64(p);
    return 0;
}

int vhdx_sector_size_parse(const uint8_t *p, uint32_t len, uint64_t base, const char *what,
                           uint32_t *out, GError **err)
{
    int r = item_len_ok(len, 4, base, what, err);
    if (r < 0)
        return r;
    uint32_t v = vh_le32(p);
    if (v != 512 && v != 4096)
        return vh_fail(err, EINVAL,
                       "%s item at offset %" G_GUINT64_FORMAT ": %u (must be 512 or 4096)", what,
                       base, v);
    *out = v;
    return 0;
}

int vhdx_disk_id_parse(const uint8_t *p, uint32_t len, uint64_t base, vh_id *out, GError **err)
{
    int r = item_len_ok(len, 16, base, "virtual disk id", err);
    if (r < 0)
        return r;
    *out = vhdx_get_guid(p);
    return 0;
}

int vhdx_params_check(const vhdx_params *p, uint64_t base, GError **err)
{
    if (p->disk_size == 0 || p->disk_size % p->logical_ss || p->disk_size > VHDX_MAX_DISK)
        return vh_fail(err, EINVAL,
                       "metadata region at offset %" G_GUINT64_FORMAT
                       ": virtual disk size %" G_GUINT64_FORMAT
                       " is zero, not a multiple of the logical sector size %u, or above 64 TiB",
                       base, p->disk_size, p->logical_ss);
    return 0;
}

/* ---------------- parent locator ---------------- */

static void kv_free(gpointer p)
{
    vhdx_kv *kv = p;
    g_free(kv->key);
    g_free(kv->value);
    g_free(kv);
}

void vhdx_locator_init(vhdx_locator *l)
{
    l->type = vhdx_guid_locator_type_vhdx;
    l->kv = g_ptr_array_new_with_free_func(kv_free);
}

void vhdx_locator_clear(vhdx_locator *l)
{
    if (l->kv)
        g_ptr_array_unref(l->kv);
    l->kv = NULL;
}

void vhdx_locator_add(vhdx_locator *l, const char *key, const char *value)
{
    vhdx_kv *kv = g_new0(vhdx_kv, 1);
    kv->key = g_strdup(key);
    kv->value = g_strdup(value);
    g_ptr_array_add(l->kv, kv);
}

const char *vhdx_locator_get(const vhdx_locator *l, const char *key)
{
    for (guint i = 0; l->kv && i < l->kv->len; i++) {
        const vhdx_kv *kv = l->kv->pdata[i];
        if (strcmp(kv->key, key) == 0)
            return kv->value;
    }
    return NULL;
}

/* A key or value range inside the item: past the header, non-empty, even length. */
static bool kv_range_ok(uint32_t off, uint16_t len, uint32_t item_len)
{
    return off > 0 && len > 0 && len % 2 == 0 && vh_range_ok(off, len, item_len);
}

int vhdx_locator_parse(const uint8_t *item, uint32_t len, uint64_t base, vhdx_locator *l,
                       GError **err)
{
    vhdx_locator_init(l);
    if (len < VHDX_PL_HDR_SIZE)
        return vh_fail(err, EINVAL,
                       "parent locator at offset %" G_GUINT64_FORMAT ": %u bytes (header needs %u)",
                       base, len, VHDX_PL_HDR_SIZE);
    l->type = vhdx_get_guid(item + VHDX_PL_TYPE_OFF);
    if (!vh_id_equal(&l->type, &vhdx_guid_locator_type_vhdx)) {
        char id[VH_ID_STRLEN + 1];
        vh_id_format(&l->type, id);
        return vh_fail(err, EINVAL,
                       "parent locator at offset %" G_GUINT64_FORMAT
                       ": unknown locator type %s (only the VHDX type is understood)",
                       base, id);
    }
    uint16_t n = vh_le16(item + VHDX_PL_COUNT_OFF);
    if (VHDX_PL_HDR_SIZE + VHDX_PL_ENTRY_SIZE * (uint64_t)n > len)
        return vh_fail(err, EINVAL,
                       "parent locator at offset %" G_GUINT64_FORMAT
                       ": %u key/value entries do not fit in %u bytes",
                       base, n, len);
    for (uint16_t i = 0; i < n; i++) {
        const uint8_t *p = item + VHDX_PL_HDR_SIZE + VHDX_PL_ENTRY_SIZE * (size_t)i;
        vhdx_kv *kv = g_new0(vhdx_kv, 1);
        g_ptr_array_add(l->kv, kv);
        kv->key_off = vh_le32(p + VHDX_PLE_KEY_OFF);
        kv->value_off = vh_le32(p + VHDX_PLE_VALUE_OFF);
        kv->key_len = vh_le16(p + VHDX_PLE_KEY_LEN_OFF);
        kv->value_len = vh_le16(p + VHDX_PLE_VALUE_LEN_OFF);
        if (!kv_range_ok(kv->key_off, kv->key_len, len) ||
            !kv_range_ok(kv->value_off, kv->value_len, len))
            return vh_fail(err, EINVAL,
                           "parent locator entry %u at offset %" G_GUINT64_FORMAT
                           ": key (%u+%u) or value (%u+%u) lies outside the %u-byte item",
                           i, base + VHDX_PL_HDR_SIZE + VHDX_PL_ENTRY_SIZE * (uint64_t)i,
                           kv->key_off, kv->key_len, kv->value_off, kv->value_len, len);
        kv->key = vh_utf16le_to_utf8(item + kv->key_off, kv->key_len);
        kv->value = vh_utf16le_to_utf8(item + kv->value_off, kv->value_len);
        for (uint16_t k = 0; k < i; k++)
            if (strcmp(((vhdx_kv *)l->kv->pdata[k])->key, kv->key) == 0)
                return vh_fail(
                    err, EINVAL,
                    "parent locator entry %u at offset %" G_GUINT64_FORMAT ": duplicate key \"%s\"",
                    i, base + VHDX_PL_HDR_SIZE + VHDX_PL_ENTRY_SIZE * (uint64_t)i, kv->key);
    }
    return 0;
}

int vhdx_locator_build(const vhdx_locator *l, uint8_t **out, uint32_t *out_len, GError **err)
{
    guint n = l->kv->len;
    if (n > G_MAXUINT16)
        return vh_fail(err, EINVAL, "parent locator: %u keys are too many", n);
    GByteArray *strings = g_byte_array_new();
    g_autofree uint8_t *tmp = g_malloc(2 * G_MAXUINT16);
    uint32_t head = VHDX_PL_HDR_SIZE + VHDX_PL_ENTRY_SIZE * n;
    g_autofree uint8_t *table = g_malloc0(head);
    vhdx_put_guid(table + VHDX_PL_TYPE_OFF, &l->type);
    vh_put_le16(table + VHDX_PL_COUNT_OFF, (uint16_t)n);
    for (guint i = 0; i < n; i++) {
        const vhdx_kv *kv = l->kv->pdata[i];
        uint8_t *e = table + VHDX_PL_HDR_SIZE + VHDX_PL_ENTRY_SIZE * (size_t)i;
        const char *s[2] = {kv->key, kv->value};
        for (int k = 0; k < 2; k++) {
            ssize_t len = vh_utf8_to_utf16le(s[k], tmp, G_MAXUINT16 - 1);
            if (len <= 0) {
                g_byte_array_unref(strings);
                return vh_fail(err, len == -ENAMETOOLONG ? ENAMETOOLONG : EINVAL,
                               "parent locator: %s of \"%s\" is empty, not UTF-8 or longer than "
                               "65534 bytes of UTF-16",
                               k ? "value" : "key", kv->key);
            }
            vh_put_le32(e + (k ? VHDX_PLE_VALUE_OFF : VHDX_PLE_KEY_OFF), head + strings->len);
            vh_put_le16(e + (k ? VHDX_PLE_VALUE_LEN_OFF : VHDX_PLE_KEY_LEN_OFF), (uint16_t)len);
            g_byte_array_append(strings, tmp, (guint)len);
        }
    }
    uint64_t total = (uint64_t)head + strings->len;
    if (total > VHDX_MD_ITEM_MAX) {
        g_byte_array_unref(strings);
        return vh_fail(err, ENAMETOOLONG,
                       "parent locator: %" G_GUINT64_FORMAT
                       " bytes do not fit in a metadata item (1 MiB)",
                       total);
    }
    uint8_t *buf = g_malloc(total);
    memcpy(buf, table, head);
    memcpy(buf + head, strings->data, strings->len);
    g_byte_array_unref(strings);
    *out = buf;
    *out_len = (uint32_t)total;
    return 0;
}

/* ---------------- BAT arithmetic ---------------- */

uint32_t vhdx_chunk_ratio(uint32_t block_size, uint32_t logical_ss)
{
    if (block_size == 0)
        return 0;
    return (uint32_t)((VHDX_SB_SECTORS * logical_ss) / block_size);
}

uint64_t vhdx_payload_blocks(uint64_t disk_size, uint32_t block_size)
{
    return block_size ? (disk_size + block_size - 1) / block_size : 0;
}

uint64_t vhdx_sb_blocks(uint64_t disk_size, uint32_t block_size, uint32_t logical_ss)
{
    uint32_t cr = vhdx_chunk_ratio(block_size, logical_ss);
    uint64_t pb = vhdx_payload_blocks(disk_size, block_size);
    return cr ? (pb + cr - 1) / cr : 0;
}

uint64_t vhdx_bat_entries(uint64_t disk_size, uint32_t block_size, uint32_t logical_ss,
                          bool differencing)
{
    uint32_t cr = vhdx_chunk_ratio(block_size, logical_ss);
    uint64_t pb = vhdx_payload_blocks(disk_size, block_size);
    if (cr == 0 || pb == 0)
        return 0;
    if (differencing)
        return vhdx_sb_blocks(disk_size, block_size, logical_ss) * ((uint64_t)cr + 1);
    return pb + (pb - 1) / cr;
}

const char *vhdx_payload_state_name(unsigned state)
{
    switch (state) {
    case VHDX_PB_NOT_PRESENT:
        return "not_present";
    case VHDX_PB_UNDEFINED:
        return "undefined";
    case VHDX_PB_ZERO:
        return "zero";
    case VHDX_PB_UNMAPPED:
        return "unmapped";
    case VHDX_PB_UNMAPPED_V095:
        return "unmapped_v095";
    case VHDX_PB_FULLY_PRESENT:
        return "fully_present";
    case VHDX_PB_PARTIALLY_PRESENT:
        return "partially_present";
    default:
        return "reserved";
    }
}

uint64_t vhdx_bit_run(const uint8_t *bm, uint64_t bit, uint64_t max, bool *value)
{
    bool v = vhdx_bit_get(bm, bit);
    uint8_t same = v ? 0xFF : 0x00;
    uint64_t n = 0;
    while (n < max) {
        uint64_t b = bit + n;
        if (b % 8 == 0 && max - n >= 8 && bm[b / 8] == same) {
            n += 8;
            continue;
        }
        if (vhdx_bit_get(bm, b) != v)
            break;
        n++;
    }
    *value = v;
    return n;
}
