// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * fuzz_vhdx_log.c - VHDX log replay: finding the active sequence in a log region, then replaying
 * it into a file and as an in-memory overlay. Input:
 *
 *   LogGuid (16 bytes, as stored) | u64le file size | u8 flags | 7 bytes unused | the log
 *
 * The log is padded with zeros to a 4 KiB multiple. With FZ_FIX_CRC every entry's checksum is
 * recomputed first (so that mutations reach the checks behind the CRC). Oracle: for a file of
 * zeros, the replay written into it (vhdx_replay_apply) and the overlay (vhdx_replay_overlay)
 * give the same bytes at every updated offset.
 */
#include "fuzzfile.h"
#include "vhdx_log.h"

#define PREFIX 32
#define LOG_BASE VH_MIB

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Replays r into a sparse file of file_size zeros and compares it with the overlay. */
static void check_apply(const vhdx_replay *r, uint64_t file_size)
{
    if (file_size > FZ_FILE_MAX || r->end > 256 * VH_MIB)
        return; /* keep the fuzzer's memory small: the oracle needs only small files */
    int fd = memfd_create("fuzz-log.vhdx", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)file_size) < 0) {
        if (fd >= 0)
            close(fd);
        return;
    }
    vh_file f = {.fd = fd, .path = g_strdup("fuzz-log.vhdx"), .writable = true, .size = file_size};
    g_autoptr(GError) err = NULL;
    if (vhdx_replay_apply(&f, r, &err) == 0) {
        if (f.size != MAX(file_size, r->end))
            fz_fail("file size after replay", 0, f.size, r->end);
        uint8_t got[VHDX_LOG_SECTOR], want[VHDX_LOG_SECTOR];
        for (guint i = 0; i < r->ops->len && i < 64; i++) {
            uint64_t off = g_array_index(r->ops, vhdx_log_op, i).off;
            memset(want, 0, sizeof want);
            vhdx_replay_overlay(r, want, sizeof want, off);
            if (pread(fd, got, sizeof got, (off_t)off) != (ssize_t)sizeof got)
                fz_fail("replayed range unreadable", off, i, f.size);
            if (memcmp(got, want, sizeof got) != 0)
                fz_fail("replay and overlay differ", off, i, r->ops->len);
        }
    }
    vh_file_close(&f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < PREFIX || size - PREFIX > VHDX_LOG_MAX)
        return 0;
    vh_id guid = vh_id_from_guid_le(data);
    uint64_t file_size = vh_le64(data + 16);
    uint8_t flags = data[24];
    uint32_t len = (uint32_t)(size - PREFIX);
    uint32_t padded =
        MAX(VHDX_LOG_SECTOR, (len + VHDX_LOG_SECTOR - 1) / VHDX_LOG_SECTOR * VHDX_LOG_SECTOR);
    g_autofree uint8_t *log = g_malloc0(padded);
    memcpy(log, data + PREFIX, len);
    if (flags & FZ_FIX_CRC)
        fz_fix_log_crcs(log, padded);
    vhdx_replay r;
    g_autoptr(GError) err = NULL;
    if (vhdx_log_find(log, padded, LOG_BASE, &guid, file_size, &r, &err) < 0)
        return 0;
    if (r.end < file_size || r.end < r.last)
        fz_fail("replay end below the file size or LastFileOffset", r.end, file_size, r.last);
    check_apply(&r, file_size);
    vhdx_replay_clear(&r);
    return 0;
}
