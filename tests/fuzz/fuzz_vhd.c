// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * fuzz_vhd.c - the VHD open path from bytes: footer (and its copy), dynamic header, BAT, parent
 * locators and the Parent Unicode Name, then sector bitmaps and data through map/read, and, for
 * inputs that ask, writes and a new parent link (input format: fuzzfile.h).
 */
#include "fuzzfile.h"
#include "vhd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    vh_file f;
    uint8_t flags;
    if (!fz_file(data, size, "fuzz.vhd", &f, &flags))
        return 0;
    vh_disk *d = NULL;
    g_autoptr(GError) err = NULL;
    if (vh_vhd_open(&f, fz_open_flags(flags), &d, &err) == 0) {
        fz_exercise(d, flags);
        vh_disk_close(d);
    }
    return 0;
}
