#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""convert.py - `vhdheal convert` (Convert-VHD): chains of depth 1 and 3, VHD and VHDX (512 and
4096-byte sectors), random unaligned writes at every level, converted to VHD, VHDX and raw, fixed
and dynamic. The output equals `vhdheal read` of the source as qemu-img and libvhdi read it,
qemu-img check finds no error in a VHDX, vhdiinfo accepts every disk; a hole-heavy disk gives a
small file; an existing DST is refused and no temporary file is left behind."""
import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import vhdtest as t

MIB = 1024 * 1024
SIZE = 40 * MIB


def sha(b):
    return hashlib.sha256(b).hexdigest()


def random_writes(path, ref, rng, count=5):
    for _ in range(count):
        off = rng.randrange(0, len(ref) - 1)
        n = rng.randrange(1, min(len(ref) - off, 3 * MIB) + 1)
        data = rng.randbytes(n)
        ref[off:off + n] = data
        t.vhdheal("write", path, off, input=data)


def make_chain(d, fmt, depth, rng, lss=512):
    """A dynamic base and depth-1 children, written at every level; the top and the reference."""
    ext = ".vhd" if fmt == "vhd" else ".vhdx"
    base = os.path.join(d, f"base{ext}")
    args = ["create", "--format", fmt, "--size", SIZE, base]
    if fmt == "vhdx":
        args[1:1] = ["--logical-sector-size", lss]
    t.vhdheal(*args)
    ref = bytearray(SIZE)
    random_writes(base, ref, rng)
    top = base
    for k in range(1, depth):
        child = os.path.join(d, f"c{k}.avhd" + ("x" if fmt == "vhdx" else ""))
        t.vhdheal("create", "--parent", top, child)
        random_writes(child, ref, rng)
        top = child
    return top, ref


def qemu_read(path, fmt, tmp):
    raw = tmp + ".qemu.raw"
    if fmt == "vhd":
        data = t.qemu_raw(path, raw)
    else:
        t.run("qemu-img", "convert", "-f", "vhdx", "-O", "raw", path, raw)
        with open(raw, "rb") as f:
            data = f.read()
    os.unlink(raw)
    return data


def check_output(out, fmt, typ, want, name, lss):
    if fmt == "raw":
        with open(out, "rb") as f:
            t.check(sha(f.read()) == want, f"{name}: raw output differs from the source")
        return
    me = t.info(out)
    t.check(me["format"] == fmt and me["type"] == typ and me["parent"] is None,
            f"{name}: info says {me['format']} {me['type']}")
    t.check(sha(t.read_all(out)) == want, f"{name}: vhdheal read of the output differs")
    qemu = fmt == "vhd" or lss == 512  # qemu's vhdx driver supports 512-byte sectors only
    if qemu:
        t.check(sha(qemu_read(out, fmt, out)) == want, f"{name}: qemu-img reads other content")
    if fmt == "vhdx" and qemu:
        r = subprocess.run(["qemu-img", "check", "-f", "vhdx", out], capture_output=True)
        t.check(r.returncode == 0, f"{name}: qemu-img check: {r.stdout.decode()}")
    elif fmt == "vhd":
        t.check(t.qemu_info(out)["virtual-size"] == SIZE, f"{name}: qemu-img info size")
    v = t.vhdiinfo(out)
    t.check(t.vhdi_media_size(v) == SIZE, f"{name}: vhdiinfo media size {v.get('Media size')}")
    t.check(v.get("Disk type", "").lower() == typ, f"{name}: vhdiinfo type {v.get('Disk type')}")
    if typ == "dynamic" or fmt == "vhdx":
        # libvhdi reads these right (doc/formats.md §4a: no all-ones bitmap trouble)
        t.check(sha(t.libvhdi_read([out])) == want, f"{name}: libvhdi reads other content")


def conversions(d, rng):
    cases = [("vhd", 1, 512), ("vhd", 3, 512), ("vhdx", 1, 512), ("vhdx", 3, 512),
             ("vhdx", 3, 4096)]
    for fmt, depth, lss in cases:
        sub = os.path.join(d, f"{fmt}{depth}-{lss}")
        os.mkdir(sub)
        top, ref = make_chain(sub, fmt, depth, rng, lss)
        want = sha(ref)
        t.check(sha(t.read_all(top)) == want, f"{sub}: vhdheal read differs from the reference")
        for ofmt, typ in [("vhdx", "dynamic"), ("vhdx", "fixed"), ("vhd", "dynamic"),
                          ("vhd", "fixed"), ("raw", None)]:
            name = f"{os.path.basename(sub)} -> {ofmt} {typ or ''}"
            out = os.path.join(d, "out", f"{os.path.basename(sub)}-{typ}.{ofmt}")
            args = ["convert", top, out] + (["--type", typ] if typ else [])
            t.vhdheal(*args)
            check_output(out, ofmt, typ, want, name, lss)
        # the default format comes from DST's extension; --format overrides it
        img = os.path.join(d, "out", f"{os.path.basename(sub)}.img")
        t.vhdheal("convert", top, img)
        with open(img, "rb") as f:
            t.check(sha(f.read()) == want, f"{sub}: .img output differs")
        odd = os.path.join(d, "out", f"{os.path.basename(sub)}.disk")
        t.check(t.vhdheal("convert", top, odd, ok=False).returncode == 2,
                f"{sub}: an unknown extension without --format is refused")
        t.vhdheal("convert", "--format", "vhdx", top, odd)
        t.check(t.info(odd)["format"] == "vhdx", f"{sub}: --format vhdx")


def holes(d):
    """1 GiB virtual, a few MiB of data and 8 MiB of written zeros: the outputs stay small."""
    big = 1024 * MIB
    src = os.path.join(d, "holes.vhdx")
    t.vhdheal("create", "--size", big, src)
    t.vhdheal("write", src, 5 * MIB + 3, input=b"x" * (2 * MIB))
    t.vhdheal("write", src, 700 * MIB, input=bytes(8 * MIB))  # stored, but all zeros
    t.vhdheal("write", src, big - 1000, input=b"end" * 300)
    want = sha(t.read_all(src))
    for ext, limit in [("vhdx", 40 * MIB), ("vhd", 12 * MIB), ("raw", 8 * MIB)]:
        out = os.path.join(d, "out", f"holes.{ext}")
        t.vhdheal("convert", src, out)
        used = os.stat(out).st_blocks * 512
        t.check(used < limit, f"holes -> {ext}: {used} bytes on disk, want < {limit}")
        data = t.read_all(out) if ext != "raw" else open(out, "rb").read()
        t.check(sha(data) == want, f"holes -> {ext}: content differs")


def refusals(d):
    src = os.path.join(d, "vhd1-512", "base.vhd")
    dst = os.path.join(d, "out", "exists.vhdx")
    with open(dst, "wb") as f:
        f.write(b"keep me")
    r = t.vhdheal("convert", src, dst, ok=False)
    t.check(r.returncode == 2 and b"exists" in r.stderr, f"existing DST: {r.stderr!r}")
    t.check(open(dst, "rb").read() == b"keep me", "existing DST was changed")
    r = t.vhdheal("convert", "--type", "fixed", src, os.path.join(d, "out", "x.raw"), ok=False)
    t.check(r.returncode == 2, "raw with --type is a usage error")
    r = t.vhdheal("convert", src, os.path.join(d, "nowhere", "x.vhdx"), ok=False)
    t.check(r.returncode == 2, "a DST in a missing folder fails")
    # progress: only with --progress when stderr is not a terminal
    r = t.vhdheal("convert", src, os.path.join(d, "out", "quiet.vhdx"))
    t.check(r.stderr == b"", f"progress without a terminal: {r.stderr!r}")
    r = t.vhdheal("convert", "--progress", src, os.path.join(d, "out", "shown.vhdx"))
    t.check(b"convert: " in r.stderr and b"(100%)" in r.stderr and b"left" in r.stderr,
            f"--progress: {r.stderr!r}")
    left = [n for n in os.listdir(os.path.join(d, "out")) if ".partial-" in n]
    t.check(not left, f"temporary files left behind: {left}")


def interrupted(d, rng):
    """SIGINT at a few moments: DST is either absent or whole, and no temporary file is left."""
    src = os.path.join(d, "dense.vhdx")
    t.vhdheal("create", "--size", 128 * MIB, src)
    t.vhdheal("write", src, 0, input=rng.randbytes(96 * MIB))
    want = sha(t.read_all(src))
    stopped = 0
    for k, delay in enumerate([0.01, 0.05, 0.1, 0.3]):
        dst = os.path.join(d, "out", f"dense{k}.raw")
        p = subprocess.Popen([t.VHDHEAL, "convert", src, dst], stderr=subprocess.PIPE)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate()
        if p.returncode == 0:
            t.check(sha(open(dst, "rb").read()) == want, f"SIGINT {k}: finished DST differs")
        else:
            stopped += 1
            # 2: stopped cleanly; -SIGINT: the signal came before the handler, before any file
            t.check(p.returncode in (2, -signal.SIGINT) and not os.path.exists(dst),
                    f"SIGINT {k}: rc {p.returncode}, DST exists: {os.path.exists(dst)}, {err!r}")
    left = [n for n in os.listdir(os.path.join(d, "out")) if ".partial-" in n]
    t.check(not left, f"temporary files left after SIGINT: {left}")
    print(f"SIGINT stopped {stopped} of 4 conversions")


def main():
    rng = random.Random(int(os.environ.get("VH_SEED", "11")))
    with tempfile.TemporaryDirectory() as d:
        os.mkdir(os.path.join(d, "out"))
        conversions(d, rng)
        holes(d)
        refusals(d)
        interrupted(d, rng)
    t.finish("convert")


if __name__ == "__main__":
    sys.exit(main())
