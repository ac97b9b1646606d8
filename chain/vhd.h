/* SPDX-License-Identifier: GPL-2.0-or-later */
/* vhd.h - the VHD (v1) format: fixed, dynamic and differencing disks (doc/formats.md §1). */
#ifndef VH_VHD_H
#define VH_VHD_H

#include "disk.h"

/* True when the file has a "conectix" footer at its end or a copy at offset 0. */
bool vh_vhd_sniff(vh_file *f);
/* Opens a VHD; takes ownership of *f (closed on failure too). */
int vh_vhd_open(vh_file *f, vh_open_flags flags, vh_disk **out, GError **err);
int vh_vhd_create(const char *path, const vh_create_opts *opts, GError **err);

#endif
