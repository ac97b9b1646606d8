/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * convert.h - Convert-VHD: a disk's virtual content, read through its whole chain, written into
 * one new standalone disk (VHD, VHDX or raw), skipping what reads as zeros.
 *
 * Contract: the source is an opened chain (vh_chain_open, read-only); only the ranges some member
 * stores (vh_disk_map_chain DATA runs) are read, and of those only the granules that are not all
 * zeros are written, so a dynamic or raw output stays as sparse as the source. The output is
 * created under a temporary name in DST's folder (vh_disk_create lays it out as Windows does; a
 * raw file gets lseek holes), flushed, and only then renamed to DST without replacing anything:
 * DST never names a half-written disk. DST must not exist (EEXIST). On any failure, or when
 * *cancel becomes non-zero (EINTR), the temporary file is removed.
 */
#ifndef VH_CONVERT_H
#define VH_CONVERT_H

#include <signal.h>

#include "disk.h"

/* Progress of a long operation: `done` of `total` bytes (convert: virtual bytes passed). */
typedef void (*vh_bytes_progress_fn)(void *ctx, uint64_t done, uint64_t total);

typedef struct vh_convert_opts {
    vh_format format;    /* VH_FORMAT_VHD or VH_FORMAT_VHDX; VH_FORMAT_NONE: raw */
    vh_type type;        /* VH_TYPE_FIXED or VH_TYPE_DYNAMIC (not for raw) */
    uint32_t block_size; /* 0: the format's default */
    vh_bytes_progress_fn progress;
    void *progress_ctx;
    volatile sig_atomic_t *cancel; /* may be NULL */
} vh_convert_opts;

/* The output format a file name asks for: .vhd, .vhdx, .raw/.img (*raw true); false otherwise. */
bool vh_convert_format_from_name(const char *dst, vh_format *format, bool *raw);

int vh_convert(vh_disk *src, const char *dst, const vh_convert_opts *opts, GError **err);

#endif
