// SPDX-License-Identifier: GPL-2.0-or-later
/* merge.c - Merge-VHD, crash-resumable from a plan file (see merge.h). */
#include "merge.h"

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/file.h>
#include <unistd.h>

#include "chain.h"
#include "inuse.h"
#include "reconnect.h"
#include "service.h"

#define CHUNK (4 * VH_MIB)           /* written into the ancestor at once, at most */
#define COMMIT_STEP (16 * VH_MIB)    /* virtual bytes between two recorded offsets */
#define PLAN_MAX (4 * VH_MIB)        /* a plan file is never larger */
#define PLAN_MAGIC "vhdheal-merge/1" /* the first line of a plan */

typedef enum { PHASE_COPY, PHASE_RELINK, PHASE_REMOVE } phase;
static const char *const phase_names[] = {"copy", "relink", "remove"};

typedef struct pdisk {
    char *rel; /* store-relative */
    dev_t dev;
    ino_t ino;
    vh_format format;
    vh_id id;
    bool done; /* members: removed; children: relinked */
} pdisk;

typedef struct plan {
    char *id;
    char *root;  /* the store's realpath */
    int meta_fd; /* STORE/.vhdheal/, flock'ed */
    uint64_t size;
    phase phase;
    uint64_t copied;
    struct timespec saved; /* a loaded plan: when it was last written (zero: a new plan) */
    pdisk anc;
    GPtrArray *members;  /* pdisk*: CHILD first, then the disks between it and the ancestor */
    GPtrArray *children; /* pdisk*: CHILD's children, to relink */
} plan;

static void pdisk_free(pdisk *p)
{
    if (p)
        g_free(p->rel);
    g_free(p);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(pdisk, pdisk_free)

static void plan_free(plan *p)
{
    if (!p)
        return;
    g_free(p->id);
    g_free(p->root);
    if (p->meta_fd >= 0)
        close(p->meta_fd);
    g_free(p->anc.rel);
    if (p->members)
        g_ptr_array_unref(p->members);
    if (p->children)
        g_ptr_array_unref(p->children);
    g_free(p);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(plan, plan_free)

static plan *plan_new(const char *root)
{
    plan *p = g_new0(plan, 1);
    p->root = g_strdup(root);
    p->meta_fd = -1;
    p->members = g_ptr_array_new_with_free_func((GDestroyNotify)pdisk_free);
    p->children = g_ptr_array_new_with_free_func((GDestroyNotify)pdisk_free);
    return p;
}

static void say(const vh_merge_opts *o, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static void say(const vh_merge_opts *o, const char *fmt, ...)
{
    if (!o->log)
        return;
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *line = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    o->log(o->log_ctx, line);
}

/* ---------- the plan file ---------- */

static void pdisk_line(GString *s, const char *tag, const pdisk *d)
{
    char id[VH_ID_STRLEN + 1];
    vh_id_format(&d->id, id);
    g_autofree char *rel = g_strescape(d->rel, NULL);
    g_string_append_printf(s, "%s\t%s\t%" PRIu64 "\t%" PRIu64 "\t%s\t%s\t%d\n", tag, rel,
                           (uint64_t)d->dev, (uint64_t)d->ino, vh_format_name(d->format), id,
                           d->done ? 1 : 0);
}

static char *plan_text(const plan *p)
{
    GString *s = g_string_new(PLAN_MAGIC "\n");
    g_string_append_printf(s, "id\t%s\nsize\t%" PRIu64 "\nphase\t%s\ncopied\t%" PRIu64 "\n", p->id,
                           p->size, phase_names[p->phase], p->copied);
    pdisk_line(s, "ancestor", &p->anc);
    for (guint k = 0; k < p->members->len; k++)
        pdisk_line(s, "member", p->members->pdata[k]);
    for (guint k = 0; k < p->children->len; k++)
        pdisk_line(s, "child", p->children->pdata[k]);
    g_string_append(s, "end\n");
    return g_string_free(s, FALSE);
}

static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Writes the plan durably: a temporary file, fsync, rename over merge-ID, fsync the folder. */
static int plan_save(const plan *p, GError **err)
{
    g_autofree char *text = plan_text(p);
    g_autofree char *name = g_strdup_printf("merge-%s", p->id);
    g_autofree char *tmp = g_strdup_printf("merge-%s.tmp", p->id);
    unlinkat(p->meta_fd, tmp, 0); /* a leftover is never written through (a link elsewhere) */
    vh_autofd int fd =
        openat(p->meta_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    int r = fd < 0 ? -errno : write_all(fd, text, strlen(text));
    if (r == 0 && fsync(fd) < 0)
        r = -errno;
    if (r == 0 && renameat(p->meta_fd, tmp, p->meta_fd, name) < 0)
        r = -errno;
    if (r == 0 && fsync(p->meta_fd) < 0)
        r = -errno;
    if (r < 0)
        return vh_fail(err, -r, "%s/.vhdheal/%s: writing the merge plan: %s", p->root, name,
                       g_strerror(-r));
    return 0;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end = NULL;
    if (!s || !g_ascii_isdigit(*s))
        return false;
    errno = 0;
    *out = g_ascii_strtoull(s, &end, 10);
    return errno == 0 && *end == '\0';
}

static pdisk *parse_pdisk(char **f)
{
    uint64_t dev, ino, done;
    g_autoptr(pdisk) d = g_new0(pdisk, 1);
    if (g_strv_length(f) != 7 || !parse_u64(f[2], &dev) || !parse_u64(f[3], &ino) ||
        !vh_id_parse(f[5], &d->id) || !parse_u64(f[6], &done) || done > 1)
        return NULL;
    d->rel = g_strcompress(f[1]);
    d->dev = (dev_t)dev;
    d->ino = (ino_t)ino;
    d->done = done == 1;
    d->format = strcmp(f[4], "vhd") == 0    ? VH_FORMAT_VHD
                : strcmp(f[4], "vhdx") == 0 ? VH_FORMAT_VHDX
                                            : VH_FORMAT_NONE;
    /* a store-relative path: not empty, not absolute, no "..", no NUL (g_strcompress) */
    g_autofree char *again = g_strescape(d->rel, NULL); /* the one form plan_save writes */
    bool ok =
        d->format != VH_FORMAT_NONE && d->rel[0] && d->rel[0] != '/' && strcmp(again, f[1]) == 0;
    g_auto(GStrv) parts = g_strsplit(d->rel, "/", -1);
    for (guint k = 0; ok && parts[k]; k++)
        ok = strcmp(parts[k], "..") != 0 && strcmp(parts[k], ".") != 0 && parts[k][0];
    return ok ? g_steal_pointer(&d) : NULL;
}

static void pdisk_copy(pdisk *to, pdisk *from)
{
    *to = *from;
    g_free(from); /* rel moves */
}

/* Parses a plan (untrusted text: every line checked); fills p. */
static int plan_parse(plan *p, const char *name, const char *text, GError **err)
{
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
    bool magic = lines[0] && strcmp(lines[0], PLAN_MAGIC) == 0, end = false, anc = false;
    guint n = 0;
    for (guint k = 1; magic && lines[k] && !end; k++, n = k) {
        g_auto(GStrv) f = g_strsplit(lines[k], "\t", -1);
        guint nf = g_strv_length(f);
        bool ok = nf >= 1;
        if (ok && strcmp(f[0], "end") == 0)
            end = nf == 1;
        else if (ok && strcmp(f[0], "id") == 0 && nf == 2)
            p->id = g_strdup(f[1]);
        else if (ok && strcmp(f[0], "size") == 0 && nf == 2)
            ok = parse_u64(f[1], &p->size);
        else if (ok && strcmp(f[0], "copied") == 0 && nf == 2)
            ok = parse_u64(f[1], &p->copied);
        else if (ok && strcmp(f[0], "phase") == 0 && nf == 2) {
            ok = false;
            for (int ph = 0; ph < (int)G_N_ELEMENTS(phase_names); ph++)
                if (strcmp(f[1], phase_names[ph]) == 0) {
                    p->phase = (phase)ph;
                    ok = true;
                }
        } else if (ok && (strcmp(f[0], "ancestor") == 0 || strcmp(f[0], "member") == 0 ||
                          strcmp(f[0], "child") == 0)) {
            pdisk *d = parse_pdisk(f);
            ok = d != NULL;
            if (ok && f[0][0] == 'a' && !anc) {
                pdisk_copy(&p->anc, d);
                anc = true;
            } else if (ok && f[0][0] == 'a') {
                pdisk_free(d);
                ok = false;
            } else if (ok) {
                g_ptr_array_add(f[0][0] == 'm' ? p->members : p->children, d);
            }
        } else {
            ok = false;
        }
        if (!ok)
            return vh_fail(err, EINVAL, "%s: line %u of the merge plan is not understood", name,
                           k + 1);
    }
    (void)n;
    if (!magic || !end || !anc || !p->id || p->members->len == 0 || p->copied > p->size ||
        strchr(p->id, '/'))
        return vh_fail(err, EINVAL, "%s: not a complete merge plan", name);
    return 0;
}

/* STORE/.vhdheal/, opened beneath the store without following a symlink (created when asked). */
static int open_meta(const char *root, bool create, int *out, GError **err)
{
    *out = -1;
    vh_autofd int sfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (sfd < 0)
        return vh_fail(err, errno, "%s: %s", root, g_strerror(errno));
    if (create && mkdirat(sfd, ".vhdheal", 0700) < 0 && errno != EEXIST)
        return vh_fail(err, errno, "%s/.vhdheal: %s", root, g_strerror(errno));
    int fd = openat(sfd, ".vhdheal", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT && !create
                   ? 0
                   : vh_fail(err, errno, "%s/.vhdheal: %s", root, g_strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        close(fd);
        return vh_fail(err, e == EWOULDBLOCK ? EBUSY : e,
                       "%s: another merge is running in this store", root);
    }
    *out = fd;
    return 0;
}

/* ---------- opening the disks of a plan ---------- */

static bool same_file(const vh_disk *d, const pdisk *p, bool check_id)
{
    struct stat st;
    return fstat(d->file.fd, &st) == 0 && st.st_dev == p->dev && st.st_ino == p->ino &&
           d->format == p->format && (!check_id || vh_id_equal(&d->id, &p->id));
}

/* The ancestor's data range, locked for the copy (inuse.h; the claim holds its in-use byte). */
static int lock_file(vh_disk *d, GError **err)
{
    int r = vh_lock_data(d->file.fd, F_WRLCK, 0);
    if (r == 0)
        return 0;
    if (r == -EAGAIN)
        return vh_fail(err, EBUSY, "%s: in use: another process or host holds a lock on it",
                       d->file.path);
    return vh_fail(err, -r, "%s: cannot lock: %s", d->file.path, g_strerror(-r));
}

/* ---------- the claim: no other user of any disk involved ---------- */

/*
 * Claims one disk of the plan (inuse.h): its in-use byte locked exclusively on a descriptor
 * appended to fds, then no other lock on it anywhere (a running qemu, a live repair). A disk
 * the merge cannot open for writing is refused: its byte could not be locked exclusively
 * (F_WRLCK needs a writable descriptor), so a mount could open it during the merge, and the
 * merge writes or removes every disk it involves. A disk gone or replaced is left to the
 * phases, which say so. Without `hold` (a dry run) the same checks take no lock: only whether
 * another holder has one, so that a dry run refuses what the merge would refuse and disturbs
 * no one.
 */
static int claim_disk(int rootfd, const char *root, const pdisk *d, bool hold, GArray *fds,
                      GError **err)
{
    g_autofree char *abs = g_build_filename(root, d->rel, NULL);
    vh_file f = {.fd = -1};
    g_autoptr(GError) e = NULL;
    int r = vh_file_open_beneath(&f, rootfd, d->rel, abs, true, &e);
    if (r == -EACCES || r == -EROFS || r == -EPERM)
        return vh_fail(err, -r,
                       "%s: cannot be opened for writing (%s), so it cannot be marked in use "
                       "for the merge (make it writable, or merge as its owner)",
                       abs, g_strerror(-r));
    struct stat st;
    if (r < 0 || fstat(f.fd, &st) < 0 || st.st_dev != d->dev || st.st_ino != d->ino) {
        vh_file_close(&f);
        return 0;
    }
    g_array_append_val(fds, f.fd);
    f.fd = -1;
    vh_file_close(&f);
    int fd = g_array_index(fds, int, fds->len - 1);
    if (!hold || (r = vh_lock_inuse(fd, F_WRLCK)) == 0)
        r = vh_lock_probe(fd);
    if (r == -EBUSY)
        return vh_fail(err, EBUSY,
                       "%s: in use: open through a mount or by another process or host (close "
                       "it, then merge again)",
                       abs);
    return r < 0 ? vh_fail(err, -r, "%s: cannot lock: %s", abs, g_strerror(-r)) : 0;
}

/* Claims every disk the plan still involves (hold: see claim_disk); *out: the descriptors, for
 * vh_inuse_release. */
static int claim_plan(const plan *p, bool hold, GArray **out, GError **err)
{
    *out = NULL;
    vh_autofd int rootfd = open(p->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0)
        return vh_fail(err, errno, "%s: %s", p->root, g_strerror(errno));
    GArray *fds = g_array_new(FALSE, FALSE, sizeof(int));
    int r = claim_disk(rootfd, p->root, &p->anc, hold, fds, err);
    for (guint k = 0; r == 0 && k < p->members->len; k++)
        if (!((pdisk *)p->members->pdata[k])->done)
            r = claim_disk(rootfd, p->root, p->members->pdata[k], hold, fds, err);
    for (guint k = 0; r == 0 && k < p->children->len; k++)
        if (!((pdisk *)p->children->pdata[k])->done)
            r = claim_disk(rootfd, p->root, p->children->pdata[k], hold, fds, err);
    if (r < 0) {
        vh_inuse_release(fds);
        return r;
    }
    *out = fds;
    return 0;
}

/*
 * The merged members opened read-only by the plan's paths, beneath the store, each checked to be
 * the planned file and disk, and attached in order above the ancestor (opened writable with its
 * own chain by the chain opener). *anc stays owned by the returned top.
 */
static int open_plan_chain(const plan *p, vh_disk **top, vh_disk **anc, GError **err)
{
    *top = *anc = NULL;
    g_autofree char *anc_abs = g_build_filename(p->root, p->anc.rel, NULL);
    vh_chain_open_opts co = {.store = p->root, .writable = true};
    g_autoptr(vh_disk) a = NULL;
    int r = vh_chain_open(anc_abs, &co, &a, err);
    if (r < 0)
        return r;
    /* a VHDX ancestor's DataWriteGuid changes with its content: its identity is not compared */
    if (!same_file(a, &p->anc, false) || a->virtual_size != p->size)
        return vh_fail(err, EAGAIN, "%s: not the disk the merge plan %s names", anc_abs, p->id);
    if ((r = lock_file(a, err)) < 0)
        return r;
    vh_autofd int sfd = open(p->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (sfd < 0)
        return vh_fail(err, errno, "%s: %s", p->root, g_strerror(errno));
    g_autoptr(GPtrArray) opened = g_ptr_array_new_with_free_func((GDestroyNotify)vh_disk_close);
    for (guint k = 0; k < p->members->len; k++) {
        const pdisk *m = p->members->pdata[k];
        vh_disk *d = NULL;
        if ((r = vh_disk_open_beneath(sfd, p->root, m->rel, VH_OPEN_READ, &d, err)) < 0)
            return r;
        g_ptr_array_add(opened, d);
        if (!same_file(d, m, true) || d->virtual_size != p->size || d->type != VH_TYPE_DIFFERENCING)
            return vh_fail(err, EAGAIN, "%s: not the disk the merge plan %s names", d->file.path,
                           p->id);
    }
    *anc = a;
    vh_disk *below = g_steal_pointer(&a);
    for (guint k = opened->len; k-- > 0;) {
        vh_disk *d = opened->pdata[k];
        vh_disk_set_parent(d, below);
        below = d;
    }
    g_ptr_array_set_free_func(opened, NULL);
    *top = below;
    return 0;
}

/* ---------- copy ---------- */

/* The run at voff as the top reads it, down to the ancestor: *owner is the merged member that
 * holds it (DATA or ZERO), or NULL when the ancestor (or nothing) gives it. */
static int merged_run(vh_disk *top, vh_disk *anc, uint64_t voff, uint64_t max, vh_run *run,
                      vh_disk **owner, GError **err)
{
    for (vh_disk *d = top;;) {
        int r = d->ops->map(d, voff, max, run, err);
        if (r < 0)
            return r;
        run->length = MIN(run->length, max);
        if (run->length == 0)
            return vh_fail(err, EIO, "%s: empty run at virtual offset %" G_GUINT64_FORMAT,
                           d->file.path, voff);
        if (run->kind != VH_RUN_PARENT) {
            *owner = d;
            return 0;
        }
        if (d->parent == anc || !d->parent) {
            *owner = NULL;
            return 0;
        }
        max = run->length;
        d = d->parent;
    }
}

/* Fills buf with the merged members' content of [voff, voff+*len): *len shrinks to the stretch
 * they hold without a gap (0: they hold nothing at voff; *skip says for how long). */
static int gather(vh_disk *top, vh_disk *anc, uint8_t *buf, uint64_t voff, uint64_t *len,
                  uint64_t *skip, GError **err)
{
    uint64_t got = 0, max = *len;
    *skip = 0;
    while (got < max) {
        vh_run run;
        vh_disk *owner;
        int r = merged_run(top, anc, voff + got, max - got, &run, &owner, err);
        if (r < 0)
            return r;
        if (!owner) {
            if (got == 0)
                *skip = run.length;
            break;
        }
        if (run.kind == VH_RUN_DATA)
            r = owner->ops->read_data(owner, buf + got, (size_t)run.length, run.file_offset, err);
        else
            memset(buf + got, 0, (size_t)run.length);
        if (r < 0)
            return r;
        got += run.length;
    }
    *len = got;
    return 0;
}

/*
 * Whether a merged member was written after the loaded plan was last saved (its ctime is not
 * older than the plan's): the merge never writes them, but between an interruption and the
 * resume nothing holds them, and a write below the offset recorded as copied, or after the
 * copy, would be lost when the member is removed (such a member is copied again, or kept).
 * Equal times count as changed (coarse file-system clocks).
 */
static bool written_since_saved(const plan *p, const struct stat *st)
{
    if (p->saved.tv_sec == 0 && p->saved.tv_nsec == 0)
        return false;
    return st->st_ctim.tv_sec > p->saved.tv_sec ||
           (st->st_ctim.tv_sec == p->saved.tv_sec && st->st_ctim.tv_nsec >= p->saved.tv_nsec);
}

/* written_since_saved for the merged members of an opened plan chain */
static bool changed_since_saved(const plan *p, vh_disk *top, vh_disk *anc)
{
    for (vh_disk *d = top; d && d != anc; d = d->parent) {
        struct stat st;
        if (fstat(d->file.fd, &st) < 0 || written_since_saved(p, &st))
            return true;
    }
    return false;
}

static int copy_phase(plan *p, const vh_merge_opts *o, GError **err)
{
    g_autoptr(vh_disk) top = NULL;
    vh_disk *anc = NULL;
    int r = open_plan_chain(p, &top, &anc, err);
    if (r < 0)
        return r;
    if (p->copied > 0 && changed_since_saved(p, top, anc)) {
        say(o,
            "%s: a merged disk changed since the merge was interrupted; copying again from "
            "the start",
            p->anc.rel);
        p->copied = 0;
    }
    g_autofree uint8_t *buf = g_malloc(CHUNK);
    uint64_t off = p->copied, recorded = p->copied;
    while (off < p->size) {
        if (o->cancel && *o->cancel)
            return vh_fail(err, EINTR, "interrupted; `vhdheal merge --resume` finishes the merge");
        uint64_t len = MIN(p->size - off, (uint64_t)CHUNK), skip;
        if ((r = gather(top, anc, buf, off, &len, &skip, err)) < 0)
            return r;
        if (len > 0 && (r = vh_disk_write(anc, buf, off, (size_t)len, err)) < 0)
            return r;
        off += len > 0 ? len : skip;
        if (off - recorded >= COMMIT_STEP || off == p->size) {
            /* what is recorded as copied is durable in the ancestor first */
            if ((r = vh_disk_flush(anc, err)) < 0)
                return r;
            p->copied = off;
            if ((r = plan_save(p, err)) < 0)
                return r;
            recorded = off;
        }
        if (o->progress)
            o->progress(o->progress_ctx, off, p->size);
    }
    if ((r = vh_disk_flush(anc, err)) < 0)
        return r;
    p->copied = p->size;
    p->phase = PHASE_RELINK;
    p->saved = (struct timespec){0}; /* the members' content is whole in the ancestor */
    return plan_save(p, err);
}

/* ---------- relink and remove ---------- */

static int relink_phase(plan *p, const vh_merge_opts *o, GError **err)
{
    g_autofree char *anc_abs = g_build_filename(p->root, p->anc.rel, NULL);
    for (guint k = 0; k < p->children->len; k++) {
        pdisk *c = p->children->pdata[k];
        if (c->done)
            continue;
        g_autofree char *abs = g_build_filename(p->root, c->rel, NULL);
        vh_reconnect_opts ro = {.store = p->root, .ignore_id_mismatch = true};
        vh_reconnect_result res = {0};
        g_autoptr(GError) e = NULL;
        int r = vh_reconnect(abs, anc_abs, &ro, &res, &e);
        vh_reconnect_result_clear(&res);
        if (r == -ENOENT && !g_file_test(abs, G_FILE_TEST_EXISTS)) {
            say(o, "%s: gone; not relinked", c->rel);
        } else if (r < 0) {
            g_propagate_error(err, g_steal_pointer(&e));
            return vh_fail_prefix(err, "relinking %s to %s", c->rel, p->anc.rel);
        } else {
            say(o, "relinked %s to %s", c->rel, p->anc.rel);
        }
        c->done = true;
        if ((r = plan_save(p, err)) < 0)
            return r;
    }
    p->phase = PHASE_REMOVE;
    return plan_save(p, err);
}

/* The folder of a store-relative path, opened beneath the store passing no symlink. */
static int open_parent_dir(const char *root, const char *rel, GError **err)
{
    int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    g_autofree char *dir = vh_relpath_dir(rel);
    g_auto(GStrv) parts = g_strsplit(dir, "/", -1);
    for (guint k = 0; fd >= 0 && parts[k]; k++) {
        if (!parts[k][0])
            continue;
        int next = openat(fd, parts[k], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        close(fd);
        fd = next;
    }
    if (fd < 0)
        return vh_fail(err, errno, "%s/%s: %s", root, dir, g_strerror(errno));
    return fd;
}

static int remove_phase(plan *p, const vh_merge_opts *o, GError **err)
{
    for (guint k = 0; k < p->members->len; k++) {
        pdisk *m = p->members->pdata[k];
        if (m->done)
            continue;
        vh_autofd int dfd = open_parent_dir(p->root, m->rel, err);
        if (dfd < 0)
            return dfd;
        struct stat st;
        const char *base = vh_relpath_base(m->rel);
        bool gone = fstatat(dfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0;
        if (gone && errno != ENOENT)
            return vh_fail(err, errno, "%s/%s: %s", p->root, m->rel, g_strerror(errno));
        if (gone) {
            say(o, "%s: already gone", m->rel);
        } else if (st.st_dev != m->dev || st.st_ino != m->ino) {
            say(o, "%s: no longer the merged disk; left alone", m->rel);
        } else if (written_since_saved(p, &st)) {
            say(o, "%s: written since the merge was interrupted; left alone", m->rel);
        } else {
            if (unlinkat(dfd, base, 0) < 0 || fsync(dfd) < 0)
                return vh_fail(err, errno, "%s/%s: removing: %s", p->root, m->rel,
                               g_strerror(errno));
            say(o, "removed %s", m->rel);
        }
        m->done = true;
        int r = plan_save(p, err);
        if (r < 0)
            return r;
    }
    g_autofree char *name = g_strdup_printf("merge-%s", p->id);
    if (unlinkat(p->meta_fd, name, 0) < 0 || fsync(p->meta_fd) < 0)
        return vh_fail(err, errno, "%s/.vhdheal/%s: %s", p->root, name, g_strerror(errno));
    return 0;
}

/* Runs the phases left; the caller holds the plan's claim. */
static int run_plan(plan *p, const vh_merge_opts *o, GError **err)
{
    int r = 0;
    if (p->phase == PHASE_COPY)
        r = copy_phase(p, o, err);
    if (r == 0 && p->phase == PHASE_RELINK)
        r = relink_phase(p, o, err);
    if (r == 0 && p->phase == PHASE_REMOVE)
        r = remove_phase(p, o, err);
    if (r == 0) {
        const pdisk *c = p->members->pdata[0];
        say(o, "merged %s into %s", c->rel, p->anc.rel);
    }
    return r;
}

/* ---------- resume ---------- */

static int load_plan(int meta_fd, const char *root, const char *name, plan **out, GError **err)
{
    *out = NULL;
    g_autofree char *shown = g_strdup_printf("%s/.vhdheal/%s", root, name);
    vh_autofd int fd = openat(meta_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0)
        return vh_fail(err, errno, "%s: %s", shown, g_strerror(errno));
    if (!S_ISREG(st.st_mode) || st.st_size > (off_t)PLAN_MAX)
        return vh_fail(err, EINVAL, "%s: not a merge plan (not a regular file, or too large)",
                       shown);
    /* a plan names the files the merge writes and removes: only one we (or root) wrote */
    int r = vh_file_trusted(&st, shown, "merge plan", err);
    if (r < 0)
        return r;
    g_autofree char *text = g_malloc0((gsize)st.st_size + 1);
    ssize_t n = vh_read_full(fd, text, (size_t)st.st_size, 0);
    if (n != st.st_size || memchr(text, '\0', (size_t)n))
        return vh_fail(err, EINVAL, "%s: cannot be read whole, or holds NUL bytes", shown);
    g_autoptr(plan) p = plan_new(root);
    r = plan_parse(p, shown, text, err);
    if (r < 0)
        return r;
    if (strcmp(name + strlen("merge-"), p->id) != 0)
        return vh_fail(err, EINVAL, "%s: names another merge (%s)", shown, p->id);
    p->saved = st.st_mtim;
    *out = g_steal_pointer(&p);
    return 0;
}

/*
 * Rolls back the repairs a crash left unfinished in the store's journal, as check and repair do
 * first: a relink the crash interrupted may have left its child half rewritten, and only the
 * journal brings it back (the relink is then made again).
 */
static int rollback_repairs(const char *root, GError **err)
{
    vh_service_opts so = {.store = root};
    g_autoptr(vh_service) s = vh_service_new(&so, err);
    if (!s)
        return -vh_error_errno(*err);
    int r = vh_service_recover(s, err);
    return r < 0 ? r : 0;
}

/* Finishes every plan in the locked meta folder. */
static int resume_all(int meta_fd, const char *root, const vh_merge_opts *o, GError **err)
{
    vh_autofd int dfd = dup(meta_fd);
    if (dfd < 0)
        return vh_fail(err, errno, "%s/.vhdheal: %s", root, g_strerror(errno));
    DIR *dir = fdopendir(dfd);
    if (!dir)
        return vh_fail(err, errno, "%s/.vhdheal: %s", root, g_strerror(errno));
    dfd = -1;
    g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
    for (struct dirent *e; (e = readdir(dir));) {
        if (g_str_has_prefix(e->d_name, "merge-") && !g_str_has_suffix(e->d_name, ".tmp"))
            g_ptr_array_add(names, g_strdup(e->d_name));
        else if (g_str_has_prefix(e->d_name, "merge-"))
            unlinkat(meta_fd, e->d_name, 0); /* a plan update that never got renamed */
    }
    closedir(dir);
    g_ptr_array_sort(names, (GCompareFunc)g_strcmp0);
    int r = names->len ? rollback_repairs(root, err) : 0;
    if (r < 0)
        return r;
    int done = 0;
    for (guint k = 0; k < names->len; k++) {
        g_autoptr(plan) p = NULL;
        r = load_plan(meta_fd, root, names->pdata[k], &p, err);
        if (r < 0)
            return r;
        p->meta_fd = dup(meta_fd);
        say(o, "resuming merge %s (%s of %s into %s)", p->id, phase_names[p->phase],
            ((pdisk *)p->members->pdata[0])->rel, p->anc.rel);
        GArray *claim = NULL;
        if ((r = claim_plan(p, true, &claim, err)) == 0)
            r = run_plan(p, o, err);
        vh_inuse_release(claim);
        if (r < 0)
            return r;
        done++;
    }
    return done;
}

int vh_merge_resume(const char *store, const vh_merge_opts *o, GError **err)
{
    g_autofree char *root = realpath(store, NULL);
    if (!root)
        return vh_fail(err, errno, "%s: %s", store, g_strerror(errno));
    vh_autofd int meta = -1;
    int r = open_meta(root, false, &meta, err);
    if (r < 0 || meta < 0)
        return r;
    return resume_all(meta, root, o, err);
}

/* ---------- planning ---------- */

static pdisk *pdisk_of(const vh_disk_info *i)
{
    pdisk *d = g_new0(pdisk, 1);
    d->rel = g_strdup(i->path);
    d->dev = i->dev;
    d->ino = i->ino;
    d->format = i->format;
    d->id = i->id;
    return d;
}

/* Index in c->disks of the ancestor (the disk at `into`, else the parent): >= 1, or -errno. */
static int find_ancestor(const vh_chain *c, const char *into, GError **err)
{
    if (!into)
        return 1;
    struct stat st;
    if (stat(into, &st) < 0)
        return vh_fail(err, errno, "%s: %s", into, g_strerror(errno));
    for (guint k = 1; k < c->disks->len; k++) {
        const vh_disk_info *i = c->disks->pdata[k];
        if (i->dev == st.st_dev && i->ino == st.st_ino)
            return (int)k;
    }
    return vh_fail(err, EINVAL, "%s: not an ancestor of %s", into,
                   ((vh_disk_info *)c->disks->pdata[0])->path);
}

/* The children of rel in the store, less the one the chain passes through (NULL: none). */
static GPtrArray *other_children(vh_service *s, const char *rel, const char *except, GError **err)
{
    GPtrArray *kids = vh_service_children(s, rel, err);
    for (guint k = 0; kids && k < kids->len;)
        if (except && strcmp(kids->pdata[k], except) == 0)
            g_ptr_array_remove_index(kids, k);
        else
            k++;
    return kids;
}

/* The plan for merging c->disks[0] into c->disks[ak], after the refusals. */
static int make_plan(vh_store *store, const vh_chain *c, int ak, const vh_merge_opts *o, plan **out,
                     GError **err)
{
    const char *root = vh_store_root(store);
    vh_service_opts so = {.store = root};
    g_autoptr(vh_service) s = vh_service_new(&so, err);
    if (!s)
        return -vh_error_errno(*err);
    const vh_disk_info *anc = c->disks->pdata[ak];
    const vh_disk_info *above = c->disks->pdata[ak - 1];
    for (int k = 1; k < ak; k++) {
        const vh_disk_info *m = c->disks->pdata[k];
        const vh_disk_info *below = c->disks->pdata[k - 1];
        g_autoptr(GPtrArray) kids = other_children(s, m->path, below->path, err);
        if (!kids)
            return -vh_error_errno(*err);
        if (kids->len) {
            g_autofree char *names = vh_children_text(kids);
            return vh_fail(err, EBUSY,
                           "refused: %s lies between the disk and the ancestor and would be "
                           "removed, but it is also the parent of %s",
                           m->path, names);
        }
    }
    g_autoptr(GPtrArray) others = other_children(s, anc->path, above->path, err);
    if (!others)
        return -vh_error_errno(*err);
    if (others->len && !o->force) {
        g_autofree char *names = vh_children_text(others);
        return vh_fail(err, EBUSY,
                       "refused: %s is also the parent of %u other disk%s (%s); the merge would "
                       "change what they read (--force merges anyway)",
                       anc->path, others->len, others->len == 1 ? "" : "s", names);
    }
    const vh_disk_info *top = c->disks->pdata[0];
    g_autoptr(GPtrArray) kids = vh_service_children(s, top->path, err);
    if (!kids)
        return -vh_error_errno(*err);
    g_autoptr(plan) p = plan_new(root);
    p->size = top->virtual_size;
    pdisk_copy(&p->anc, pdisk_of(anc));
    for (int k = 0; k < ak; k++)
        g_ptr_array_add(p->members, pdisk_of(c->disks->pdata[k]));
    for (guint k = 0; k < kids->len; k++) {
        g_autoptr(vh_disk_info) i = vh_store_describe(store, kids->pdata[k], err);
        if (!i)
            return -vh_error_errno(*err);
        g_ptr_array_add(p->children, pdisk_of(i));
    }
    p->id = g_strdup_printf("%" PRId64 "-%08x", g_get_real_time() / G_USEC_PER_SEC, g_random_int());
    *out = g_steal_pointer(&p);
    return 0;
}

/* ---------- the merge ---------- */

/* Bytes the merged members hold (what the copy writes). */
static int held_bytes(vh_disk *top, vh_disk *anc, uint64_t *out, GError **err)
{
    *out = 0;
    for (uint64_t off = 0; off < top->virtual_size;) {
        vh_run run;
        vh_disk *owner;
        int r = merged_run(top, anc, off, top->virtual_size - off, &run, &owner, err);
        if (r < 0)
            return r;
        if (owner)
            *out += run.length;
        off += run.length;
    }
    return 0;
}

static int describe(vh_store *store, const vh_chain *c, const plan *p, const vh_merge_opts *o,
                    GError **err)
{
    g_autoptr(vh_disk) top = NULL;
    int r = vh_chain_open_resolved(store, c, false, &top, err);
    if (r < 0)
        return r;
    vh_disk *anc = top;
    for (guint k = 0; k < p->members->len; k++)
        anc = anc->parent;
    uint64_t held;
    if ((r = held_bytes(top, anc, &held, err)) < 0)
        return r;
    say(o, "would copy %" G_GUINT64_FORMAT " bytes into %s", held, p->anc.rel);
    for (guint k = 0; k < p->children->len; k++)
        say(o, "would relink %s to %s", ((pdisk *)p->children->pdata[k])->rel, p->anc.rel);
    for (guint k = 0; k < p->members->len; k++)
        say(o, "would remove %s", ((pdisk *)p->members->pdata[k])->rel);
    return 0;
}

int vh_merge(const char *child, const vh_merge_opts *o, GError **err)
{
    char *paths[] = {(char *)child};
    g_autofree char *root = vh_store_determine(o->store, paths, 1, false, err);
    if (!root)
        return -vh_error_errno(*err);
    vh_autofd int meta = -1;
    int r = 0;
    if (!o->dry_run) {
        /* first finish what an interruption left: it may be this very chain */
        if ((r = open_meta(root, true, &meta, err)) < 0 || (r = resume_all(meta, root, o, err)) < 0)
            return r;
    }
    vh_chain_open_opts co = {.store = root};
    g_autoptr(vh_store) store = NULL;
    g_autoptr(vh_chain) c = vh_chain_resolve(child, &co, &store, err);
    if (!c)
        return -vh_error_errno(*err);
    if ((r = vh_chain_usable(store, c, false, err)) < 0)
        return vh_fail_prefix(err, "%s", child);
    if (c->disks->len < 2)
        return vh_fail(err, ENOTSUP, "%s: not a differencing disk: nothing to merge", child);
    int ak = find_ancestor(c, o->into, err);
    if (ak < 0)
        return ak;
    g_autoptr(plan) p = NULL;
    if ((r = make_plan(store, c, ak, o, &p, err)) < 0)
        return r;
    GArray *claim = NULL;
    if ((r = claim_plan(p, !o->dry_run, &claim, err)) < 0) /* refused before anything is written */
        return r;
    if (o->dry_run) {
        vh_inuse_release(claim);
        return describe(store, c, p, o, err);
    }
    p->meta_fd = meta;
    meta = -1;
    if ((r = plan_save(p, err)) == 0)
        r = run_plan(p, o, err);
    vh_inuse_release(claim);
    return r;
}
