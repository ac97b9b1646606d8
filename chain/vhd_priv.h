/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * vhd_priv.h - what the VHD engine's files (vhd.c: open, map, I/O, info; vhd_create.c;
 * vhd_link.c: parent-link rewrite) share: the open disk's state and a few helpers.
 */
#ifndef VH_VHD_PRIV_H
#define VH_VHD_PRIV_H

#include "vhd.h"
#include "tcache.h"
#include "vhd_format.h"

typedef struct vhd_slot {
    bool used;            /* platform code != 0 */
    bool valid;           /* space decodable, data inside the file, no overlap */
    uint64_t space_bytes; /* decoded Platform Data Space */
} vhd_slot;

typedef struct vhd_priv {
    vhd_footer footer;     /* the copy in use */
    const char *footer_at; /* "end of file" or "offset 0 (copy)" */
    /*
     * Where the tail footer lives, and so where the next allocation starts (doc/formats.md §4.13):
     * the tail footer's offset when the tail has a cookie, else the file size rounded up to a
     * sector (a damaged tail is left alone).
     */
    uint64_t footer_off;
    bool tail_ok;       /* tail footer present with a good checksum */
    bool head_present;  /* a "conectix" copy at offset 0 */
    bool head_ok;       /* ... with a good checksum */
    bool head_same;     /* ... byte-identical to the footer in use */
    bool integrity_bad; /* a checksum or locator problem: read-only opens only */
    /* Open only: the 1 KiB after the footer copy, read with it (where the dynamic disk header
     * nearly always is: data offset 512), or NULL. */
    uint8_t *head_ahead;
    /* dynamic / differencing */
    vhd_header hdr;
    uint64_t header_off;
    uint32_t bitmap_bytes;
    uint32_t bat_entries;
    uint64_t bat_bytes;  /* on-disk BAT region, rounded up to a sector */
    uint32_t *bat;       /* the whole BAT; NULL for fixed disks, probe opens, or when paged */
    vh_table *bat_table; /* a large BAT of a read-only open, by pages (vhd.c) */
    uint32_t allocated;  /* allocated BAT entries */
    vhd_slot slots[VHD_LOCATORS];
    GHashTable *bitmaps; /* block index -> cached bitmap (bitmap_bytes) */
} vhd_priv;

static inline vhd_priv *vhd_p(vh_disk *d)
{
    return d->priv;
}

/* Rebuilds d->link (parent id, time stamp, locators) from the header and its locator data. */
int vhd_load_link(vh_disk *d, GError **err);

/*
 * Moves the tail footer to new_off (> the current one), Windows-style extending the file; the
 * head copy is left alone (its content does not change).
 */
int vhd_move_footer(vh_disk *d, uint64_t new_off, GError **err);

/* The last component of a Windows path ("name.vhd" of ".\dir\name.vhd"), for the Parent
 * Unicode Name. */
static inline const char *vhd_file_name_of(const char *winpath)
{
    const char *b = winpath;
    for (const char *c = winpath; *c; c++)
        if (*c == '\\' || *c == '/')
            b = c + 1;
    return b;
}

/* Encodes text for a locator (UTF-16LE for W2ru/W2ku); returns the byte length or -errno. */
ssize_t vhd_encode_locator(uint32_t code, const char *text, uint8_t *out, size_t cap);
/* Puts a path into the Parent Unicode Name field (UTF-16BE, zero-padded); -ENAMETOOLONG. */
int vhd_encode_parent_name(const char *text, uint8_t name[VHD_NAME_BYTES]);

int vhd_set_parent_link(vh_disk *d, const vh_link_update *u, GError **err);

#endif
