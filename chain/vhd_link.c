// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * vhd_link.c - rewriting a differencing VHD's parent link (doc/design.md "Reconnect rules", VHD
 * child): W2ru = the relative path; W2ku = the absolute path, or the relative one; Parent Unicode
 * Name = the absolute path, or the file name; parent unique id = the new parent's id; parent time
 * stamp stays 0 where it was 0, else the parent's mtime. Only the header, locator data and (when
 * a locator needs new space) the tail footer are written; never payload, BAT or bitmaps.
 *
 * A path that does not fit its locator's data space, or a locator that is missing (it takes a
 * free slot), gets new space where the footer is, as a block would (doc/formats.md §1.5;
 * not confirmed on a Windows host): data blocks never move.
 *
 * Write order: a copy-on-write switch through the footer's Data Offset, so that a crash after
 * any single write, flush, truncate or torn write leaves a file that opens with exactly the old
 * link or exactly the new one (the 1024-byte header, its checksum in the first sector, cannot be
 * rewritten atomically in place; a 512-byte footer can). F = the tail footer's offset.
 *  1. the current footer (Data Offset 0x200) written at a new end E, past a temporary area T;
 *     the file still reads through the header at 0x200: old link.
 *  2. T: a copy of the new header whose locator entries point at copies of the new locator data
 *     inside T; flush. Unreferenced: old link (a torn T is never read).
 *  3. the footer at E rewritten with Data Offset = T; flush. The commit: new link (from T).
 *  4. the permanent locator data (in place, or new space P where the footer was), then the new
 *     header at 0x200; flush. The tail points at T: these bytes are not read, torn or not.
 *  5. the footer (Data Offset 0x200) at its final place (F, or after P); flush. Still not the
 *     tail: new link from T.
 *  6. truncate the file to end with that footer; flush. The tail now reads the new header at
 *     0x200: new link, canonical layout (header at 0x200, as Windows writes it), T gone.
 * The head copy at offset 0 (Data Offset 0x200) is never written; it is only a fallback, used in
 * none of the states above. After a failure the handle refuses further writes (reopen it).
 */
#include "vhd_priv.h"

#define PAGE 4096u

ssize_t vhd_encode_locator(uint32_t code, const char *text, uint8_t *out, size_t cap)
{
    if (code == VHD_PLAT_W2RU || code == VHD_PLAT_W2KU)
        return vh_utf8_to_utf16le(text, out, cap);
    if (!g_utf8_validate(text, -1, NULL))
        return -EINVAL;
    size_t n = 0;
    if (code == VHD_PLAT_MACX) {
        n = strlen(text);
        if (n > cap)
            return -ENAMETOOLONG;
        memcpy(out, text, n);
        return (ssize_t)n;
    }
    /* Wi2r/Wi2k: single bytes, Latin-1 */
    for (const char *c = text; *c; c = g_utf8_next_char(c)) {
        gunichar u = g_utf8_get_char(c);
        if (u > 0xFF)
            return -EINVAL;
        if (n >= cap)
            return -ENAMETOOLONG;
        out[n++] = (uint8_t)u;
    }
    return (ssize_t)n;
}

int vhd_encode_parent_name(const char *text, uint8_t name[VHD_NAME_BYTES])
{
    uint8_t tmp[VHD_NAME_BYTES] = {0};
    ssize_t n = vh_utf8_to_utf16be(text, tmp, sizeof tmp);
    if (n < 0)
        return (int)n;
    memcpy(name, tmp, VHD_NAME_BYTES);
    return 0;
}

/* One locator to write: the slot, its new entry, the padded data and where it goes. */
typedef struct {
    int slot;
    vhd_locator_entry e;
    uint8_t *data; /* e.space bytes (bytes form) */
    bool moved;    /* in new space */
} loc_plan;

static int free_slot(vhd_priv *p, const loc_plan *plans, int n)
{
    for (int i = 0; i < VHD_LOCATORS; i++) {
        bool taken = p->slots[i].used;
        for (int k = 0; k < n; k++)
            taken = taken || plans[k].slot == i;
        if (!taken)
            return i;
    }
    return -1;
}

/*
 * Plans the locators of one platform code: every valid slot with that code gets the text (in
 * place when it fits); without one, a free slot with new space. *area is the next free byte of
 * the new space.
 */
static int plan_code(vh_disk *d, uint32_t code, const char *text, loc_plan *plans, int *n,
                     uint64_t *area, GError **err)
{
    vhd_priv *p = vhd_p(d);
    size_t cap = strlen(text) * 2 + 2;
    g_autofree uint8_t *enc = g_malloc0(cap);
    ssize_t len = vhd_encode_locator(code, text, enc, cap);
    if (len < 0)
        return vh_fail(err, (int)-len, "%s: parent path \"%s\" cannot be encoded", d->file.path,
                       text);
    bool found = false;
    for (int i = 0; i <= VHD_LOCATORS; i++) {
        int slot = i;
        if (i == VHD_LOCATORS) {
            if (found)
                break;
            if ((slot = free_slot(p, plans, *n)) < 0)
                return vh_fail(err, ENOSPC,
                               "%s: dynamic disk header at offset %" G_GUINT64_FORMAT
                               ": no free parent locator slot for a new locator",
                               d->file.path, p->header_off);
        } else if (!p->slots[i].valid || p->hdr.loc[i].code != code) {
            continue;
        }
        found = true;
        loc_plan *pl = &plans[(*n)++];
        pl->slot = slot;
        pl->e = p->hdr.loc[slot];
        pl->e.code = code;
        pl->e.length = (uint32_t)len;
        uint64_t space = i < VHD_LOCATORS ? p->slots[slot].space_bytes : 0;
        pl->moved = i == VHD_LOCATORS || (uint64_t)len > space;
        if (pl->moved) {
            space = vh_round_up(MAX((uint64_t)len, 1), PAGE);
            pl->e.offset = *area;
            *area += space;
        }
        pl->e.space = (uint32_t)space; /* always stored as bytes (§1.3) */
        pl->data = g_malloc0(space);
        memcpy(pl->data, enc, (size_t)len);
    }
    return 0;
}

static bool data_unchanged(vh_disk *d, const loc_plan *pl)
{
    g_autofree uint8_t *cur = g_malloc(pl->e.space ? pl->e.space : 1);
    return vh_file_read(&d->file, cur, pl->e.space, pl->e.offset, "parent locator data", NULL) ==
               0 &&
           memcmp(cur, pl->data, pl->e.space) == 0;
}

/* Writes the permanent locator data: new space, and in place where it changed. */
static int write_locators(vh_disk *d, loc_plan *plans, int n, GError **err)
{
    int r = 0;
    for (int k = 0; r == 0 && k < n; k++) {
        if (!plans[k].moved && data_unchanged(d, &plans[k]))
            continue;
        r = vh_file_write(&d->file, plans[k].data, plans[k].e.space, plans[k].e.offset,
                          "parent locator data", err);
    }
    return r;
}

/*
 * The temporary area at t_off: a header like nh whose planned locators point at copies right
 * after it (each rounded up to a sector). Returns the buffer; *len its size.
 */
static uint8_t *build_temp_area(const vhd_header *nh, const loc_plan *plans, int n, uint64_t t_off,
                                size_t *len)
{
    vhd_header th = *nh;
    size_t total = VHD_HEADER_SIZE;
    for (int k = 0; k < n; k++)
        total += vh_round_up(MAX(plans[k].e.length, 1), VHD_SECTOR);
    uint8_t *buf = g_malloc0(total);
    size_t at = VHD_HEADER_SIZE;
    for (int k = 0; k < n; k++) {
        vhd_locator_entry *e = &th.loc[plans[k].slot];
        *e = plans[k].e;
        e->offset = t_off + at;
        e->space = (uint32_t)vh_round_up(MAX(plans[k].e.length, 1), VHD_SECTOR);
        memcpy(buf + at, plans[k].data, plans[k].e.length);
        at += e->space;
    }
    vhd_header_serialise(&th, buf);
    *len = total;
    return buf;
}

static int write_footer_at(vh_disk *d, uint64_t data_offset, uint64_t off, GError **err)
{
    vhd_footer f = vhd_p(d)->footer;
    f.data_offset = data_offset;
    uint8_t buf[VHD_FOOTER_SIZE];
    vhd_footer_serialise(&f, buf);
    return vh_file_write(&d->file, buf, sizeof buf, off, "footer", err);
}

/* Steps 1-6 of the top comment. */
static int commit_link(vh_disk *d, vhd_header *nh, loc_plan *plans, int n, uint64_t final_footer,
                       GError **err)
{
    vhd_priv *p = vhd_p(d);
    uint64_t t_off = vh_round_up(final_footer + VHD_FOOTER_SIZE, VHD_SECTOR);
    size_t t_len;
    g_autofree uint8_t *t = build_temp_area(nh, plans, n, t_off, &t_len);
    uint64_t end = t_off + t_len;
    uint8_t hdr[VHD_HEADER_SIZE];
    vhd_header_serialise(nh, hdr);
    int r = write_footer_at(d, p->header_off, end, err);
    if (r == 0)
        r = vh_file_write(&d->file, t, t_len, t_off, "parent link (temporary copy)", err);
    if (r == 0)
        r = vh_file_flush(&d->file, err);
    if (r == 0)
        r = write_footer_at(d, t_off, end, err);
    if (r == 0)
        r = vh_file_flush(&d->file, err);
    if (r == 0)
        r = write_locators(d, plans, n, err);
    if (r == 0)
        r = vh_file_write(&d->file, hdr, sizeof hdr, p->header_off, "dynamic disk header", err);
    if (r == 0)
        r = vh_file_flush(&d->file, err);
    if (r == 0)
        r = write_footer_at(d, p->header_off, final_footer, err);
    if (r == 0)
        r = vh_file_flush(&d->file, err);
    if (r == 0)
        r = vh_file_truncate(&d->file, final_footer + VHD_FOOTER_SIZE, err);
    if (r == 0)
        r = vh_file_flush(&d->file, err);
    return r;
}

static int build_header(vh_disk *d, const vh_link_update *u, vhd_header *nh, GError **err)
{
    vhd_priv *p = vhd_p(d);
    *nh = p->hdr;
    memcpy(nh->parent_id, u->parent_id.b, 16);
    if (p->hdr.parent_timestamp != 0)
        nh->parent_timestamp = vh_vhd_time_from_unix(u->parent_mtime);
    memset(nh->parent_name, 0, VHD_NAME_BYTES);
    const char *file = u->file_name ? u->file_name : vhd_file_name_of(u->relative);
    /* The absolute path, as Windows writes it; the file name when it does not fit 256 units. */
    if (u->absolute && vhd_encode_parent_name(u->absolute, nh->parent_name) == 0)
        return 0;
    if (vhd_encode_parent_name(file, nh->parent_name) < 0)
        return vh_fail(err, ENAMETOOLONG,
                       "%s: the parent's file name \"%s\" does not fit the Parent Unicode Name",
                       d->file.path, file);
    return 0;
}

static int check_can_relink(vh_disk *d, const vh_link_update *u, GError **err)
{
    if (!d->writable || !d->file.writable)
        return vh_fail(err, EROFS, "%s: opened read-only", d->file.path);
    if (d->type != VH_TYPE_DIFFERENCING)
        return vh_fail(err, ENOTSUP, "%s: not a differencing disk", d->file.path);
    if (vhd_p(d)->integrity_bad)
        return vh_fail(err, EIO, "%s: has checksum or locator errors; not rewriting its link",
                       d->file.path);
    if (!u->relative || !u->relative[0])
        return vh_fail(err, EINVAL, "%s: the new parent link has no relative path", d->file.path);
    return 0;
}

int vhd_set_parent_link(vh_disk *d, const vh_link_update *u, GError **err)
{
    int r = check_can_relink(d, u, err);
    if (r < 0)
        return r;
    vhd_priv *p = vhd_p(d);
    vhd_header nh;
    if ((r = build_header(d, u, &nh, err)) < 0)
        return r;
    loc_plan plans[2 * VHD_LOCATORS] = {0};
    int n = 0;
    /* new space goes where the footer is, 4 KiB aligned as blocks are (doc/formats.md §1.5) */
    uint64_t area_start = vh_round_up(p->footer_off, PAGE), area = area_start;
    r = plan_code(d, VHD_PLAT_W2RU, u->relative, plans, &n, &area, err);
    if (r == 0)
        r = plan_code(d, VHD_PLAT_W2KU, u->absolute ? u->absolute : u->relative, plans, &n, &area,
                      err);
    for (int k = 0; r == 0 && k < n; k++)
        nh.loc[plans[k].slot] = plans[k].e;
    uint64_t final_footer = area > area_start ? area + PAGE - VHD_FOOTER_SIZE : p->footer_off;
    if (r == 0) {
        r = commit_link(d, &nh, plans, n, final_footer, err);
        if (r < 0)
            p->integrity_bad = true; /* the file is consistent, this handle's state is not */
    }
    if (r == 0) {
        vhd_header_parse(nh.raw, &p->hdr);
        for (int k = 0; k < n; k++)
            p->slots[plans[k].slot] =
                (vhd_slot){.used = true, .valid = true, .space_bytes = plans[k].e.space};
        p->footer_off = final_footer;
        p->tail_ok = true;
        r = vhd_load_link(d, err);
    }
    for (int k = 0; k < n; k++)
        g_free(plans[k].data);
    return r;
}
