# SPDX-License-Identifier: GPL-2.0-or-later
"""vhdtest.py - what the VHD integration tests share: running vhdheal, vhdiinfo and qemu-img,
reading a disk through libvhdi, and a small failure counter (tests report every failure, then
exit non-zero)."""
import json
import os
import subprocess
import sys

VHDHEAL = os.environ.get("VHDHEAL", "vhdheal")
CORPUS = os.environ.get("VH_CORPUS", "")

failures = 0


def check(cond, what):
    """Records one named check; prints it when it fails."""
    global failures
    if not cond:
        failures += 1
        print(f"FAIL: {what}", flush=True)
    return cond


def finish(name):
    if failures:
        print(f"{name}: {failures} failure(s)")
        sys.exit(1)
    print(f"{name}: all checks passed")


def run(*args, input=None, ok=True):
    p = subprocess.run([str(a) for a in args], input=input, capture_output=True)
    if ok and p.returncode != 0:
        raise RuntimeError(f"{args} failed ({p.returncode}): {p.stderr.decode(errors='replace')}")
    return p


def vhdheal(*args, **kw):
    return run(VHDHEAL, *args, **kw)


def info(path):
    """vhdheal info --json for one file: the disk's object."""
    return json.loads(vhdheal("info", "--json", path).stdout)["disks"][0]


def read_all(path):
    return vhdheal("read", path).stdout


def vhdiinfo(path):
    """vhdiinfo's fields as a dict ("Disk type" -> "Dynamic", ...)."""
    out = run("vhdiinfo", path).stdout.decode()
    fields = {}
    for line in out.splitlines():
        if ":" in line and line.startswith("\t"):
            k, v = line.strip().split(":", 1)
            fields[k.strip()] = v.strip()
    return fields


def vhdi_media_size(fields):
    """"10 MiB (10485760 bytes)" -> 10485760."""
    return int(fields["Media size"].split("(")[1].split()[0])


def qemu_info(path):
    return json.loads(run("qemu-img", "info", "-f", "vpc", "--output=json", path).stdout)


def qemu_raw(path, out):
    """The footer's size, not CHS (doc/formats.md §4a)."""
    run("qemu-img", "convert", "--image-opts",
        f"driver=vpc,force_size_calc=current_size,file.filename={path}", "-O", "raw", out)
    with open(out, "rb") as f:
        return f.read()


def libvhdi_read(chain_top_first):
    """Reads a whole chain through pyvhdi (parents set), top first in the list."""
    import pyvhdi
    files = []
    for p in chain_top_first:
        f = pyvhdi.file()
        f.open(p)
        files.append(f)
    for child, parent in zip(files, files[1:]):
        child.set_parent(parent)
    top = files[0]
    data = top.read_buffer_at_offset(top.get_media_size(), 0)
    for f in files:
        f.close()
    return data
