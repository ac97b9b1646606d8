#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""demo - the README's first command tells its story to the end: `scripts/demo --batch DIR`
(the built programs, no setup or build) exits 0 and says every chain healed; afterwards, read
offline, the store is healthy, both chains run through the disks the story moved, each level's
line reads back through the healed chain, and no mount or daemon is left behind."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mounttest  # noqa: E402
import vhdtest as t  # noqa: E402
from vhdtest import check  # noqa: E402

SRC = os.environ.get("VH_SRCDIR") or os.path.join(os.path.dirname(__file__), "..", "..")
MIB = 1 << 20


def mounts_under(path):
    """Mount points at or below path (from /proc/self/mountinfo)."""
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].replace("\\040", " ") for line in f]
    return [p for p in points if p == real or p.startswith(real + "/")]


def daemons_on(path):
    """vhdhealfs processes whose command line names path."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"vhdhealfs" and \
                any(a.startswith(os.fsencode(path)) for a in argv):
            found.append(pid)
    return found


def story(work):
    env = dict(os.environ, VHDHEAL=t.VHDHEAL, VHDHEALFS=mounttest.VHDHEALFS)
    p = subprocess.run([os.path.join(SRC, "scripts", "demo"), "--batch", work], env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    out = p.stdout
    check(p.returncode == 0, f"scripts/demo --batch: rc {p.returncode}\n{out[-3000:]}\n"
          f"{p.stderr[-3000:]}")
    for bad in mounttest.BAD_LOG:  # the daemon's log is part of the story (step 6)
        check(bad not in out + p.stderr, f"the demo's output holds {bad!r}")
    lines = out.rstrip("\n").splitlines()
    check(lines and lines[-1] == "demo finished: every chain healed.",
          f"the story ends healed: {lines[-3:]}")
    # step 7: one line from each level of the healed VHD chain, read through the mount
    for text in ("base data of the vhd VM", "checkpoint 1 of the vhd VM",
                 "checkpoint 2 of the vhd VM"):
        check(text in out, f"the flattened disk shows {text!r}")
    check("healed" in out.split("== 6.", 1)[-1], "step 6: the mount's log says it healed")


def healed_offline(store):
    """The store, read offline after the demo: healthy, and the content right."""
    p = t.run(t.VHDHEAL, "check", "--json", store, ok=False)
    check(p.returncode == 0, f"vhdheal check after the demo: rc {p.returncode}")
    doc = json.loads(p.stdout)
    check(doc["healthy"] and doc["summary"]["broken"] == 0, f"healthy: {doc['summary']}")
    chains = {c["top"]: c["disks"] for c in doc["chains"]}
    want = {
        "Web-vhdx/Virtual Hard Disks/Web_2222.avhdx": [
            "Web-vhdx/Virtual Hard Disks/Web_2222.avhdx",
            "Web-vhdx/Virtual Hard Disks/Web_1111.avhdx", "archive/Web-base.vhdx"],
        "Web-vhd/Virtual Hard Disks/Web_2222.avhd": [
            "Web-vhd/Virtual Hard Disks/Web_2222.avhd", "restored/Web_1111.avhd",
            "Web-vhd/Virtual Hard Disks/Web.vhd"],
    }
    for top, disks in want.items():
        check(chains.get(top) == disks, f"{top}: chain {chains.get(top)}")
    for fmt in ("vhdx", "vhd"):
        top = os.path.join(store, f"Web-{fmt}", "Virtual Hard Disks", f"Web_2222.a{fmt}")
        for mib, text in ((0, f"base data of the {fmt} VM\n"),
                          (1, f"checkpoint 1 of the {fmt} VM\n"),
                          (2, f"checkpoint 2 of the {fmt} VM\n")):
            got = t.run(t.VHDHEAL, "read", "--store", store, top, mib * MIB, 64).stdout
            want_bytes = text.encode().ljust(64, b"\0")
            check(got == want_bytes, f"{fmt} at {mib} MiB: {got!r}")


def main():
    mounttest.require_fuse()
    work = tempfile.mkdtemp(prefix="vh_demo_")
    try:
        story(work)
        check(not mounts_under(work), f"mounts left: {mounts_under(work)}")
        check(not daemons_on(work), f"daemons left: {daemons_on(work)}")
        healed_offline(os.path.join(work, "store"))
    finally:
        for m in mounts_under(work):
            subprocess.run(["fusermount3", "-u", m], check=False)
        shutil.rmtree(work, ignore_errors=True)
    t.finish("demo")


if __name__ == "__main__":
    main()
