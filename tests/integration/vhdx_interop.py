#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""vhdx_interop: every VHDX that vhdheal writes is read the same by independent readers.

For fixed, dynamic and differencing disks over several block and sector sizes: vhdiinfo reports
the fields vhdheal reports (type, size, sector size, identifier, parent identifier and file
name); pyvhdi reads the same bytes; for fixed and dynamic disks `qemu-img check` finds no error
and `qemu-img convert -O raw` equals `vhdheal read`.
"""
import os
import random
import subprocess
import tempfile

import vhdtest as t
from vhdtest import check, info

MIB = 1024 * 1024


def random_writes(path, size, rng, count, granule):
    for _ in range(count):
        length = rng.randint(1, 6) * granule + rng.choice([0, 0, 17])
        off = rng.randrange(0, size - length)
        if rng.random() < 0.5:
            off -= off % granule
        data = rng.randbytes(length)
        with tempfile.NamedTemporaryFile() as tf:
            tf.write(data)
            tf.flush()
            t.vhdheal("write", path, off, tf.name)


def compare_with_qemu(path, ours, tmp):
    r = subprocess.run(["qemu-img", "check", "-f", "vhdx", path], capture_output=True)
    check(r.returncode == 0, f"qemu-img check {path}: {r.stdout.decode()} {r.stderr.decode()}")
    raw = os.path.join(tmp, "q.raw")
    t.run("qemu-img", "convert", "-f", "vhdx", "-O", "raw", path, raw)
    with open(raw, "rb") as f:
        theirs = f.read()
    os.unlink(raw)
    check(theirs == ours, f"qemu-img convert of {path} differs from vhdheal read")


def compare_fields(path, parent=None):
    ours = info(path)
    v = t.vhdiinfo(path)
    want_type = {"fixed": "Fixed", "dynamic": "Dynamic", "differencing": "Differential"}[ours["type"]]
    check(v.get("Disk type") == want_type, f"{path}: vhdiinfo type {v.get('Disk type')}")
    check(f"({ours['virtual_size']} bytes)" in v.get("Media size", ""),
          f"{path}: vhdiinfo size {v.get('Media size')} vs {ours['virtual_size']}")
    check(v.get("Bytes per sector") == f"{ours['logical_sector_size']} bytes",
          f"{path}: vhdiinfo sector size {v.get('Bytes per sector')}")
    check(v.get("Identifier") == ours["id"], f"{path}: vhdiinfo id {v.get('Identifier')}")
    if parent:
        check(v.get("Parent identifier") == ours["parent"]["id"] == info(parent)["id"],
              f"{path}: parent id {v.get('Parent identifier')}")
        # libvhdi 20210425 names the parent by absolute_win32_path or volume_path only; our
        # children made without an absolute path carry relative_path alone
        locs = {l["kind"]: l["path"] for l in ours["parent"]["locators"]}
        want = locs.get("absolute_win32_path", locs.get("volume_path"))
        check(v.get("Parent filename") == want, f"{path}: parent filename {v.get('Parent filename')}")
    return ours


def main():
    rng = random.Random(20261125)
    cases = [
        # (type, size, block size, logical sector size)
        ("dynamic", 40 * MIB, "32M", 512),
        ("dynamic", 24 * MIB + 3 * 4096, "1M", 4096),
        ("dynamic", 20 * MIB, "2M", 512),
        ("dynamic", 300 * MIB, "256M", 512),
        ("fixed", 10 * MIB, "2M", 512),
        ("fixed", 6 * MIB + 4096, "1M", 4096),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (typ, size, bs, lss) in enumerate(cases):
            path = os.path.join(tmp, f"d{i}.vhdx")
            t.vhdheal("create", "--format", "vhdx", "--type", typ, "--block-size", bs,
                      "--logical-sector-size", lss, "--size", size, path)
            compare_fields(path)
            random_writes(path, size, rng, 12, lss)
            ours = t.read_all(path)
            compare_fields(path)
            check(t.libvhdi_read([path]) == ours, f"{path}: pyvhdi content differs")
            if lss == 512:  # qemu's vhdx driver supports 512-byte logical sectors only
                compare_with_qemu(path, ours, tmp)
            print(f"ok: {typ} {size} bytes, {bs} blocks, {lss}-byte sectors")
            # a differencing child of it (2 MiB blocks, parent's sector size)
            child = os.path.join(tmp, f"d{i}-child.avhdx")
            t.vhdheal("create", "--parent", path, child)
            compare_fields(child, parent=path)
            random_writes(child, size, rng, 12, lss)
            ours = t.read_all(child)
            compare_fields(child, parent=path)
            check(t.libvhdi_read([child, path]) == ours, f"{child}: pyvhdi chain content differs")
            print(f"ok: its differencing child")
    t.finish("vhdx_interop")


if __name__ == "__main__":
    main()
