#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""vhd_interop.py - every VHD `vhdheal create` writes is read the same way by independent readers:
vhdiinfo (type, size, identifier, parent identifier and file name) for fixed, dynamic and
differencing disks from 1 MiB to 2040 GiB (sparse) with 512 KiB .. 2 MiB blocks; qemu-img info
shows the size of fixed and dynamic disks, and qemu-img convert (footer size, doc/formats.md §4a)
gives the same bytes as `vhdheal read` after random writes."""
import os
import random
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vhdtest as t  # noqa: E402

MIB = 1 << 20
GIB = 1 << 30
TYPES = {"Fixed": "fixed", "Dynamic": "dynamic", "Differential": "differencing"}


def check_vhdiinfo(path, expect_type, size, parent=None):
    me = t.info(path)
    f = t.vhdiinfo(path)
    name = os.path.basename(path)
    t.check(TYPES.get(f.get("Disk type")) == expect_type == me["type"],
            f"{name}: type {f.get('Disk type')} / {me['type']} != {expect_type}")
    t.check(t.vhdi_media_size(f) == size == me["virtual_size"],
            f"{name}: size vhdiinfo {f.get('Media size')} / ours {me['virtual_size']} != {size}")
    t.check(f.get("Identifier") == me["id"], f"{name}: id {f.get('Identifier')} != {me['id']}")
    t.check(me["warnings"] == [], f"{name}: warnings {me['warnings']}")
    if parent:
        pinfo = t.info(parent)
        t.check(f.get("Parent identifier") == pinfo["id"] == me["parent"]["id"],
                f"{name}: parent id {f.get('Parent identifier')} != {pinfo['id']}")
        t.check(f.get("Parent filename") == os.path.basename(parent),
                f"{name}: parent file name {f.get('Parent filename')}")
    return me


def check_qemu_size(path, size):
    q = t.qemu_info(path)
    t.check(q["virtual-size"] == size,
            f"{os.path.basename(path)}: qemu-img virtual size {q['virtual-size']} != {size}")


def random_writes(path, size, ref, rng, count=6):
    for _ in range(count):
        off = rng.randrange(0, size - 1)
        n = rng.randrange(1, min(size - off, 3 * MIB) + 1)
        data = rng.randbytes(n)
        ref[off:off + n] = data
        t.vhdheal("write", path, off, input=data)


def metadata_cases(d):
    """Sizes up to the VHD limit, sparse: only metadata is compared."""
    cases = [("fixed", 1 * MIB, None), ("fixed", 127 * GIB, None),
             ("dynamic", 1 * MIB, 512 * 1024), ("dynamic", 127 * GIB, 2 * MIB),
             ("dynamic", 2040 * GIB, 2 * MIB), ("dynamic", 2040 * GIB, 512 * 1024),
             ("dynamic", 100 * MIB + 3 * 512, 1 * MIB)]
    for kind, size, bs in cases:
        p = os.path.join(d, f"{kind}-{size}-{bs}.vhd")
        args = ["create", "--format", "vhd", "--type", kind, "--size", size]
        if bs:
            args += ["--block-size", bs]
        t.vhdheal(*args, p)
        me = check_vhdiinfo(p, kind, size)
        check_qemu_size(p, size)
        if bs:
            t.check(me["block_size"] == bs, f"{p}: block size {me['block_size']}")
            child = p + ".child.vhd"
            t.vhdheal("create", "--parent", p, child)
            check_vhdiinfo(child, "differencing", size, parent=p)
            t.check(os.path.getsize(child) % 4096 == 0, f"{child}: not a multiple of 4 KiB")
        t.check(os.stat(p).st_blocks * 512 < 64 * MIB, f"{p}: not sparse")
        for f in os.listdir(d):
            os.unlink(os.path.join(d, f))
    # 2 TiB is past the VHD limit (0xFF000000 sectors): refused, nothing left behind
    big = os.path.join(d, "2t.vhd")
    r = t.vhdheal("create", "--format", "vhd", "--size", 2 * 1024 * GIB, big, ok=False)
    t.check(r.returncode == 2 and b"2040 GiB" in r.stderr, f"2 TiB: {r.returncode} {r.stderr}")
    t.check(not os.path.exists(big), "2 TiB: a file was left behind")


def content_cases(d, rng):
    for kind, size, bs in [("fixed", 1 * MIB, None), ("fixed", 9 * MIB + 512, None),
                           ("dynamic", 1 * MIB, 512 * 1024), ("dynamic", 7 * MIB, 1 * MIB),
                           ("dynamic", 12 * MIB + 1024, 2 * MIB)]:
        p = os.path.join(d, f"c-{kind}-{size}.vhd")
        args = ["create", "--format", "vhd", "--type", kind, "--size", size]
        if bs:
            args += ["--block-size", bs]
        t.vhdheal(*args, p)
        ref = bytearray(size)
        random_writes(p, size, ref, rng)
        ours = t.read_all(p)
        t.check(ours == ref, f"{p}: vhdheal read differs from the reference")
        theirs = t.qemu_raw(p, p + ".raw")
        t.check(theirs == ours, f"{p}: qemu-img convert differs from vhdheal read")
        check_vhdiinfo(p, kind, size)
        check_qemu_size(p, size)
        if kind == "dynamic":
            # a dynamic disk has no libvhdi bitmap trouble (all-ones bitmaps, doc/formats.md §4.12)
            t.check(t.libvhdi_read([p]) == ours, f"{p}: libvhdi differs from vhdheal read")
            t.check(os.path.getsize(p) % 4096 == 0, f"{p}: not a multiple of 4 KiB (Windows)")


def main():
    rng = random.Random(1234)
    with tempfile.TemporaryDirectory(prefix="vhd_interop_") as d:
        metadata_cases(d)
        content_cases(d, rng)
    t.finish("vhd_interop")


if __name__ == "__main__":
    main()
