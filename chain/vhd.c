// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * vhd.c - the VHD (v1) engine: opening fixed, dynamic and differencing disks, mapping virtual
 * offsets to runs, reading, writing (with Windows-style block allocation) and `info`.
 *
 * Trust: every offset and count read from the file is checked against the file size before use.
 * Three kinds of problems, three outcomes:
 *  - structural (no usable footer, header/BAT out of bounds, block size not a power of two, a
 *    block past the end or overlapping metadata): the open fails, naming file, structure, offset;
 *  - integrity (a checksum that does not match on both footer copies or on the header, a parent
 *    locator entry that is out of bounds or overlaps): a read-only open succeeds with a warning
 *    (a forensic user wants to read such a file, e.g. the dfvfs pair with stale checksums; `info`
 *    says "checksum ... BAD"), an open for writing fails with EIO (we would otherwise silently
 *    "fix" checksums, or write next to structures we cannot trust);
 *  - cosmetic (the tail footer is bad but the copy at offset 0 is good, an unknown platform
 *    code): a warning, as Virtual PC does (doc/formats.md §1.1).
 * Accepted block sizes: powers of two from 4 KiB to 256 MiB (Windows and qemu write 512 KiB to
 * 2 MiB; smaller or larger powers of two cost nothing to support and appear in hand-made files).
 */
#include "vhd_priv.h"

#include <stdarg.h>

#define MIN_BLOCK_SIZE (4 * VH_KIB)
#define MAX_BLOCK_SIZE (256 * VH_MIB)
#define BITMAP_CACHE_BYTES (1u << 20) /* cached bitmaps per disk, in bytes (bounds memory) */
#define PAGE 4096u

static const vh_disk_ops vhd_ops;

/* ------------------------------------------------------------------ sniff */

static bool cookie_at(vh_file *f, uint64_t off)
{
    uint8_t c[8];
    return vh_range_ok(off, 8, f->size) && vh_file_read(f, c, 8, off, "footer", NULL) == 0 &&
           memcmp(c, "conectix", 8) == 0;
}

bool vh_vhd_sniff(vh_file *f)
{
    if (f->size >= VHD_FOOTER_SIZE && cookie_at(f, f->size - VHD_FOOTER_SIZE))
        return true;
    if (f->size >= VHD_FOOTER_SIZE - 1 && cookie_at(f, f->size - (VHD_FOOTER_SIZE - 1)))
        return true; /* pre-Virtual-PC-2004 511-byte footer (doc/formats.md §1.1) */
    return f->size >= VHD_FOOTER_SIZE && cookie_at(f, 0);
}

/* ------------------------------------------------------------------ open: footer */

static int integrity_problem(vh_disk *d, vh_open_flags flags, GError **err, const char *fmt, ...)
    G_GNUC_PRINTF(4, 5);

/* A read-only open records the problem and goes on; an open for writing fails (see top). */
static int integrity_problem(vh_disk *d, vh_open_flags flags, GError **err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    vhd_p(d)->integrity_bad = true;
    if (flags & VH_OPEN_WRITE)
        return vh_fail(err, EIO, "%s: %s (refusing to open for writing)", d->file.path, msg);
    vh_disk_warn(d, "%s", msg);
    return 0;
}

/* Field checks that do not depend on the checksum; `limit` bounds the structures. */
static char *footer_insane(const vhd_footer *f, uint64_t limit)
{
    if (!f->cookie_ok)
        return g_strdup("no \"conectix\" cookie");
    if (f->version >> 16 != 1)
        return g_strdup_printf("unsupported file format version 0x%08x", f->version);
    if (f->disk_type < VH_TYPE_FIXED || f->disk_type > VH_TYPE_DIFFERENCING)
        return g_strdup_printf("unsupported disk type %u", f->disk_type);
    if (f->current_size == 0 || f->current_size % VHD_SECTOR != 0)
        return g_strdup_printf("current size %" G_GUINT64_FORMAT " is not a positive multiple of "
                               "512",
                               f->current_size);
    if (f->disk_type == VH_TYPE_FIXED && f->current_size > limit)
        return g_strdup_printf("current size %" G_GUINT64_FORMAT
                               " is larger than the data before the footer (%" G_GUINT64_FORMAT
                               " bytes)",
                               f->current_size, limit);
    if (f->disk_type != VH_TYPE_FIXED &&
        (f->data_offset < VHD_FOOTER_SIZE || !vh_range_ok(f->data_offset, VHD_HEADER_SIZE, limit)))
        return g_strdup_printf("data offset %" G_GUINT64_FORMAT
                               " does not leave room for the dynamic disk header before the "
                               "footer at %" G_GUINT64_FORMAT,
                               f->data_offset, limit);
    return NULL;
}

static char *checksum_text(const vhd_footer *f)
{
    return g_strdup_printf("checksum 0x%08x does not match the computed 0x%08x", f->checksum,
                           f->checksum_computed);
}

/* Reads the tail footer (512 bytes, or an old 511-byte one); *off = where, *present = cookie. */
static int read_tail_footer(vh_file *file, vhd_footer *t, uint64_t *off, GError **err)
{
    uint8_t buf[VHD_FOOTER_SIZE] = {0};
    memset(t, 0, sizeof *t);
    *off = file->size;
    if (file->size < VHD_FOOTER_SIZE - 1)
        return 0;
    if (file->size >= VHD_FOOTER_SIZE) {
        int r =
            vh_file_read(file, buf, VHD_FOOTER_SIZE, file->size - VHD_FOOTER_SIZE, "footer", err);
        if (r < 0)
            return r;
        vhd_footer_parse(buf, t);
        *off = file->size - VHD_FOOTER_SIZE;
        if (t->cookie_ok)
            return 0;
    }
    memset(buf, 0, sizeof buf);
    int r = vh_file_read(file, buf, VHD_FOOTER_SIZE - 1, file->size - (VHD_FOOTER_SIZE - 1),
                         "footer", err);
    if (r < 0)
        return r;
    vhd_footer tt;
    vhd_footer_parse(buf, &tt);
    if (tt.cookie_ok) {
        *t = tt;
        *off = file->size - (VHD_FOOTER_SIZE - 1);
    }
    return 0;
}

/*
 * Chooses the footer: the tail when it is whole and sane; else the copy at offset 0 (never for
 * a fixed disk, whose offset 0 is data); else a copy whose only fault is its checksum
 * (integrity problem). Fails when nothing usable is found.
 */
static int load_footer(vh_disk *d, vh_open_flags flags, GError **err)
{
    vhd_priv *p = vhd_p(d);
    vh_file *file = &d->file;
    vhd_footer tail, head = {0};
    uint64_t tail_off;
    int r = read_tail_footer(file, &tail, &tail_off, err);
    if (r < 0)
        return r;
    if (file->size >= VHD_FOOTER_SIZE) {
        /* One read for the copy and the header that usually follows it (see load_header). */
        size_t n = file->size >= VHD_FOOTER_SIZE + VHD_HEADER_SIZE
                       ? VHD_FOOTER_SIZE + VHD_HEADER_SIZE
                       : VHD_FOOTER_SIZE;
        g_autofree uint8_t *buf = g_malloc(n);
        if ((r = vh_file_read(file, buf, n, 0, "footer copy", err)) < 0)
            return r;
        vhd_footer_parse(buf, &head);
        if (n > VHD_FOOTER_SIZE)
            p->head_ahead = g_memdup2(buf + VHD_FOOTER_SIZE, VHD_HEADER_SIZE);
    }
    uint64_t limit = tail.cookie_ok ? tail_off : file->size;
    p->footer_off = tail.cookie_ok ? tail_off : vh_round_up(file->size, VHD_SECTOR);
    g_autofree char *tail_why = footer_insane(&tail, limit);
    g_autofree char *head_why = footer_insane(&head, limit);
    if (!head_why && head.disk_type == VH_TYPE_FIXED)
        head_why = g_strdup("says fixed disk, whose first sector is data");
    p->head_present = head.cookie_ok && head.disk_type != VH_TYPE_FIXED;
    p->head_ok = p->head_present && !head_why && head.checksum_ok;
    p->tail_ok = !tail_why && tail.checksum_ok;
    if (p->tail_ok) {
        p->footer = tail;
        p->footer_at = "end of file";
    } else if (p->head_ok) {
        if (!tail_why)
            tail_why = checksum_text(&tail);
        vh_disk_warn(d, "footer at offset %" G_GUINT64_FORMAT ": %s; using the copy at offset 0",
                     tail_off, tail_why);
        p->footer = head;
        p->footer_at = "offset 0 (copy)";
    } else if (!tail_why || (!head_why && head.cookie_ok)) {
        bool use_tail = !tail_why;
        p->footer = use_tail ? tail : head;
        p->footer_at = use_tail ? "end of file" : "offset 0 (copy)";
        g_autofree char *ck = checksum_text(&p->footer);
        r = integrity_problem(d, flags, err, "footer at offset %" G_GUINT64_FORMAT ": %s%s",
                              use_tail ? tail_off : 0, ck,
                              head.cookie_ok ? " (and on the copy at offset 0)" : "");
        if (r < 0)
            return r;
    } else {
        return vh_fail(err, EINVAL,
                       "%s: footer at offset %" G_GUINT64_FORMAT ": %s; copy at offset 0: %s",
                       file->path, tail_off, tail_why, head.cookie_ok ? head_why : "absent");
    }
    p->head_same = p->head_present && memcmp(head.raw, p->footer.raw, VHD_FOOTER_SIZE) == 0;
    return 0;
}

/* ------------------------------------------------------------------ open: header, locators */

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return alen > 0 && blen > 0 && a < b + blen && b < a + alen;
}

static int load_header(vh_disk *d, GError **err)
{
    vhd_priv *p = vhd_p(d);
    uint8_t buf[VHD_HEADER_SIZE];
    uint64_t off = p->footer.data_offset;
    int r = 0;
    if (off == VHD_FOOTER_SIZE && p->head_ahead)
        memcpy(buf, p->head_ahead, sizeof buf);
    else
        r = vh_file_read(&d->file, buf, sizeof buf, off, "dynamic disk header", err);
    g_clear_pointer(&p->head_ahead, g_free);
    if (r < 0)
        return r;
    vhd_header *h = &p->hdr;
    vhd_header_parse(buf, h);
    p->header_off = off;
    const char *path = d->file.path;
    if (!h->cookie_ok)
        return vh_fail(err, EINVAL,
                       "%s: dynamic disk header at offset %" G_GUINT64_FORMAT
                       ": no \"cxsparse\" cookie",
                       path, off);
    if (h->version >> 16 != 1)
        return vh_fail(err, EINVAL,
                       "%s: dynamic disk header at offset %" G_GUINT64_FORMAT
                       ": unsupported header version 0x%08x",
                       path, off, h->version);
    if (!vh_is_pow2(h->block_size) || h->block_size < MIN_BLOCK_SIZE ||
        h->block_size > MAX_BLOCK_SIZE)
        return vh_fail(err, EINVAL,
                       "%s: dynamic disk header at offset %" G_GUINT64_FORMAT
                       ": block size %u is not a power of two from 4 KiB to 256 MiB",
                       path, off, h->block_size);
    uint64_t need = (d->virtual_size + h->block_size - 1) / h->block_size;
    if (h->max_table_entries < need)
        return vh_fail(err, EINVAL,
                       "%s: dynamic disk header at offset %" G_GUINT64_FORMAT
                       ": %u table entries do not cover the virtual size (%" G_GUINT64_FORMAT
                       " blocks needed)",
                       path, off, h->max_table_entries, need);
    uint64_t bat_len = (uint64_t)h->max_table_entries * 4;
    if (h->table_offset < VHD_FOOTER_SIZE || !vh_range_ok(h->table_offset, bat_len, p->footer_off))
        return vh_fail(
            err, EINVAL,
            "%s: block allocation table at offset %" G_GUINT64_FORMAT
            " (%u entries) lies outside the file before the footer at %" G_GUINT64_FORMAT,
            path, h->table_offset, h->max_table_entries, p->footer_off);
    if (overlaps(h->table_offset, bat_len, off, VHD_HEADER_SIZE))
        return vh_fail(err, EINVAL,
                       "%s: block allocation table at offset %" G_GUINT64_FORMAT
                       " overlaps the dynamic disk header at %" G_GUINT64_FORMAT,
                       path, h->table_offset, off);
    d->block_size = h->block_size;
    p->bitmap_bytes = vhd_bitmap_bytes(h->block_size);
    p->bat_entries = h->max_table_entries;
    p->bat_bytes = MIN(vh_round_up(bat_len, VHD_SECTOR), p->footer_off - h->table_offset);
    return 0;
}

/* Metadata regions other than locator data: footer copy, header, BAT. */
static bool hits_metadata(vhd_priv *p, uint64_t off, uint64_t len)
{
    return overlaps(off, len, 0, VHD_FOOTER_SIZE) ||
           overlaps(off, len, p->header_off, VHD_HEADER_SIZE) ||
           overlaps(off, len, p->hdr.table_offset, p->bat_bytes);
}

/* Bounds of locator slot i; NULL when fine, else what is wrong. */
static char *slot_problem(vhd_priv *p, int i)
{
    const vhd_locator_entry *e = &p->hdr.loc[i];
    uint64_t space;
    if (!vhd_locator_space_bytes(e->space, &space))
        return g_strdup_printf("data space %u is neither a sector count (< 512) nor a multiple of "
                               "512 bytes",
                               e->space);
    if (e->length > space)
        return g_strdup_printf("data length %u exceeds its data space (%" G_GUINT64_FORMAT
                               " bytes)",
                               e->length, space);
    if (!vh_range_ok(e->offset, space, p->footer_off))
        return g_strdup_printf("data at offset %" G_GUINT64_FORMAT " (%" G_GUINT64_FORMAT
                               " bytes) lies past the footer at %" G_GUINT64_FORMAT,
                               e->offset, space, p->footer_off);
    if (hits_metadata(p, e->offset, space))
        return g_strdup_printf("data at offset %" G_GUINT64_FORMAT " (%" G_GUINT64_FORMAT
                               " bytes) overlaps the footer copy, header or BAT",
                               e->offset, space);
    for (int k = 0; k < VHD_LOCATORS; k++) {
        if (k == i || !p->slots[k].valid)
            continue;
        if (overlaps(e->offset, space, p->hdr.loc[k].offset, p->slots[k].space_bytes))
            return g_strdup_printf("data at offset %" G_GUINT64_FORMAT
                                   " overlaps the data of locator %d",
                                   e->offset, k);
    }
    p->slots[i].space_bytes = space;
    return NULL;
}

static int check_locators(vh_disk *d, vh_open_flags flags, GError **err)
{
    vhd_priv *p = vhd_p(d);
    for (int i = 0; i < VHD_LOCATORS; i++) {
        vhd_slot *s = &p->slots[i];
        const vhd_locator_entry *e = &p->hdr.loc[i];
        memset(s, 0, sizeof *s);
        s->used = e->code != VHD_PLAT_NONE;
        if (!s->used)
            continue;
        g_autofree char *why = slot_problem(p, i);
        char code[16];
        if (why) {
            int r = integrity_problem(
                d, flags, err,
                "parent locator %d (%s) at offset %" G_GUINT64_FORMAT ": %s; ignored", i,
                vhd_platform_name(e->code, code),
                p->header_off + VHD_LOC_OFF + VHD_LOC_SIZE * (uint64_t)i, why);
            if (r < 0)
                return r;
            continue;
        }
        s->valid = true;
        if (vhd_locator_kind(e->code) < 0 && e->code != VHD_PLAT_MAC)
            vh_disk_warn(d, "parent locator %d: unknown platform code %s; ignored", i,
                         vhd_platform_name(e->code, code));
    }
    return 0;
}

int vhd_load_link(vh_disk *d, GError **err)
{
    vhd_priv *p = vhd_p(d);
    vh_parent_link *l = &d->link;
    if (l->locators)
        g_ptr_array_unref(l->locators);
    l->locators = g_ptr_array_new_with_free_func((GDestroyNotify)vh_locator_free);
    memcpy(l->parent_id.b, p->hdr.parent_id, 16);
    l->parent_timestamp = p->hdr.parent_timestamp;
    for (int i = 0; i < VHD_LOCATORS; i++) {
        const vhd_locator_entry *e = &p->hdr.loc[i];
        int kind = vhd_locator_kind(e->code);
        if (!p->slots[i].valid || kind < 0)
            continue;
        g_autofree uint8_t *data = g_malloc(e->length ? e->length : 1);
        int r = vh_file_read(&d->file, data, e->length, e->offset, "parent locator data", err);
        if (r < 0)
            return r;
        g_autofree char *text = vhd_locator_decode(e->code, data, e->length);
        g_ptr_array_add(l->locators, vh_locator_new((vh_locator_kind)kind, text, i, e->offset,
                                                    (uint32_t)p->slots[i].space_bytes));
    }
    /* Old blktap (creator "tap\0" 0.1) wrote the name in host order (doc/formats.md §1.2). */
    bool tap01 =
        memcmp(p->footer.creator_app, "tap\0", 4) == 0 && p->footer.creator_version == 0x00000001;
    g_autofree char *name = vhd_parent_name_decode(p->hdr.parent_name, tap01);
    if (name[0])
        g_ptr_array_add(l->locators, vh_locator_new(VH_LOC_PARENT_NAME, name, -1,
                                                    p->header_off + VHD_NAME_OFF, VHD_NAME_BYTES));
    return 0;
}

/* ------------------------------------------------------------------ open: BAT */

typedef struct {
    uint64_t off, end;
    uint32_t block;
} extent;

static int cmp_extent(const void *a, const void *b)
{
    const extent *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* Bytes of block i that lie inside the virtual disk (the last block may be partial). */
static uint64_t block_used(vh_disk *d, uint32_t i)
{
    uint64_t start = (uint64_t)i * d->block_size;
    return vh_round_up(MIN((uint64_t)d->block_size, d->virtual_size - start), VHD_SECTOR);
}

/*
 * A BAT of up to BAT_WHOLE_MAX bytes (and every BAT of a writable open) is read whole at open and
 * checked there, overlaps between blocks included. A larger one is read by pages of BAT_PAGE
 * bytes through the shared table cache (tcache.h), each entry checked on its own when its page
 * is read, so that a huge sparse disk costs no memory in proportion to its size.
 */
#define BAT_WHOLE_MAX (256u * 1024)
#define BAT_PAGE (64u * 1024)

static uint32_t virtual_blocks(vh_disk *d)
{
    return (uint32_t)((d->virtual_size + d->block_size - 1) / d->block_size);
}

/* Checks allocated entry i (e) on its own: where its block lies. */
static int check_entry(vh_disk *d, uint32_t i, uint32_t e, GError **err)
{
    vhd_priv *p = vhd_p(d);
    uint64_t entry_off = p->hdr.table_offset + 4 * (uint64_t)i;
    uint64_t off = (uint64_t)e * VHD_SECTOR;
    uint64_t len = p->bitmap_bytes + block_used(d, i);
    if (!vh_range_ok(off, len, p->footer_off) || hits_metadata(p, off, len))
        return vh_fail(err, EINVAL,
                       "%s: BAT entry %u at offset %" G_GUINT64_FORMAT
                       ": block at %" G_GUINT64_FORMAT " (%" G_GUINT64_FORMAT
                       " bytes) lies past the footer at %" G_GUINT64_FORMAT
                       " or overlaps the footer copy, header or BAT",
                       d->file.path, i, entry_off, off, len, p->footer_off);
    for (int k = 0; k < VHD_LOCATORS; k++)
        if (p->slots[k].valid && overlaps(off, len, p->hdr.loc[k].offset, p->slots[k].space_bytes))
            return vh_fail(err, EINVAL,
                           "%s: BAT entry %u at offset %" G_GUINT64_FORMAT
                           ": block at %" G_GUINT64_FORMAT
                           " overlaps the data of parent locator %d",
                           d->file.path, i, entry_off, off, k);
    return 0;
}

static int check_bat(vh_disk *d, GError **err)
{
    vhd_priv *p = vhd_p(d);
    uint32_t blocks = virtual_blocks(d);
    g_autofree extent *ext = g_new(extent, blocks ? blocks : 1);
    uint32_t n = 0, past = 0, first_past = 0;
    for (uint32_t i = 0; i < p->bat_entries; i++) {
        if (p->bat[i] == VHD_BAT_UNUSED)
            continue;
        if (i >= blocks) {
            /* one warning for all of them: a hostile BAT holds millions */
            if (past++ == 0)
                first_past = i;
            p->bat[i] = VHD_BAT_UNUSED;
            continue;
        }
        int r = check_entry(d, i, p->bat[i], err);
        if (r < 0)
            return r;
        uint64_t off = (uint64_t)p->bat[i] * VHD_SECTOR;
        ext[n++] = (extent){off, off + p->bitmap_bytes + block_used(d, i), i};
    }
    if (past > 0)
        vh_disk_warn(d,
                     "%u BAT entries from entry %u at offset %" G_GUINT64_FORMAT
                     " are allocated past the virtual size; ignored",
                     past, first_past, p->hdr.table_offset + 4 * (uint64_t)first_past);
    qsort(ext, n, sizeof *ext, cmp_extent);
    for (uint32_t k = 1; k < n; k++)
        if (ext[k].off < ext[k - 1].end)
            return vh_fail(err, EINVAL,
                           "%s: BAT entries %u and %u: blocks at %" G_GUINT64_FORMAT
                           " and %" G_GUINT64_FORMAT " overlap",
                           d->file.path, ext[k - 1].block, ext[k].block, ext[k - 1].off,
                           ext[k].off);
    p->allocated = n;
    return 0;
}

/* Reads and checks one page of a paged BAT (the table cache's loader); entries past the
 * virtual size read as unused. */
static int load_bat_page(void *ctx, uint64_t page, void *buf, size_t len, GError **err)
{
    vh_disk *d = ctx;
    vhd_priv *p = vhd_p(d);
    uint8_t *raw = buf;
    int r = vh_file_read(&d->file, raw, len, p->hdr.table_offset + page * BAT_PAGE,
                         "block allocation table", err);
    uint32_t blocks = virtual_blocks(d);
    for (size_t k = 0; r == 0 && k < len / 4; k++) {
        uint32_t i = (uint32_t)(page * (BAT_PAGE / 4) + k), e = vh_be32(raw + 4 * k);
        if (e == VHD_BAT_UNUSED)
            continue;
        if (i >= blocks)
            memset(raw + 4 * k, 0xFF, 4);
        else
            r = check_entry(d, i, e, err);
    }
    return r;
}

/* BAT entry blk (< the blocks of the virtual size). */
static int bat_get(vh_disk *d, uint32_t blk, uint32_t *e, GError **err)
{
    vhd_priv *p = vhd_p(d);
    if (blk >= p->bat_entries) /* the header's count is checked at open; kept as the bound */
        return vh_fail(err, EINVAL, "%s: block %u past the %u entries of the block table",
                       d->file.path, blk, p->bat_entries);
    if (p->bat) {
        *e = p->bat[blk];
        return 0;
    }
    uint8_t raw[4];
    int r = vh_table_read(p->bat_table, 4 * (uint64_t)blk, raw, sizeof raw, err);
    if (r == 0)
        *e = vh_be32(raw);
    return r;
}

static int load_bat(vh_disk *d, GError **err)
{
    vhd_priv *p = vhd_p(d);
    size_t len = (size_t)p->bat_entries * 4;
    if (!d->writable && len > BAT_WHOLE_MAX) {
        p->bat_table = vh_table_new(len, BAT_PAGE, load_bat_page, d);
        return 0;
    }
    g_autofree uint8_t *raw = g_try_malloc(len ? len : 1);
    if (!raw)
        return vh_fail(err, ENOMEM, "%s: BAT of %u entries: out of memory", d->file.path,
                       p->bat_entries);
    int r = vh_file_read(&d->file, raw, len, p->hdr.table_offset, "block allocation table", err);
    if (r < 0)
        return r;
    p->bat = g_new(uint32_t, p->bat_entries ? p->bat_entries : 1);
    vhd_bat_decode(raw, p->bat_entries, p->bat);
    return check_bat(d, err);
}

/* ------------------------------------------------------------------ open */

static int open_sparse(vh_disk *d, vh_open_flags flags, GError **err)
{
    vhd_priv *p = vhd_p(d);
    int r = load_header(d, err);
    if (r < 0)
        return r;
    if (!p->hdr.checksum_ok) {
        r = integrity_problem(d, flags, err,
                              "dynamic disk header at offset %" G_GUINT64_FORMAT
                              ": checksum 0x%08x does not match the computed 0x%08x",
                              p->header_off, p->hdr.checksum, p->hdr.checksum_computed);
        if (r < 0)
            return r;
    }
    if (d->type == VH_TYPE_DIFFERENCING) {
        if ((r = check_locators(d, flags, err)) < 0 || (r = vhd_load_link(d, err)) < 0)
            return r;
    }
    if (flags & VH_OPEN_PROBE)
        return 0;
    p->bitmaps = g_hash_table_new_full(NULL, NULL, NULL, g_free);
    return load_bat(d, err);
}

int vh_vhd_open(vh_file *f, vh_open_flags flags, vh_disk **out, GError **err)
{
    *out = NULL;
    g_autoptr(vh_disk) d = g_new0(vh_disk, 1);
    d->file = *f;
    memset(f, 0, sizeof *f);
    f->fd = -1;
    d->ops = &vhd_ops;
    d->format = VH_FORMAT_VHD;
    d->logical_sector_size = d->physical_sector_size = VHD_SECTOR;
    d->writable = (flags & VH_OPEN_WRITE) != 0;
    d->priv = g_new0(vhd_priv, 1);
    int r = load_footer(d, flags, err);
    if (r < 0)
        return r;
    vhd_priv *p = vhd_p(d);
    d->type = (vh_type)p->footer.disk_type;
    d->virtual_size = p->footer.current_size;
    memcpy(d->id.b, p->footer.unique_id, 16);
    if (d->type != VH_TYPE_FIXED && (r = open_sparse(d, flags, err)) < 0)
        return r;
    *out = g_steal_pointer(&d);
    return 0;
}

/* ------------------------------------------------------------------ map and read */

/* Keeps a block's bitmap (taking bm); the whole cache goes when it is full. */
static void cache_bitmap(vhd_priv *p, uint32_t blk, uint8_t *bm)
{
    if (g_hash_table_size(p->bitmaps) >= MAX(BITMAP_CACHE_BYTES / MAX(p->bitmap_bytes, 1), 1))
        g_hash_table_remove_all(p->bitmaps);
    g_hash_table_insert(p->bitmaps, GUINT_TO_POINTER(blk), bm);
}

/* The bitmap of allocated block blk whose BAT entry is e. */
static int load_bitmap(vh_disk *d, uint32_t blk, uint32_t e, uint8_t **bm, GError **err)
{
    vhd_priv *p = vhd_p(d);
    *bm = g_hash_table_lookup(p->bitmaps, GUINT_TO_POINTER(blk));
    if (*bm)
        return 0;
    g_autofree uint8_t *b = g_malloc(p->bitmap_bytes);
    int r =
        vh_file_read(&d->file, b, p->bitmap_bytes, (uint64_t)e * VHD_SECTOR, "sector bitmap", err);
    if (r < 0)
        return r;
    *bm = b;
    cache_bitmap(p, blk, g_steal_pointer(&b));
    return 0;
}

/* The run at voff inside its block (at most len bytes). */
static int map_piece(vh_disk *d, uint64_t voff, uint64_t len, vh_run *run, GError **err)
{
    vhd_priv *p = vhd_p(d);
    uint32_t blk = (uint32_t)(voff / d->block_size);
    uint64_t in_blk = voff % d->block_size;
    uint64_t n = MIN(len, d->block_size - in_blk);
    vh_run_kind absent = d->type == VH_TYPE_DIFFERENCING ? VH_RUN_PARENT : VH_RUN_ZERO;
    run->file_offset = 0;
    uint32_t e = VHD_BAT_UNUSED;
    int r = bat_get(d, blk, &e, err);
    if (r < 0)
        return r;
    if (e == VHD_BAT_UNUSED) {
        run->kind = absent;
        run->length = n;
        return 0;
    }
    uint8_t *bm;
    if ((r = load_bitmap(d, blk, e, &bm, err)) < 0)
        return r;
    uint32_t s = (uint32_t)(in_blk / VHD_SECTOR);
    uint32_t limit = (uint32_t)((in_blk + n + VHD_SECTOR - 1) / VHD_SECTOR);
    bool present;
    uint64_t sectors = vhd_bitmap_run(bm, s, limit, &present);
    run->length = MIN(n, sectors * VHD_SECTOR - in_blk % VHD_SECTOR);
    run->kind = present ? VH_RUN_DATA : absent;
    if (present)
        run->file_offset = (uint64_t)e * VHD_SECTOR + p->bitmap_bytes + in_blk;
    return 0;
}

static int vhd_map(vh_disk *d, uint64_t voff, uint64_t max_len, vh_run *run, GError **err)
{
    if (voff >= d->virtual_size)
        return vh_fail(err, EINVAL, "%s: virtual offset %" G_GUINT64_FORMAT " past the end",
                       d->file.path, voff);
    uint64_t len = MIN(max_len, d->virtual_size - voff);
    if (d->type == VH_TYPE_FIXED) {
        *run = (vh_run){.kind = VH_RUN_DATA, .length = len, .file_offset = voff};
        return 0;
    }
    if (!vhd_p(d)->bat && !vhd_p(d)->bat_table)
        return vh_fail(err, EINVAL, "%s: opened for identity only (no block table)", d->file.path);
    int r = map_piece(d, voff, len, run, err);
    /* Whole runs: merge following pieces of the same kind (DATA only when contiguous). */
    while (r == 0 && run->length < len) {
        vh_run next;
        if ((r = map_piece(d, voff + run->length, len - run->length, &next, err)) < 0)
            break;
        if (next.kind != run->kind ||
            (next.kind == VH_RUN_DATA && next.file_offset != run->file_offset + run->length))
            break;
        run->length += next.length;
    }
    return r;
}

/* Blocks looked at per prefetch call: bounds the work of one hint. */
#define PREFETCH_BLOCKS 64u

static bool vhd_prefetch(vh_disk *d, uint64_t voff, uint64_t len)
{
    vhd_priv *p = vhd_p(d);
    if (d->type == VH_TYPE_FIXED)
        return true;
    if ((!p->bat && !p->bat_table) || voff >= d->virtual_size || len == 0)
        return false;
    uint64_t end = MIN(voff + len, d->virtual_size);
    uint64_t first = voff / d->block_size, last = (end - 1) / d->block_size;
    bool covers = last - first < PREFETCH_BLOCKS;
    for (uint64_t b = first; b <= last && b < first + PREFETCH_BLOCKS; b++) {
        uint32_t e = VHD_BAT_UNUSED;
        if (bat_get(d, (uint32_t)b, &e, NULL) < 0 || e == VHD_BAT_UNUSED) {
            covers = false;
            continue;
        }
        const uint8_t *bm = g_hash_table_lookup(p->bitmaps, GUINT_TO_POINTER((uint32_t)b));
        if (!bm) {
            vh_file_prefetch(&d->file, (uint64_t)e * VHD_SECTOR, p->bitmap_bytes);
            covers = false;
            continue;
        }
        /* Cached: the parent is asked only for the sectors whose bits are clear. */
        uint64_t lo = MAX(voff, b * d->block_size) - b * d->block_size;
        uint64_t hi = MIN(end, (b + 1) * d->block_size) - b * d->block_size;
        uint32_t s = (uint32_t)(lo / VHD_SECTOR),
                 limit = (uint32_t)((hi + VHD_SECTOR - 1) / VHD_SECTOR);
        bool present;
        if (vhd_bitmap_run(bm, s, limit, &present) < limit - s || !present)
            covers = false;
    }
    return covers || d->type != VH_TYPE_DIFFERENCING;
}

static int vhd_read_data(vh_disk *d, void *buf, size_t len, uint64_t off, GError **err)
{
    return vh_file_read(&d->file, buf, len, off, "block data", err);
}

static int vhd_data_fd(vh_disk *d)
{
    return d->file.patch ? -1 : d->file.fd;
}

/* ------------------------------------------------------------------ write */

int vhd_move_footer(vh_disk *d, uint64_t new_off, GError **err)
{
    vhd_priv *p = vhd_p(d);
    uint8_t buf[VHD_FOOTER_SIZE];
    vhd_footer_serialise(&p->footer, buf);
    int r = vh_file_write(&d->file, buf, sizeof buf, new_off, "footer", err);
    if (r < 0)
        return r;
    p->footer_off = new_off;
    p->tail_ok = true;
    return 0;
}

static int check_writable(vh_disk *d, GError **err)
{
    if (!d->writable || !d->file.writable)
        return vh_fail(err, EROFS, "%s: opened read-only", d->file.path);
    if (vhd_p(d)->integrity_bad)
        return vh_fail(err, EIO, "%s: has checksum or locator errors; not writing", d->file.path);
    if (d->type != VH_TYPE_FIXED && !vhd_p(d)->bat)
        return vh_fail(err, EINVAL, "%s: opened for identity only (no block table)", d->file.path);
    return 0;
}

/*
 * Allocates block blk with `len` bytes of data at in_blk, Windows style (doc/formats.md §1.4,
 * §4.12-13): the bitmap goes where the footer is, block data starts on the next 4 KiB boundary,
 * the footer moves to the last 512 bytes of the page after the block.
 * Order, so that a crash after any one write leaves a file that opens with the old or the new
 * content of the block: (1) the footer at its new place (the tail is valid at once, the old
 * footer bytes become dead space; a torn footer falls back to the identical copy at 0);
 * (2) the data (past the old end: invisible while the BAT says unallocated); (3) the bitmap
 * (over the old footer: invisible too); (4) the BAT entry, the commit.
 */
static int allocate_block(vh_disk *d, uint32_t blk, const uint8_t *buf, uint64_t in_blk,
                          uint64_t len, GError **err)
{
    vhd_priv *p = vhd_p(d);
    uint64_t data_off = vh_round_up(p->footer_off + p->bitmap_bytes, PAGE);
    uint64_t bm_off = data_off - p->bitmap_bytes;
    uint64_t footer_off = data_off + d->block_size + PAGE - VHD_FOOTER_SIZE;
    if (bm_off / VHD_SECTOR >= VHD_BAT_UNUSED)
        return vh_fail(err, EFBIG,
                       "%s: block %u would lie at offset %" G_GUINT64_FORMAT
                       ", past what a VHD BAT can address",
                       d->file.path, blk, bm_off);
    g_autofree uint8_t *bm = g_malloc0(p->bitmap_bytes);
    if (d->type == VH_TYPE_DYNAMIC)
        memset(bm, 0xFF, p->bitmap_bytes); /* as Windows: the rest of the block is zeros */
    else
        vhd_bitmap_set(bm, (uint32_t)(in_blk / VHD_SECTOR), (uint32_t)(len / VHD_SECTOR));
    uint8_t entry[4];
    vh_put_be32(entry, (uint32_t)(bm_off / VHD_SECTOR));
    int r = vhd_move_footer(d, footer_off, err);
    if (r == 0)
        r = vh_file_write(&d->file, buf, len, data_off + in_blk, "block data", err);
    if (r == 0)
        r = vh_file_write(&d->file, bm, p->bitmap_bytes, bm_off, "sector bitmap", err);
    if (r == 0)
        r = vh_file_write(&d->file, entry, 4, p->hdr.table_offset + 4 * (uint64_t)blk, "BAT entry",
                          err);
    if (r < 0)
        return r;
    p->bat[blk] = (uint32_t)(bm_off / VHD_SECTOR);
    p->allocated++;
    cache_bitmap(p, blk, g_steal_pointer(&bm));
    return 0;
}

/* Data first, then the bitmap bits: a crash between leaves the sectors reading as before. */
static int write_in_block(vh_disk *d, uint32_t blk, const uint8_t *buf, uint64_t in_blk,
                          uint64_t len, GError **err)
{
    vhd_priv *p = vhd_p(d);
    uint64_t blk_off = (uint64_t)p->bat[blk] * VHD_SECTOR;
    int r =
        vh_file_write(&d->file, buf, len, blk_off + p->bitmap_bytes + in_blk, "block data", err);
    uint8_t *bm;
    if (r < 0 || (r = load_bitmap(d, blk, p->bat[blk], &bm, err)) < 0)
        return r;
    g_autofree uint8_t *copy = g_memdup2(bm, p->bitmap_bytes);
    if (!vhd_bitmap_set(copy, (uint32_t)(in_blk / VHD_SECTOR), (uint32_t)(len / VHD_SECTOR)))
        return 0;
    r = vh_file_write(&d->file, copy, p->bitmap_bytes, blk_off, "sector bitmap", err);
    if (r == 0)
        memcpy(bm, copy, p->bitmap_bytes);
    return r;
}

static int vhd_write_sectors(vh_disk *d, const void *buf, uint64_t voff, uint64_t len, GError **err)
{
    int r = check_writable(d, err);
    if (r < 0)
        return r;
    if (voff % VHD_SECTOR || len % VHD_SECTOR || !vh_range_ok(voff, len, d->virtual_size))
        return vh_fail(err, EINVAL,
                       "%s: write of %" G_GUINT64_FORMAT " bytes at %" G_GUINT64_FORMAT
                       " is not whole sectors inside the disk",
                       d->file.path, len, voff);
    if (d->type == VH_TYPE_FIXED)
        return vh_file_write(&d->file, buf, len, voff, "fixed disk data", err);
    vhd_priv *p = vhd_p(d);
    const uint8_t *src = buf;
    while (len > 0) {
        uint32_t blk = (uint32_t)(voff / d->block_size);
        uint64_t in_blk = voff % d->block_size;
        uint64_t n = MIN(len, d->block_size - in_blk);
        if (p->bat[blk] == VHD_BAT_UNUSED)
            r = allocate_block(d, blk, src, in_blk, n, err);
        else
            r = write_in_block(d, blk, src, in_blk, n, err);
        if (r < 0)
            return r;
        src += n;
        voff += n;
        len -= n;
    }
    return 0;
}

static int vhd_flush(vh_disk *d, GError **err)
{
    return d->writable ? vh_file_flush(&d->file, err) : 0;
}

/* ------------------------------------------------------------------ info */

static char *fourcc(const uint8_t c[4])
{
    GString *s = g_string_new(NULL);
    for (int i = 0; i < 4; i++) {
        if (c[i] >= 0x20 && c[i] < 0x7F)
            g_string_append_c(s, (char)c[i]);
        else
            g_string_append_printf(s, "\\x%02x", c[i]);
    }
    return g_string_free(s, FALSE);
}

static char *vhd_time_text(uint32_t t)
{
    g_autoptr(GDateTime) dt = g_date_time_new_from_unix_utc(vh_vhd_time_to_unix(t));
    g_autofree char *iso = dt ? g_date_time_format(dt, "%Y-%m-%dT%H:%M:%SZ") : NULL;
    return g_strdup_printf("%u (%s)", t, iso ? iso : "?");
}

static void info_footer(vh_disk *d, vh_info_fn fn, void *ctx)
{
    vhd_priv *p = vhd_p(d);
    const vhd_footer *f = &p->footer;
    g_autofree char *app = fourcc(f->creator_app), *host = fourcc(f->creator_host);
    g_autofree char *ts = vhd_time_text(f->timestamp);
    vh_info_printf(fn, ctx, "footer", "%s, offset %" G_GUINT64_FORMAT, p->footer_at, p->footer_off);
    vh_info_printf(fn, ctx, "footer checksum", "0x%08x %s", f->checksum,
                   f->checksum_ok ? "ok" : "BAD (does not match the content)");
    if (d->type != VH_TYPE_FIXED)
        vh_info_printf(fn, ctx, "footer copy at offset 0", "%s",
                       !p->head_present ? "absent"
                       : p->head_same   ? "identical"
                       : p->head_ok     ? "differs"
                                        : "damaged");
    vh_info_printf(fn, ctx, "creator application", "%s", app);
    vh_info_printf(fn, ctx, "creator version", "%u.%u (0x%08x)", f->creator_version >> 16,
                   f->creator_version & 0xFFFF, f->creator_version);
    vh_info_printf(fn, ctx, "creator host os", "%s", host);
    vh_info_printf(fn, ctx, "features", "0x%08x%s", f->features,
                   f->features & 1 ? " (temporary)" : "");
    vh_info_printf(fn, ctx, "file format version", "0x%08x", f->version);
    vh_info_printf(fn, ctx, "time stamp", "%s", ts);
    vh_info_printf(fn, ctx, "original size", "%" G_GUINT64_FORMAT, f->original_size);
    vh_info_printf(fn, ctx, "current size", "%" G_GUINT64_FORMAT, f->current_size);
    vh_info_printf(fn, ctx, "geometry", "%u/%u/%u", f->cylinders, f->heads, f->sectors_per_track);
    vh_info_printf(fn, ctx, "data offset", "0x%" G_GINT64_MODIFIER "x", f->data_offset);
    vh_info_printf(fn, ctx, "saved state", "%u", f->saved_state);
}

static void info_slot(vh_disk *d, int i, vh_info_fn fn, void *ctx)
{
    vhd_priv *p = vhd_p(d);
    const vhd_locator_entry *e = &p->hdr.loc[i];
    char key[32], code[16];
    g_snprintf(key, sizeof key, "locator %d", i);
    if (e->code == VHD_PLAT_NONE) {
        vh_info_printf(fn, ctx, key, "unused");
        return;
    }
    const char *path = "";
    for (guint k = 0; d->link.locators && k < d->link.locators->len; k++) {
        vh_locator *l = d->link.locators->pdata[k];
        if (l->slot == i)
            path = l->path;
    }
    vh_info_printf(fn, ctx, key,
                   "%s space %u (%" G_GUINT64_FORMAT
                   " bytes) length %u offset 0x%" G_GINT64_MODIFIER "x%s%s",
                   vhd_platform_name(e->code, code), e->space, p->slots[i].space_bytes, e->length,
                   e->offset, p->slots[i].valid ? ": " : " INVALID", path);
}

static void vhd_info(vh_disk *d, vh_info_fn fn, void *ctx)
{
    vhd_priv *p = vhd_p(d);
    info_footer(d, fn, ctx);
    if (d->type == VH_TYPE_FIXED)
        return;
    const vhd_header *h = &p->hdr;
    vh_info_printf(fn, ctx, "header offset", "%" G_GUINT64_FORMAT, p->header_off);
    vh_info_printf(fn, ctx, "header checksum", "0x%08x %s", h->checksum,
                   h->checksum_ok ? "ok" : "BAD (does not match the content)");
    vh_info_printf(fn, ctx, "header version", "0x%08x", h->version);
    vh_info_printf(fn, ctx, "table offset", "%" G_GUINT64_FORMAT, h->table_offset);
    vh_info_printf(fn, ctx, "max table entries", "%u", h->max_table_entries);
    vh_info_printf(fn, ctx, "block size", "%u", h->block_size);
    vh_info_printf(fn, ctx, "bitmap size", "%u", p->bitmap_bytes);
    if (p->bat)
        vh_info_printf(fn, ctx, "allocated blocks", "%u", p->allocated);
    if (p->bat_table) {
        /* a page of entries at a time (entries past the virtual size read as unused) */
        uint32_t n = 0, blocks = virtual_blocks(d);
        g_autofree uint8_t *page = g_malloc(BAT_PAGE);
        for (uint64_t i = 0; i < blocks; i += BAT_PAGE / 4) {
            uint64_t len = MIN(BAT_PAGE / 4, p->bat_entries - i);
            if (vh_table_read(p->bat_table, 4 * i, page, 4 * len, NULL) < 0)
                break;
            for (uint64_t k = 0; k < len; k++)
                n += vh_be32(page + 4 * k) != VHD_BAT_UNUSED;
        }
        vh_info_printf(fn, ctx, "allocated blocks", "%u", n);
    }
    if (d->type != VH_TYPE_DIFFERENCING)
        return;
    char id[VH_ID_STRLEN + 1];
    vh_id_format(&d->link.parent_id, id);
    g_autofree char *pts = vhd_time_text(h->parent_timestamp);
    bool tap01 =
        memcmp(p->footer.creator_app, "tap\0", 4) == 0 && p->footer.creator_version == 0x00000001;
    g_autofree char *name = vhd_parent_name_decode(h->parent_name, tap01);
    vh_info_printf(fn, ctx, "parent unique id", "%s", id);
    vh_info_printf(fn, ctx, "parent time stamp", "%s", pts);
    vh_info_printf(fn, ctx, "parent unicode name", "%s", name);
    for (int i = 0; i < VHD_LOCATORS; i++)
        info_slot(d, i, fn, ctx);
}

static void vhd_close(vh_disk *d)
{
    vhd_priv *p = vhd_p(d);
    if (!p)
        return;
    if (p->bitmaps)
        g_hash_table_unref(p->bitmaps);
    g_free(p->bat);
    vh_table_free(p->bat_table);
    g_free(p->head_ahead);
    g_free(p);
    d->priv = NULL;
}

static const vh_disk_ops vhd_ops = {
    .prefetch = vhd_prefetch,
    .map = vhd_map,
    .read_data = vhd_read_data,
    .data_fd = vhd_data_fd,
    .write_sectors = vhd_write_sectors,
    .flush = vhd_flush,
    .set_parent_link = vhd_set_parent_link,
    .info = vhd_info,
    .close = vhd_close,
};
