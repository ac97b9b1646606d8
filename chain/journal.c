// SPDX-License-Identifier: GPL-2.0-or-later
/* journal.c - the repair journal (see journal.h for the record format and the contract). */
#include "journal.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "winpath.h"

struct vh_journal {
    char *store;
    char *path;
    int fd;
    GMutex lock;
};

typedef struct {
    uint64_t off;
    uint64_t wlen;    /* bytes the repair wrote there */
    GBytes *original; /* what was there before (the part inside the file) */
} journal_range;

struct vh_repair {
    vh_journal *j;
    vh_file *child;
    char *id;
    uint64_t original_size;
    GArray *ranges; /* journal_range */
};

/* One repair as read back from the journal. */
typedef struct {
    vh_repair_info info;
    uint64_t original_size;
    GArray *ranges;
    uint64_t final_size;
    char *final_hash;
    bool undoing;
} parsed_repair;

static void range_clear(gpointer p)
{
    journal_range *r = p;
    g_clear_pointer(&r->original, g_bytes_unref);
}

void vh_repair_info_free(vh_repair_info *r)
{
    if (!r)
        return;
    g_free(r->id);
    g_free(r->child);
    g_free(r->old_link);
    g_free(r->new_link);
    g_free(r);
}

static void parsed_free(gpointer p)
{
    parsed_repair *r = p;
    g_free(r->info.id);
    g_free(r->info.child);
    g_free(r->info.old_link);
    g_free(r->info.new_link);
    g_array_unref(r->ranges);
    g_free(r->final_hash);
    g_free(r);
}

static int journal_hook(void *ctx, vh_file *f, uint64_t off, size_t len, GError **err);

const char *vh_journal_store(const vh_journal *j)
{
    return j->store;
}

const char *vh_repair_id(const vh_repair *r)
{
    return r->id;
}

void vh_repair_set_file(vh_repair *r, vh_file *f)
{
    r->child = f;
    f->hook = journal_hook;
    f->hook_ctx = r;
}

int vh_journal_open(const char *store, vh_journal **out, GError **err)
{
    *out = NULL;
    g_autofree char *dir = g_build_filename(store, ".vhdheal", NULL);
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        return vh_fail(err, errno, "%s: cannot create the journal folder: %s", dir,
                       g_strerror(errno));
    g_autofree char *path = g_build_filename(dir, "journal", NULL);
    int fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return vh_fail(err, errno, "%s: cannot open the journal: %s", path, g_strerror(errno));
    vh_journal *j = g_new0(vh_journal, 1);
    j->store = g_strdup(store);
    j->path = g_steal_pointer(&path);
    j->fd = fd;
    g_mutex_init(&j->lock);
    *out = j;
    return 0;
}

void vh_journal_close(vh_journal *j)
{
    if (!j)
        return;
    close(j->fd);
    g_mutex_clear(&j->lock);
    g_free(j->store);
    g_free(j->path);
    g_free(j);
}

/* Appends one record, durably: one write(2) of the whole line under an exclusive flock. */
static int append_record(vh_journal *j, const char *line, GError **err)
{
    g_mutex_lock(&j->lock);
    int r = 0;
    if (flock(j->fd, LOCK_EX) < 0) {
        r = vh_fail(err, errno, "%s: cannot lock the journal: %s", j->path, g_strerror(errno));
        goto out;
    }
    size_t len = strlen(line);
    ssize_t n = write(j->fd, line, len);
    if (n != (ssize_t)len)
        r = vh_fail(err, n < 0 ? errno : EIO, "%s: appending a record: %s", j->path,
                    g_strerror(n < 0 ? errno : EIO));
    else if (fdatasync(j->fd) < 0)
        r = vh_fail(err, errno, "%s: flushing: %s", j->path, g_strerror(errno));
    flock(j->fd, LOCK_UN);
out:
    g_mutex_unlock(&j->lock);
    return r;
}

static char *new_repair_id(void)
{
    g_autoptr(GDateTime) now = g_date_time_new_now_utc();
    g_autofree char *stamp = g_date_time_format(now, "%Y%m%dT%H%M%S");
    return g_strdup_printf("%s-%08x", stamp, g_random_int());
}

/* The journal hook: save what is about to be overwritten (or cut off by a truncate). */
static int journal_hook(void *ctx, vh_file *f, uint64_t off, size_t len, GError **err)
{
    vh_repair *rp = ctx;
    uint64_t end = len ? off + len : f->size; /* a truncate to `off` loses [off, size) */
    uint64_t wlen = len;
    end = MIN(end, f->size);
    size_t keep = end > off ? (size_t)(end - off) : 0; /* nothing to save past EOF */
    g_autofree uint8_t *orig = g_malloc(keep ? keep : 1);
    if (keep) {
        /* Read without the hook: vh_file_read never writes, so no recursion. */
        int r = vh_file_read(f, orig, keep, off, "journaled range", err);
        if (r < 0)
            return r;
    }
    g_autofree char *b64 = g_base64_encode(orig, keep);
    g_autofree char *line = g_strdup_printf(
        "RANGE\t%s\t%" G_GUINT64_FORMAT "\t%" G_GUINT64_FORMAT "\t%s\n", rp->id, off, wlen, b64);
    int r = append_record(rp->j, line, err);
    if (r < 0)
        return r;
    journal_range jr = {off, wlen, g_bytes_new(orig, keep)};
    g_array_append_val(rp->ranges, jr);
    return 0;
}

int vh_journal_begin(vh_journal *j, vh_file *child, const char *old_link, const char *new_link,
                     vh_repair **out, GError **err)
{
    *out = NULL;
    g_autofree char *rel = NULL;
    g_autofree char *abs_store = g_canonicalize_filename(j->store, NULL);
    g_autofree char *abs_child = g_canonicalize_filename(child->path, NULL);
    const char *below = vh_path_below(abs_store, abs_child);
    if (below && *below)
        rel = g_strdup(below);
    else
        return vh_fail(err, EXDEV, "%s: not inside the store %s", child->path, j->store);
    vh_repair *r = g_new0(vh_repair, 1);
    r->j = j;
    r->child = child;
    r->id = new_repair_id();
    r->original_size = child->size;
    r->ranges = g_array_new(FALSE, TRUE, sizeof(journal_range));
    g_array_set_clear_func(r->ranges, range_clear);
    g_autofree char *e_child = g_strescape(rel, NULL);
    g_autofree char *e_old = g_strescape(old_link ? old_link : "", NULL);
    g_autofree char *e_new = g_strescape(new_link ? new_link : "", NULL);
    g_autofree char *line = g_strdup_printf(
        "BEGIN\t%s\t%" G_GINT64_FORMAT "\t%s\t%" G_GUINT64_FORMAT "\t%s\t%s\n", r->id,
        g_get_real_time() / G_USEC_PER_SEC, e_child, r->original_size, e_old, e_new);
    int rc = append_record(j, line, err);
    if (rc < 0) {
        g_array_unref(r->ranges);
        g_free(r->id);
        g_free(r);
        return rc;
    }
    child->hook = journal_hook;
    child->hook_ctx = r;
    *out = r;
    return 0;
}

static void repair_free(vh_repair *r)
{
    if (r->child && r->child->hook_ctx == r) {
        r->child->hook = NULL;
        r->child->hook_ctx = NULL;
    }
    g_array_unref(r->ranges);
    g_free(r->id);
    g_free(r);
}

/* sha256 over what the ranges hold now (each capped at the file's size), and the size. */
static int hash_ranges(vh_file *f, GArray *ranges, char **out, GError **err)
{
    g_autoptr(GChecksum) sum = g_checksum_new(G_CHECKSUM_SHA256);
    for (guint i = 0; i < ranges->len; i++) {
        journal_range *jr = &g_array_index(ranges, journal_range, i);
        if (jr->off >= f->size)
            continue;
        size_t n = (size_t)MIN(jr->wlen, f->size - jr->off);
        g_autofree uint8_t *buf = g_malloc(n ? n : 1);
        int r = vh_file_read(f, buf, n, jr->off, "journaled range", err);
        if (r < 0)
            return r;
        g_checksum_update(sum, buf, n);
    }
    *out = g_strdup(g_checksum_get_string(sum));
    return 0;
}

int vh_journal_commit(vh_repair *r, GError **err)
{
    r->child->hook = NULL;
    g_autofree char *hash = NULL;
    int rc = hash_ranges(r->child, r->ranges, &hash, err);
    if (rc == 0) {
        g_autofree char *line =
            g_strdup_printf("COMMIT\t%s\t%" G_GUINT64_FORMAT "\t%s\n", r->id, r->child->size, hash);
        rc = append_record(r->j, line, err);
    }
    repair_free(r);
    return rc;
}

/* Writes the original bytes back, newest range first, then restores the size. */
static int restore_ranges(vh_file *f, GArray *ranges, uint64_t original_size, GError **err)
{
    for (guint i = ranges->len; i-- > 0;) {
        journal_range *jr = &g_array_index(ranges, journal_range, i);
        gsize n;
        const uint8_t *p = g_bytes_get_data(jr->original, &n);
        if (n > 0) {
            int r = vh_file_write(f, p, n, jr->off, "journaled original bytes", err);
            if (r < 0)
                return r;
        }
    }
    if (f->size != original_size) {
        int r = vh_file_truncate(f, original_size, err);
        if (r < 0)
            return r;
    }
    return vh_file_flush(f, err);
}

void vh_journal_release(vh_repair *r)
{
    repair_free(r);
}

int vh_journal_abort(vh_repair *r, GError **err)
{
    r->child->hook = NULL;
    int rc = restore_ranges(r->child, r->ranges, r->original_size, err);
    if (rc == 0) {
        g_autofree char *line = g_strdup_printf("ROLLBACK\t%s\n", r->id);
        rc = append_record(r->j, line, err);
    }
    repair_free(r);
    return rc;
}

/* ---------- reading the journal back ---------- */

static parsed_repair *find_parsed(GPtrArray *all, const char *id)
{
    for (guint i = all->len; i-- > 0;) {
        parsed_repair *p = all->pdata[i];
        if (strcmp(p->info.id, id) == 0)
            return p;
    }
    return NULL;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    *out = g_ascii_strtoull(s, &end, 10);
    return errno == 0 && end != s && *end == '\0';
}

/* Applies one complete line to the parsed set; malformed lines are ignored. */
static void parse_line(GPtrArray *all, char **f, guint n)
{
    if (n >= 7 && strcmp(f[0], "BEGIN") == 0) {
        parsed_repair *p = g_new0(parsed_repair, 1);
        p->info.id = g_strdup(f[1]);
        p->info.time = g_ascii_strtoll(f[2], NULL, 10);
        p->info.child = g_strcompress(f[3]);
        parse_u64(f[4], &p->original_size);
        p->info.old_link = g_strcompress(f[5]);
        p->info.new_link = g_strcompress(f[6]);
        p->info.state = VH_REPAIR_OPEN;
        p->ranges = g_array_new(FALSE, TRUE, sizeof(journal_range));
        g_array_set_clear_func(p->ranges, range_clear);
        g_ptr_array_add(all, p);
        return;
    }
    parsed_repair *p = n >= 2 ? find_parsed(all, f[1]) : NULL;
    if (!p)
        return;
    if (n >= 5 && strcmp(f[0], "RANGE") == 0) {
        journal_range jr = {0};
        gsize len = 0;
        if (!parse_u64(f[2], &jr.off) || !parse_u64(f[3], &jr.wlen))
            return;
        guchar *data = g_base64_decode(f[4], &len);
        jr.original = g_bytes_new_take(data, len);
        g_array_append_val(p->ranges, jr);
    } else if (n >= 4 && strcmp(f[0], "COMMIT") == 0) {
        parse_u64(f[2], &p->final_size);
        g_free(p->final_hash);
        p->final_hash = g_strdup(f[3]);
        p->info.state = VH_REPAIR_COMMITTED;
    } else if (strcmp(f[0], "ROLLBACK") == 0) {
        p->info.state = VH_REPAIR_ROLLED_BACK;
    } else if (strcmp(f[0], "UNDOING") == 0) {
        p->undoing = true;
    } else if (strcmp(f[0], "UNDO") == 0) {
        p->info.state = VH_REPAIR_UNDONE;
    }
}

static int read_journal(vh_journal *j, GPtrArray **out, GError **err)
{
    g_autofree char *text = NULL;
    gsize len = 0;
    g_autoptr(GError) e = NULL;
    if (!g_file_get_contents(j->path, &text, &len, &e))
        return vh_fail(err, EIO, "%s: %s", j->path, e->message);
    GPtrArray *all = g_ptr_array_new_with_free_func(parsed_free);
    char *line = text;
    for (;;) {
        char *nl = memchr(line, '\n', len - (size_t)(line - text));
        if (!nl)
            break; /* no newline: a record that never finished */
        *nl = '\0';
        g_auto(GStrv) f = g_strsplit(line, "\t", -1);
        parse_line(all, f, g_strv_length(f));
        line = nl + 1;
    }
    *out = all;
    return 0;
}

static int open_child(vh_journal *j, const parsed_repair *p, vh_file *f, GError **err)
{
    g_autofree char *path = g_build_filename(j->store, p->info.child, NULL);
    return vh_file_open(f, path, true, err);
}

static int roll_back(vh_journal *j, parsed_repair *p, GError **err)
{
    vh_file f;
    int r = open_child(j, p, &f, err);
    if (r < 0)
        return r;
    r = restore_ranges(&f, p->ranges, p->original_size, err);
    vh_file_close(&f);
    if (r < 0)
        return r;
    g_autofree char *line = g_strdup_printf("ROLLBACK\t%s\n", p->info.id);
    return append_record(j, line, err);
}

int vh_journal_recover(vh_journal *j, const char *child_rel, GError **err)
{
    g_autoptr(GPtrArray) all = NULL;
    int r = read_journal(j, &all, err);
    if (r < 0)
        return r;
    int count = 0;
    for (guint i = 0; i < all->len; i++) {
        parsed_repair *p = all->pdata[i];
        if (p->info.state != VH_REPAIR_OPEN)
            continue;
        if (child_rel && strcmp(child_rel, p->info.child) != 0)
            continue;
        if ((r = roll_back(j, p, err)) < 0)
            return r;
        count++;
    }
    return count;
}

int vh_journal_list(vh_journal *j, GPtrArray **out, GError **err)
{
    g_autoptr(GPtrArray) all = NULL;
    int r = read_journal(j, &all, err);
    if (r < 0)
        return r;
    GPtrArray *list = g_ptr_array_new_with_free_func((GDestroyNotify)vh_repair_info_free);
    for (guint i = 0; i < all->len; i++) {
        parsed_repair *p = all->pdata[i];
        vh_repair_info *info = g_new0(vh_repair_info, 1);
        info->id = g_strdup(p->info.id);
        info->time = p->info.time;
        info->child = g_strdup(p->info.child);
        info->old_link = g_strdup(p->info.old_link);
        info->new_link = g_strdup(p->info.new_link);
        info->state = p->info.state;
        g_ptr_array_add(list, info);
    }
    *out = list;
    return 0;
}

int vh_journal_undo(vh_journal *j, const char *id, GError **err)
{
    g_autoptr(GPtrArray) all = NULL;
    int r = read_journal(j, &all, err);
    if (r < 0)
        return r;
    parsed_repair *p = find_parsed(all, id);
    if (!p)
        return vh_fail(err, ENOENT, "%s: no repair with id %s", j->path, id);
    if (p->info.state != VH_REPAIR_COMMITTED)
        return vh_fail(err, EINVAL, "repair %s of %s was %s: nothing to undo", id, p->info.child,
                       p->info.state == VH_REPAIR_UNDONE ? "undone already" : "rolled back");
    vh_file f;
    if ((r = open_child(j, p, &f, err)) < 0)
        return r;
    if (!p->undoing) {
        g_autofree char *hash = NULL;
        r = hash_ranges(&f, p->ranges, &hash, err);
        if (r == 0 && (f.size != p->final_size || strcmp(hash, p->final_hash) != 0))
            r = vh_fail(err, EBUSY, "%s: changed since repair %s: refusing to undo it", f.path, id);
        g_autofree char *line = g_strdup_printf("UNDOING\t%s\n", id);
        if (r == 0)
            r = append_record(j, line, err);
    }
    if (r == 0)
        r = restore_ranges(&f, p->ranges, p->original_size, err);
    vh_file_close(&f);
    if (r < 0)
        return r;
    g_autofree char *line = g_strdup_printf("UNDO\t%s\n", id);
    return append_record(j, line, err);
}
