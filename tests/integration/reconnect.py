#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""reconnect.py - `vhdheal reconnect` and `vhdheal undo` on real VHD and VHDX chains, judged by
independent readers: after a reconnect vhdiinfo shows the new parent identifier and name, libvhdi
reads the repaired chain with the same bytes as vhdheal, the error cases exit 2 with their
message, and undo restores the child byte for byte."""
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vhdtest import VHDHEAL, check, finish, info, libvhdi_read, read_all, vhdheal, vhdiinfo  # noqa: E402

SIZE = 16 * 1024 * 1024


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write_aligned(path, rng, count):
    """Writes in whole aligned 4 KiB units (libvhdi reads VHD bitmaps right only then)."""
    for _ in range(count):
        off = rng.randrange(0, SIZE // 4096) * 4096
        data = rng.randbytes(4096 * rng.randint(1, 8))
        data = data[:SIZE - off]
        vhdheal("write", path, str(off), input=data)


def build(store, fmt, rng):
    vms = os.path.join(store, "vms")
    os.makedirs(vms)
    base = os.path.join(vms, f"base.{fmt}")
    child = os.path.join(vms, f"child.a{fmt}")
    top = os.path.join(vms, f"top.a{fmt}")
    vhdheal("create", "--format", fmt, "--size", str(SIZE), base)
    write_aligned(base, rng, 12)
    vhdheal("create", "--parent", base, child)
    write_aligned(child, rng, 8)
    vhdheal("create", "--parent", child, top)
    write_aligned(top, rng, 8)
    return base, child, top


def test_format(fmt):
    rng = random.Random(f"reconnect-{fmt}")
    with tempfile.TemporaryDirectory() as store:
        base, child, top = build(store, fmt, rng)
        truth = read_all(top)
        os.makedirs(os.path.join(store, "moved"))
        new_base = os.path.join(store, "moved", f"renamed-base.{fmt}")
        os.rename(base, new_base)
        p = vhdheal("read", top, ok=False)
        check(p.returncode == 2 and b"broken" in p.stderr, f"{fmt}: broken chain refused to read")

        original = sha(child)
        p = vhdheal("reconnect", "--store", store, child, new_base)
        check(b"undo:" in p.stdout, f"{fmt}: reconnect prints how to undo")
        base_id = info(new_base)["id"]
        vi = vhdiinfo(child)
        check(vi.get("Parent identifier") == base_id,
              f"{fmt}: vhdiinfo parent id {vi.get('Parent identifier')} == {base_id}")
        # VHD: libvhdi shows the Parent Unicode Name (the file name without a winroot). VHDX:
        # libvhdi 20210425 names only an absolute_win32_path, which needs a winroot; our
        # relative_path is checked through our own reader.
        want_name = "renamed-base.vhd" if fmt == "vhd" else None
        check(vi.get("Parent filename") == want_name,
              f"{fmt}: vhdiinfo parent filename {vi.get('Parent filename')!r} == {want_name!r}")
        locs = {l["kind"]: l["path"] for l in info(child)["parent"]["locators"]}
        rel_key = "W2ru" if fmt == "vhd" else "relative_path"
        check(locs.get(rel_key) == "..\\moved\\renamed-base." + fmt,
              f"{fmt}: {rel_key} is {locs.get(rel_key)!r}")
        check(read_all(top) == truth, f"{fmt}: vhdheal reads the healed chain's true content")
        check(libvhdi_read([top, child, new_base]) == truth,
              f"{fmt}: libvhdi reads the healed chain with the same bytes")
        check(sha(new_base) == sha(new_base) and info(new_base)["id"] == base_id,
              f"{fmt}: the parent is untouched")

        # With a winroot, absolute locators are written under it.
        vhdheal("reconnect", "--store", store, "--winroot", "D:\\VMs", child, new_base)
        vi = vhdiinfo(child)
        want = "D:\\VMs\\moved\\renamed-base." + fmt
        check(vi.get("Parent filename") == want,
              f"{fmt}: with winroot vhdiinfo shows {vi.get('Parent filename')!r} == {want!r}")
        locs = {l["kind"]: l["path"] for l in info(child)["parent"]["locators"]}
        abs_key = "W2ku" if fmt == "vhd" else "absolute_win32_path"
        check(locs.get(abs_key) == want, f"{fmt}: {abs_key} is {locs.get(abs_key)!r}")

        # Undo both repairs, newest first: the child is byte for byte what it was.
        listing = vhdheal("undo", "--store", store, "--list").stdout.decode().splitlines()
        check(len(listing) == 2, f"{fmt}: two repairs journaled: {listing}")
        for line in reversed(listing):
            vhdheal("undo", "--store", store, line.split()[0])
        check(sha(child) == original, f"{fmt}: undo restores the child byte for byte")
        again = vhdheal("undo", "--store", store, listing[0].split()[0], ok=False)
        check(again.returncode == 2 and b"undone already" in again.stderr,
              f"{fmt}: undoing twice is refused")

        errors(store, fmt, child, top, new_base)


def expect(store, fmt, args, text, what):
    before = {p: sha(p) for p in args if os.path.isfile(p)}
    p = vhdheal("reconnect", "--store", store, *args, ok=False)
    err = p.stderr.decode()
    check(p.returncode == 2 and text in err, f"{fmt}: {what}: exit {p.returncode}, {err.strip()!r}")
    check(all(sha(f) == h for f, h in before.items()), f"{fmt}: {what}: nothing written")


def errors(store, fmt, child, top, base):
    vhdheal("reconnect", "--store", store, child, base)  # healed again after the undos
    other_fmt = "vhdx" if fmt == "vhd" else "vhd"
    other = os.path.join(store, f"other.{fmt}")
    vhdheal("create", "--format", fmt, "--size", str(SIZE), other)
    small = os.path.join(store, f"small.{fmt}")
    vhdheal("create", "--format", fmt, "--size", str(SIZE // 2), small)
    wrongfmt = os.path.join(store, f"wrong.{other_fmt}")
    vhdheal("create", "--format", other_fmt, "--size", str(SIZE), wrongfmt)
    text = os.path.join(store, "notes.txt")
    with open(text, "w") as f:
        f.write("not a disk")
    expect(store, fmt, [child, os.path.join(store, "missing.vhdx")], "does not exist", "ENOENT")
    expect(store, fmt, [child, text], "not", "parent not a disk")
    expect(store, fmt, [child, other], "id-mismatch", "identity mismatch")
    expect(store, fmt, [child, small], "size-mismatch", "size mismatch")
    expect(store, fmt, ["--ignore-id-mismatch", child, small], "size-mismatch",
           "size mismatch with force")
    expect(store, fmt, ["--ignore-id-mismatch", child, wrongfmt], "format-mismatch",
           "format mismatch")
    expect(store, fmt, [child, top], "cycle", "cycle")
    expect(store, fmt, [base, other], "has no parent", "child not differencing")
    outside = tempfile.mkdtemp()
    try:
        shutil.copy(base, outside)
        expect(store, fmt, [child, os.path.join(outside, os.path.basename(base))], "outside",
               "parent outside the store")
    finally:
        shutil.rmtree(outside)
    # EACCES: a user who may not write the child cannot reconnect it.
    os.chmod(store, 0o755)
    os.chmod(os.path.dirname(child), 0o755)
    os.chmod(child, 0o644)
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        VHDHEAL, "reconnect", "--store", store, child, base], capture_output=True)
    check(p.returncode == 2 and b"Permission denied" in p.stderr,
          f"{fmt}: EACCES for a user who cannot write the child: {p.stderr!r}")
    # EIO: a child whose structures are corrupt is not rewritten.
    corrupt = os.path.join(store, f"corrupt.a{fmt}")
    shutil.copy(child, corrupt)
    with open(corrupt, "r+b") as f:
        if fmt == "vhd":  # the dynamic header's checksum (doc/formats.md §1.2): stale
            f.seek(512 + 36)
            f.write(b"\x00\x00\x00\x01")
        else:  # both VHDX headers (64 KiB, 128 KiB): bad CRC
            for off in (64 * 1024 + 4, 128 * 1024 + 4):
                f.seek(off)
                f.write(b"\xde\xad\xbe\xef")
    expect(store, fmt, [corrupt, base], "checksum", "EIO, corrupt child")
    # Forced onto an identical copy: accepted, and the chain reads the same.
    twin = os.path.join(store, f"twin.{fmt}")
    shutil.copy(base, twin)
    truth = read_all(top)
    vhdheal("reconnect", "--store", store, "--ignore-id-mismatch", child, twin)
    check(read_all(top) == truth, f"{fmt}: reconnect to an identical copy keeps the content")


for fmt in ("vhd", "vhdx"):
    test_format(fmt)
finish("reconnect")
