// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * vhdx.c - opening a VHDX (MS-VHDX; doc/formats.md §2): headers, log replay, region tables,
 * metadata, parent locator, BAT; mapping virtual offsets to runs; the `info` fields.
 *
 * Contract: every structure is validated and bounded by the file size before use; a bad header
 * or region table falls back to the other copy with a warning; a non-empty log is replayed
 * before anything else is read (into the file on a writable open, in memory otherwise); an
 * unknown region or metadata item marked required is refused. Writes live in vhdx_write.c.
 */
#include "vhdx_int.h"

#define BITMAP_CACHE_BYTES (1u << 20) /* cached bitmap slices per disk, in bytes */

static const vh_disk_ops vhdx_ops;

bool vh_vhdx_sniff(vh_file *f)
{
    uint8_t sig[8];
    return vh_file_read(f, sig, sizeof sig, 0, "file type identifier", NULL) == 0 &&
           vhdx_ident_ok(sig, sizeof sig);
}

/* The size of the file as the engine sees it (a read-only replay may extend it). */
static uint64_t file_size(vh_disk *d)
{
    vhdx_priv *x = vhdx_p(d);
    return x->overlay ? MAX(d->file.size, x->replay.end) : d->file.size;
}

int vhdx_read(vh_disk *d, void *buf, size_t len, uint64_t off, const char *what, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    if (!x->overlay)
        return vh_file_read(&d->file, buf, len, off, what, err);
    if (!vh_range_ok(off, len, file_size(d)))
        return vh_fail(err, EIO,
                       "%s: %s at offset %" G_GUINT64_FORMAT
                       " (%zu bytes) lies past the end of the file (%" G_GUINT64_FORMAT
                       " bytes after log replay)",
                       d->file.path, what, off, len, file_size(d));
    size_t in_file = off < d->file.size ? (size_t)MIN((uint64_t)len, d->file.size - off) : 0;
    memset((uint8_t *)buf + in_file, 0, len - in_file);
    int r = in_file ? vh_file_read(&d->file, buf, in_file, off, what, err) : 0;
    if (r == 0)
        vhdx_replay_overlay(&x->replay, buf, len, off);
    return r;
}

/* ---------------- headers and log ---------------- */

/* A structure stored twice (headers, region tables: doc/formats.md §2.2, §2.3): parses its copy
 * in buf at offset off into out[i]. */
typedef int (*copy_parse)(const uint8_t *buf, uint64_t off, uint64_t file_size, void *out,
                          GError **err);

static int parse_header_copy(const uint8_t *buf, uint64_t off, uint64_t size, void *out,
                             GError **err)
{
    return vhdx_header_parse(buf, off, size, out, err);
}

/* out: a vhdx_region_table* slot, allocated here for the copies actually read (64 KiB each, not
 * zeroed: the parse sets count and fills only the entries below it). */
static int parse_rt_copy(const uint8_t *buf, uint64_t off, uint64_t size, void *out, GError **err)
{
    vhdx_region_table **t = out;
    if (!*t)
        *t = g_new(vhdx_region_table, 1);
    (*t)->count = 0;
    return vhdx_region_table_parse(buf, off, size, *t, err);
}

/* Why each copy of a structure stored twice is not valid (NULL: valid, or not read). */
typedef struct copy_errors {
    GError *e[2];
} copy_errors;

static void copy_errors_clear(copy_errors *c)
{
    g_clear_error(&c->e[0]);
    g_clear_error(&c->e[1]);
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(copy_errors, copy_errors_clear)

/*
 * Reads and parses both copies of a structure stored twice; ok[i] says which are valid and
 * why->e[i] why the others are not. With first_only, copy 2 is not read when copy 1 is valid (ok[1]
 * false, e[1] NULL). Fails (EIO) when no copy is valid; the caller picks the copy and warns.
 */
static int read_copies(vh_disk *d, const char *what, size_t size, const uint64_t offs[2],
                       copy_parse parse, void *out[2], bool first_only, bool ok[2],
                       copy_errors *why, GError **err)
{
    g_autofree uint8_t *buf = g_malloc(size);
    for (int i = 0; i < 2; i++) {
        ok[i] = false;
        if (i == 1 && first_only && ok[0])
            break;
        int r = vhdx_read(d, buf, size, offs[i], what, &why->e[i]);
        if (r == 0)
            r = parse(buf, offs[i], file_size(d), out[i], &why->e[i]);
        ok[i] = r == 0;
    }
    if (!ok[0] && !ok[1])
        return vh_fail(err, EIO, "%s: no valid %s: %s; %s", d->file.path, what, why->e[0]->message,
                       why->e[1]->message);
    return 0;
}

static int load_headers(vh_disk *d, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    g_auto(copy_errors) why = {{NULL, NULL}};
    const uint64_t offs[2] = {VHDX_HDR1_OFF, VHDX_HDR2_OFF};
    void *out[2] = {&x->slot[0], &x->slot[1]};
    int r = read_copies(d, "header", VHDX_HDR_SIZE, offs, parse_header_copy, out, false, x->slot_ok,
                        &why, err);
    if (r < 0)
        return r;
    for (int i = 0; i < 2; i++)
        if (!x->slot_ok[i])
            vh_disk_warn(d, "header %d is not valid (%s); using header %d", i + 1,
                         why.e[i]->message, 2 - i);
    x->cur = !x->slot_ok[0] ? 1 : !x->slot_ok[1] ? 0 : x->slot[1].seq > x->slot[0].seq;
    x->h = x->slot[x->cur];
    if (!vh_id_is_zero(&x->h.log_guid) && x->h.log_version != 0)
        return vh_fail(err, ENOTSUP,
                       "%s: header at offset %" G_GUINT64_FORMAT
                       ": log version %u is unknown and the log is not empty",
                       d->file.path, offs[x->cur], x->h.log_version);
    return 0;
}

static int replay_log(vh_disk *d, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    x->log_state = "empty";
    if (vh_id_is_zero(&x->h.log_guid))
        return 0;
    if (x->h.log_length > VHDX_LOG_MAX)
        return vh_fail(err, E2BIG, "%s: log at offset %" G_GUINT64_FORMAT ": %u bytes is too large",
                       d->file.path, x->h.log_offset, x->h.log_length);
    g_autofree uint8_t *log = g_malloc(x->h.log_length);
    int r = vh_file_read(&d->file, log, x->h.log_length, x->h.log_offset, "log", err);
    if (r < 0)
        return r;
    r = vhdx_log_find(log, x->h.log_length, x->h.log_offset, &x->h.log_guid, d->file.size,
                      &x->replay, err);
    if (r < 0)
        return vh_fail_prefix(err, "%s", d->file.path);
    x->replayed_seq = x->replay.head_seq;
    x->replayed_entries = x->replay.entries;
    x->log_seq = x->replay.head_seq + 1;
    if (!d->writable) {
        x->overlay = true;
        x->log_state = "replayed in memory";
        return 0;
    }
    /* FileWriteGuid changes before the replay (MS-VHDX 2.2.2); the log is emptied after it. */
    if ((r = vhdx_begin_change(d, false, err)) < 0)
        return r;
    if ((r = vhdx_replay_apply(&d->file, &x->replay, err)) < 0)
        return r;
    x->h.log_guid = (vh_id){{0}};
    if ((r = vhdx_write_headers(d, err)) < 0)
        return r;
    vhdx_replay_clear(&x->replay);
    x->log_state = "replayed";
    return 0;
}

/* ---------------- region table ---------------- */

static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a < b + blen && b < a + alen;
}

static int check_regions(vh_disk *d, const vhdx_region *bat, const vhdx_region *md, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    if (ranges_overlap(bat->offset, bat->length, md->offset, md->length) ||
        ranges_overlap(bat->offset, bat->length, x->h.log_offset, x->h.log_length) ||
        ranges_overlap(md->offset, md->length, x->h.log_offset, x->h.log_length))
        return vh_fail(err, EINVAL,
                       "%s: region table at offset %" G_GUINT64_FORMAT ": BAT (%" G_GUINT64_FORMAT
                       "+%u), metadata (%" G_GUINT64_FORMAT "+%u) and log (%" G_GUINT64_FORMAT
                       "+%u) overlap",
                       d->file.path, x->rt_used == 1 ? VHDX_RT1_OFF : VHDX_RT2_OFF, bat->offset,
                       bat->length, md->offset, md->length, x->h.log_offset, x->h.log_length);
    return 0;
}

static int load_region_table(vh_disk *d, vh_open_flags flags, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    g_auto(copy_errors) why = {{NULL, NULL}};
    const uint64_t offs[2] = {VHDX_RT1_OFF, VHDX_RT2_OFF};
    g_autofree vhdx_region_table *t1 = NULL;
    g_autofree vhdx_region_table *t2 = NULL;
    vhdx_region_table **t[2] = {&t1, &t2};
    void *out[2] = {&t1, &t2};
    /* Copy 1 is used whenever it is valid, so a probe reads copy 2 only when copy 1 is bad
     * (each copy is checked whole: its CRC covers all 64 KiB). A full open checks both, to warn
     * about a damaged copy 2. */
    bool probe = flags & VH_OPEN_PROBE;
    int rc = read_copies(d, "region table", VHDX_RT_SIZE, offs, parse_rt_copy, out, probe, x->rt_ok,
                         &why, err);
    if (rc < 0)
        return rc;
    int use = x->rt_ok[0] ? 0 : 1;
    if (!x->rt_ok[0])
        vh_disk_warn(d, "region table 1 is not valid (%s); using region table 2",
                     why.e[0]->message);
    else if (!x->rt_ok[1] && why.e[1])
        vh_disk_warn(d, "region table 2 is not valid (%s)", why.e[1]->message);
    x->rt = g_steal_pointer(t[use]);
    x->rt_used = use + 1;
    for (uint32_t i = 0; i < x->rt->count; i++) {
        const vhdx_region *r = &x->rt->e[i];
        if (r->required && !vhdx_guid_name(&r->guid)) {
            char id[VH_ID_STRLEN + 1];
            vh_id_format(&r->guid, id);
            return vh_fail(err, ENOTSUP,
                           "%s: region table at offset %" G_GUINT64_FORMAT
                           ": entry %u is an unknown region %s marked required",
                           d->file.path, offs[use], i, id);
        }
    }
    const vhdx_region *bat = vhdx_region_find(x->rt, &vhdx_guid_bat);
    const vhdx_region *md = vhdx_region_find(x->rt, &vhdx_guid_metadata);
    if (!bat || !md)
        return vh_fail(err, EINVAL,
                       "%s: region table at offset %" G_GUINT64_FORMAT ": no %s region",
                       d->file.path, offs[use], bat ? "metadata" : "BAT");
    rc = check_regions(d, bat, md, err);
    if (rc < 0)
        return rc;
    x->bat_off = bat->offset;
    x->bat_len = bat->length;
    x->md_off = md->offset;
    x->md_len = md->length;
    return 0;
}

/* ---------------- metadata ---------------- */

/*
 * The metadata table has no checksum and only its header and EntryCount entries mean anything
 * (doc/formats.md §2.4, §4.15): the first 4 KiB hold 127 entries, more than any real file has; the
 * rest of the 64 KiB is read only when EntryCount needs it.
 */
#define MD_TABLE_HEAD 4096

/* Reads the table's used bytes into *out (at least MD_TABLE_HEAD of them). */
static int read_md_table(vh_disk *d, uint8_t **out, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    *out = g_malloc(MD_TABLE_HEAD);
    int r = vhdx_read(d, *out, MD_TABLE_HEAD, x->md_off, "metadata table", err);
    if (r < 0)
        return r;
    size_t need =
        MIN(VHDX_MD_HDR_SIZE + VHDX_MD_ENTRY_SIZE * (size_t)vh_le16(*out + VHDX_MD_COUNT_OFF),
            (size_t)VHDX_MD_TABLE_SIZE);
    if (need <= MD_TABLE_HEAD)
        return 0;
    *out = g_realloc(*out, need);
    return vhdx_read(d, *out + MD_TABLE_HEAD, need - MD_TABLE_HEAD, x->md_off + MD_TABLE_HEAD,
                     "metadata table", err);
}

/* Known system items, in the order of the `seen` flags of load_metadata. */
static const vh_id *const known_items[] = {&vhdx_guid_file_params, &vhdx_guid_disk_size,
                                           &vhdx_guid_logical_ss,  &vhdx_guid_physical_ss,
                                           &vhdx_guid_disk_id,     &vhdx_guid_parent_locator};

static int known_item(const vhdx_md_entry *e)
{
    for (int i = 0; i < (int)G_N_ELEMENTS(known_items); i++)
        if (!(e->flags & VHDX_MD_IS_USER) && vh_id_equal(&e->item, known_items[i]))
            return i;
    return -1;
}

/*
 * The region bytes that hold every known item, read at once when they lie within 64 KiB of
 * each other (Hyper-V and vhdheal pack them from offset 64 KiB on, under 1.1 KiB in all;
 * doc/formats.md §2.4): one read instead of one per item.
 */
typedef struct md_span {
    const uint8_t *buf;
    uint32_t off, len; /* relative to the metadata region; len 0 = nothing read */
} md_span;

/* Fills *s; the bytes are in *owned (the caller frees it). */
static int read_md_span(vh_disk *d, md_span *s, uint8_t **owned, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    uint64_t lo = UINT64_MAX, hi = 0;
    for (int i = 0; i < x->md->count; i++) {
        const vhdx_md_entry *e = &x->md->e[i];
        if (known_item(e) < 0 || e->length == 0)
            continue;
        lo = MIN(lo, (uint64_t)e->offset);
        hi = MAX(hi, (uint64_t)e->offset + e->length);
    }
    if (hi <= lo || hi - lo > VHDX_MD_TABLE_SIZE)
        return 0;
    *owned = g_malloc(hi - lo);
    s->buf = *owned;
    s->off = (uint32_t)lo;
    s->len = (uint32_t)(hi - lo);
    return vhdx_read(d, *owned, s->len, x->md_off + lo, "metadata items", err);
}

static int read_item(vh_disk *d, const vhdx_md_entry *e, const md_span *s, uint8_t **out,
                     GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    *out = g_malloc0(MAX(e->length, 1));
    if (s->len && e->offset >= s->off && e->offset - s->off + (uint64_t)e->length <= s->len) {
        memcpy(*out, s->buf + (e->offset - s->off), e->length);
        return 0;
    }
    return vhdx_read(d, *out, e->length, x->md_off + e->offset, "metadata item", err);
}

static int parse_item(vh_disk *d, int idx, const md_span *s, bool *seen, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    const vhdx_md_entry *e = &x->md->e[idx];
    uint64_t base = x->md_off + e->offset;
    int k = known_item(e);
    if (k < 0) {
        if (!(e->flags & VHDX_MD_IS_REQUIRED))
            return 0;
        char id[VH_ID_STRLEN + 1];
        vh_id_format(&e->item, id);
        return vh_fail(err, ENOTSUP,
                       "%s: metadata table at offset %" G_GUINT64_FORMAT
                       ": entry %d is an unknown item %s marked required",
                       d->file.path, x->md_off, idx, id);
    }
    g_autofree uint8_t *item = NULL;
    int r = read_item(d, e, s, &item, err);
    if (r < 0)
        return r;
    seen[k] = true;
    switch (k) {
    case 0:
        r = vhdx_file_params_parse(item, e->length, base, &x->p, err);
        break;
    case 1:
        r = vhdx_disk_size_parse(item, e->length, base, &x->p, err);
        break;
    case 2:
        r = vhdx_sector_size_parse(item, e->length, base, "logical sector size", &x->p.logical_ss,
                                   err);
        break;
    case 3:
        r = vhdx_sector_size_parse(item, e->length, base, "physical sector size", &x->p.physical_ss,
                                   err);
        break;
    case 4:
        r = vhdx_disk_id_parse(item, e->length, base, &x->p.disk_id, err);
        break;
    default:
        vhdx_locator_clear(&x->loc);
        r = vhdx_locator_parse(item, e->length, base, &x->loc, err);
        x->loc_index = idx;
        break;
    }
    return r < 0 ? vh_fail_prefix(err, "%s", d->file.path) : 0;
}

static int load_metadata(vh_disk *d, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    g_autofree uint8_t *buf = NULL;
    int r = read_md_table(d, &buf, err);
    if (r < 0)
        return r;
    x->md = g_new(vhdx_md_table, 1); /* 57 KiB: not zeroed, only its first count entries count */
    x->md->count = 0;
    if ((r = vhdx_md_table_parse(buf, x->md_off, x->md_len, x->md, err)) < 0) {
        x->md->count = 0; /* the entries past a bad one were never filled */
        return vh_fail_prefix(err, "%s", d->file.path);
    }
    md_span span = {0};
    g_autofree uint8_t *span_buf = NULL;
    if ((r = read_md_span(d, &span, &span_buf, err)) < 0)
        return r;
    bool seen[6] = {false};
    static const char *const names[6] = {"file parameters",     "virtual disk size",
                                         "logical sector size", "physical sector size",
                                         "virtual disk id",     "parent locator"};
    for (int i = 0; i < x->md->count; i++)
        if ((r = parse_item(d, i, &span, seen, err)) < 0)
            return r;
    for (int i = 0; i < 5; i++)
        if (!seen[i])
            return vh_fail(err, EINVAL,
                           "%s: metadata table at offset %" G_GUINT64_FORMAT ": no %s item",
                           d->file.path, x->md_off, names[i]);
    x->differencing = (x->p.fp_flags & VHDX_FP_HAS_PARENT) != 0;
    if (x->differencing && !seen[5])
        return vh_fail(err, EINVAL,
                       "%s: metadata table at offset %" G_GUINT64_FORMAT
                       ": HasParent is set but there is no parent locator item",
                       d->file.path, x->md_off);
    if (!x->differencing && seen[5])
        vh_disk_warn(d, "a parent locator is present but HasParent is not set; ignored");
    if ((r = vhdx_params_check(&x->p, x->md_off, err)) < 0)
        return vh_fail_prefix(err, "%s", d->file.path);
    return 0;
}

static vh_locator_kind kind_of_key(const char *key, bool *known)
{
    *known = true;
    if (strcmp(key, "relative_path") == 0)
        return VH_LOC_RELATIVE_PATH;
    if (strcmp(key, "volume_path") == 0)
        return VH_LOC_VOLUME_PATH;
    if (strcmp(key, "absolute_win32_path") == 0)
        return VH_LOC_ABSOLUTE_WIN32_PATH;
    *known = false;
    return VH_LOC_COUNT_;
}

void vhdx_link_from_locator(vh_disk *d)
{
    vhdx_priv *x = vhdx_p(d);
    if (d->link.locators)
        g_ptr_array_unref(d->link.locators);
    memset(&d->link, 0, sizeof d->link);
    d->link.locators = g_ptr_array_new_with_free_func((GDestroyNotify)vh_locator_free);
    if (!x->differencing || x->loc_index < 0)
        return;
    const vhdx_md_entry *e = &x->md->e[x->loc_index];
    for (guint i = 0; i < x->loc.kv->len; i++) {
        const vhdx_kv *kv = x->loc.kv->pdata[i];
        bool known;
        vh_locator_kind k = kind_of_key(kv->key, &known);
        if (known)
            g_ptr_array_add(d->link.locators,
                            vh_locator_new(k, kv->value, (int)i,
                                           x->md_off + e->offset + kv->value_off, kv->value_len));
    }
    const char *l1 = vhdx_locator_get(&x->loc, "parent_linkage");
    const char *l2 = vhdx_locator_get(&x->loc, "parent_linkage2");
    if (l1)
        vh_id_parse(l1, &d->link.parent_id);
    vh_id id2;
    /* Hyper-V writes an all-zero parent_linkage2 (doc/formats.md §2.5): not a second identity. */
    if (l2 && vh_id_parse(l2, &id2) && !vh_id_is_zero(&id2)) {
        d->link.has_parent_id2 = true;
        d->link.parent_id2 = id2;
    }
}

static int check_locator(vh_disk *d, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    uint64_t base = x->md_off + x->md->e[x->loc_index].offset;
    const char *l1 = vhdx_locator_get(&x->loc, "parent_linkage");
    vh_id id;
    if (!l1 || !vh_id_parse(l1, &id))
        return vh_fail(err, EINVAL,
                       "%s: parent locator at offset %" G_GUINT64_FORMAT
                       ": parent_linkage is missing or not a GUID (%s)",
                       d->file.path, base, l1 ? l1 : "absent");
    const char *l2 = vhdx_locator_get(&x->loc, "parent_linkage2");
    if (l2 && !vh_id_parse(l2, &id))
        vh_disk_warn(d,
                     "parent locator at offset %" G_GUINT64_FORMAT
                     ": parent_linkage2 is not a GUID (%s); ignored",
                     base, l2);
    if (!vhdx_locator_get(&x->loc, "relative_path") && !vhdx_locator_get(&x->loc, "volume_path") &&
        !vhdx_locator_get(&x->loc, "absolute_win32_path"))
        vh_disk_warn(d, "parent locator at offset %" G_GUINT64_FORMAT ": no path key", base);
    return 0;
}

/* ---------------- BAT ---------------- */

/*
 * A BAT of up to BAT_WHOLE_MAX bytes (and every BAT of a writable open) is read whole at open and
 * validated there. A larger one is read by pages of BAT_PAGE bytes through the shared table
 * cache (tcache.h), each page validated when it is read, so that a huge sparse disk costs no
 * memory in proportion to its size.
 */
#define BAT_WHOLE_MAX (256u * 1024)
#define BAT_PAGE (64u * 1024)

static int bat_entry_error(vh_disk *d, uint64_t idx, uint64_t e, const char *what, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    return vh_fail(err, EINVAL,
                   "%s: BAT entry %" G_GUINT64_FORMAT " at offset %" G_GUINT64_FORMAT
                   " (0x%016" G_GINT64_MODIFIER "x): %s",
                   d->file.path, idx, x->bat_off + VHDX_BAT_ENTRY_SIZE * idx, e, what);
}

/* BAT entry idx (< bat_count). */
static int bat_get(vh_disk *d, uint64_t idx, uint64_t *e, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    if (x->bat) {
        *e = x->bat[idx];
        return 0;
    }
    if (!x->bat_table)
        return vh_fail(err, EINVAL, "%s: opened for identity only (no block table)", d->file.path);
    uint8_t raw[VHDX_BAT_ENTRY_SIZE];
    int r = vh_table_read(x->bat_table, idx * VHDX_BAT_ENTRY_SIZE, raw, sizeof raw, err);
    if (r < 0)
        return r;
    *e = vh_le64(raw);
    return 0;
}

/* A payload entry on its own (the sector bitmap it may need is checked where it is used). */
static int check_payload_entry(vh_disk *d, uint64_t blk, uint64_t idx, uint64_t e, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    unsigned st = VHDX_BAT_STATE(e);
    if (st == 4)
        return bat_entry_error(d, idx, e, "reserved payload state 4", err);
    if (st != VHDX_PB_FULLY_PRESENT && st != VHDX_PB_PARTIALLY_PRESENT)
        return 0;
    if (st == VHDX_PB_PARTIALLY_PRESENT && !x->differencing)
        return bat_entry_error(d, idx, e, "PARTIALLY_PRESENT in a disk without a parent", err);
    uint64_t need = MIN((uint64_t)x->p.block_size, x->p.disk_size - blk * x->p.block_size);
    uint64_t off = VHDX_BAT_OFFSET(e);
    if (off < VHDX_HEADER_SECTION || !vh_range_ok(off, need, file_size(d)))
        return bat_entry_error(d, idx, e,
                               "block lies in the header section or past the end of file", err);
    return 0;
}

static int check_sb_entry(vh_disk *d, uint64_t idx, uint64_t e, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    unsigned st = VHDX_BAT_STATE(e);
    if (st == VHDX_SB_NOT_PRESENT)
        return 0;
    if (st != VHDX_SB_PRESENT)
        return bat_entry_error(d, idx, e, "reserved sector bitmap state", err);
    if (!x->differencing) {
        /* MUST NOT happen without a parent; harmless since bitmaps are not read then. Said
           once: a paged BAT checks a page again each time it is read back. */
        if (x->sb_warned)
            return 0;
        x->sb_warned = true;
        vh_disk_warn(d,
                     "BAT entry %" G_GUINT64_FORMAT ": sector bitmap present in a disk "
                     "without a parent; ignored",
                     idx);
        return 0;
    }
    uint64_t off = VHDX_BAT_OFFSET(e);
    if (off < VHDX_HEADER_SECTION || !vh_range_ok(off, VHDX_SB_BLOCK, file_size(d)))
        return bat_entry_error(d, idx, e, "sector bitmap block past the end of file", err);
    return 0;
}

/* Checks entry idx by what it is: a chunk's sector bitmap entry or a payload block's. */
static int check_entry(vh_disk *d, uint64_t idx, uint64_t e, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    uint64_t group = (uint64_t)x->chunk_ratio + 1;
    if (idx % group == x->chunk_ratio)
        return check_sb_entry(d, idx, e, err);
    uint64_t blk = idx / group * x->chunk_ratio + idx % group;
    return blk < x->payload_blocks ? check_payload_entry(d, blk, idx, e, err) : 0;
}

/* A PARTIALLY_PRESENT block needs its chunk's sector bitmap block. */
static int check_partial_has_sb(vh_disk *d, uint64_t blk, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    uint64_t idx = vhdx_bat_payload_index(blk, x->chunk_ratio), e, sb;
    int r = bat_get(d, idx, &e, err);
    if (r == 0 && VHDX_BAT_STATE(e) == VHDX_PB_PARTIALLY_PRESENT &&
        (r = bat_get(d, vhdx_bat_sb_index(blk / x->chunk_ratio, x->chunk_ratio), &sb, err)) == 0 &&
        VHDX_BAT_STATE(sb) != VHDX_SB_PRESENT)
        r = bat_entry_error(d, idx, e,
                            "PARTIALLY_PRESENT but its sector bitmap block is not present", err);
    return r;
}

/* Reads and validates one page of a paged BAT (the table cache's loader). */
static int load_bat_page(void *ctx, uint64_t page, void *buf, size_t len, GError **err)
{
    vh_disk *d = ctx;
    vhdx_priv *x = vhdx_p(d);
    int r = vhdx_read(d, buf, len, x->bat_off + page * BAT_PAGE, "BAT", err);
    for (size_t k = 0; r == 0 && k < len / 8; k++)
        r = check_entry(d, page * (BAT_PAGE / VHDX_BAT_ENTRY_SIZE) + k,
                        vh_le64((uint8_t *)buf + VHDX_BAT_ENTRY_SIZE * k), err);
    return r;
}

static int load_bat(vh_disk *d, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    x->chunk_ratio = vhdx_chunk_ratio(x->p.block_size, x->p.logical_ss);
    x->payload_blocks = vhdx_payload_blocks(x->p.disk_size, x->p.block_size);
    x->bat_count =
        vhdx_bat_entries(x->p.disk_size, x->p.block_size, x->p.logical_ss, x->differencing);
    /* Read what the differencing rule needs even for a dynamic disk, when it fits: interleaved
     * SB entries of the last chunk are then addressable in both cases. */
    if (x->bat_count * VHDX_BAT_ENTRY_SIZE > x->bat_len)
        return vh_fail(err, EINVAL,
                       "%s: BAT region at offset %" G_GUINT64_FORMAT
                       ": %u bytes cannot hold the %" G_GUINT64_FORMAT " entries the disk needs",
                       d->file.path, x->bat_off, x->bat_len, x->bat_count);
    if (!d->writable && x->bat_count * VHDX_BAT_ENTRY_SIZE > BAT_WHOLE_MAX) {
        x->bat_table = vh_table_new(x->bat_count * VHDX_BAT_ENTRY_SIZE, BAT_PAGE, load_bat_page, d);
        return 0;
    }
    x->bat = g_try_new(uint64_t, MAX(x->bat_count, 1));
    if (!x->bat)
        return vh_fail(err, ENOMEM, "%s: BAT of %" G_GUINT64_FORMAT " entries: out of memory",
                       d->file.path, x->bat_count);
    uint8_t *raw = (uint8_t *)x->bat;
    int r = vhdx_read(d, raw, x->bat_count * VHDX_BAT_ENTRY_SIZE, x->bat_off, "BAT", err);
    if (r < 0)
        return r;
    for (uint64_t i = 0; i < x->bat_count; i++)
        x->bat[i] = vh_le64(raw + VHDX_BAT_ENTRY_SIZE * i);
    for (uint64_t i = 0; i < x->bat_count; i++)
        if ((r = check_entry(d, i, x->bat[i], err)) < 0)
            return r;
    for (uint64_t b = 0; b < x->payload_blocks; b++)
        if ((r = check_partial_has_sb(d, b, err)) < 0)
            return r;
    return 0;
}

/* ---------------- open ---------------- */

static int open_all(vh_disk *d, vh_open_flags flags, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    if (d->file.size < VHDX_HEADER_SECTION)
        return vh_fail(err, EINVAL,
                       "%s: header section at offset 0: the file (%" G_GUINT64_FORMAT
                       " bytes) is shorter than 1 MiB",
                       d->file.path, d->file.size);
    g_autofree uint8_t *ident = g_malloc(VHDX_IDENT_CREATOR_OFF + VHDX_IDENT_CREATOR_LEN);
    int r = vh_file_read(&d->file, ident, VHDX_IDENT_CREATOR_OFF + VHDX_IDENT_CREATOR_LEN, 0,
                         "file type identifier", err);
    if (r < 0)
        return r;
    if (!vhdx_ident_ok(ident, 8))
        return vh_fail(err, EINVAL, "%s: file type identifier at offset 0: no \"vhdxfile\"",
                       d->file.path);
    x->creator = vhdx_ident_creator(ident, VHDX_IDENT_CREATOR_OFF + VHDX_IDENT_CREATOR_LEN);
    if ((r = load_headers(d, err)) < 0 || (r = replay_log(d, err)) < 0 ||
        (r = load_region_table(d, flags, err)) < 0 || (r = load_metadata(d, err)) < 0)
        return r;
    if (x->differencing && (r = check_locator(d, err)) < 0)
        return r;
    if (!(flags & VH_OPEN_PROBE) && (r = load_bat(d, err)) < 0)
        return r;
    d->type = x->differencing                             ? VH_TYPE_DIFFERENCING
              : (x->p.fp_flags & VHDX_FP_LEAVE_ALLOCATED) ? VH_TYPE_FIXED
                                                          : VH_TYPE_DYNAMIC;
    d->virtual_size = x->p.disk_size;
    d->logical_sector_size = x->p.logical_ss;
    d->physical_sector_size = x->p.physical_ss;
    d->block_size = x->p.block_size;
    d->id = x->h.data_write;
    vhdx_link_from_locator(d);
    return 0;
}

int vh_vhdx_open(vh_file *f, vh_open_flags flags, vh_disk **out, GError **err)
{
    *out = NULL;
    vh_disk *d = g_new0(vh_disk, 1);
    d->ops = &vhdx_ops;
    d->format = VH_FORMAT_VHDX;
    d->file = *f;
    d->writable = f->writable;
    vhdx_priv *x = g_new0(vhdx_priv, 1);
    d->priv = x;
    x->loc_index = -1;
    x->log_state = "empty";
    x->durable_size = f->size;
    x->log_seq = 1;
    vhdx_locator_init(&x->loc);
    x->bitmaps = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, g_free);
    vhdx_replay_init(&x->replay);
    int r = open_all(d, flags, err);
    if (r < 0) {
        vh_disk_close(d);
        return r;
    }
    *out = d;
    return 0;
}

/* ---------------- map and read ---------------- */

typedef enum { CLS_DATA, CLS_PARENT, CLS_ZERO, CLS_PARTIAL } block_class;

/* What a block reads as, and where it is stored (DATA, PARTIAL). */
static int classify(vh_disk *d, uint64_t blk, block_class *cls, uint64_t *off, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    uint64_t e = 0;
    int r = bat_get(d, vhdx_bat_payload_index(blk, x->chunk_ratio), &e, err);
    if (r < 0)
        return r;
    *off = VHDX_BAT_OFFSET(e);
    switch (VHDX_BAT_STATE(e)) {
    case VHDX_PB_FULLY_PRESENT:
        *cls = CLS_DATA;
        break;
    case VHDX_PB_PARTIALLY_PRESENT:
        *cls = CLS_PARTIAL;
        break;
    case VHDX_PB_NOT_PRESENT:
        *cls = x->differencing ? CLS_PARENT : CLS_ZERO;
        break;
    default: /* UNDEFINED, ZERO, UNMAPPED (3, and 5 from draft files): zeros */
        *cls = CLS_ZERO;
        break;
    }
    return 0;
}

/* The block's slice of its chunk's sector bitmap (bits for its sectors), cached. */
const uint8_t *vhdx_block_bitmap(vh_disk *d, uint64_t blk, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    uint8_t *bm = g_hash_table_lookup(x->bitmaps, &blk);
    if (bm)
        return bm;
    uint64_t bits = x->p.block_size / x->p.logical_ss, sb;
    if (check_partial_has_sb(d, blk, err) < 0 ||
        bat_get(d, vhdx_bat_sb_index(blk / x->chunk_ratio, x->chunk_ratio), &sb, err) < 0)
        return NULL;
    uint64_t off = VHDX_BAT_OFFSET(sb) + (blk % x->chunk_ratio) * bits / 8;
    bm = g_malloc(bits / 8);
    if (vhdx_read(d, bm, bits / 8, off, "sector bitmap", err) < 0) {
        g_free(bm);
        return NULL;
    }
    vhdx_cache_bitmap(d, blk, bm);
    return bm;
}

void vhdx_cache_bitmap(vh_disk *d, uint64_t blk, uint8_t *bm)
{
    vhdx_priv *x = vhdx_p(d);
    /* Bounded in bytes per disk: the whole cache goes when it is full. */
    uint64_t slice = MAX(x->p.block_size / x->p.logical_ss / 8, 1);
    if (g_hash_table_size(x->bitmaps) >= MAX(BITMAP_CACHE_BYTES / slice, 1))
        g_hash_table_remove_all(x->bitmaps);
    g_hash_table_insert(x->bitmaps, g_memdup2(&blk, sizeof blk), bm);
}

static int map_partial(vh_disk *d, uint64_t blk, uint64_t off, uint64_t in, uint64_t avail,
                       vh_run *run, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    const uint8_t *bm = vhdx_block_bitmap(d, blk, err);
    if (!bm)
        return -vh_error_errno(*err);
    uint32_t ss = x->p.logical_ss;
    uint64_t bits = x->p.block_size / ss;
    bool present;
    uint64_t n = vhdx_bit_run(bm, in / ss, bits - in / ss, &present);
    uint64_t len = (in / ss + n) * ss - in;
    run->kind = present ? VH_RUN_DATA : VH_RUN_PARENT;
    run->file_offset = present ? off + in : 0;
    run->length = MIN(len, avail);
    return 0;
}

/* Blocks looked at per prefetch call: bounds the work of one hint. */
#define PREFETCH_BLOCKS 64u

static bool vhdx_prefetch(vh_disk *d, uint64_t voff, uint64_t len)
{
    vhdx_priv *x = vhdx_p(d);
    if ((!x->bat && !x->bat_table) || voff >= x->p.disk_size || len == 0)
        return false;
    uint64_t bs = x->p.block_size, ss = x->p.logical_ss;
    uint64_t end = MIN(voff + len, x->p.disk_size), first = voff / bs, last = (end - 1) / bs;
    bool covers = last - first < PREFETCH_BLOCKS;
    for (uint64_t b = first; b <= last && b < first + PREFETCH_BLOCKS && b < x->payload_blocks;
         b++) {
        block_class c;
        uint64_t off, sb;
        if (classify(d, b, &c, &off, NULL) < 0 || c == CLS_PARENT) {
            covers = false;
            continue;
        }
        if (c != CLS_PARTIAL)
            continue; /* data or zeros: the parent is not asked */
        const uint8_t *bm = g_hash_table_lookup(x->bitmaps, &b);
        if (bm) {
            uint64_t lo = MAX(voff, b * bs) - b * bs, hi = MIN(end, (b + 1) * bs) - b * bs;
            bool present;
            uint64_t n = vhdx_bit_run(bm, lo / ss, (hi + ss - 1) / ss - lo / ss, &present);
            if (!present || n < (hi + ss - 1) / ss - lo / ss)
                covers = false;
            continue;
        }
        covers = false;
        if (bat_get(d, vhdx_bat_sb_index(b / x->chunk_ratio, x->chunk_ratio), &sb, NULL) == 0 &&
            VHDX_BAT_STATE(sb) == VHDX_SB_PRESENT)
            vh_file_prefetch(&d->file, VHDX_BAT_OFFSET(sb) + (b % x->chunk_ratio) * (bs / ss) / 8,
                             bs / ss / 8);
    }
    return covers;
}

static int vhdx_map(vh_disk *d, uint64_t voff, uint64_t max_len, vh_run *run, GError **err)
{
    vhdx_priv *x = vhdx_p(d);
    if (!x->bat && !x->bat_table)
        return vh_fail(err, EINVAL, "%s: opened for identity only (no block table)", d->file.path);
    if (voff >= x->p.disk_size || max_len == 0)
        return vh_fail(err, EINVAL, "%s: map at virtual offset %" G_GUINT64_FORMAT " is outside",
                       d->file.path, voff);
    uint64_t bs = x->p.block_size, blk = voff / bs, in = voff % bs;
    uint64_t avail = MIN(max_len, x->p.disk_size - voff), off;
    block_class c;
    int r = classify(d, blk, &c, &off, err);
    if (r < 0)
        return r;
    if (c == CLS_PARTIAL)
        return map_partial(d, blk, off, in, avail, run, err);
    run->kind = c == CLS_DATA ? VH_RUN_DATA : c == CLS_PARENT ? VH_RUN_PARENT : VH_RUN_ZERO;
    run->file_offset = c == CLS_DATA ? off + in : 0;
    uint64_t len = bs - in;
    /* Whole runs: neighbouring blocks of the same kind (and, for data, contiguous in the file)
     * extend the run. */
    for (uint64_t b = blk + 1; len < avail && b < x->payload_blocks; b++) {
        block_class cb;
        uint64_t ob;
        if ((r = classify(d, b, &cb, &ob, err)) < 0)
            return r;
        if (cb != c || (c == CLS_DATA && ob != off + (b - blk) * bs))
            break;
        len += bs;
    }
    run->length = MIN(len, avail);
    return 0;
}

static int vhdx_read_data(vh_disk *d, void *buf, size_t len, uint64_t off, GError **err)
{
    return vhdx_read(d, buf, len, off, "payload block", err);
}

static int vhdx_data_fd(vh_disk *d)
{
    return vhdx_p(d)->overlay || d->file.patch ? -1 : d->file.fd;
}

/* ---------------- info ---------------- */

static void info_id(vh_info_fn fn, void *ctx, const char *key, const vh_id *id)
{
    char s[VH_ID_STRLEN + 1];
    vh_id_format(id, s);
    fn(ctx, key, s);
}

static void info_block_states(vh_disk *d, vh_info_fn fn, void *ctx)
{
    vhdx_priv *x = vhdx_p(d);
    if (!x->bat && !x->bat_table)
        return;
    uint64_t count[8] = {0}, sb_present = 0, group = (uint64_t)x->chunk_ratio + 1;
    const uint64_t per = BAT_PAGE / VHDX_BAT_ENTRY_SIZE;
    g_autofree uint8_t *page = g_malloc(BAT_PAGE);
    /* a page of entries at a time: a paged BAT is read through the cache once per page */
    for (uint64_t i = 0; i < x->bat_count; i += per) {
        uint64_t n = MIN(per, x->bat_count - i);
        if (!x->bat && vh_table_read(x->bat_table, i * VHDX_BAT_ENTRY_SIZE, page,
                                     n * VHDX_BAT_ENTRY_SIZE, NULL) < 0)
            break;
        for (uint64_t k = 0; k < n; k++) {
            uint64_t idx = i + k,
                     e = x->bat ? x->bat[idx] : vh_le64(page + VHDX_BAT_ENTRY_SIZE * k);
            if (idx % group == x->chunk_ratio)
                sb_present += VHDX_BAT_STATE(e) == VHDX_SB_PRESENT;
            else if (idx / group * x->chunk_ratio + idx % group < x->payload_blocks)
                count[VHDX_BAT_STATE(e)]++;
        }
    }
    for (unsigned s = 0; s < 8; s++)
        if (count[s]) {
            g_autofree char *key = g_strdup_printf("blocks.%s", vhdx_payload_state_name(s));
            vh_info_printf(fn, ctx, key, "%" G_GUINT64_FORMAT, count[s]);
        }
    vh_info_printf(fn, ctx, "sector_bitmap_blocks_present", "%" G_GUINT64_FORMAT, sb_present);
}

static void info_metadata(vh_disk *d, vh_info_fn fn, void *ctx)
{
    vhdx_priv *x = vhdx_p(d);
    vh_info_printf(fn, ctx, "metadata_items", "%u", x->md->count);
    for (int i = 0; i < x->md->count; i++) {
        const vhdx_md_entry *e = &x->md->e[i];
        char id[VH_ID_STRLEN + 1];
        vh_id_format(&e->item, id);
        const char *name = vhdx_guid_name(&e->item);
        g_autofree char *key = g_strdup_printf("metadata.%d", i);
        vh_info_printf(fn, ctx, key, "%s offset=0x%x length=%u flags=0x%x", name ? name : id,
                       e->offset, e->length, e->flags);
    }
    if (x->loc_index < 0)
        return;
    info_id(fn, ctx, "locator.type", &x->loc.type);
    for (guint i = 0; i < x->loc.kv->len; i++) {
        const vhdx_kv *kv = x->loc.kv->pdata[i];
        g_autofree char *key = g_strdup_printf("locator.%u.%s", i, kv->key);
        fn(ctx, key, kv->value);
    }
}

static void vhdx_info(vh_disk *d, vh_info_fn fn, void *ctx)
{
    vhdx_priv *x = vhdx_p(d);
    fn(ctx, "creator", x->creator);
    for (int i = 0; i < 2; i++) {
        g_autofree char *key = g_strdup_printf("header%d.sequence", i + 1);
        if (x->slot_ok[i])
            vh_info_printf(fn, ctx, key, "%" G_GUINT64_FORMAT, x->slot[i].seq);
        else
            fn(ctx, key, "invalid");
    }
    vh_info_printf(fn, ctx, "current_header", "%d", x->cur + 1);
    info_id(fn, ctx, "file_write_guid", &x->h.file_write);
    info_id(fn, ctx, "data_write_guid", &x->h.data_write);
    info_id(fn, ctx, "log_guid", &x->h.log_guid);
    vh_info_printf(fn, ctx, "log_offset", "%" G_GUINT64_FORMAT, x->h.log_offset);
    vh_info_printf(fn, ctx, "log_length", "%u", x->h.log_length);
    fn(ctx, "log", x->log_state);
    if (x->replayed_entries)
        vh_info_printf(fn, ctx, "log_replayed_entries", "%u (head sequence %" G_GUINT64_FORMAT ")",
                       x->replayed_entries, x->replayed_seq);
    vh_info_printf(fn, ctx, "region_table", "%d", x->rt_used);
    vh_info_printf(fn, ctx, "bat_offset", "%" G_GUINT64_FORMAT, x->bat_off);
    vh_info_printf(fn, ctx, "bat_length", "%u", x->bat_len);
    vh_info_printf(fn, ctx, "metadata_offset", "%" G_GUINT64_FORMAT, x->md_off);
    vh_info_printf(fn, ctx, "metadata_length", "%u", x->md_len);
    vh_info_printf(fn, ctx, "block_size", "%u", x->p.block_size);
    vh_info_printf(fn, ctx, "chunk_ratio", "%u",
                   vhdx_chunk_ratio(x->p.block_size, x->p.logical_ss));
    vh_info_printf(
        fn, ctx, "bat_entries", "%" G_GUINT64_FORMAT,
        vhdx_bat_entries(x->p.disk_size, x->p.block_size, x->p.logical_ss, x->differencing));
    vh_info_printf(fn, ctx, "file_parameters_flags", "0x%x", x->p.fp_flags);
    info_id(fn, ctx, "virtual_disk_id", &x->p.disk_id);
    info_block_states(d, fn, ctx);
    info_metadata(d, fn, ctx);
}

static void vhdx_close(vh_disk *d)
{
    vhdx_priv *x = vhdx_p(d);
    if (!x)
        return;
    g_free(x->creator);
    g_free(x->rt);
    g_free(x->md);
    g_free(x->bat);
    vh_table_free(x->bat_table);
    vhdx_locator_clear(&x->loc);
    if (x->bitmaps)
        g_hash_table_unref(x->bitmaps);
    vhdx_replay_clear(&x->replay);
    g_free(x);
    d->priv = NULL;
}

static const vh_disk_ops vhdx_ops = {
    .prefetch = vhdx_prefetch,
    .map = vhdx_map,
    .read_data = vhdx_read_data,
    .data_fd = vhdx_data_fd,
    .write_sectors = vhdx_write_sectors,
    .flush = vhdx_flush,
    .set_parent_link = vhdx_set_parent_link,
    .info = vhdx_info,
    .close = vhdx_close,
};
