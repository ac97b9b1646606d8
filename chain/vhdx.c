// SPDX-License-Identifier: GPL-2.0-or-later
/* vhdx.c - PLACEHOLDER until the VHDX engine lands: recognises nothing, creates nothing. */
#include "vhdx.h"

bool vh_vhdx_sniff(vh_file *f)
{
    return false;
}

int vh_vhdx_open(vh_file *f, vh_open_flags flags, vh_disk **out, GError **err)
{
    vh_file_close(f);
    return vh_fail(err, ENOTSUP, "VHDX is not implemented yet");
}

int vh_vhdx_create(const char *path, const vh_create_opts *opts, GError **err)
{
    return vh_fail(err, ENOTSUP, "VHDX is not implemented yet");
}
