/* SPDX-License-Identifier: GPL-2.0-or-later */
/* vhdx.h - the VHDX format (MS-VHDX; doc/formats.md §2). */
#ifndef VH_VHDX_H
#define VH_VHDX_H

#include "disk.h"

/* True when the file starts with the "vhdxfile" identifier. */
bool vh_vhdx_sniff(vh_file *f);
/* Opens a VHDX, replaying its log first (in memory when read-only); takes ownership of *f. */
int vh_vhdx_open(vh_file *f, vh_open_flags flags, vh_disk **out, GError **err);
int vh_vhdx_create(const char *path, const vh_create_opts *opts, GError **err);

#endif
