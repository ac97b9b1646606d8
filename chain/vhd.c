// SPDX-License-Identifier: GPL-2.0-or-later
/* vhd.c - PLACEHOLDER until the VHD engine lands: recognises nothing, creates nothing. */
#include "vhd.h"

bool vh_vhd_sniff(vh_file *f)
{
    return false;
}

int vh_vhd_open(vh_file *f, vh_open_flags flags, vh_disk **out, GError **err)
{
    vh_file_close(f);
    return vh_fail(err, ENOTSUP, "VHD is not implemented yet");
}

int vh_vhd_create(const char *path, const vh_create_opts *opts, GError **err)
{
    return vh_fail(err, ENOTSUP, "VHD is not implemented yet");
}
