#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""vhdx_chains: VHDX differencing chains of depth 1, 3 and 10 with random writes at every level.

Each level is written through `vhdheal write` (sector-granular, unaligned and block-spanning
writes), then frozen by creating its child. At the end every level is read three ways and must
be equal byte for byte: `vhdheal read` (the engine following relative_path), the test's reference
buffer, and libvhdi (pyvhdi with the parents set).
"""
import os
import random
import sys
import tempfile

import vhdtest as t

MIB = 1024 * 1024
SIZE = 24 * MIB + 7 * 512  # not a multiple of any block size


def write(path, ref, off, data, tmp):
    src = os.path.join(tmp, "in.bin")
    with open(src, "wb") as f:
        f.write(data)
    t.vhdheal("write", path, off, src)
    ref[off:off + len(data)] = data


def random_writes(path, ref, rng, tmp, count):
    for _ in range(count):
        kind = rng.random()
        if kind < 0.3:  # single sectors
            off, length = rng.randrange(0, SIZE // 512) * 512, 512
        elif kind < 0.6:  # unaligned, small
            length = rng.randint(1, 5000)
            off = rng.randrange(0, SIZE - length)
        else:  # large, spanning block boundaries
            length = rng.randint(1, 3 * MIB)
            off = rng.randrange(0, SIZE - length)
        write(path, ref, off, rng.randbytes(length), tmp)


def chain(depth, rng, tmp):
    base = os.path.join(tmp, f"d{depth}-0.vhdx")
    t.vhdheal("create", "--format", "vhdx", "--size", SIZE, "--block-size", "1M", base)
    ref = bytearray(SIZE)
    levels = [(base, None)]
    random_writes(base, ref, rng, tmp, 6)
    snaps = [bytes(ref)]
    for k in range(1, depth + 1):
        child = os.path.join(tmp, f"d{depth}-{k}.avhdx")
        t.vhdheal("create", "--parent", levels[-1][0], child)
        levels.append((child, levels[-1][0]))
        random_writes(child, ref, rng, tmp, 6)
        snaps.append(bytes(ref))
    bad = 0
    for k, (path, _) in enumerate(levels):
        ours = t.read_all(path)
        theirs = t.libvhdi_read([p for p, _ in reversed(levels[:k + 1])])
        if ours != snaps[k]:
            print(f"FAIL: depth {depth} level {k}: vhdheal read differs from the reference")
            bad += 1
        if theirs != snaps[k]:
            print(f"FAIL: depth {depth} level {k}: libvhdi differs from the reference")
            bad += 1
    print(f"{'ok' if not bad else 'FAIL'}: chain of depth {depth}, {len(levels)} files")
    return bad


def main():
    rng = random.Random(1125)
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for depth in (1, 3, 10):
            bad += chain(depth, rng, tmp)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
