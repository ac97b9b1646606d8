// SPDX-License-Identifier: GPL-2.0-or-later
/* vhdx_log.c - VHDX log replay and log entry building (see vhdx_log.h). */
#include "vhdx_format.h"
#include "vhdx_log.h"

#define LOG_TARGET_MIN (192 * VH_KIB)   /* logged updates never touch the identifier/headers */
#define LOG_TARGET_MAX (128 * VH_TIB)   /* far beyond any valid VHDX (64 TiB of payload) */
#define SCAN_BUDGET (UINT64_C(1) << 24) /* chain steps */
#define CRC_BUDGET (UINT64_C(4) << 30)  /* bytes checksummed while scanning */

void vhdx_replay_init(vhdx_replay *r)
{
    memset(r, 0, sizeof *r);
    r->ops = g_array_new(FALSE, TRUE, sizeof(vhdx_log_op));
}

void vhdx_replay_clear(vhdx_replay *r)
{
    if (!r->ops)
        return;
    for (guint i = 0; i < r->ops->len; i++)
        g_free(g_array_index(r->ops, vhdx_log_op, i).data);
    g_array_unref(r->ops);
    r->ops = NULL;
}

/* ---------------- scanning ---------------- */

/* What is known about the entry that would start at one 4 KiB slot of the log. */
typedef struct {
    uint8_t state; /* 0 unknown, 1 invalid, 2 valid */
    uint32_t length;
    uint32_t tail;
    uint64_t seq;
    uint32_t descs;
    uint64_t flushed, last;
} slot_info;

typedef struct {
    const uint8_t *log;
    uint32_t len;
    uint64_t base;
    vh_id guid;
    slot_info *slots;
    uint64_t crc_bytes;
    char *first_problem; /* for the error message */
} scan_ctx;

static const uint8_t *sector_at(const scan_ctx *c, uint32_t entry_off, uint64_t i)
{
    return c->log + (entry_off + i * VHDX_LOG_SECTOR) % c->len;
}

static bool problem(scan_ctx *c, uint32_t off, const char *what)
{
    if (!c->first_problem)
        c->first_problem = g_strdup_printf("entry at log offset %u: %s", off, what);
    return false;
}

static uint32_t desc_sectors(uint64_t descs)
{
    /* The first sector holds the 64-byte header and 126 descriptors, later ones 128. */
    const uint64_t per = VHDX_LOG_SECTOR / VHDX_LOGD_SIZE,
                   in_hdr = VHDX_LOGE_HDR_SIZE / VHDX_LOGD_SIZE;
    return (uint32_t)((descs + in_hdr + per - 1) / per);
}

static const uint8_t *descriptor_at(const scan_ctx *c, uint32_t off, uint64_t i)
{
    uint64_t pos = VHDX_LOGE_HDR_SIZE + i * VHDX_LOGD_SIZE;
    return sector_at(c, off, pos / VHDX_LOG_SECTOR) + pos % VHDX_LOG_SECTOR;
}

/* Checks the header fields; fills the slot's lengths on success. */
static bool check_header(scan_ctx *c, uint32_t off, slot_info *s)
{
    const uint8_t *h = c->log + off;
    if (memcmp(h + VHDX_LOGE_SIG_OFF, "loge", 4) != 0)
        return false; /* not an entry start: not worth reporting */
    s->length = vh_le32(h + VHDX_LOGE_LENGTH_OFF);
    s->tail = vh_le32(h + VHDX_LOGE_TAIL_OFF);
    s->seq = vh_le64(h + VHDX_LOGE_SEQ_OFF);
    s->descs = vh_le32(h + VHDX_LOGE_DESC_COUNT_OFF);
    s->flushed = vh_le64(h + VHDX_LOGE_FLUSHED_OFF);
    s->last = vh_le64(h + VHDX_LOGE_LAST_OFF);
    if (s->length < VHDX_LOG_SECTOR || s->length % VHDX_LOG_SECTOR || s->length > c->len)
        return problem(c, off, "entry length is not a 4 KiB multiple inside the log");
    if (s->tail % VHDX_LOG_SECTOR || s->tail >= c->len)
        return problem(c, off, "tail is not a 4 KiB aligned log offset");
    if (s->seq == 0)
        return problem(c, off, "sequence number is zero");
    vh_id g = vh_id_from_guid_le(h + VHDX_LOGE_GUID_OFF);
    if (!vh_id_equal(&g, &c->guid))
        return problem(c, off, "LogGuid differs from the header's");
    if ((uint64_t)desc_sectors(s->descs) * VHDX_LOG_SECTOR > s->length)
        return problem(c, off, "descriptor count does not fit in the entry");
    return true;
}

static bool check_descriptors(scan_ctx *c, uint32_t off, const slot_info *s)
{
    uint64_t data_sector = desc_sectors(s->descs);
    for (uint64_t i = 0; i < s->descs; i++) {
        const uint8_t *d = descriptor_at(c, off, i);
        if (vh_le64(d + VHDX_LOGD_SEQ_OFF) != s->seq)
            return problem(c, off, "descriptor sequence number differs from the entry's");
        uint64_t target = vh_le64(d + VHDX_LOGD_TARGET_OFF);
        uint64_t len = VHDX_LOG_SECTOR;
        if (memcmp(d + VHDX_LOGD_SIG_OFF, "zero", 4) == 0) {
            len = vh_le64(d + VHDX_LOGD_ZERO_LEN_OFF);
            if (len == 0 || len % VHDX_LOG_SECTOR)
                return problem(c, off, "zero descriptor length is not a 4 KiB multiple");
        } else if (memcmp(d + VHDX_LOGD_SIG_OFF, "desc", 4) == 0) {
            if ((data_sector + 1) * VHDX_LOG_SECTOR > s->length)
                return problem(c, off, "more data descriptors than data sectors");
            const uint8_t *ds = sector_at(c, off, data_sector++);
            if (memcmp(ds + VHDX_LOGS_SIG_OFF, "data", 4) != 0)
                return problem(c, off, "data sector without \"data\" signature");
            if (((uint64_t)vh_le32(ds + VHDX_LOGS_SEQ_HIGH_OFF) << 32 |
                 vh_le32(ds + VHDX_LOGS_SEQ_LOW_OFF)) != s->seq)
                return problem(c, off, "data sector sequence number differs (torn write?)");
        } else {
            return problem(c, off, "descriptor with unknown signature");
        }
        if (target % VHDX_LOG_SECTOR || target < LOG_TARGET_MIN ||
            !vh_range_ok(target, len, LOG_TARGET_MAX))
            return problem(c, off, "descriptor file offset is unaligned or out of range");
    }
    return true;
}

static bool check_crc(scan_ctx *c, uint32_t off, const slot_info *s)
{
    static const uint8_t zero[4];
    c->crc_bytes += s->length;
    uint32_t crc = 0;
    for (uint64_t i = 0; i < s->length / VHDX_LOG_SECTOR; i++) {
        const uint8_t *p = sector_at(c, off, i);
        if (i == 0) {
            crc = vh_crc32c_update(crc, p, VHDX_LOGE_CRC_OFF);
            crc = vh_crc32c_update(crc, zero, 4);
            crc = vh_crc32c_update(crc, p + VHDX_LOGE_CRC_OFF + 4,
                                   VHDX_LOG_SECTOR - VHDX_LOGE_CRC_OFF - 4);
        } else {
            crc = vh_crc32c_update(crc, p, VHDX_LOG_SECTOR);
        }
    }
    if (crc != vh_le32(c->log + off + VHDX_LOGE_CRC_OFF))
        return problem(c, off, "checksum mismatch (torn or corrupt entry)");
    return true;
}

/* The validated entry at log offset off, or NULL. Results are cached per slot. */
static const slot_info *entry_at(scan_ctx *c, uint32_t off)
{
    slot_info *s = &c->slots[off / VHDX_LOG_SECTOR];
    if (s->state == 0) {
        bool ok = check_header(c, off, s) && check_descriptors(c, off, s) && check_crc(c, off, s);
        s->state = ok ? 2 : 1;
    }
    return s->state == 2 ? s : NULL;
}

typedef struct {
    uint32_t start; /* log offset of the first entry */
    uint32_t count;
    uint32_t head; /* log offset of the last entry */
    uint64_t seq;  /* head's sequence number; 0 = empty */
} sequence;

/* Extends a sequence from `start` as far as entries are valid and numbered one apart. */
static int walk(scan_ctx *c, uint32_t start, sequence *q, uint64_t *budget, bool *valid,
                GError **err)
{
    memset(q, 0, sizeof *q);
    q->start = start;
    uint32_t pos = start;
    uint64_t total = 0;
    g_autoptr(GArray) starts = g_array_new(FALSE, FALSE, sizeof(uint32_t));
    for (;;) {
        if ((*budget)-- == 0 || c->crc_bytes > CRC_BUDGET)
            return vh_fail(err, E2BIG,
                           "log at offset %" G_GUINT64_FORMAT
                           ": too many entries to scan (hostile log?)",
                           c->base);
        const slot_info *e = entry_at(c, pos);
        if (!e || (q->count > 0 && e->seq != q->seq + 1) || total + e->length > c->len)
            break;
        g_array_append_val(starts, pos);
        q->count++;
        q->head = pos;
        q->seq = e->seq;
        total += e->length;
        pos = (uint32_t)((pos + (uint64_t)e->length) % c->len);
    }
    *valid = false;
    if (q->count > 0) {
        uint32_t tail = c->slots[q->head / VHDX_LOG_SECTOR].tail;
        for (guint i = 0; i < starts->len; i++)
            if (g_array_index(starts, uint32_t, i) == tail)
                *valid = true;
    }
    return 0;
}

/* The spec's search for the active sequence (MS-VHDX 2.3.3). */
static int find_active(scan_ctx *c, sequence *best, GError **err)
{
    memset(best, 0, sizeof *best);
    uint32_t cur = 0, old = 0;
    uint64_t budget = SCAN_BUDGET;
    for (;;) {
        sequence q;
        bool valid = false;
        int r = walk(c, cur, &q, &budget, &valid, err);
        if (r < 0)
            return r;
        if (valid && q.seq > best->seq)
            *best = q;
        if (!valid)
            cur = (uint32_t)((cur + (uint64_t)VHDX_LOG_SECTOR) % c->len);
        else
            cur =
                (uint32_t)((q.head + (uint64_t)c->slots[q.head / VHDX_LOG_SECTOR].length) % c->len);
        /* `<=` (not the spec's `<`) also ends a scan whose one sequence fills the whole log. */
        if (cur <= old)
            return 0;
        old = cur;
    }
}

/* Data sector i of an entry restored to the 4 KiB it stands for (MS-VHDX 2.3.1.3-4). */
static uint8_t *restore_sector(const scan_ctx *c, uint32_t off, uint64_t data_index,
                               const uint8_t *desc)
{
    uint8_t *out = g_malloc(VHDX_LOG_SECTOR);
    const uint8_t *ds = sector_at(c, off, data_index);
    memcpy(out, desc + VHDX_LOGD_LEADING_OFF, VHDX_LOGD_LEADING_LEN);
    memcpy(out + VHDX_LOGS_DATA_OFF, ds + VHDX_LOGS_DATA_OFF, VHDX_LOGS_DATA_LEN);
    memcpy(out + VHDX_LOG_SECTOR - VHDX_LOGD_TRAILING_LEN, desc + VHDX_LOGD_TRAILING_OFF,
           VHDX_LOGD_TRAILING_LEN);
    return out;
}

static void collect_ops(const scan_ctx *c, const sequence *q, vhdx_replay *out)
{
    const slot_info *head = &c->slots[q->head / VHDX_LOG_SECTOR];
    uint32_t off = head->tail;
    for (;;) {
        const slot_info *s = &c->slots[off / VHDX_LOG_SECTOR];
        uint64_t data_sector = desc_sectors(s->descs);
        for (uint64_t i = 0; i < s->descs; i++) {
            const uint8_t *d = descriptor_at(c, off, i);
            vhdx_log_op op = {.off = vh_le64(d + VHDX_LOGD_TARGET_OFF), .len = VHDX_LOG_SECTOR};
            if (memcmp(d + VHDX_LOGD_SIG_OFF, "zero", 4) == 0)
                op.len = vh_le64(d + VHDX_LOGD_ZERO_LEN_OFF);
            else
                op.data = restore_sector(c, off, data_sector++, d);
            g_array_append_val(out->ops, op);
            out->end = MAX(out->end, op.off + op.len);
        }
        out->entries++;
        if (off == q->head)
            break;
        off = (uint32_t)((off + (uint64_t)s->length) % c->len);
    }
    out->tail_off = head->tail;
    out->head_off = q->head;
    out->head_seq = head->seq;
    out->flushed = head->flushed;
    out->last = head->last;
    out->end = MAX(out->end, head->last);
}

int vhdx_log_find(const uint8_t *log, uint32_t log_len, uint64_t log_base, const vh_id *guid,
                  uint64_t file_size, vhdx_replay *out, GError **err)
{
    if (log_len == 0 || log_len % VHDX_LOG_SECTOR || log_len > VHDX_LOG_MAX)
        return vh_fail(err, E2BIG,
                       "log at offset %" G_GUINT64_FORMAT
                       ": length %u is not a 4 KiB multiple up to 256 MiB",
                       log_base, log_len);
    scan_ctx c = {.log = log, .len = log_len, .base = log_base, .guid = *guid};
    c.slots = g_new0(slot_info, log_len / VHDX_LOG_SECTOR);
    sequence best;
    int r = find_active(&c, &best, err);
    if (r == 0 && best.seq == 0)
        r = vh_fail(err, EIO,
                    "log at offset %" G_GUINT64_FORMAT
                    ": the header names a log (LogGuid set) but it holds no valid complete "
                    "sequence (%s); the file is corrupt",
                    log_base, c.first_problem ? c.first_problem : "no entry for this LogGuid");
    if (r == 0) {
        vhdx_replay_init(out);
        out->end = file_size;
        collect_ops(&c, &best, out);
        if (file_size < out->flushed) {
            r = vh_fail(err, EIO,
                        "log at offset %" G_GUINT64_FORMAT
                        ": entry at log offset %u says the file was at least %" G_GUINT64_FORMAT
                        " bytes, but it has %" G_GUINT64_FORMAT " (truncated)",
                        log_base, best.head, out->flushed, file_size);
            vhdx_replay_clear(out);
        }
    }
    g_free(c.slots);
    g_free(c.first_problem);
    return r;
}

/* ---------------- applying ---------------- */

static int write_zeros(vh_file *f, uint64_t off, uint64_t len, GError **err)
{
    /* Zeros past the end of the file come from extending it. */
    uint64_t in_file = off < f->size ? MIN(len, f->size - off) : 0;
    static const uint8_t zero[64 * 1024];
    for (uint64_t done = 0; done < in_file;) {
        size_t n = (size_t)MIN(in_file - done, sizeof zero);
        int r = vh_file_write(f, zero, n, off + done, "log replay (zero descriptor)", err);
        if (r < 0)
            return r;
        done += n;
    }
    if (off + len > f->size)
        return vh_file_truncate(f, off + len, err);
    return 0;
}

int vhdx_replay_apply(vh_file *f, const vhdx_replay *r, GError **err)
{
    for (guint i = 0; i < r->ops->len; i++) {
        const vhdx_log_op *op = &g_array_index(r->ops, vhdx_log_op, i);
        int rc = op->data ? vh_file_write(f, op->data, VHDX_LOG_SECTOR, op->off,
                                          "log replay (data descriptor)", err)
                          : write_zeros(f, op->off, op->len, err);
        if (rc < 0)
            return rc;
    }
    if (f->size < r->end) {
        int rc = vh_file_truncate(f, r->end, err);
        if (rc < 0)
            return rc;
    }
    return vh_file_flush(f, err);
}

void vhdx_replay_overlay(const vhdx_replay *r, uint8_t *buf, size_t len, uint64_t off)
{
    for (guint i = 0; r->ops && i < r->ops->len; i++) {
        const vhdx_log_op *op = &g_array_index(r->ops, vhdx_log_op, i);
        uint64_t lo = MAX(off, op->off), hi = MIN(off + len, op->off + op->len);
        if (lo >= hi)
            continue;
        if (op->data)
            memcpy(buf + (lo - off), op->data + (lo - op->off), hi - lo);
        else
            memset(buf + (lo - off), 0, hi - lo);
    }
}

/* ---------------- building entries ---------------- */

int vhdx_log_entry_build(const vhdx_log_op *ops, size_t n, const vhdx_log_entry_params *p,
                         uint8_t **out, uint32_t *out_len, GError **err)
{
    uint64_t data = 0;
    for (size_t i = 0; i < n; i++) {
        bool bad = ops[i].off % VHDX_LOG_SECTOR || ops[i].len == 0 ||
                   ops[i].len % VHDX_LOG_SECTOR || (ops[i].data && ops[i].len != VHDX_LOG_SECTOR);
        if (bad)
            return vh_fail(err, EINVAL,
                           "log entry: update %zu (%" G_GUINT64_FORMAT "+%" G_GUINT64_FORMAT
                           ") is not 4 KiB aligned",
                           i, ops[i].off, ops[i].len);
        data += ops[i].data != NULL;
    }
    uint64_t ds = desc_sectors(n);
    uint64_t total = (ds + data) * VHDX_LOG_SECTOR;
    if (n > G_MAXUINT32 || total > VHDX_LOG_MAX)
        return vh_fail(err, E2BIG, "log entry: %zu updates are too many for one entry", n);
    uint8_t *e = g_malloc0(total);
    memcpy(e + VHDX_LOGE_SIG_OFF, "loge", 4);
    vh_put_le32(e + VHDX_LOGE_LENGTH_OFF, (uint32_t)total);
    vh_put_le32(e + VHDX_LOGE_TAIL_OFF, p->tail);
    vh_put_le64(e + VHDX_LOGE_SEQ_OFF, p->seq);
    vh_put_le32(e + VHDX_LOGE_DESC_COUNT_OFF, (uint32_t)n);
    vh_id_to_guid_le(&p->guid, e + VHDX_LOGE_GUID_OFF);
    vh_put_le64(e + VHDX_LOGE_FLUSHED_OFF, p->flushed);
    vh_put_le64(e + VHDX_LOGE_LAST_OFF, p->last);
    uint64_t di = ds;
    for (size_t i = 0; i < n; i++) {
        uint8_t *d = e + VHDX_LOGE_HDR_SIZE + i * VHDX_LOGD_SIZE;
        vh_put_le64(d + VHDX_LOGD_TARGET_OFF, ops[i].off);
        vh_put_le64(d + VHDX_LOGD_SEQ_OFF, p->seq);
        if (!ops[i].data) {
            memcpy(d + VHDX_LOGD_SIG_OFF, "zero", 4);
            vh_put_le64(d + VHDX_LOGD_ZERO_LEN_OFF, ops[i].len);
            continue;
        }
        memcpy(d + VHDX_LOGD_SIG_OFF, "desc", 4);
        memcpy(d + VHDX_LOGD_TRAILING_OFF, ops[i].data + VHDX_LOG_SECTOR - VHDX_LOGD_TRAILING_LEN,
               VHDX_LOGD_TRAILING_LEN);
        memcpy(d + VHDX_LOGD_LEADING_OFF, ops[i].data, VHDX_LOGD_LEADING_LEN);
        uint8_t *s = e + di++ * VHDX_LOG_SECTOR;
        memcpy(s + VHDX_LOGS_SIG_OFF, "data", 4);
        vh_put_le32(s + VHDX_LOGS_SEQ_HIGH_OFF, (uint32_t)(p->seq >> 32));
        memcpy(s + VHDX_LOGS_DATA_OFF, ops[i].data + VHDX_LOGS_DATA_OFF, VHDX_LOGS_DATA_LEN);
        vh_put_le32(s + VHDX_LOGS_SEQ_LOW_OFF, (uint32_t)p->seq);
    }
    vh_put_le32(e + VHDX_LOGE_CRC_OFF, vh_crc32c(e, total));
    *out = e;
    *out_len = (uint32_t)total;
    return 0;
}
