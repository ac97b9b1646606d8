/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * disk.h - the format-neutral disk handle: what every VHD and VHDX file is to the rest of the
 * engine (identity, type, size, parent link, virtual I/O through a chain).
 *
 * A handle opens one file. A differencing disk's parent is attached by whoever resolved it
 * (vh_disk_set_parent); reads of ranges the child does not hold go to the parent, or read as
 * zeros when no parent is attached. The formats (vhd.c, vhdx.c) implement vh_disk_ops; this file
 * adds what is the same for both: chain reads by runs, unaligned writes by read-modify-write,
 * sniffing the format by content.
 */
#ifndef VH_DISK_H
#define VH_DISK_H

#include "io.h"
#include "util.h"

typedef enum { VH_FORMAT_NONE = 0, VH_FORMAT_VHD, VH_FORMAT_VHDX } vh_format;
typedef enum { VH_TYPE_FIXED = 2, VH_TYPE_DYNAMIC = 3, VH_TYPE_DIFFERENCING = 4 } vh_type;

const char *vh_format_name(vh_format f); /* "vhd", "vhdx" */
const char *vh_type_name(vh_type t);     /* "fixed", "dynamic", "differencing" */

/*
 * Where a parent locator says the parent is. The enum order is the resolver's order within a
 * format (doc/design.md "Resolver rules" 1); the text is as stored (Windows form, UTF-8).
 */
typedef enum {
    /* VHDX parent locator keys */
    VH_LOC_RELATIVE_PATH = 0,
    VH_LOC_VOLUME_PATH,
    VH_LOC_ABSOLUTE_WIN32_PATH,
    /* VHD */
    VH_LOC_W2RU,        /* relative, UTF-16LE */
    VH_LOC_W2KU,        /* absolute, UTF-16LE */
    VH_LOC_PARENT_NAME, /* the header's Parent Unicode Name, UTF-16BE */
    VH_LOC_WI2R,        /* deprecated relative, single-byte */
    VH_LOC_WI2K,        /* deprecated absolute, single-byte */
    VH_LOC_MACX,        /* file URL, UTF-8 */
    VH_LOC_COUNT_
} vh_locator_kind;

const char *vh_locator_kind_name(vh_locator_kind k); /* "relative_path", "W2ru", ... */

typedef struct vh_locator {
    vh_locator_kind kind;
    char *path; /* decoded, as stored (UTF-8); never NULL */
    int slot;   /* VHD: locator entry 0..7 (-1 for the Parent Unicode Name); VHDX: entry */
    uint64_t data_offset; /* absolute file offset of the stored bytes (diagnostics) */
    uint32_t data_space;  /* bytes reserved there (VHD) or the value length (VHDX) */
} vh_locator;

typedef struct vh_parent_link {
    vh_id parent_id;     /* VHD: Parent Unique Id; VHDX: parent_linkage */
    bool has_parent_id2; /* VHDX: a non-zero parent_linkage2 */
    vh_id parent_id2;
    uint32_t parent_timestamp; /* VHD only (0 = not set, as Windows writes) */
    GPtrArray *locators;       /* of vh_locator*, in the order found in the file */
} vh_parent_link;

typedef struct vh_disk vh_disk;

/* A contiguous run of virtual bytes with one source. */
typedef enum {
    VH_RUN_DATA,   /* stored in this file at file_offset */
    VH_RUN_PARENT, /* not in this file: read from the parent (zeros without one) */
    VH_RUN_ZERO,   /* reads as zeros */
} vh_run_kind;

typedef struct vh_run {
    vh_run_kind kind;
    uint64_t length;
    uint64_t file_offset; /* VH_RUN_DATA only */
} vh_run;

/*
 * A new parent link for a differencing disk (the reconnect engine fills it; doc/design.md
 * "Reconnect rules" says which field goes where for each format).
 */
typedef struct vh_link_update {
    vh_id parent_id;       /* the new parent's identity */
    int64_t parent_mtime;  /* VHD: parent time stamp source (kept 0 where it was 0) */
    const char *relative;  /* ".\dir\parent.vhdx" (Windows form) */
    const char *absolute;  /* absolute Windows path under winroot, or NULL */
    const char *volume;    /* VHDX volume_path, or NULL */
    const char *file_name; /* the parent's file name */
} vh_link_update;

/* A sink for `vhdheal info`: format-specific fields as key/value text. */
typedef void (*vh_info_fn)(void *ctx, const char *key, const char *value);
/* Sends one field with a printf-formatted value (for the formats' info ops). */
void vh_info_printf(vh_info_fn fn, void *ctx, const char *key, const char *fmt, ...)
    G_GNUC_PRINTF(4, 5);

typedef struct vh_disk_ops {
    /* The run starting at virtual offset voff (< virtual_size), at most max_len long (> 0). */
    int (*map)(vh_disk *d, uint64_t voff, uint64_t max_len, vh_run *run, GError **err);
    /* Reads `len` bytes stored at file offset off; lets a format serve replayed-log overlays. */
    int (*read_data)(vh_disk *d, void *buf, size_t len, uint64_t off, GError **err);
    /*
     * Writes whole logical sectors: voff and len are multiples of logical_sector_size. Allocates
     * blocks and sets bitmap bits as needed; never touches the parent.
     */
    int (*write_sectors)(vh_disk *d, const void *buf, uint64_t voff, uint64_t len, GError **err);
    int (*flush)(vh_disk *d, GError **err);
    /*
     * Rewrites the parent link of a differencing disk opened for writing. Touches only
     * parent-link fields (never payload or bitmaps); every write goes through vh_file_write so
     * that the journal hook sees it; VHDX metadata goes through the log. A crash at any write
     * leaves a file that opens with the old link or the new one. On success d->link is updated.
     */
    int (*set_parent_link)(vh_disk *d, const vh_link_update *u, GError **err);
    /*
     * Optional. Starts reading, without waiting, the metadata that mapping the block(s) of
     * [voff, voff+len) will read (sector bitmaps not cached yet). Returns true when this disk
     * alone serves the whole range as far as it knows now (its parent will not be asked), so
     * that the chain's walk can stop. A hint: nothing is checked or reported.
     */
    bool (*prefetch)(vh_disk *d, uint64_t voff, uint64_t len);
    /* Optional. The descriptor from which read_data reads stored bytes unchanged, or -1 when
     * it changes them (a log replayed in memory, an overlay patch): lets a caller hand the
     * kernel the file range itself (splice) instead of reading it. */
    int (*data_fd)(vh_disk *d);
    /* Format-specific fields for `vhdheal info`. */
    void (*info)(vh_disk *d, vh_info_fn fn, void *ctx);
    void (*close)(vh_disk *d); /* frees d->priv */
} vh_disk_ops;

struct vh_disk {
    const vh_disk_ops *ops;
    vh_format format;
    vh_type type;
    uint64_t virtual_size;
    uint32_t logical_sector_size;  /* 512 for VHD */
    uint32_t physical_sector_size; /* 512 for VHD */
    uint32_t block_size;           /* 0 for a fixed VHD */
    vh_id id;                      /* VHD footer unique id; VHDX DataWriteGuid */
    vh_parent_link link;           /* meaningful for VH_TYPE_DIFFERENCING only */
    vh_file file;
    bool writable;
    GPtrArray *warnings; /* of char*: what was odd but not fatal (fallback copies, ...) */
    vh_disk *parent;     /* owned: closed with the child */
    void *priv;          /* the format's state */
};

typedef enum {
    VH_OPEN_READ = 0,
    VH_OPEN_WRITE = 1 << 0,
    /*
     * Identity, type, size, sector sizes and parent link only: a format may skip loading its
     * block tables, and then map/read/write fail. For scanning large stores quickly.
     */
    VH_OPEN_PROBE = 1 << 1,
} vh_open_flags;

/* What the file's bytes say it is (VH_FORMAT_NONE for anything else, including I/O errors). */
vh_format vh_sniff_file(vh_file *f);
/* A file shorter than this is never sniffed as a disk (the 8-byte VHDX identifier; a VHD needs
 * its 511- or 512-byte footer): its bytes need not be read to know. */
#define VH_SNIFF_MIN_SIZE 8
vh_format vh_sniff_path(const char *path);

/* Opens one disk file (no parents). ENOTSUP-coded error (EINVAL) when it is not a VHD/VHDX. */
int vh_disk_open(const char *path, vh_open_flags flags, vh_disk **out, GError **err);
/* The same for a file opened already (its hook, if any, stays installed); takes ownership. */
int vh_disk_open_file(vh_file *f, vh_open_flags flags, vh_disk **out, GError **err);
/*
 * For readers (the store's probe, the resolver's chain open): vh_disk_open_file, and when the
 * disk fails its checks, once more under a shared OFD read lock (waited for at most about two
 * seconds, then the first answer stands). A repairer holds the child's OFD write lock for its
 * whole rewrite, so a disk caught half rewritten by another process or host is read again once
 * the rewrite is over, not reported as corrupt. The lock is dropped before returning. Read-only
 * opens only (a write open is passed through). Takes ownership of f.
 */
int vh_disk_open_settled(vh_file *f, vh_open_flags flags, vh_disk **out, GError **err);
/* The same for a file vh_sniff_file found to be `fmt` (VHD or VHDX): its identifiers are not read
 * again, unless the first open fails and the file is read once more. */
int vh_disk_open_settled_as(vh_file *f, vh_format fmt, vh_open_flags flags, vh_disk **out,
                            GError **err);
/* The same by path. */
int vh_disk_open_settled_path(const char *path, vh_open_flags flags, vh_disk **out, GError **err);
void vh_disk_close(vh_disk *d);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(vh_disk, vh_disk_close)

/* Attaches an opened parent (ownership passes to the child). */
void vh_disk_set_parent(vh_disk *child, vh_disk *parent);

/* Reads virtual bytes through the chain. Range must lie within virtual_size. */
int vh_disk_read(vh_disk *d, void *buf, uint64_t voff, size_t len, GError **err);
/* 0 when [voff, voff+len) lies within a virtual disk of `size` bytes (the file `path`, for the
 * message); else -EINVAL with *err. */
int vh_virtual_range_check(const char *path, uint64_t voff, size_t len, uint64_t size,
                           GError **err);
/* Writes virtual bytes (any alignment): partial sectors are merged with the chain's content. */
int vh_disk_write(vh_disk *d, const void *buf, uint64_t voff, size_t len, GError **err);
int vh_disk_flush(vh_disk *d, GError **err);
/* The first run at voff through the whole chain (PARENT resolved down to DATA/ZERO), for views:
 * *owner is the disk whose file holds a DATA run. */
int vh_disk_map_chain(vh_disk *d, uint64_t voff, uint64_t max_len, vh_run *run, vh_disk **owner,
                      GError **err);
/* Starts reading, down the chain (all but its base) and without waiting, the metadata that
 * vh_disk_map_chain of [voff, voff+len) will read: one layer after another the reads would
 * wait for the disk in turn, and a cold read of a deep chain mostly waits for sector bitmaps. */
void vh_disk_prefetch_chain(vh_disk *d, uint64_t voff, uint64_t len);

void vh_disk_warn(vh_disk *d, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
void vh_locator_free(vh_locator *l);
vh_locator *vh_locator_new(vh_locator_kind kind, const char *path, int slot, uint64_t off,
                           uint32_t space);

/* --- creation --- */
typedef struct vh_create_opts {
    vh_format format;
    vh_type type;
    uint64_t size;                 /* virtual size in bytes (ignored for differencing) */
    uint32_t block_size;           /* 0 = format default (VHD 2 MiB, VHDX 32 MiB; 2 MiB diff) */
    uint32_t logical_sector_size;  /* VHDX: 512 or 4096 (0 = 512) */
    uint32_t physical_sector_size; /* VHDX: 512 or 4096 (0 = 4096) */
    /* differencing: */
    vh_disk *parent;             /* the opened parent (size, sector size, id are taken from it) */
    const char *parent_relative; /* Windows relative path, ".\name.vhdx" */
    const char *parent_absolute; /* Windows absolute path, or NULL */
    const char *parent_volume;   /* VHDX volume_path, or NULL */
    int64_t parent_mtime;        /* VHD parent time stamp source (unix seconds; 0 = write 0) */
} vh_create_opts;

int vh_disk_create(const char *path, const vh_create_opts *opts, GError **err);

#endif
