// SPDX-License-Identifier: GPL-2.0-or-later
/* journal.c - the repair journal (see journal.h and doc/journal.md for the format and the
 * recovery rules). */
#include "journal.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "inuse.h"
#include "winpath.h"
#include "util.h"

#define REC_MAGIC "@VHJ2 "
#define REC_HEADER_LEN 24      /* "@VHJ2 " + 8 hex + " " + 8 hex + "\n" */
#define TORN_MARK "\x15\n"     /* ends a torn tail: the next record starts on a line of its own */
#define CHUNK 512              /* new bytes are hashed in chunks: a torn write is recognised */
#define SUM_LEN 16             /* bytes of SHA-256 kept per chunk */
#define MAX_JOURNAL (1u << 30) /* a journal larger than this is not read */
#define COMPACT_AT (16u << 20) /* a journal past this drops its oldest finished repairs */
#define COMPACTED "COMPACTED"
#define GAP "GAP" /* where a compaction dropped the record after a torn or damaged region */
#define SIZE_UNKNOWN UINT64_MAX

struct vh_journal {
    char *store;
    char *path; /* for messages */
    int dir_fd; /* STORE/.vhdheal */
    vh_file file;
    GMutex lock; /* the OFD lock does not exclude threads sharing the descriptor */
};

typedef struct {
    uint64_t off;
    uint64_t wlen;        /* bytes the repair wrote there; 0: a truncate to off */
    uint64_t size_before; /* the file's size before this write (SIZE_UNKNOWN: legacy) */
    GBytes *original;     /* what was there before (the part inside the file) */
    GBytes *sums;         /* SUM_LEN bytes per CHUNK of the new bytes; NULL: legacy record */
} journal_range;

struct vh_repair {
    vh_journal *j;
    vh_file *child;
    char *id;
    uint64_t original_size;
    GArray *ranges; /* journal_range; the i-th was journaled with sequence number i */
};

/* One repair as read back from the journal. */
typedef struct {
    vh_repair_info info;
    uint64_t original_size;
    GArray *ranges;
    uint64_t final_size;
    char *final_hash;
    bool undoing;
    bool legacy;      /* a record of the old text format: no hashes of the new bytes */
    bool damaged;     /* a record of it may be missing (see parse_text): never restored */
    bool numbered;    /* its RANGE records carry a sequence number */
    bool unnumbered;  /* ... or some do not (journals before the numbers) */
    uint64_t nranges; /* RANGE records seen */
    GArray *spans;    /* text_span: its RANGE records, decoded into ranges only when needed */
    GBytes *text;     /* the journal text the spans point into */
} parsed_repair;

typedef struct {
    size_t off, len;
    bool legacy;
} text_span;

static void range_clear(gpointer p)
{
    journal_range *r = p;
    g_clear_pointer(&r->original, g_bytes_unref);
    g_clear_pointer(&r->sums, g_bytes_unref);
}

static GArray *ranges_new(void)
{
    GArray *a = g_array_new(FALSE, TRUE, sizeof(journal_range));
    g_array_set_clear_func(a, range_clear);
    return a;
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

void vh_recover_stats_clear(vh_recover_stats *st)
{
    if (st && st->notes)
        g_clear_pointer(&st->notes, g_ptr_array_unref);
}

static void parsed_free(gpointer p)
{
    parsed_repair *r = p;
    g_free(r->info.id);
    g_free(r->info.child);
    g_free(r->info.old_link);
    g_free(r->info.new_link);
    g_array_unref(r->ranges);
    g_array_unref(r->spans);
    if (r->text)
        g_bytes_unref(r->text);
    g_free(r->final_hash);
    g_free(r);
}

static int journal_hook(void *ctx, vh_file *f, uint64_t off, size_t len, const void *buf,
                        GError **err);

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

/* ---------- opening beneath the store ---------- */

/* The object at fd is of the wanted kind and ours (or root's), with no access for others. */
static int check_owned(int fd, bool dir, mode_t mode, const char *path, GError **err)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return vh_fail(err, errno, "%s: %s", path, g_strerror(errno));
    if (dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode))
        return vh_fail(err, EINVAL, "%s: not a %s: refusing to use it for the journal", path,
                       dir ? "folder" : "regular file");
    if (st.st_uid != geteuid() && st.st_uid != 0)
        return vh_fail(err, EPERM, "%s: owned by user %u, not by us: refusing to use it", path,
                       (unsigned)st.st_uid);
    /* a folder or journal made by an older version (0755, 0644): take others' access away */
    if ((st.st_mode & 07777) != mode && st.st_uid == geteuid() && fchmod(fd, mode) < 0)
        return vh_fail(err, errno, "%s: cannot restrict its mode to %04o: %s", path, mode,
                       g_strerror(errno));
    return 0;
}

static int open_fail(GError **err, int e, const char *path, const char *what)
{
    if (e == ELOOP)
        return vh_fail(err, ELOOP, "%s: is a symbolic link: refusing to use it for the %s", path,
                       what);
    return vh_fail(err, e, "%s: cannot open the %s: %s", path, what, g_strerror(e));
}

/* Opens STORE/.vhdheal (created 0700 when `create`), no link followed; -ENOENT when absent. */
static int open_dir(const char *store, bool create, char **dir_path, GError **err)
{
    *dir_path = g_build_filename(store, ".vhdheal", NULL);
    int sfd = open(store, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (sfd < 0)
        return vh_fail(err, errno, "%s: the store: %s", store, g_strerror(errno));
    if (create && mkdirat(sfd, ".vhdheal", 0700) < 0 && errno != EEXIST) {
        int e = errno;
        close(sfd);
        return vh_fail(err, e, "%s: cannot create the journal folder: %s", *dir_path,
                       g_strerror(e));
    }
    int dfd = openat(sfd, ".vhdheal", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int e = errno;
    close(sfd);
    if (dfd < 0 && e == ENOTDIR) {
        /* O_DIRECTORY|O_NOFOLLOW on a symbolic link says ENOTDIR: name it as a link */
        struct stat st;
        g_autofree char *p = g_strdup(*dir_path);
        if (lstat(p, &st) == 0 && S_ISLNK(st.st_mode))
            e = ELOOP;
    }
    if (dfd < 0)
        return e == ENOENT && !create ? -ENOENT : open_fail(err, e, *dir_path, "journal folder");
    int r = check_owned(dfd, true, 0700, *dir_path, err);
    if (r < 0) {
        close(dfd);
        return r;
    }
    return dfd;
}

static int journal_open(const char *store, bool create, vh_journal **out, GError **err)
{
    *out = NULL;
    g_autofree char *dir = NULL;
    int dfd = open_dir(store, create, &dir, err);
    if (dfd == -ENOENT && !create)
        return 0;
    if (dfd < 0)
        return dfd;
    g_autofree char *path = g_build_filename(dir, "journal", NULL);
    int flags = O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | (create ? O_CREAT : 0);
    int fd = openat(dfd, "journal", flags, 0600);
    if (fd < 0) {
        int e = errno;
        close(dfd);
        return e == ENOENT && !create ? 0 : open_fail(err, e, path, "journal");
    }
    int r = check_owned(fd, false, 0600, path, err);
    if (r < 0) {
        close(fd);
        close(dfd);
        return r;
    }
    vh_journal *j = g_new0(vh_journal, 1);
    j->store = g_strdup(store);
    j->path = g_steal_pointer(&path);
    j->dir_fd = dfd;
    j->file.fd = fd;
    j->file.path = g_strdup(j->path);
    j->file.writable = true;
    g_mutex_init(&j->lock);
    *out = j;
    return 0;
}

int vh_journal_open(const char *store, vh_journal **out, GError **err)
{
    return journal_open(store, true, out, err);
}

int vh_journal_open_existing(const char *store, vh_journal **out, GError **err)
{
    return journal_open(store, false, out, err);
}

void vh_journal_close(vh_journal *j)
{
    if (!j)
        return;
    vh_file_close(&j->file);
    close(j->dir_fd);
    g_mutex_clear(&j->lock);
    g_free(j->store);
    g_free(j->path);
    g_free(j);
}

/* ---------- appending ---------- */

static int compact(vh_journal *j, uint64_t size, GError **err);

/*
 * The size past which a journal is compacted (doc/journal.md "Compaction"). Tests only:
 * VHDHEAL_TEST_JOURNAL_COMPACT_AT sets a smaller one.
 */
static uint64_t compact_at(void)
{
    const char *e = g_getenv("VHDHEAL_TEST_JOURNAL_COMPACT_AT");
    return e ? CLAMP(g_ascii_strtoull(e, NULL, 10), 4096, COMPACT_AT) : COMPACT_AT;
}

/* Is the journal open as j->file still the one named STORE/.vhdheal/journal? Another process's
 * compaction replaces it (by rename): 1 when it was replaced (or removed), 0 if not, or -errno. */
static int journal_replaced(vh_journal *j)
{
    struct stat open_st, named;
    if (fstat(j->file.fd, &open_st) < 0)
        return -errno;
    if (fstatat(j->dir_fd, "journal", &named, AT_SYMLINK_NOFOLLOW) < 0)
        return errno == ENOENT ? 1 : -errno;
    return open_st.st_dev != named.st_dev || open_st.st_ino != named.st_ino;
}

/* Opens STORE/.vhdheal/journal again (created if it was removed), as journal_open does. */
static int journal_reopen(vh_journal *j, GError **err)
{
    int fd =
        openat(j->dir_fd, "journal", O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_CREAT, 0600);
    if (fd < 0)
        return open_fail(err, errno, j->path, "journal");
    int r = check_owned(fd, false, 0600, j->path, err);
    if (r < 0) {
        close(fd);
        return r;
    }
    close(j->file.fd); /* drops a lock held on the replaced file */
    j->file.fd = fd;
    return 0;
}

/* Makes j->file the journal the name holds now (see journal_replaced). */
static int journal_follow(vh_journal *j, GError **err)
{
    int r = journal_replaced(j);
    if (r < 0)
        return vh_fail(err, -r, "%s: %s", j->path, g_strerror(-r));
    return r ? journal_reopen(j, err) : 0;
}

/*
 * A compaction that failed (a read-only .vhdheal/, a full disk) leaves the journal as it was and
 * the repair goes on, but the journal keeps growing: a warning (the engine's, as
 * report_recovery's in reconnect.c), once per process and errno, not at every repair.
 */
static void warn_not_compacted(const vh_journal *j, int code, const GError *e)
{
    static guint warned[8]; /* one bit per errno, those past 255 sharing the last */
    guint bit = (guint)CLAMP(code, 0, 255);
    guint mask = 1u << (bit % 32);
    if (g_atomic_int_or(&warned[bit / 32], mask) & mask)
        return;
    g_warning("%s: not compacted, it keeps growing (errno %d, %s): %s", j->path, code,
              g_strerror(code), e ? e->message : "");
}

/*
 * Takes the journal's OFD write lock on the file its name holds now (a compaction by another
 * process may have replaced the one open), and sets *end to its size under the lock. The start
 * of a repair (`begin`) first compacts a journal grown past compact_at().
 */
static int lock_current(vh_journal *j, bool begin, uint64_t *end, GError **err)
{
    bool compacted = false;
    for (int tries = 0; tries < 100; tries++) {
        /* the whole journal, waiting as long as it takes (inuse.h: polled, never SETLKW) */
        int r = vh_lock_wait(j->file.fd, F_WRLCK, 0, 0, -1);
        if (r < 0)
            return vh_fail(err, -r, "%s: cannot lock the journal: %s", j->path, g_strerror(-r));
        struct stat st;
        r = journal_replaced(j);
        if (r == 0 && fstat(j->file.fd, &st) < 0)
            r = -errno;
        if (r < 0) {
            vh_lock_wait(j->file.fd, F_UNLCK, 0, 0, 0);
            return vh_fail(err, -r, "%s: %s", j->path, g_strerror(-r));
        }
        if (r == 1) { /* replaced while we waited: lock the new one */
            if ((r = journal_reopen(j, err)) < 0) {
                /* still holding the old file: its other users would wait for ever */
                vh_lock_wait(j->file.fd, F_UNLCK, 0, 0, 0);
                return r;
            }
            continue;
        }
        *end = (uint64_t)st.st_size;
        if (begin && !compacted && *end > compact_at()) {
            compacted = true;
            g_autoptr(GError) e = NULL;
            int c = compact(j, *end, &e);
            if (c > 0)
                continue;
            if (c < 0) /* the journal as it was: the repair goes on */
                warn_not_compacted(j, -c, e);
        }
        return 0;
    }
    return vh_fail(err, EAGAIN, "%s: replaced again and again: cannot lock it", j->path);
}

/*
 * Appends one record durably: under an OFD write lock on the journal (exclusive across
 * processes and hosts), at the end as found under that lock; a torn tail left by a crash is
 * first closed with TORN_MARK so that this record starts a line of its own. A record that could
 * not be written whole is cut off again, and the error returned.
 */
static int append_record(vh_journal *j, const char *payload, GError **err)
{
    size_t plen = strlen(payload);
    g_assert(!memchr(payload, '\n', plen)); /* fields are escaped or base64 */
    g_mutex_lock(&j->lock);
    uint64_t end = 0;
    int r = lock_current(j, g_str_has_prefix(payload, "BEGIN\t"), &end, err);
    if (r < 0)
        goto out;
    char last = '\n';
    if (end > 0 && pread(j->file.fd, &last, 1, (off_t)(end - 1)) != 1)
        last = 0;
    GString *rec = g_string_new(last == '\n' ? "" : TORN_MARK);
    g_string_append_printf(rec, REC_MAGIC "%08zx %08x\n", plen, vh_crc32c(payload, plen));
    g_string_append_len(rec, payload, (gssize)plen);
    g_string_append_c(rec, '\n');
    j->file.size = end;
    r = vh_file_write(&j->file, rec->str, rec->len, end, "a journal record", err);
    if (r == 0)
        r = vh_file_flush(&j->file, err);
    if (r < 0) {
        if (ftruncate(j->file.fd, (off_t)end) == 0) /* best effort: drop what was written */
            j->file.size = end;
        vh_fail_prefix(err, "journal: appending a record");
    }
    g_string_free(rec, TRUE);
    vh_lock_wait(j->file.fd, F_UNLCK, 0, 0, 0);
out:
    g_mutex_unlock(&j->lock);
    return r;
}

/* A repair's id: the time and 32 random bits from the kernel (GLib's generator is copied into
 * a forked child with its state: two children would draw the same ids). */
static char *new_repair_id(void)
{
    g_autoptr(GDateTime) now = g_date_time_new_now_utc();
    g_autofree char *stamp = g_date_time_format(now, "%Y%m%dT%H%M%S");
    guint32 bits;
    if (getrandom(&bits, sizeof bits, 0) != (ssize_t)sizeof bits)
        bits = g_random_int() ^ (guint32)getpid() ^ (guint32)g_get_monotonic_time();
    return g_strdup_printf("%s-%08x", stamp, bits);
}

static GBytes *chunk_sums(const uint8_t *buf, size_t len)
{
    size_t n = (len + CHUNK - 1) / CHUNK;
    uint8_t *out = g_malloc(n * SUM_LEN + 1);
    for (size_t k = 0; k < n; k++) {
        uint8_t full[32];
        gsize flen = sizeof full;
        g_autoptr(GChecksum) c = g_checksum_new(G_CHECKSUM_SHA256);
        g_checksum_update(c, buf + k * CHUNK, (gssize)MIN((size_t)CHUNK, len - k * CHUNK));
        g_checksum_get_digest(c, full, &flen);
        memcpy(out + k * SUM_LEN, full, SUM_LEN);
    }
    return g_bytes_new_take(out, n * SUM_LEN);
}

/*
 * Tests only: VHDHEAL_TEST_JOURNAL_DELAY_US stretches each journaled write of a repair (a pause
 * between its record and the write), so that a test can kill a daemon in the middle of its
 * repairs rather than between them. Unset, nothing waits.
 */
static void test_delay(void)
{
    static gint us = -1;
    if (g_atomic_int_get(&us) < 0) {
        const char *e = g_getenv("VHDHEAL_TEST_JOURNAL_DELAY_US");
        g_atomic_int_set(&us, e ? CLAMP(atoi(e), 0, 1000000) : 0);
    }
    if (g_atomic_int_get(&us) > 0)
        g_usleep((gulong)g_atomic_int_get(&us));
}

/*
 * The part of a write of len bytes over `keep` bytes of the file (orig) that changes them, in
 * whole CHUNKs counted from the write's start (a torn write is recognised chunk by chunk): a
 * write that extends the file changes up to its end. [*lo, *hi) is empty when nothing changes.
 * A repair rewrites whole structures (a VHD's 64 KiB locator space for a path of a few hundred
 * bytes): the bytes equal before and after need no saving, and a torn write leaves them equal.
 */
static void changed_chunks(const uint8_t *orig, size_t keep, const uint8_t *buf, size_t len,
                           size_t *lo, size_t *hi)
{
    size_t first = 0, last = len; /* the first changed byte; one past the last */
    while (first < keep && orig[first] == buf[first])
        first++;
    if (len <= keep)
        while (last > first && orig[last - 1] == buf[last - 1])
            last--;
    *lo = first / CHUNK * CHUNK;
    *hi = last > first ? MIN(len, (last + CHUNK - 1) / CHUNK * CHUNK) : *lo;
}

/* The journal hook: save what is about to be overwritten (or cut off by a truncate) and a hash
 * of what is about to be written, durably, before the write. */
static int journal_hook(void *ctx, vh_file *f, uint64_t off, size_t len, const void *buf,
                        GError **err)
{
    vh_repair *rp = ctx;
    uint64_t end = len ? off + len : f->size; /* a truncate to `off` loses [off, size) */
    end = MIN(end, f->size);
    size_t keep = end > off ? (size_t)(end - off) : 0; /* nothing to save past EOF */
    g_autofree uint8_t *orig = g_malloc(keep ? keep : 1);
    if (keep) {
        /* Read without the hook: vh_file_read never writes, so no recursion. */
        int r = vh_file_read(f, orig, keep, off, "journaled range", err);
        if (r < 0)
            return r;
    }
    if (len) {
        size_t lo, hi;
        changed_chunks(orig, keep, buf, len, &lo, &hi);
        if (lo == hi)
            return 0; /* writes the bytes the file holds: nothing to save or undo */
        keep = keep > lo ? MIN(keep, hi) - lo : 0;
        memmove(orig, orig + lo, keep);
        off += lo;
        buf = (const uint8_t *)buf + lo;
        len = hi - lo;
    }
    journal_range jr = {off, len, f->size, g_bytes_new(orig, keep),
                        len ? chunk_sums(buf, len) : g_bytes_new(NULL, 0)};
    g_autofree char *b64 = g_base64_encode(orig, keep);
    gsize slen;
    const uint8_t *s = g_bytes_get_data(jr.sums, &slen);
    g_autofree char *sums = g_base64_encode(s, slen);
    g_autofree char *line =
        g_strdup_printf("RANGE\t%s\t%" G_GUINT64_FORMAT "\t%" G_GUINT64_FORMAT
                        "\t%" G_GUINT64_FORMAT "\t%s\t%s\t%u",
                        rp->id, off, (uint64_t)len, f->size, b64, sums, rp->ranges->len);
    int r = append_record(rp->j, line, err);
    if (r < 0) {
        range_clear(&jr);
        return r;
    }
    g_array_append_val(rp->ranges, jr);
    test_delay();
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
    r->ranges = ranges_new();
    g_autofree char *e_child = g_strescape(rel, NULL);
    g_autofree char *e_old = g_strescape(old_link ? old_link : "", NULL);
    g_autofree char *e_new = g_strescape(new_link ? new_link : "", NULL);
    g_autofree char *line = g_strdup_printf(
        "BEGIN\t%s\t%" G_GINT64_FORMAT "\t%s\t%" G_GUINT64_FORMAT "\t%s\t%s", r->id,
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

static int restore_ranges(vh_file *f, GArray *ranges, uint64_t original_size, GError **err);

int vh_journal_commit(vh_repair *r, GError **err)
{
    r->child->hook = NULL;
    g_autofree char *hash = NULL;
    int rc = hash_ranges(r->child, r->ranges, &hash, err);
    if (rc == 0) {
        g_autofree char *line = g_strdup_printf("COMMIT\t%s\t%" G_GUINT64_FORMAT "\t%s\t%u", r->id,
                                                r->child->size, hash, r->ranges->len);
        rc = append_record(r->j, line, err);
    }
    if (rc < 0) {
        /* not committed: a later recovery would roll it back; do it now, so that the caller's
         * error is the whole truth */
        if (restore_ranges(r->child, r->ranges, r->original_size, NULL) == 0) {
            g_autofree char *line = g_strdup_printf("ROLLBACK\t%s", r->id);
            append_record(r->j, line, NULL); /* if this fails too, recovery finds it untouched */
            vh_fail_prefix(err, "not repaired, the child is as it was");
        }
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
        g_autofree char *line = g_strdup_printf("ROLLBACK\t%s", r->id);
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

static bool parse_range(char **f, guint n, journal_range *jr)
{
    memset(jr, 0, sizeof *jr);
    jr->size_before = SIZE_UNKNOWN;
    if (!parse_u64(f[2], &jr->off) || !parse_u64(f[3], &jr->wlen))
        return false;
    if (jr->wlen > MAX_JOURNAL || jr->off > (UINT64_C(1) << 62))
        return false; /* no repair writes that much or that far: a damaged record */
    if (n >= 7 && !parse_u64(f[4], &jr->size_before))
        return false;
    gsize len = 0;
    guchar *data = g_base64_decode(f[n >= 7 ? 5 : 4], &len);
    jr->original = g_bytes_new_take(data, len);
    if (n >= 7) {
        data = g_base64_decode(f[6], &len);
        jr->sums = g_bytes_new_take(data, len);
        size_t want = (size_t)((jr->wlen + CHUNK - 1) / CHUNK) * SUM_LEN;
        if (len != want || g_bytes_get_size(jr->original) > MAX(jr->wlen, jr->size_before)) {
            range_clear(jr);
            return false;
        }
    }
    return true;
}

/* Applies one record to the parsed set; malformed ones are ignored. */
static void parse_fields(GPtrArray *all, char **f, guint n, bool legacy)
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
        p->ranges = ranges_new();
        p->spans = g_array_new(FALSE, FALSE, sizeof(text_span));
        p->legacy = legacy;
        g_ptr_array_add(all, p);
        return;
    }
    parsed_repair *p = n >= 2 ? find_parsed(all, f[1]) : NULL;
    if (!p)
        return;
    if (n >= 4 && strcmp(f[0], "COMMIT") == 0) { /* RANGE records: note_range */
        parse_u64(f[2], &p->final_size);
        g_free(p->final_hash);
        p->final_hash = g_strdup(f[3]);
        p->info.state = VH_REPAIR_COMMITTED;
        uint64_t count;
        /* the number of its RANGE records: one missing before the COMMIT is caught here */
        if (n >= 5 &&
            (!parse_u64(f[4], &count) || count != p->nranges || (count > 0 && !p->numbered)))
            p->damaged = true;
    } else if (strcmp(f[0], "ROLLBACK") == 0) {
        p->info.state = VH_REPAIR_ROLLED_BACK;
    } else if (strcmp(f[0], "UNDOING") == 0) {
        p->undoing = true;
    } else if (strcmp(f[0], "UNDO") == 0) {
        p->info.state = VH_REPAIR_UNDONE;
    }
}

/*
 * RANGE records carry their number in the repair (0, 1, 2, ...; the last field of 8): a gap
 * means a record of it is missing (damaged, skipped), and such a repair is never restored in
 * part. Records without the number (journals before it) are read as before.
 */
static void check_sequence(parsed_repair *p, const char *s, size_t len)
{
    guint tabs = 0;
    const char *last = s;
    for (size_t k = 0; k < len; k++)
        if (s[k] == '\t') {
            tabs++;
            last = s + k + 1;
        }
    uint64_t seq = UINT64_MAX;
    if (tabs == 7) {
        g_autofree char *field = g_strndup(last, (gsize)(len - (size_t)(last - s)));
        if (!parse_u64(field, &seq) || seq != p->nranges)
            p->damaged = true;
        p->numbered = true;
    } else {
        p->unnumbered = true;
    }
    if (p->numbered && p->unnumbered)
        p->damaged = true;
    p->nranges++;
}

/* A RANGE record is only noted (where it is in the text): decoding every range of a long
 * journal for each recovery would cost more than the repair. */
static bool note_range(GPtrArray *all, GBytes *text, const char *s, size_t len, bool legacy)
{
    if (len < 6 || memcmp(s, "RANGE\t", 6) != 0)
        return false;
    const char *id = s + 6, *tab = memchr(id, '\t', len - 6);
    if (!tab)
        return true;
    g_autofree char *ids = g_strndup(id, (gsize)(tab - id));
    parsed_repair *p = find_parsed(all, ids);
    if (p && !legacy)
        check_sequence(p, s, len);
    if (p) {
        const char *base = g_bytes_get_data(text, NULL);
        text_span sp = {(size_t)(s - base), len, legacy};
        g_array_append_val(p->spans, sp);
        if (!p->text)
            p->text = g_bytes_ref(text);
    }
    return true;
}

/* Decodes the RANGE records of p (once). */
static void load_ranges(parsed_repair *p)
{
    if (!p->text)
        return;
    const char *base = g_bytes_get_data(p->text, NULL);
    for (guint k = 0; k < p->spans->len; k++) {
        text_span *sp = &g_array_index(p->spans, text_span, k);
        g_autofree char *line = g_strndup(base + sp->off, sp->len);
        g_auto(GStrv) f = g_strsplit(line, "\t", -1);
        guint n = g_strv_length(f);
        journal_range jr;
        if ((sp->legacy ? n == 5 : n == 7 || n == 8) && parse_range(f, n, &jr))
            g_array_append_val(p->ranges, jr);
        else if (!sp->legacy)
            p->damaged = true; /* its CRC held, yet it does not parse: never restored in part */
    }
    g_array_set_size(p->spans, 0);
    g_clear_pointer(&p->text, g_bytes_unref);
}

static void parse_payload(GPtrArray *all, GBytes *text, const char *s, size_t len, bool legacy)
{
    if (note_range(all, text, s, len, legacy))
        return;
    g_autofree char *line = g_strndup(s, len);
    g_auto(GStrv) f = g_strsplit(line, "\t", -1);
    parse_fields(all, f, g_strv_length(f), legacy);
}

static bool hex_field(const char *s, uint32_t *out)
{
    uint32_t v = 0;
    for (int k = 0; k < 8; k++) {
        if (!g_ascii_isxdigit(s[k]))
            return false;
        v = v << 4 | (uint32_t)g_ascii_xdigit_value(s[k]);
    }
    *out = v;
    return true;
}

/* The length of the whole record at p ("@VHJ2 ...\n"), or 0 when it is torn or damaged. */
static size_t record_at(const char *p, size_t avail, const char **payload, size_t *plen)
{
    uint32_t len, crc;
    if (avail < REC_HEADER_LEN || !hex_field(p + 6, &len) || p[14] != ' ' ||
        !hex_field(p + 15, &crc) || p[23] != '\n')
        return 0;
    if ((size_t)len + REC_HEADER_LEN + 1 > avail || p[REC_HEADER_LEN + len] != '\n')
        return 0;
    if (vh_crc32c(p + REC_HEADER_LEN, len) != crc)
        return 0;
    *payload = p + REC_HEADER_LEN;
    *plen = len;
    return REC_HEADER_LEN + (size_t)len + 1;
}

/* A line of the old text format: printable ASCII and tabs only (a torn line closed by
 * TORN_MARK holds a control character and is dropped). */
static bool legacy_line_ok(const char *s, size_t len)
{
    for (size_t k = 0; k < len; k++)
        if (s[k] != '\t' && (s[k] < 0x20 || s[k] > 0x7e))
            return false;
    return true;
}

/*
 * Marks every repair still unfinished where a damaged region lies: one of its records may be in
 * there. A repair committed, rolled back or undone before the region had all its records before
 * it (a COMMIT also counts its ranges: check_sequence), so it stays whole.
 */
static void mark_damaged(GPtrArray *all)
{
    for (guint i = 0; i < all->len; i++) {
        parsed_repair *p = all->pdata[i];
        if (p->info.state == VH_REPAIR_OPEN)
            p->damaged = true;
    }
}

/*
 * Is the unreadable record at p (avail bytes to the end of the journal, `next` the start of
 * the next record or NULL) a torn tail, the record a crash cut short, whose guarded write was
 * never made? Only when it ends the file short of its length, or is closed by TORN_MARK (the
 * next appender found no newline at the end). Anything else is damage.
 */
static bool torn_tail(const char *p, size_t avail, const char *next)
{
    /* cut right after its header line: it ends in a newline, so no mark was added (no payload
     * starts with the magic, so a damaged record never looks like this) */
    if (next == p + REC_HEADER_LEN - 1)
        return true;
    if (next)
        return next[-1] == TORN_MARK[0];
    uint32_t len;
    if (avail < REC_HEADER_LEN || !hex_field(p + 6, &len))
        return true;
    /* all of it is there, closed by its newline, yet it fails its checks: damaged */
    return (size_t)len + REC_HEADER_LEN + 1 > avail || p[REC_HEADER_LEN + len] != '\n';
}

/* What the walk over a journal's text finds, in order (doc/journal.md "Reading"). */
typedef enum {
    ITEM_RECORD,  /* a whole record: its payload */
    ITEM_LEGACY,  /* a line of the old text format, before the first record */
    ITEM_IGNORED, /* another line before the first record: read as nothing */
    ITEM_TORN,    /* an unreadable region a crash left: its write was never made */
    ITEM_DAMAGE,  /* an unreadable region that may have been a record: see mark_damaged */
} item_kind;

typedef struct {
    item_kind kind;
    const char *start; /* the item's bytes in the text, from its first byte */
    size_t len;        /* ... to the first byte of the next item */
    const char *payload;
    size_t plen; /* ITEM_RECORD, ITEM_LEGACY: the payload, without its newline */
} text_item;

typedef void (*item_fn)(void *ctx, const text_item *it);

/* Walks the journal's text item by item; every byte belongs to exactly one item. */
static void walk_text(const char *text, size_t len, item_fn fn, void *ctx)
{
    size_t pos = 0;
    bool records = false; /* a record of this format was read: no legacy line follows */
    while (pos < len) {
        const char *p = text + pos;
        size_t avail = len - pos;
        text_item it = {.start = p};
        if (avail >= 6 && memcmp(p, REC_MAGIC, 6) == 0) {
            size_t n = record_at(p, avail, &it.payload, &it.plen);
            if (n) {
                it.kind = ITEM_RECORD;
                it.len = n;
                records = true;
            } else {
                /* torn or damaged: skip to the next record start */
                const char *next = g_strstr_len(p + 1, (gssize)(avail - 1), "\n" REC_MAGIC);
                it.kind = torn_tail(p, avail, next) ? ITEM_TORN : ITEM_DAMAGE;
                it.len = next ? (size_t)(next - p) + 1 : avail;
            }
        } else {
            const char *nl = memchr(p, '\n', avail);
            it.len = nl ? (size_t)(nl - p) + 1 : avail;
            if (records) {
                /* after the first record only records follow: this is one whose magic is
                 * damaged, or the few bytes of one torn before its magic was whole */
                bool torn = nl ? nl > p && nl[-1] == TORN_MARK[0] : avail < 6;
                it.kind = torn ? ITEM_TORN : ITEM_DAMAGE;
            } else if (nl && legacy_line_ok(p, (size_t)(nl - p))) {
                it.kind = ITEM_LEGACY;
                it.payload = p;
                it.plen = (size_t)(nl - p);
            } else {
                it.kind = ITEM_IGNORED; /* a line without its newline never finished */
            }
        }
        fn(ctx, &it);
        pos += it.len;
    }
}

typedef struct {
    GPtrArray *all;
    GBytes *bytes;
} parse_ctx;

static void parse_item(void *ctx, const text_item *it)
{
    parse_ctx *pc = ctx;
    if (it->kind == ITEM_RECORD || it->kind == ITEM_LEGACY)
        parse_payload(pc->all, pc->bytes, it->payload, it->plen, it->kind == ITEM_LEGACY);
    else if (it->kind == ITEM_DAMAGE)
        mark_damaged(pc->all);
}

static void parse_text(GPtrArray *all, GBytes *bytes)
{
    gsize len;
    const char *text = g_bytes_get_data(bytes, &len);
    parse_ctx pc = {all, bytes};
    walk_text(text, len, parse_item, &pc);
}

/* Reads the text of the journal open as fd (its size under a lock the caller may hold). */
static int read_text(vh_journal *j, GBytes **out, GError **err)
{
    *out = NULL;
    struct stat st;
    if (fstat(j->file.fd, &st) < 0)
        return vh_fail(err, errno, "%s: %s", j->path, g_strerror(errno));
    if ((uint64_t)st.st_size > MAX_JOURNAL)
        return vh_fail(err, EFBIG, "%s: larger than %u bytes: not read", j->path, MAX_JOURNAL);
    size_t len = (size_t)st.st_size;
    g_autofree char *text = g_malloc(len + 1);
    size_t got = 0;
    while (got < len) {
        ssize_t n = pread(j->file.fd, text + got, len - got, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return vh_fail(err, errno, "%s: reading: %s", j->path, g_strerror(errno));
        if (n == 0)
            break; /* cut by another process meanwhile: what was read is parsed */
        got += (size_t)n;
    }
    text[got] = '\0';
    *out = g_bytes_new_take(g_steal_pointer(&text), got);
    return 0;
}

static int read_journal(vh_journal *j, GPtrArray **out, GError **err)
{
    *out = NULL;
    g_autoptr(GBytes) bytes = NULL;
    g_mutex_lock(&j->lock);
    int r = journal_follow(j, err); /* compacted by another process: read the new one */
    if (r == 0)
        r = read_text(j, &bytes, err);
    g_mutex_unlock(&j->lock);
    if (r < 0)
        return r;
    GPtrArray *all = g_ptr_array_new_with_free_func(parsed_free);
    parse_text(all, bytes);
    *out = all;
    return 0;
}

/* ---------- compaction ---------- */

/* The id of a record (its second field), or NULL. */
static char *record_id(const text_item *it)
{
    const char *tab = memchr(it->payload, '\t', it->plen);
    if (!tab)
        return NULL;
    const char *id = tab + 1, *stop = it->payload + it->plen;
    const char *end = memchr(id, '\t', (size_t)(stop - id));
    return g_strndup(id, (gsize)((end ? end : stop) - id));
}

typedef struct {
    GHashTable *bytes; /* id -> the bytes of its records (guint64 *) */
    GHashTable *drop;  /* ids whose records are left out */
    GString *out;
    bool marked;     /* the COMPACTED record is written */
    bool unreadable; /* the last item written is a torn or damaged region */
    uint64_t dropped_repairs, size_before;
} compact_ctx;

static void count_item(void *ctx, const text_item *it)
{
    compact_ctx *cc = ctx;
    g_autofree char *id = it->kind == ITEM_RECORD ? record_id(it) : NULL;
    if (!id)
        return;
    guint64 *n = g_hash_table_lookup(cc->bytes, id);
    if (!n) {
        n = g_new0(guint64, 1);
        g_hash_table_insert(cc->bytes, g_steal_pointer(&id), n);
    }
    *n += it->len;
}

static void append_framed(GString *out, const char *payload)
{
    size_t plen = strlen(payload);
    g_string_append_printf(out, REC_MAGIC "%08zx %08x\n%s\n", plen, vh_crc32c(payload, plen),
                           payload);
}

/* Is the item a record of this kind (its first field)? */
static bool is_kind(const text_item *it, const char *kind)
{
    size_t n = strlen(kind);
    return it->kind == ITEM_RECORD && it->plen > n && memcmp(it->payload, kind, n) == 0 &&
           it->payload[n] == '\t';
}

/*
 * Copies an item into the compacted journal unless it is a record of a dropped repair. Lines of
 * the old format (before the first record) stay first; the COMPACTED record comes before the
 * first record or unreadable region, so that what follows is read as it was before.
 */
static void keep_item(void *ctx, const text_item *it)
{
    compact_ctx *cc = ctx;
    if (it->kind != ITEM_LEGACY && it->kind != ITEM_IGNORED && !cc->marked) {
        g_autofree char *mark = g_strdup_printf(
            COMPACTED "\t%" G_GINT64_FORMAT "\t%" G_GUINT64_FORMAT "\t%" G_GUINT64_FORMAT,
            g_get_real_time() / G_USEC_PER_SEC, cc->dropped_repairs, cc->size_before);
        append_framed(cc->out, mark);
        cc->marked = true;
    }
    g_autofree char *id = it->kind == ITEM_RECORD ? record_id(it) : NULL;
    /* an earlier compaction's records are dropped too: this one's say it all */
    if ((id && g_hash_table_contains(cc->drop, id)) || is_kind(it, COMPACTED) || is_kind(it, GAP)) {
        /* A torn or damaged region is read by what follows it (a record, a line, the end of
         * the file: torn_tail): the record it was followed by is replaced by a GAP record, so
         * that it neither ends the file nor runs into a line further on. */
        if (cc->unreadable) {
            g_autofree char *gap =
                g_strdup_printf(GAP "\t%" G_GINT64_FORMAT, g_get_real_time() / G_USEC_PER_SEC);
            append_framed(cc->out, gap);
        }
        cc->unreadable = false;
        return;
    }
    g_string_append_len(cc->out, it->start, (gssize)it->len);
    cc->unreadable = it->kind == ITEM_TORN || it->kind == ITEM_DAMAGE;
}

/* A repair whose records nothing needs but undo: committed, rolled back or undone, no undo of
 * it under way, not of the old format. */
static bool finished(const parsed_repair *p)
{
    bool undo_under_way = p->undoing && p->info.state == VH_REPAIR_COMMITTED;
    return p->info.state != VH_REPAIR_OPEN && !undo_under_way && !p->legacy;
}

/* Chooses the oldest finished repairs to drop until the rest takes at most `keep` bytes: first
 * those rolled back or undone (history only), then committed ones (whose undo is lost). A
 * repeated id (never made, but the journal is read as untrusted) is kept: its records mix. */
static void choose_drops(GPtrArray *all, compact_ctx *cc, uint64_t size, uint64_t keep)
{
    g_autoptr(GHashTable) seen = g_hash_table_new(g_str_hash, g_str_equal);
    g_autoptr(GHashTable) repeated = g_hash_table_new(g_str_hash, g_str_equal);
    for (guint i = 0; i < all->len; i++) {
        parsed_repair *p = all->pdata[i];
        if (!g_hash_table_add(seen, p->info.id))
            g_hash_table_add(repeated, p->info.id);
    }
    uint64_t left = size;
    for (int committed = 0; committed < 2; committed++)
        for (guint i = 0; i < all->len && left > keep; i++) {
            parsed_repair *p = all->pdata[i];
            guint64 *n = g_hash_table_lookup(cc->bytes, p->info.id);
            if (!finished(p) || !n || g_hash_table_contains(repeated, p->info.id) ||
                (p->info.state == VH_REPAIR_COMMITTED) != (committed == 1))
                continue;
            g_hash_table_add(cc->drop, g_strdup(p->info.id));
            left -= MIN(left, *n);
            cc->dropped_repairs++;
        }
}

/* Writes text as STORE/.vhdheal/journal.new, durably, and renames it over the journal. */
static int replace_journal(vh_journal *j, const GString *text, GError **err)
{
    unlinkat(j->dir_fd, "journal.new", 0); /* left by a compaction that crashed */
    int fd = openat(j->dir_fd, "journal.new",
                    O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
    if (fd < 0)
        return vh_fail(err, errno, "%s.new: %s", j->path, g_strerror(errno));
    struct stat st;
    int r = 0;
    if (fstat(j->file.fd, &st) == 0 && fchown(fd, st.st_uid, st.st_gid) < 0 && errno != EPERM)
        r = -errno;
    if (r == 0 && fchmod(fd, 0600) < 0) /* 0600 whatever the umask, as journal_open makes it */
        r = -errno;
    if (r == 0)
        r = vh_write_full(fd, text->str, text->len, 0, NULL);
    if (r == 0 && fdatasync(fd) < 0)
        r = -errno;
    if (r == 0 && renameat(j->dir_fd, "journal.new", j->dir_fd, "journal") < 0)
        r = -errno;
    if (r < 0) {
        close(fd);
        unlinkat(j->dir_fd, "journal.new", 0);
        return vh_fail(err, -r, "%s: compacting: %s", j->path, g_strerror(-r));
    }
    fsync(j->dir_fd);  /* the rename durable: either name holds a whole journal */
    close(j->file.fd); /* drops our lock on the old one: its waiters find it replaced */
    j->file.fd = fd;
    return 0;
}

/*
 * Compacts the journal (size bytes, locked by the caller), doc/journal.md "Compaction": the
 * oldest finished repairs are left out until the rest takes at most half of compact_at();
 * unfinished repairs, undos under way, old-format lines and unreadable regions stay, in their
 * order. Returns 1 when the journal was replaced (j->file is the new one, not locked), 0 when
 * nothing could be dropped, or -errno (the journal is as it was).
 */
static int compact(vh_journal *j, uint64_t size, GError **err)
{
    g_autoptr(GBytes) bytes = NULL;
    int r = read_text(j, &bytes, err);
    if (r < 0)
        return r;
    gsize len;
    const char *text = g_bytes_get_data(bytes, &len);
    g_autoptr(GPtrArray) all = g_ptr_array_new_with_free_func(parsed_free);
    parse_text(all, bytes);
    compact_ctx cc = {.bytes = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free),
                      .drop = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL),
                      .out = g_string_sized_new(compact_at() / 2 + 4096),
                      .size_before = size};
    walk_text(text, len, count_item, &cc);
    choose_drops(all, &cc, len, compact_at() / 2);
    r = 0;
    if (cc.dropped_repairs > 0) {
        walk_text(text, len, keep_item, &cc);
        r = replace_journal(j, cc.out, err);
        r = r < 0 ? r : 1;
    }
    g_hash_table_destroy(cc.bytes);
    g_hash_table_destroy(cc.drop);
    g_string_free(cc.out, TRUE);
    return r;
}

/* ---------- recovery ---------- */

/* Opens the child beneath the store for writing: no "..", no symlink on the way, a regular
 * file, never blocking (a record names a path; the path may have been made a trap since). */
static int open_child(vh_journal *j, const char *rel, vh_file *f, GError **err)
{
    memset(f, 0, sizeof *f);
    f->fd = -1;
    g_autofree char *path = g_build_filename(j->store, rel, NULL);
    vh_autofd int root = open(j->store, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (root < 0)
        return vh_fail(err, errno, "%s: %s", j->store, g_strerror(errno));
    return vh_file_open_beneath(f, root, rel, path, true, err);
}

/* The child as the caller's rollback will see it: what a simulated rollback has put back
 * (segments, later ones win) over the file's bytes. */
typedef struct {
    uint64_t off;
    GBytes *b;
} seg;

typedef struct {
    vh_file *f;
    GArray *segs;
    uint64_t size; /* the simulated size */
} vview;

static int view_read(vview *v, uint8_t *buf, uint64_t off, size_t len, GError **err)
{
    memset(buf, 0, len);
    if (off < v->f->size) {
        size_t n = (size_t)MIN((uint64_t)len, v->f->size - off);
        int r = vh_file_read(v->f, buf, n, off, "journaled range", err);
        if (r < 0)
            return r;
    }
    for (guint k = 0; k < v->segs->len; k++) {
        seg *s = &g_array_index(v->segs, seg, k);
        gsize sn;
        const uint8_t *sp = g_bytes_get_data(s->b, &sn);
        uint64_t a = MAX(off, s->off), e = MIN(off + len, s->off + sn);
        if (a < e)
            memcpy(buf + (a - off), sp + (a - s->off), (size_t)(e - a));
    }
    return 0;
}

typedef enum { FOUND_CHANGED, FOUND_UNTOUCHED, FOUND_REPAIRS } found;

/* Does the simulated file hold `b` at off? */
static bool view_holds(vview *v, uint64_t off, GBytes *b, GError **err)
{
    gsize n;
    const uint8_t *p = g_bytes_get_data(b, &n);
    if (off + n > v->size)
        return false;
    g_autofree uint8_t *buf = g_malloc(n + 1);
    return view_read(v, buf, off, n, err) == 0 && memcmp(buf, p, n) == 0;
}

/* One chunk of a write: the repair's new bytes (1), what it found (0), or neither (-1). */
static int chunk_state(vview *v, const journal_range *jr, uint64_t k, GError **err)
{
    uint64_t c0 = jr->off + k * CHUNK, c1 = MIN(c0 + CHUNK, jr->off + jr->wlen);
    size_t clen = (size_t)(c1 - c0);
    uint64_t now_end = MIN(c1, MAX(c0, v->size)); /* the chunk's part inside the file now */
    uint8_t buf[CHUNK];
    if (now_end > c0 && view_read(v, buf, c0, (size_t)(now_end - c0), err) < 0)
        return -2;
    /* what it found: the original bytes inside the old size, nothing past it */
    uint64_t old_end = MIN(c1, MAX(c0, jr->size_before));
    gsize on;
    const uint8_t *orig = g_bytes_get_data(jr->original, &on);
    uint64_t o = c0 - jr->off;
    if (now_end == old_end && o + (now_end - c0) <= on &&
        memcmp(buf, orig + o, (size_t)(now_end - c0)) == 0)
        return 0;
    if (now_end != c1)
        return -1;
    uint8_t full[32];
    gsize flen = sizeof full;
    g_autoptr(GChecksum) c = g_checksum_new(G_CHECKSUM_SHA256);
    g_checksum_update(c, buf, (gssize)clen);
    g_checksum_get_digest(c, full, &flen);
    const uint8_t *sums = g_bytes_get_data(jr->sums, NULL);
    return memcmp(full, sums + k * SUM_LEN, SUM_LEN) == 0 ? 1 : -1;
}

/* Checks one range against the simulated file and simulates its rollback. */
static int check_range(vview *v, const journal_range *jr, bool *applied, GError **err)
{
    if (jr->wlen == 0) { /* a truncate to off */
        if (v->size == jr->off && jr->off != jr->size_before)
            *applied = true;
        else if (v->size != jr->size_before || !view_holds(v, jr->off, jr->original, err))
            return err && *err ? -1 : 0;
    } else {
        uint64_t after = MAX(jr->size_before, jr->off + jr->wlen);
        if (v->size < jr->size_before || v->size > after)
            return 0;
        for (uint64_t k = 0; k * CHUNK < jr->wlen; k++) {
            int c = chunk_state(v, jr, k, err);
            if (c == -2)
                return -1;
            if (c < 0)
                return 0;
            *applied |= c == 1;
        }
    }
    if (g_bytes_get_size(jr->original) > 0) {
        seg s = {jr->off, g_bytes_ref(jr->original)};
        g_array_append_val(v->segs, s);
    }
    v->size = jr->size_before;
    return 1;
}

static void seg_clear(gpointer p)
{
    g_bytes_unref(((seg *)p)->b);
}

/*
 * Does the child hold, in every journaled range and in its size, what the repair found or what
 * it wrote (a crash at any write, torn in CHUNKs or not)? Simulates the rollback newest range
 * first: each range must hold its new bytes or its original ones.
 */
static int compare_child(vh_file *f, parsed_repair *p, found *out, char **why, GError **err)
{
    load_ranges(p);
    if (p->legacy) { /* no hashes of the new bytes: only "untouched" can be recognised */
        for (guint i = 0; i < p->ranges->len; i++) {
            journal_range *jr = &g_array_index(p->ranges, journal_range, i);
            gsize n;
            const uint8_t *o = g_bytes_get_data(jr->original, &n);
            g_autofree uint8_t *buf = g_malloc(n + 1);
            if (jr->off + n > f->size ||
                vh_file_read(f, buf, n, jr->off, "journaled range", NULL) < 0 ||
                memcmp(buf, o, n) != 0) {
                *out = FOUND_CHANGED;
                *why = g_strdup("a legacy record whose ranges no longer hold what it found");
                return 0;
            }
        }
        *out = f->size == p->original_size ? FOUND_UNTOUCHED : FOUND_CHANGED;
        if (*out == FOUND_CHANGED)
            *why = g_strdup("a legacy record, and the size differs");
        return 0;
    }
    vview v = {f, g_array_new(FALSE, TRUE, sizeof(seg)), f->size};
    g_array_set_clear_func(v.segs, seg_clear);
    bool applied = false;
    int r = 1;
    for (guint i = p->ranges->len; r == 1 && i-- > 0;)
        r = check_range(&v, &g_array_index(p->ranges, journal_range, i), &applied, err);
    if (r == 1 && v.size != p->original_size)
        r = 0;
    g_array_unref(v.segs);
    if (r < 0)
        return r;
    *out = r == 0 ? FOUND_CHANGED : applied ? FOUND_REPAIRS : FOUND_UNTOUCHED;
    if (r == 0)
        *why = g_strdup_printf("its bytes or its size (%" G_GUINT64_FORMAT
                               ") are neither what the repair found nor what it wrote",
                               f->size);
    return 0;
}

static void note(vh_recover_stats *st, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static void note(vh_recover_stats *st, const char *fmt, ...)
{
    if (!st)
        return;
    if (!st->notes)
        st->notes = g_ptr_array_new_with_free_func(g_free);
    va_list ap;
    va_start(ap, fmt);
    g_ptr_array_add(st->notes, g_strdup_vprintf(fmt, ap));
    va_end(ap);
}

/* Resolves one unfinished record; the caller holds the child's lock. */
static int resolve_one(vh_journal *j, vh_file *f, parsed_repair *p, vh_recover_stats *st,
                       GError **err)
{
    load_ranges(p);
    if (p->damaged) {
        /* a record of it may be missing: restoring the ranges that remain would leave the
         * child neither as it was nor as repaired */
        st->left++;
        note(st, "journal record damaged: unfinished repair %s of %s left alone", p->info.id,
             p->info.child);
        return 0;
    }
    found how;
    g_autofree char *why = NULL;
    int r = compare_child(f, p, &how, &why, err);
    if (r < 0)
        return r;
    if (how == FOUND_CHANGED) {
        st->left++;
        note(st, "unfinished repair %s of %s left alone: the child changed since: %s", p->info.id,
             p->info.child, why);
        return 0;
    }
    if (how == FOUND_REPAIRS && (r = restore_ranges(f, p->ranges, p->original_size, err)) < 0)
        return r;
    g_autofree char *line = g_strdup_printf("ROLLBACK\t%s", p->info.id);
    if ((r = append_record(j, line, err)) < 0)
        return r;
    if (how == FOUND_REPAIRS)
        st->rolled_back++;
    else
        st->resolved++;
    return 0;
}

static int refresh_size(vh_file *f, GError **err)
{
    struct stat st;
    if (fstat(f->fd, &st) < 0)
        return vh_fail(err, errno, "%s: %s", f->path, g_strerror(errno));
    f->size = (uint64_t)st.st_size;
    return 0;
}

int vh_journal_recover_locked(vh_journal *j, vh_file *child, const char *child_rel,
                              vh_recover_stats *st, GError **err)
{
    vh_recover_stats local = {0};
    if (!st)
        st = &local;
    int before = st->rolled_back;
    g_autoptr(GPtrArray) all = NULL;
    int r = read_journal(j, &all, err); /* re-read under the lock: resolved records stay so */
    for (guint i = all ? all->len : 0; r == 0 && i-- > 0;) {
        parsed_repair *p = all->pdata[i];
        if (p->info.state != VH_REPAIR_OPEN || strcmp(p->info.child, child_rel) != 0)
            continue;
        if ((r = refresh_size(child, err)) == 0)
            r = resolve_one(j, child, p, st, err);
    }
    vh_recover_stats_clear(&local);
    return r < 0 ? r : st->rolled_back - before;
}

int vh_journal_recover(vh_journal *j, const char *child_rel, vh_recover_stats *st, GError **err)
{
    vh_recover_stats local = {0};
    if (!st)
        st = &local;
    int before = st->rolled_back;
    g_autoptr(GPtrArray) all = NULL;
    int r = read_journal(j, &all, err);
    g_autoptr(GHashTable) done = g_hash_table_new(g_str_hash, g_str_equal);
    for (guint i = all ? all->len : 0; r == 0 && i-- > 0;) {
        parsed_repair *p = all->pdata[i];
        if (p->info.state != VH_REPAIR_OPEN || (child_rel && strcmp(child_rel, p->info.child)) ||
            !g_hash_table_add(done, p->info.child))
            continue;
        vh_file f;
        g_autoptr(GError) e = NULL;
        if (open_child(j, p->info.child, &f, &e) < 0) {
            st->left++;
            note(st, "unfinished repair %s of %s left alone: %s", p->info.id, p->info.child,
                 e->message);
            continue;
        }
        int l = vh_lock_data(f.fd, F_WRLCK, 0); /* inuse.h */
        if (l == -EAGAIN)
            st->busy++; /* a live repair: its owner finishes it */
        else if (l < 0)
            r = vh_fail(err, -l, "%s: cannot lock: %s", f.path, g_strerror(-l));
        else
            r = vh_journal_recover_locked(j, &f, p->info.child, st, err);
        vh_file_close(&f); /* drops the lock */
    }
    vh_recover_stats_clear(&local);
    return r < 0 ? r : st->rolled_back - before;
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
        info->damaged = p->damaged;
        g_ptr_array_add(list, info);
    }
    *out = list;
    return 0;
}

/* Reads the journal into *all and finds the repair id in it (*p points into *all). */
static int read_repair(vh_journal *j, const char *id, GPtrArray **all, parsed_repair **p,
                       GError **err)
{
    int r = read_journal(j, all, err);
    if (r < 0)
        return r;
    *p = find_parsed(*all, id);
    if (!*p)
        return vh_fail(err, ENOENT, "%s: no repair with id %s", j->path, id);
    return 0;
}

/*
 * After UNDOING: is the repair still in the journal, its undo under way? A compaction by another
 * process between our read and our UNDOING may have dropped it (it was finished then); its undo
 * would then not be completed after a crash, so it is not begun (doc/journal.md "Compaction").
 */
static int undo_still_journaled(vh_journal *j, const char *id, GError **err)
{
    g_autoptr(GPtrArray) all = NULL;
    int r = read_journal(j, &all, err);
    if (r < 0)
        return r;
    parsed_repair *p = find_parsed(all, id);
    if (!p || !p->undoing)
        return vh_fail(err, ENOENT,
                       "%s: repair %s was dropped from the journal by a compaction meanwhile: "
                       "it cannot be undone",
                       j->path, id);
    return 0;
}

/*
 * A repair of p's child committed after p (and not undone since), or NULL. An undo of p that
 * was interrupted leaves the child half restored: its next open heals it again, and completing
 * p's undo then would write p's original bytes over that later repair (which would stay listed
 * as done, and could never be undone). The later one must be undone first.
 */
static parsed_repair *later_repair(GPtrArray *all, parsed_repair *p)
{
    guint at = 0;
    while (at < all->len && all->pdata[at] != p)
        at++;
    for (guint i = at + 1; i < all->len; i++) {
        parsed_repair *q = all->pdata[i];
        if (q->info.state == VH_REPAIR_COMMITTED && strcmp(q->info.child, p->info.child) == 0)
            return q;
    }
    return NULL;
}

/* Undoes p, whose child f the caller holds locked. */
static int undo_locked(vh_journal *j, vh_file *f, const char *id, GError **err)
{
    g_autoptr(GPtrArray) all = NULL;
    parsed_repair *p = NULL;
    int r = read_repair(j, id, &all, &p, err);
    if (r < 0)
        return r;
    if (p->info.state != VH_REPAIR_COMMITTED)
        return vh_fail(err, EINVAL, "repair %s of %s was %s: nothing to undo", id, p->info.child,
                       p->info.state == VH_REPAIR_UNDONE ? "undone already"
                       : p->info.state == VH_REPAIR_OPEN ? "never finished"
                                                         : "rolled back");
    load_ranges(p);
    if (p->damaged)
        return vh_fail(err, EBADMSG,
                       "%s: journal record damaged: a record of repair %s of %s may be missing: "
                       "refusing to undo it",
                       j->path, id, p->info.child);
    if ((r = refresh_size(f, err)) < 0)
        return r;
    parsed_repair *later = p->undoing ? later_repair(all, p) : NULL;
    if (later)
        return vh_fail(err, EBUSY,
                       "%s: repair %s was made after the undo of %s was interrupted: undo %s "
                       "first",
                       f->path, later->info.id, id, later->info.id);
    if (!p->undoing) {
        g_autofree char *hash = NULL;
        r = hash_ranges(f, p->ranges, &hash, err);
        if (r == 0 && (f->size != p->final_size || strcmp(hash, p->final_hash) != 0))
            r = vh_fail(err, EBUSY, "%s: changed since repair %s: refusing to undo it", f->path,
                        id);
        g_autofree char *line = g_strdup_printf("UNDOING\t%s", id);
        if (r == 0)
            r = append_record(j, line, err);
        if (r == 0)
            r = undo_still_journaled(j, id, err);
    }
    if (r == 0)
        r = restore_ranges(f, p->ranges, p->original_size, err);
    if (r < 0)
        return r;
    g_autofree char *line = g_strdup_printf("UNDO\t%s", id);
    return append_record(j, line, err);
}

int vh_journal_undo(vh_journal *j, const char *id, GError **err)
{
    g_autoptr(GPtrArray) all = NULL;
    parsed_repair *p = NULL;
    int r = read_repair(j, id, &all, &p, err);
    if (r < 0)
        return r;
    vh_file f;
    if ((r = open_child(j, p->info.child, &f, err)) < 0)
        return r;
    r = vh_lock_data(f.fd, F_WRLCK, 0); /* inuse.h */
    if (r == -EAGAIN)
        r = vh_fail(err, EBUSY, "%s: in use: another process or host holds a lock on it", f.path);
    else if (r < 0)
        r = vh_fail(err, -r, "%s: cannot lock: %s", f.path, g_strerror(-r));
    else
        r = undo_locked(j, &f, id, err);
    vh_file_close(&f);
    return r;
}
