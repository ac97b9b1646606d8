// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * cmd_disk.c - the vhdheal subcommands that work on one disk: info, create, read, write.
 */
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"
#include "resolve.h"
#include "cli.h"
#include "cli_store.h"
#include "overlay.h"
#include "service.h"
#include "json.h"
#include "winpath.h"

#define IO_CHUNK (4 * 1024 * 1024)

/* ---------- info ---------- */

typedef struct {
    vh_json *json;
} info_ctx;

static void info_text_field(void *ctx, const char *key, const char *value)
{
    printf("    %s: %s\n", key, value);
}

static void info_json_field(void *ctx, const char *key, const char *value)
{
    vh_json_kv_string(((info_ctx *)ctx)->json, key, value);
}

static void print_info_text(vh_disk *d)
{
    char id[VH_ID_STRLEN + 1];
    printf("%s\n", d->file.path);
    printf("  format: %s\n", vh_format_name(d->format));
    printf("  type: %s\n", vh_type_name(d->type));
    printf("  virtual size: %" G_GUINT64_FORMAT "\n", d->virtual_size);
    if (d->block_size)
        printf("  block size: %u\n", d->block_size);
    printf("  logical sector size: %u\n", d->logical_sector_size);
    printf("  physical sector size: %u\n", d->physical_sector_size);
    vh_id_format(&d->id, id);
    printf("  id: %s\n", id);
    if (d->type == VH_TYPE_DIFFERENCING) {
        vh_id_format(&d->link.parent_id, id);
        printf("  parent id: %s\n", id);
        if (d->link.has_parent_id2) {
            vh_id_format(&d->link.parent_id2, id);
            printf("  parent id2: %s\n", id);
        }
        if (d->format == VH_FORMAT_VHD)
            printf("  parent timestamp: %u\n", d->link.parent_timestamp);
        for (guint i = 0; d->link.locators && i < d->link.locators->len; i++) {
            vh_locator *l = d->link.locators->pdata[i];
            printf("  parent locator %s: %s\n", vh_locator_kind_name(l->kind), l->path);
        }
    }
    for (guint i = 0; d->warnings && i < d->warnings->len; i++)
        printf("  warning: %s\n", (char *)d->warnings->pdata[i]);
    if (d->ops->info) {
        printf("  details:\n");
        d->ops->info(d, info_text_field, NULL);
    }
}

static void print_info_json(vh_json *j, vh_disk *d)
{
    char id[VH_ID_STRLEN + 1];
    vh_json_begin_object(j);
    vh_json_kv_string(j, "path", d->file.path);
    vh_json_kv_string(j, "format", vh_format_name(d->format));
    vh_json_kv_string(j, "type", vh_type_name(d->type));
    vh_json_kv_uint(j, "virtual_size", d->virtual_size);
    vh_json_kv_uint(j, "block_size", d->block_size);
    vh_json_kv_uint(j, "logical_sector_size", d->logical_sector_size);
    vh_json_kv_uint(j, "physical_sector_size", d->physical_sector_size);
    vh_id_format(&d->id, id);
    vh_json_kv_string(j, "id", id);
    vh_json_key(j, "parent");
    if (d->type != VH_TYPE_DIFFERENCING) {
        vh_json_null(j);
    } else {
        vh_json_begin_object(j);
        vh_id_format(&d->link.parent_id, id);
        vh_json_kv_string(j, "id", id);
        vh_id_format(&d->link.parent_id2, id);
        vh_json_kv_string(j, "id2", d->link.has_parent_id2 ? id : NULL);
        vh_json_kv_uint(j, "timestamp", d->link.parent_timestamp);
        vh_json_key(j, "locators");
        vh_json_begin_array(j);
        for (guint i = 0; d->link.locators && i < d->link.locators->len; i++) {
            vh_locator *l = d->link.locators->pdata[i];
            vh_json_begin_object(j);
            vh_json_kv_string(j, "kind", vh_locator_kind_name(l->kind));
            vh_json_kv_string(j, "path", l->path);
            vh_json_kv_int(j, "slot", l->slot);
            vh_json_kv_uint(j, "offset", l->data_offset);
            vh_json_kv_uint(j, "space", l->data_space);
            vh_json_end_object(j);
        }
        vh_json_end_array(j);
        vh_json_end_object(j);
    }
    vh_json_key(j, "warnings");
    vh_json_begin_array(j);
    for (guint i = 0; d->warnings && i < d->warnings->len; i++)
        vh_json_string(j, d->warnings->pdata[i]);
    vh_json_end_array(j);
    vh_json_key(j, "details");
    vh_json_begin_object(j);
    info_ctx ctx = {j};
    if (d->ops->info)
        d->ops->info(d, info_json_field, &ctx);
    vh_json_end_object(j);
    vh_json_end_object(j);
}

/* --overlay DIR: the store of the files, read through the repairs saved in DIR. */
static vh_store *info_store(const char *store_opt, char **paths, int n)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *root = vh_store_determine(store_opt, paths, n, false, &err);
    if (!root) {
        vh_cli_usage("info: %s", err->message);
        return NULL;
    }
    vh_store *s = vh_store_new(root, &err);
    if (!s) {
        vh_cli_error(err);
        return NULL;
    }
    return s;
}

/* A file named on the command line; through its store's overlay when there is one. */
static int info_open(vh_store *s, const char *path, vh_disk **d, GError **err)
{
    g_autofree char *rel = s ? vh_store_relpath(vh_store_root(s), path) : NULL;
    if (!rel || !*rel)
        return vh_disk_open(path, VH_OPEN_READ, d, err);
    return vh_chain_open_presented(s, rel, false, d, err);
}

int vhdheal_cmd_info(int argc, char **argv)
{
    gboolean json = FALSE;
    g_autofree char *store_opt = NULL, *overlay_dir = NULL;
    GOptionEntry entries[] = {
        {"json", 0, 0, G_OPTION_ARG_NONE, &json, "Print one JSON document", NULL},
        {"overlay", 0, 0, G_OPTION_ARG_FILENAME, &overlay_dir,
         "Show the disks with the repairs saved in DIR (vhdhealfs -o overlaydir=DIR)", "DIR"},
        {"store", 0, 0, G_OPTION_ARG_FILENAME, &store_opt,
         "With --overlay: the store the repairs are for", "DIR"},
        G_OPTION_ENTRY_NULL};
    if (!vh_cli_options("info", "FILE... - describe disks", entries, NULL, &argc, &argv))
        return VH_EXIT_USAGE;
    if (argc < 2)
        return vh_cli_usage("info: name at least one FILE");
    if (store_opt && !overlay_dir)
        return vh_cli_usage("info: --store goes with --overlay");
    g_autoptr(vh_overlay) overlay = NULL; /* freed after the store that reads through it */
    g_autoptr(vh_store) store = NULL;
    if (overlay_dir) {
        store = info_store(store_opt, argv + 1, argc - 1);
        if (!store)
            return VH_EXIT_USAGE;
        overlay = vh_cli_overlay_load(overlay_dir, vh_store_root(store));
        if (!overlay)
            return VH_EXIT_USAGE;
        vh_store_set_overlay(store, overlay);
    }
    int rc = VH_EXIT_OK;
    g_autoptr(vh_json) j = json ? vh_json_new() : NULL;
    if (j) {
        vh_json_begin_object(j);
        vh_json_key(j, "disks");
        vh_json_begin_array(j);
    }
    for (int i = 1; i < argc; i++) {
        g_autoptr(GError) err = NULL;
        g_autoptr(vh_disk) d = NULL;
        if (info_open(store, argv[i], &d, &err) < 0) {
            vh_cli_error(err);
            if (j) {
                vh_json_begin_object(j);
                vh_json_kv_string(j, "path", argv[i]);
                vh_json_kv_string(j, "error", err->message);
                vh_json_end_object(j);
            }
            rc = VH_EXIT_USAGE;
            continue;
        }
        if (j)
            print_info_json(j, d);
        else
            print_info_text(d);
    }
    if (j) {
        vh_json_end_array(j);
        vh_json_end_object(j);
        g_autofree char *doc = vh_json_finish(g_steal_pointer(&j));
        printf("%s\n", doc);
    }
    return rc;
}

/* ---------- create ---------- */

int vh_cli_create_child(const char *path, const char *parent_path, const char *relative,
                        const char *absolute, GError **err)
{
    g_autoptr(vh_disk) parent = NULL;
    int r = vh_disk_open(parent_path, VH_OPEN_READ, &parent, err);
    if (r < 0)
        return r;
    vh_create_opts o = {
        .format = parent->format,
        .type = VH_TYPE_DIFFERENCING,
        .parent = parent,
        .parent_relative = relative,
        .parent_absolute = absolute,
    };
    return vh_disk_create(path, &o, err);
}

static int create_differencing(const char *path, const char *parent_path)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *rel = vh_winpath_relative(path, parent_path);
    if (vh_cli_create_child(path, parent_path, rel, NULL, &err) < 0) {
        vh_cli_error(err);
        return VH_EXIT_USAGE;
    }
    return VH_EXIT_OK;
}

int vhdheal_cmd_create(int argc, char **argv)
{
    g_autofree char *format = NULL, *type = NULL, *size = NULL, *parent = NULL, *block_size = NULL;
    gint lss = 0, pss = 0;
    GOptionEntry entries[] = {
        {"format", 0, 0, G_OPTION_ARG_STRING, &format, "vhd or vhdx (default vhdx)", "FORMAT"},
        {"type", 0, 0, G_OPTION_ARG_STRING, &type, "fixed or dynamic (default dynamic)", "TYPE"},
        {"size", 0, 0, G_OPTION_ARG_STRING, &size, "Virtual size, e.g. 10G", "SIZE"},
        {"block-size", 0, 0, G_OPTION_ARG_STRING, &block_size, "Block size, e.g. 2M", "N"},
        {"logical-sector-size", 0, 0, G_OPTION_ARG_INT, &lss, "VHDX: 512 or 4096", "N"},
        {"physical-sector-size", 0, 0, G_OPTION_ARG_INT, &pss, "VHDX: 512 or 4096", "N"},
        {"parent", 0, 0, G_OPTION_ARG_FILENAME, &parent, "Create a differencing disk", "PARENT"},
        G_OPTION_ENTRY_NULL};
    if (!vh_cli_options("create", "FILE - create a disk", entries, NULL, &argc, &argv))
        return VH_EXIT_USAGE;
    if (argc != 2)
        return vh_cli_usage("create: name exactly one FILE");
    if (parent) {
        if (size || type || format || block_size || lss || pss)
            return vh_cli_usage("create --parent takes no other options: the child takes "
                                "format, size and sector size from its parent");
        return create_differencing(argv[1], parent);
    }
    vh_create_opts o = {.format = VH_FORMAT_VHDX, .type = VH_TYPE_DYNAMIC};
    if (format && strcmp(format, "vhd") == 0)
        o.format = VH_FORMAT_VHD;
    else if (format && strcmp(format, "vhdx") != 0)
        return vh_cli_usage("create: --format must be vhd or vhdx");
    if (type && strcmp(type, "fixed") == 0)
        o.type = VH_TYPE_FIXED;
    else if (type && strcmp(type, "dynamic") != 0)
        return vh_cli_usage("create: --type must be fixed or dynamic");
    if (!size || !vh_cli_parse_size(size, &o.size) || o.size == 0)
        return vh_cli_usage("create: --size SIZE is required (e.g. 10G)");
    uint64_t bs = 0;
    if (block_size && (!vh_cli_parse_size(block_size, &bs) || bs > UINT32_MAX))
        return vh_cli_usage("create: bad --block-size");
    o.block_size = (uint32_t)bs;
    o.logical_sector_size = (uint32_t)lss;
    o.physical_sector_size = (uint32_t)pss;
    g_autoptr(GError) err = NULL;
    if (vh_disk_create(argv[1], &o, &err) < 0) {
        vh_cli_error(err);
        return VH_EXIT_USAGE;
    }
    return VH_EXIT_OK;
}

/* ---------- read / write ---------- */

/*
 * Opens a data file the user named (OUT, INPUT): it may be a pipe, but the open never waits for
 * the other end (O_NONBLOCK: a FIFO nobody writes reads as empty, one nobody reads fails with
 * ENXIO); O_NONBLOCK is cleared for the I/O. -1 with errno on failure.
 */
static int open_stream(const char *path, int flags)
{
    int fd = open(path, flags | O_CLOEXEC | O_NONBLOCK, 0644);
    if (fd < 0)
        return -1;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int vhdheal_cmd_read(int argc, char **argv)
{
    g_autofree char *out_path = NULL, *store = NULL, *winroot = NULL, *trust_s = NULL;
    g_autofree char *overlay_dir = NULL;
    GOptionEntry entries[] = {
        {"output", 'o', 0, G_OPTION_ARG_FILENAME, &out_path, "Write to OUT, not stdout", "OUT"},
        {"overlay", 0, 0, G_OPTION_ARG_FILENAME, &overlay_dir,
         "Read the store through the repairs saved in DIR (vhdhealfs -o overlaydir=DIR)", "DIR"},
        {"store", 0, 0, G_OPTION_ARG_FILENAME, &store, "The store (no parent outside it)", "DIR"},
        {"winroot", 0, 0, G_OPTION_ARG_STRING, &winroot, "Where Windows sees the store", "W"},
        {"trust", 0, 0, G_OPTION_ARG_STRING, &trust_s,
         "Whose disks may be a parent: owner (default), group, any", "WHO"},
        G_OPTION_ENTRY_NULL};
    if (!vh_cli_options("read", "FILE [OFFSET LENGTH] - read virtual content through the chain",
                        entries, NULL, &argc, &argv))
        return VH_EXIT_USAGE;
    if (argc != 2 && argc != 4)
        return vh_cli_usage("read: FILE [OFFSET LENGTH]");
    vh_trust trust = VH_TRUST_OWNER;
    if (trust_s && !vh_trust_parse(trust_s, &trust))
        return vh_cli_usage("read: --trust must be owner, group or any");
    g_autoptr(GError) err = NULL;
    g_autoptr(vh_disk) d = NULL;
    g_autofree char *root = NULL;
    g_autoptr(vh_overlay) overlay = NULL;
    if (overlay_dir) { /* the store the chain opener would pick, read through DIR's patches */
        root = vh_store_determine(store, argv + 1, 1, false, &err);
        if (!root)
            return vh_cli_usage("read: %s", err->message);
        overlay = vh_cli_overlay_load(overlay_dir, root);
        if (!overlay)
            return VH_EXIT_USAGE;
    }
    vh_chain_open_opts co = {
        .store = root ? root : store, .winroot = winroot, .trust = trust, .overlay = overlay};
    if (vh_chain_open(argv[1], &co, &d, &err) < 0) {
        vh_cli_error(err);
        return VH_EXIT_USAGE;
    }
    uint64_t off = 0, len = d->virtual_size;
    if (argc == 4 && (!vh_cli_parse_size(argv[2], &off) || !vh_cli_parse_size(argv[3], &len)))
        return vh_cli_usage("read: bad OFFSET or LENGTH");
    if (!vh_range_ok(off, len, d->virtual_size))
        return vh_cli_usage("read: range %s+%s lies past the virtual size %" G_GUINT64_FORMAT,
                            argv[2], argv[3], d->virtual_size);
    vh_autofd int fd =
        out_path ? open_stream(out_path, O_WRONLY | O_CREAT | O_TRUNC) : dup(STDOUT_FILENO);
    if (fd < 0) {
        fprintf(stderr, "vhdheal: %s: %s\n", out_path ? out_path : "stdout", g_strerror(errno));
        return VH_EXIT_USAGE;
    }
    g_autofree uint8_t *buf = g_malloc(IO_CHUNK);
    while (len > 0) {
        size_t n = (size_t)MIN(len, (uint64_t)IO_CHUNK);
        if (vh_disk_read(d, buf, off, n, &err) < 0) {
            vh_cli_error(err);
            return VH_EXIT_USAGE;
        }
        int w = vh_write_full(fd, buf, n, -1, NULL);
        if (w < 0) {
            fprintf(stderr, "vhdheal: writing output: %s\n", g_strerror(-w));
            return VH_EXIT_USAGE;
        }
        off += n;
        len -= n;
    }
    return VH_EXIT_OK;
}

int vhdheal_cmd_write(int argc, char **argv)
{
    gboolean force = FALSE;
    g_autofree char *store = NULL, *winroot = NULL;
    GOptionEntry entries[] = {
        {"force", 0, 0, G_OPTION_ARG_NONE, &force, "Write even a disk other disks use as parent",
         NULL},
        {"store", 0, 0, G_OPTION_ARG_FILENAME, &store, "The store (no parent outside it)", "DIR"},
        {"winroot", 0, 0, G_OPTION_ARG_STRING, &winroot, "Where Windows sees the store", "W"},
        G_OPTION_ENTRY_NULL};
    if (!vh_cli_options("write",
                        "FILE OFFSET [INPUT] - write bytes (INPUT, or stdin) at a virtual offset",
                        entries, NULL, &argc, &argv))
        return VH_EXIT_USAGE;
    uint64_t off;
    if ((argc != 3 && argc != 4) || !vh_cli_parse_size(argv[2], &off))
        return vh_cli_usage("write: FILE OFFSET [INPUT]");
    g_autoptr(GError) err = NULL;
    g_autoptr(vh_disk) d = NULL;
    if (vh_parent_write_check(argv[1], store, force, &err) < 0) { /* children would break */
        vh_cli_error(err);
        return VH_EXIT_USAGE;
    }
    vh_chain_open_opts co = {.store = store, .winroot = winroot, .writable = true};
    if (vh_chain_open(argv[1], &co, &d, &err) < 0) {
        vh_cli_error(err);
        return VH_EXIT_USAGE;
    }
    vh_autofd int in = argc == 4 ? open_stream(argv[3], O_RDONLY) : dup(STDIN_FILENO);
    if (in < 0) {
        fprintf(stderr, "vhdheal: %s: %s\n", argc == 4 ? argv[3] : "stdin", g_strerror(errno));
        return VH_EXIT_USAGE;
    }
    g_autofree uint8_t *buf = g_malloc(IO_CHUNK);
    for (;;) {
        ssize_t n = vh_read_full(in, buf, IO_CHUNK, -1);
        if (n < 0) {
            fprintf(stderr, "vhdheal: reading input: %s\n", g_strerror((int)-n));
            return VH_EXIT_USAGE;
        }
        if (n == 0)
            break;
        if (vh_disk_write(d, buf, off, (size_t)n, &err) < 0) {
            vh_cli_error(err);
            return VH_EXIT_USAGE;
        }
        off += (uint64_t)n;
    }
    if (vh_disk_flush(d, &err) < 0) {
        vh_cli_error(err);
        return VH_EXIT_USAGE;
    }
    return VH_EXIT_OK;
}
