// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * fuzz_overlay_file.c - the patch file of an overlay folder (chain/overlay_file.c), untrusted
 * input: anyone who may write the folder, or a crash, made it. The input is the file's bytes,
 * given to vh_patch_file_decode.
 *
 * Oracles: a file that decodes names a store-relative path (vh_patch_file_rel_ok), holds at most
 * VH_PATCH_MAX_BYTES in ranges that are in order, disjoint and inside the patched size, with the
 * visible part of the base no larger than the base; and encoding what was decoded gives back the
 * input byte for byte (the format has one spelling for each patch set). Each input is tried as
 * it is and with its last 4 bytes replaced by the CRC-32C of the rest, so that mutations reach
 * the field checks behind the checksum.
 *
 * The same bytes are also given to vh_overlay_marker_decode (the folder's marker, doc/design.md
 * "The marker"): a marker that decodes names an absolute path without NUL, and encoding it gives
 * back the input byte for byte (one spelling per marker).
 */
#include <stdio.h>
#include <stdlib.h>

#include "overlay_file.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what)
{
    fprintf(stderr, "fuzz oracle: %s\n", what);
    abort();
}

static void check_ranges(const vh_patch *p)
{
    uint64_t prev_end = 0;
    for (guint i = 0; i < vh_patch_count(p); i++) {
        uint64_t off;
        size_t len;
        const uint8_t *d;
        vh_patch_range(p, i, &off, &len, &d);
        if (len == 0 || off < prev_end || off + len > vh_patch_size(p))
            fail("a range is empty, out of order, overlapping or past the patched size");
        prev_end = off + len;
    }
    if (vh_patch_bytes(p) > VH_PATCH_MAX_BYTES)
        fail("more bytes than a patch set may hold");
    if (vh_patch_visible(p) > vh_patch_base_size(p) || vh_patch_visible(p) > vh_patch_size(p))
        fail("the visible part passes the base or the patched size");
}

static void one(const uint8_t *data, size_t size)
{
    vh_patch_origin o;
    g_autoptr(GError) err = NULL;
    g_autoptr(vh_patch) p = vh_patch_file_decode(data, size, "fuzz", &o, &err);
    if (!p) {
        if (!err || o.rel)
            fail("a refused file without a message, or with an origin");
        return;
    }
    if (!vh_patch_file_rel_ok(o.rel))
        fail("the path is not store-relative");
    check_ranges(p);
    size_t len = 0;
    g_autofree uint8_t *again = vh_patch_file_encode(p, &o, &len, NULL);
    if (!again || len != size || memcmp(again, data, size) != 0)
        fail("encoding what was decoded does not give the input back");
    vh_patch_origin_clear(&o);
}

static void marker(const uint8_t *data, size_t size)
{
    vh_overlay_marker m;
    g_autoptr(GError) err = NULL;
    if (vh_overlay_marker_decode(data, size, "fuzz", &m, &err) < 0) {
        if (!err || m.store)
            fail("a refused marker without a message, or with a store");
        return;
    }
    if (m.store[0] != '/' || strlen(m.store) >= VH_PATCH_FILE_MAX_PATH)
        fail("the marker's store is not an absolute path");
    size_t len = 0;
    g_autofree char *again = vh_overlay_marker_encode(&m, &len, NULL);
    if (!again || len != size || memcmp(again, data, size) != 0)
        fail("encoding the decoded marker does not give the input back");
    vh_overlay_marker_clear(&m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    marker(data, size);
    one(data, size);
    if (size >= 4) {
        g_autofree uint8_t *fixed = g_memdup2(data, size);
        vh_put_le32(fixed + size - 4, vh_crc32c(fixed, size - 4));
        one(fixed, size);
    }
    return 0;
}
