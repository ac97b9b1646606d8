// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * fuzz_vhdx.c - the VHDX open path from bytes: identifier, both headers, both region tables,
 * the log (replayed in memory, or into the file when the input asks to open for writing),
 * metadata table and items, parent locator, BAT and sector bitmaps, then map/read, writes and a
 * new parent link through the log (input format: fuzzfile.h). With FZ_FIX_CRC the checksums of
 * the headers, region tables and log entries are recomputed first, so that mutations of the
 * fields behind them reach the engine's checks instead of failing the CRC.
 */
#include "fuzzfile.h"
#include "vhdx.h"
#include "vhdx_format.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The log region named by the header at `off`, checksums recomputed in place. */
static void fix_log(vh_file *f, uint64_t off)
{
    uint8_t h[80];
    if (pread(f->fd, h, sizeof h, (off_t)off) != (ssize_t)sizeof h || memcmp(h, "head", 4))
        return;
    uint32_t len = vh_le32(h + 68);
    uint64_t log_off = vh_le64(h + 72);
    if (len == 0 || len > 16 * VH_MIB || !vh_range_ok(log_off, len, f->size))
        return;
    g_autofree uint8_t *log = g_malloc(len);
    if (pread(f->fd, log, len, (off_t)log_off) != (ssize_t)len)
        return;
    fz_fix_log_crcs(log, len);
    if (pwrite(f->fd, log, len, (off_t)log_off) != (ssize_t)len)
        return;
}

static void fix_crcs(vh_file *f)
{
    if (f->size < VHDX_HEADER_SECTION)
        return;
    fix_log(f, VHDX_HDR1_OFF);
    fix_log(f, VHDX_HDR2_OFF);
    fz_fix_crc(f->fd, VHDX_HDR1_OFF, VHDX_HDR_SIZE, 4);
    fz_fix_crc(f->fd, VHDX_HDR2_OFF, VHDX_HDR_SIZE, 4);
    fz_fix_crc(f->fd, VHDX_RT1_OFF, VHDX_RT_SIZE, 4);
    fz_fix_crc(f->fd, VHDX_RT2_OFF, VHDX_RT_SIZE, 4);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    vh_file f;
    uint8_t flags;
    if (!fz_file(data, size, "fuzz.vhdx", &f, &flags))
        return 0;
    if (flags & FZ_FIX_CRC)
        fix_crcs(&f);
    vh_disk *d = NULL;
    g_autoptr(GError) err = NULL;
    if (vh_vhdx_open(&f, fz_open_flags(flags), &d, &err) == 0) {
        fz_exercise(d, flags);
        vh_disk_close(d);
    }
    return 0;
}
