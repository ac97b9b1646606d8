/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * xattr.c - the extended attributes the mount synthesises on disks (user.vhd.*, and
 * user.xdg.comment where a file has none of its own; doc/design.md "Extended attributes"), as one
 * table: name, what the file must be, read function, write function, listed or not.
 *
 * Contract: the pass-through calls these hooks before it touches the store file. Every
 * user.vhd.* name is ours and never reaches the store file (a store file's own user.vhd.*
 * attributes are hidden). Reading: a name that does not apply to the file (the parent of a base
 * disk, any of them on a file that is not a disk) or is not in the table gives ENODATA; with size
 * 0 the value's length; a short buffer ERANGE. Values carry no trailing newline. Writing a
 * read-only name gives EROFS (as mergerfs does), an unknown user.vhd.* name ENOTSUP; writes of
 * user.vhd.parent[.force] follow doc/design.md's errno table (heal.c). Removing: EROFS for names in
 * the table, ENODATA for others. user.xdg.comment is served only while the store file has none:
 * writing and removing it always go to the store file, whose own then wins.
 */
#include "fs.h"

#include <errno.h>
#include <string.h>
#include <sys/xattr.h>

#include "service.h"

#define VHD_PREFIX "user.vhd."
#define COMMENT "user.xdg.comment"

/* One request's view of a file: found once, the chain resolved when first needed. */
struct vhfs_xq {
    struct vhfs *fs;
    fuse_req_t req; /* who asks (NULL: the daemon itself) */
    struct vhfs_inode *inode;
    char *rel;          /* store-relative path */
    vh_disk_info *info; /* what the file is */
    vh_chain *chain;    /* readable disks: resolved on demand */
    bool chain_tried;
};

static void xq_clear(struct vhfs_xq *q)
{
    g_free(q->rel);
    vh_disk_info_unref(q->info);
    vh_chain_free(q->chain);
}

/* Finds what the file is; false for anything that is not a disk. */
static bool xq_init(struct vhfs_xq *q, struct vhfs *fs, fuse_req_t req, struct vhfs_inode *inode)
{
    memset(q, 0, sizeof(*q));
    q->fs = fs;
    q->req = req;
    q->inode = inode;
    if (fs->svc == NULL || !S_ISREG(inode->type))
        return false;
    q->rel = vhfs_inode_path(fs, inode);
    if (q->rel == NULL)
        return false;
    q->info = vh_service_describe(fs->svc, q->rel, NULL);
    return q->info != NULL && q->info->format != VH_FORMAT_NONE;
}

static const vh_chain *xq_chain(struct vhfs_xq *q)
{
    if (!q->chain_tried && vh_disk_info_is_disk(q->info))
        q->chain = vh_service_chain(q->fs->svc, q->rel, NULL);
    q->chain_tried = true;
    return q->chain;
}

static bool applies(const struct vhfs_xattr_key *k, const vh_disk_info *i)
{
    switch (k->need) {
    case VHFS_NEED_DISK:
        return i != NULL && i->format != VH_FORMAT_NONE;
    case VHFS_NEED_READABLE:
        return vh_disk_info_is_disk(i);
    case VHFS_NEED_CHILD:
        return vh_disk_info_is_child(i);
    }
    return false;
}

/* --- values --- */

static int x_format(struct vhfs_xq *q, GString *out)
{
    g_string_append(out, vh_format_name(q->info->format));
    return 0;
}

static int x_type(struct vhfs_xq *q, GString *out)
{
    g_string_append(out, vh_type_name(q->info->type));
    return 0;
}

static int x_size(struct vhfs_xq *q, GString *out)
{
    g_string_append_printf(out, "%" G_GUINT64_FORMAT, q->info->virtual_size);
    return 0;
}

static int x_id(struct vhfs_xq *q, GString *out)
{
    char id[VH_ID_STRLEN + 1];

    vh_id_format(&q->info->id, id);
    g_string_append(out, id);
    return 0;
}

/* Where the disk's parent is: the store-relative path (*in_store) or the stored text. */
static char *parent_place(struct vhfs_xq *q, bool *in_store)
{
    const vh_chain *c = xq_chain(q);

    if (c == NULL || c->links->len == 0)
        return NULL;
    return vh_link_parent_place(c->links->pdata[0], in_store);
}

static int x_parent(struct vhfs_xq *q, GString *out)
{
    bool in_store;
    g_autofree char *p = parent_place(q, &in_store);
    g_autofree char *m = NULL;

    if (p == NULL)
        return -ENODATA; /* no locator at all */
    m = in_store ? vhfs_mount_path(q->fs, p) : g_strdup(p);
    g_string_append(out, m);
    return 0;
}

static int x_parent_id(struct vhfs_xq *q, GString *out)
{
    char id[VH_ID_STRLEN + 1];

    vh_id_format(&q->info->link.parent_id, id);
    g_string_append(out, id);
    return 0;
}

/*
 * The disk, then its ancestors as far as the links hold and the caller may read them (no user
 * learns the names of files the user cannot read).
 */
static int x_chain(struct vhfs_xq *q, GString *out)
{
    const vh_chain *c = xq_chain(q);
    struct vhfs_caller caller;

    if (c == NULL)
        return -ENODATA;
    vhfs_caller_from_req(&caller, q->req);
    for (guint k = 0; k < c->disks->len; k++) {
        const vh_disk_info *d = c->disks->pdata[k];
        g_autofree char *m = vhfs_mount_path(q->fs, d->path);

        if (k > 0) {
            if (((vh_link *)c->links->pdata[k - 1])->verdict != VH_VERDICT_OK ||
                vhfs_caller_may_read(q->fs, &caller, d->path, d->dev, d->ino) < 0)
                break;
            g_string_append_c(out, '\n');
        }
        g_string_append(out, m);
    }
    return 0;
}

static int x_status(struct vhfs_xq *q, GString *out)
{
    g_autofree char *st =
        vh_service_status(q->fs->svc, q->info, xq_chain(q), vhfs_heal_note(q->fs));
    g_autofree char *shown = vhfs_heal_show_paths(q->fs, st);

    g_string_append(out, shown);
    return 0;
}

/* A POSIX path from the folder of `from` to `to` (both store-relative). */
static char *relative_path(const char *from, const char *to)
{
    g_autofree char *dir = g_path_get_dirname(from);
    g_auto(GStrv) a = g_strsplit(strcmp(dir, ".") == 0 ? "" : dir, "/", -1);
    g_auto(GStrv) b = g_strsplit(to, "/", -1);
    guint na = g_strv_length(a), nb = g_strv_length(b), c = 0;
    GString *s = g_string_new(NULL);

    if (na == 1 && a[0][0] == '\0')
        na = 0;
    while (c < na && c + 1 < nb && strcmp(a[c], b[c]) == 0)
        c++;
    for (guint k = c; k < na; k++)
        g_string_append(s, "../");
    for (guint k = c; k < nb; k++)
        g_string_append_printf(s, "%s%s", b[k], k + 1 < nb ? "/" : "");
    return g_string_free(s, FALSE);
}

static const char *first_broken(const vh_chain *c)
{
    for (guint k = 0; c != NULL && k < c->links->len; k++) {
        const vh_link *l = c->links->pdata[k];

        if (l->verdict != VH_VERDICT_OK)
            return vh_verdict_name(l->verdict);
    }
    return NULL;
}

/* "differencing VHDX, parent ../base.vhdx (healed 2026-11-25 10:02)", "dynamic VHD, 16.0 MiB" */
static int x_comment(struct vhfs_xq *q, GString *out)
{
    const vh_disk_info *i = q->info;
    g_autofree char *fmt = g_ascii_strup(vh_format_name(i->format), -1);
    g_autofree char *size = NULL;
    bool in_store;
    const char *broken;
    vh_event ev;

    if (i->error) {
        g_string_append_printf(out, "damaged %s, cannot be read", fmt);
        return 0;
    }
    g_string_append_printf(out, "%s %s", vh_type_name(i->type), fmt);
    if (i->type != VH_TYPE_DIFFERENCING) {
        size = g_format_size_full(i->virtual_size, G_FORMAT_SIZE_IEC_UNITS);
        g_string_append(out, ", ");
        /* glib puts a no-break space before the unit; a comment is plain text */
        for (const char *c = size; *c; c++) {
            if ((unsigned char)c[0] == 0xc2 && (unsigned char)c[1] == 0xa0) {
                g_string_append_c(out, ' ');
                c++;
            } else {
                g_string_append_c(out, *c);
            }
        }
        return 0;
    }
    g_autofree char *p = parent_place(q, &in_store);
    g_autofree char *shown = p != NULL && in_store ? relative_path(q->rel, p) : g_strdup(p);
    if (shown != NULL)
        g_string_append_printf(out, ", parent %s", shown);
    broken = first_broken(xq_chain(q));
    vh_service_last_event(q->fs->svc, i, &ev);
    if (broken != NULL) {
        g_string_append_printf(out, " (broken: %s)", broken);
    } else if (ev.kind == VH_EVENT_HEALED) {
        g_autoptr(GDateTime) t = g_date_time_new_from_unix_local(ev.time);
        g_autofree char *when = t != NULL ? g_date_time_format(t, "%Y-%m-%d %H:%M") : NULL;

        if (when != NULL)
            g_string_append_printf(out, " (healed %s)", when);
    }
    vh_event_clear(&ev);
    return 0;
}

static int w_parent(struct vhfs_xq *q, const char *v, size_t size)
{
    return vhfs_heal_set_parent(q->fs, q->req, q->inode, q->rel, v, size, false);
}

static int w_parent_force(struct vhfs_xq *q, const char *v, size_t size)
{
    return vhfs_heal_set_parent(q->fs, q->req, q->inode, q->rel, v, size, true);
}

/* --- the table --- */

const struct vhfs_xattr_key vhfs_xattr_keys[] = {
    {"user.vhd.format", VHFS_NEED_DISK, x_format, NULL, true},
    {"user.vhd.type", VHFS_NEED_READABLE, x_type, NULL, true},
    {"user.vhd.size", VHFS_NEED_READABLE, x_size, NULL, true},
    {"user.vhd.id", VHFS_NEED_READABLE, x_id, NULL, true},
    {"user.vhd.parent", VHFS_NEED_CHILD, x_parent, w_parent, true},
    {"user.vhd.parent.force", VHFS_NEED_CHILD, NULL, w_parent_force, false},
    {"user.vhd.parent.id", VHFS_NEED_CHILD, x_parent_id, NULL, true},
    {"user.vhd.chain", VHFS_NEED_READABLE, x_chain, NULL, true},
    {"user.vhd.status", VHFS_NEED_DISK, x_status, NULL, true},
    {COMMENT, VHFS_NEED_DISK, x_comment, NULL, true},
};
const size_t vhfs_xattr_nkeys = G_N_ELEMENTS(vhfs_xattr_keys);

static const struct vhfs_xattr_key *key_of(const char *name)
{
    for (size_t k = 0; k < vhfs_xattr_nkeys; k++)
        if (strcmp(vhfs_xattr_keys[k].name, name) == 0)
            return &vhfs_xattr_keys[k];
    return NULL;
}

/* Does the store file carry its own attribute `name`? */
static bool store_has(struct vhfs *fs, struct vhfs_inode *inode, const char *name)
{
    char path[VHFS_PROCFD_LEN];
    int fd = vhfs_inode_pin(fs, inode);
    bool has;

    if (fd < 0)
        return false;
    vhfs_procfd(path, fd);
    has = getxattr(path, name, NULL, 0) >= 0;
    vhfs_inode_unpin(fs, inode);
    return has;
}

/* Names we may serve: ours (user.vhd.*) and the comment; nothing else is looked at. */
static bool candidate(const char *name)
{
    return g_str_has_prefix(name, VHD_PREFIX) || strcmp(name, COMMENT) == 0;
}

/* --- the hooks --- */

ssize_t vhfs_xattr_get(struct vhfs *fs, fuse_req_t req, struct vhfs_inode *inode, const char *name,
                       char *buf, size_t size, bool *ours)
{
    const struct vhfs_xattr_key *k;
    struct vhfs_xq q;
    g_autoptr(GString) v = NULL;
    bool disk;
    int r;

    *ours = false;
    if (!candidate(name)) /* fast: every write asks for security.capability */
        return 0;
    k = key_of(name);
    *ours = k != NULL ? strcmp(name, COMMENT) != 0 || !store_has(fs, inode, COMMENT)
                      : g_str_has_prefix(name, VHD_PREFIX);
    if (!*ours)
        return 0;
    disk = xq_init(&q, fs, req, inode);
    if (!disk && k != NULL && k->need == VHFS_NEED_DISK && strcmp(name, COMMENT) == 0) {
        *ours = false; /* not a disk: the comment is the store file's (ENODATA there) */
        xq_clear(&q);
        return 0;
    }
    if (k == NULL || k->read == NULL || !disk || !applies(k, q.info)) {
        xq_clear(&q);
        return -ENODATA;
    }
    v = g_string_new(NULL);
    r = k->read(&q, v);
    xq_clear(&q);
    if (r < 0)
        return r;
    if (size == 0)
        return (ssize_t)v->len;
    if (size < v->len)
        return -ERANGE;
    memcpy(buf, v->str, v->len);
    return (ssize_t)v->len;
}

int vhfs_xattr_set(struct vhfs *fs, fuse_req_t req, struct vhfs_inode *inode, const char *name,
                   const char *value, size_t size, int flags, bool *ours)
{
    const struct vhfs_xattr_key *k;
    struct vhfs_xq q;
    int r;

    *ours = g_str_has_prefix(name, VHD_PREFIX);
    if (!*ours) /* user.xdg.comment included: a comment written is the store file's own */
        return 0;
    k = key_of(name);
    if (k == NULL)
        return -ENOTSUP; /* user.vhd.* is never stored */
    if (k->write == NULL)
        return -EROFS;
    if (!xq_init(&q, fs, req, inode))
        r = -ENOTSUP; /* not a disk */
    else
        r = k->write(&q, value, size);
    xq_clear(&q);
    return r;
}

int vhfs_xattr_remove(struct vhfs *fs, struct vhfs_inode *inode, const char *name, bool *ours)
{
    *ours = g_str_has_prefix(name, VHD_PREFIX);
    if (!*ours)
        return 0;
    return key_of(name) != NULL ? -EROFS : -ENODATA;
}

ssize_t vhfs_xattr_list(struct vhfs *fs, struct vhfs_inode *inode, char *buf, size_t size)
{
    struct vhfs_xq q;
    size_t need = 0;

    if (!xq_init(&q, fs, NULL, inode)) {
        xq_clear(&q);
        return 0;
    }
    for (size_t k = 0; k < vhfs_xattr_nkeys; k++) {
        const struct vhfs_xattr_key *key = &vhfs_xattr_keys[k];
        size_t len = strlen(key->name) + 1;

        if (!key->listed || key->read == NULL || !applies(key, q.info))
            continue;
        if (strcmp(key->name, COMMENT) == 0 && store_has(fs, inode, COMMENT))
            continue; /* the store file lists its own */
        if (size > 0) {
            if (need + len > size) {
                xq_clear(&q);
                return -ERANGE;
            }
            memcpy(buf + need, key->name, len);
        }
        need += len;
    }
    xq_clear(&q);
    return (ssize_t)need;
}

bool vhfs_xattr_hidden(const char *name)
{
    return g_str_has_prefix(name, VHD_PREFIX);
}
