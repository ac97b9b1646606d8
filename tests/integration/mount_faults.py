#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""mount_faults - a full store (issue 14): STORE on a small tmpfs, filled up to the last byte,
then through the mount a folder of children is moved (relink), a child with a lost parent is
opened (heal on open) and a child is written (vhdheal write through the mount: a new block). Nothing may be half done: every child opens with
its old link or its new one (vhdheal info), opens through the mount succeed, user.vhd.status says
what happened (healed, or not healed with the store's error), the daemon keeps running. Once
space is freed, opening the children heals them, every chain reads its true content, `check`
calls the store healthy, and the daemon unmounts with status 0."""
import errno
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mounttest import (Mount, check, content, fill, getx, locators, pattern,  # noqa: E402
                       require_root, run_in_root, vhdheal)

NKIDS = 8


def fill_up(path):
    """Writes `path` until the file system is full; the bytes written."""
    n = 0
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 16, 4096, 512, 1):
            try:
                while True:
                    n += f.write(b"\0" * size)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
    return n


def link_of(path):
    """The relative locator of a child on STORE, or None when it cannot be read."""
    try:
        locs = locators(path)
    except RuntimeError:
        return None
    return locs.get("W2ru") or locs.get("relative_path")


def check_healed_at_last(store, mnt, base_ref, lost_ref, when):
    """Once the store works again ("when"), opening each child and h.vhd through the mount
    relinks what was left, and every chain reads as built: the children base_ref, h.vhd
    lost_ref."""
    S = lambda r: os.path.join(store, r)  # noqa: E731
    new = "..\\..\\lib\\base.vhd"
    for k in range(NKIDS):
        with open(os.path.join(mnt, f"deep/vms/c{k}.vhd"), "rb") as f:
            f.read(512)
    with open(os.path.join(mnt, "h.vhd"), "rb") as f:
        f.read(512)
    for k in range(NKIDS):
        link = link_of(S(f"deep/vms/c{k}.vhd"))
        check(link in (new, ".\\" + new), f"c{k} not relinked once {when}: {link!r}")
        check(content(S(f"deep/vms/c{k}.vhd"), store) == base_ref, f"c{k}: content")
    check(content(S("h.vhd"), store) == lost_ref, "h.vhd: content")


def try_read(path):
    """Opens path and reads its first sector: True, or the OSError it failed with."""
    try:
        with open(path, "rb") as f:
            f.read(512)
        return True
    except OSError as e:
        return e


def setup(root):
    """The fault tests' layout: the store built in ROOT/src (to copy to ROOT/store), ROOT/mnt,
    path makers S and M, and what the children and h.vhd read (base_ref, lost_ref)."""
    src = os.path.join(root, "src")
    store = os.path.join(root, "store")
    mnt = os.path.join(root, "mnt")
    build(src)
    return (src, store, mnt, lambda r: os.path.join(store, r), lambda r: os.path.join(mnt, r),
            content(os.path.join(src, "lib/base.vhd")),
            content(os.path.join(src, "lost/away/p.vhd")))


def build(src):
    S = lambda r: os.path.join(src, r)  # noqa: E731
    os.makedirs(S("lib"))
    vhdheal("create", "--format", "vhd", "--type", "dynamic", "--block-size", "512K",
            "--size", "4M", S("lib/base.vhd"))
    fill(S("lib/base.vhd"), 1, (0, 1 << 20))
    os.makedirs(S("vms"))
    for k in range(NKIDS):
        vhdheal("create", "--parent", S("lib/base.vhd"), S(f"vms/c{k}.vhd"))
    vhdheal("create", "--parent", S("lib/base.vhd"), S("lib/w.vhd"))  # written on a full store
    # a child whose parent was moved behind the mount's back: healed on open
    os.makedirs(S("lost"))
    vhdheal("create", "--format", "vhd", "--type", "dynamic", "--block-size", "512K",
            "--size", "4M", S("lost/p.vhd"))
    fill(S("lost/p.vhd"), 2)
    vhdheal("create", "--parent", S("lost/p.vhd"), S("h.vhd"))
    os.makedirs(S("lost/away"))
    os.rename(S("lost/p.vhd"), S("lost/away/p.vhd"))
    os.makedirs(S("deep"))


def run(root):
    src, store, mnt, S, M, base_ref, lost_ref = setup(root)
    os.makedirs(store)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "vh-faults", store],
                   check=True)
    mt = None
    try:
        shutil.copytree(src, store, dirs_exist_ok=True)
        vhdheal("repair", "--store", store, S("vms"))  # a journal exists (nothing to repair)
        mt = Mount(store, mnt, os.path.join(root, "daemon.log"))
        filler = S("filler")
        print(f"store full after {fill_up(filler)} more bytes", flush=True)

        # relink: the rename happens; each child keeps one link or the other, whole
        subprocess.run(["mv", M("vms"), M("deep/")], check=True)
        old, new = "..\\lib\\base.vhd", "..\\..\\lib\\base.vhd"
        for k in range(NKIDS):
            link = link_of(S(f"deep/vms/c{k}.vhd"))
            check(link in (old, ".\\" + old, new, ".\\" + new),
                  f"relink on a full store: c{k} has link {link!r}")
            st, err = getx(M(f"deep/vms/c{k}.vhd"), "user.vhd.status")
            check(st is not None and (st.startswith("healed") or "not healed" in st),
                  f"relink on a full store: c{k} status {st!r} (errno {err})")
        # heal on open: the open succeeds, the status says what happened
        opened = try_read(M("h.vhd"))
        check(opened is True, f"open of a child on a full store failed: {opened!r}")
        st, _ = getx(M("h.vhd"), "user.vhd.status")
        check(st is not None and (st.startswith("healed") or "not healed" in st),
              f"heal on a full store: status {st!r}")
        check(link_of(S("h.vhd")) is not None, "heal on a full store: h.vhd cannot be read")
        # a write that needs a new block: refused or done, the child stays whole
        blob = pattern(7) * 16
        p = vhdheal("write", M("lib/w.vhd"), str(2 << 20), input=blob, ok=False)
        wrote = p.returncode == 0
        print(f"write on a full store: exit {p.returncode} "
              f"{p.stderr.decode(errors='replace').strip()}", flush=True)
        check(wrote or b"No space left" in p.stderr, f"the write failed otherwise: {p.stderr!r}")
        want = bytearray(base_ref)
        if wrote:
            want[2 << 20:(2 << 20) + len(blob)] = blob
        check(content(S("lib/w.vhd"), store) == bytes(want), "w.vhd: content after the write")
        check(mt.alive(), "the daemon died on a full store")
        log = mt.text()
        check("No space left" in log or "ENOSPC" in log or wrote,
              "the log does not say the store was full")

        # space again: opening heals what was left, and every chain reads true
        # through the mount: removed behind its back, a file the kernel still caches keeps its
        # space while the daemon holds its descriptor (until the kernel forgets it)
        os.unlink(M("filler"))
        deadline = time.monotonic() + 10
        while os.statvfs(store).f_bavail == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        check(os.statvfs(store).f_bavail > 0, "no space came back after the filler was removed")
        check_healed_at_last(store, mnt, base_ref, lost_ref, "space was back")
        p = vhdheal("check", store, ok=False)
        check(p.returncode == 0, f"check after the faults: {p.stdout.decode(errors='replace')}")
        check(mt.alive(), "the daemon died")
    finally:
        if mt is not None:
            mt.stop()
        if not os.environ.get("VH_KEEP"):
            subprocess.run(["umount", store], check=False)


def main():
    run_in_root("mount_faults", run, needs=lambda: require_root("mounting a tmpfs"))


if __name__ == "__main__":
    main()
