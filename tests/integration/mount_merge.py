#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""mount_merge.py - `vhdheal merge` beside a running vhdhealfs (doc/design.md
"Locks on disk files"), VHD and VHDX: base <- c1 <- c2 <- leaf, merging c2 into base.
The merge is refused (EBUSY, naming the file and saying it is open through a mount or another
process; nothing written, no plan left) while any disk involved is open through the mount: the
ancestor, a merged disk, the child it relinks (also write-only), or a @raw file whose chain
reads one; and while qemu (qemu-io) has the base open, or another process holds a qemu-style
lock (byte 100). While a merge holds a
disk (its in-use byte, simulated), opening it, or a @raw file reading it, through the mount gives
EBUSY. A child open through the mount is still reconnected (setfattr user.vhd.parent). Once all
is closed the merge runs with the mount up, and the mount follows: the merged files are gone,
the relinked child reads its old content through @raw, user.vhd.chain and @chains show the new
chain, and `vhdheal read` of the child through the mount reads its old content."""
import errno
import fcntl
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import time

import mounttest as mt
import vhdtest as t

INUSE_BYTE = 1 << 62  # chain/inuse.h VH_INUSE_BYTE
SIZE = 8 * 1024 * 1024


def lock(path, kind, start, length=1):
    """Another process's OFD lock: the fd holding it (close to release)."""
    fd = os.open(path, os.O_RDWR)
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", kind, os.SEEK_SET, start, length, 0))
    return fd


def qemu_locked(path):
    """Whether another process holds a lock on path's bytes 100 and up (qemu's)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 100, 200, 0))
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def open_errno(path, flags=os.O_RDONLY):
    try:
        os.close(os.open(path, flags))
        return 0
    except OSError as e:
        return e.errno


def store_hashes(store):
    out = {}
    for root, _, names in os.walk(store):
        for n in names:
            with open(os.path.join(root, n), "rb") as f:
                out[os.path.join(root, n)] = hashlib.sha256(f.read()).hexdigest()
    return out


def refused_while(name, store, merge, holder, what):
    """The merge fails with EBUSY naming `what` while `holder` (an open fd) is held."""
    before = store_hashes(store)
    try:
        r = t.vhdheal(*merge, ok=False)
    finally:
        os.close(holder)
    err = r.stderr.decode()
    t.check(r.returncode == 2, f"{name}: the merge ran or failed otherwise ({r.returncode})")
    t.check(what in err and "in use: open through a mount or by another process" in err,
            f"{name}: the refusal does not name {what} as in use: {err!r}")
    t.check(store_hashes(store) == before, f"{name}: the refused merge changed the store")


def run_format(root, fmt):
    store, mnt, S, M = mt.format_paths(root, fmt)
    base, c1, c2, leaf = "base." + fmt, "c1.a" + fmt, "c2.a" + fmt, "leaf.a" + fmt
    offs = [0, 1 << 20, 3 << 20, SIZE - 4096]
    mt.create(S(base), fmt, size="8M")
    for seed, (p, parent) in enumerate(((base, None), (c1, base), (c2, c1), (leaf, c2))):
        if parent:
            mt.child(S(p), S(parent))
        mt.fill(S(p), seed + 1, offs[seed:seed + 2])
    want = mt.content(S(leaf))
    m = mt.Mount(store, mnt, os.path.join(root, f"daemon-{fmt}.log"))
    try:
        raw = M(f"@raw/{leaf}.raw")
        t.check(hashlib.sha256(open(raw, "rb").read()).digest()
                == hashlib.sha256(want).digest(), "@raw of leaf before the merge")
        merge = ["merge", S(c2), "--into", S(base)]
        # opened through the mount: each disk involved, read-only (and the child write-only)
        for rel, flags in ((base, os.O_RDONLY), (c1, os.O_RDONLY), (c2, os.O_RDONLY),
                           (leaf, os.O_RDONLY), (leaf, os.O_WRONLY)):
            refused_while(f"{fmt}: {rel} open ({flags})", store, merge, os.open(M(rel), flags),
                          S(rel))
        # a @raw file reads every member of its chain
        refused_while(f"{fmt}: @raw/{c1}.raw open", store, merge,
                      os.open(M(f"@raw/{c1}.raw"), os.O_RDONLY), store)
        # a qemu holding its permission bytes
        refused_while(f"{fmt}: qemu-style lock on {c1}", store, merge,
                      lock(S(c1), fcntl.F_RDLCK, 100, 2), S(c1))
        # a real qemu with the base open (its own OFD locks on bytes 100 and up)
        q = subprocess.Popen(["qemu-io", "-f", "vpc" if fmt == "vhd" else "vhdx", "-c",
                              "sleep 20000", S(base)], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not qemu_locked(S(base)) and time.monotonic() < deadline:
                time.sleep(0.05)
            refused_while(f"{fmt}: qemu-io has {base} open", store, merge, os.open(S(base),
                          os.O_RDONLY), S(base))
        finally:
            q.kill()
            q.wait()
        # a merge holding c1: the mount refuses opens that would read it
        held = lock(S(c1), fcntl.F_WRLCK, INUSE_BYTE)
        try:
            t.check(open_errno(M(c1)) == errno.EBUSY, f"{fmt}: {c1} opens during a merge")
            t.check(open_errno(M(f"@raw/{leaf}.raw")) == errno.EBUSY,
                    f"{fmt}: @raw/{leaf}.raw opens during a merge of a member")
            t.check(open_errno(M(base)) == 0, f"{fmt}: {base} (not held) does not open")
        finally:
            os.close(held)
        t.check(open_errno(M(c1)) == 0, f"{fmt}: {c1} does not open after the merge let go")
        # a child open through the mount is still reconnected by the mount (its data range)
        os.rename(S(c2), S("c2-moved.a" + fmt))
        c2 = "c2-moved.a" + fmt
        with open(M(leaf), "rb"):
            t.check(mt.setx(M(leaf), "user.vhd.parent", M(c2)) == 0,
                    f"{fmt}: setfattr user.vhd.parent on an open child")
        t.check(mt.getx(M(leaf), "user.vhd.parent")[0] == M(c2), f"{fmt}: leaf relinked to c2")
        # with nothing open the merge runs beside the mount, and the mount follows it
        list(os.scandir(M("@chains")))
        r = t.vhdheal("merge", S(c2), "--into", S(base), ok=False)
        t.check(r.returncode == 0, f"{fmt}: merge beside the mount: {r.stderr.decode()}")
        # listings ask the daemon (a name looked up before may stay in the kernel's cache for
        # the entry timeout, README "Changes behind the mount's back"); the views refresh
        # within a second
        names = sorted(os.listdir(mnt))
        t.check(names == sorted([base, leaf, ".vhdheal", "@raw", "@chains"]),
                f"{fmt}: the mount lists {names}")
        time.sleep(1.1)
        names = sorted(os.listdir(M("@raw")))
        t.check(names == [f"{base}.raw", f"{leaf}.raw"], f"{fmt}: @raw lists {names}")
        t.check(mt.getx(M(leaf), "user.vhd.parent")[0] == M(base),
                f"{fmt}: user.vhd.parent of leaf: {mt.getx(M(leaf), 'user.vhd.parent')}")
        t.check(mt.getx(M(leaf), "user.vhd.chain")[0] == M(leaf) + "\n" + M(base),
                f"{fmt}: user.vhd.chain: {mt.getx(M(leaf), 'user.vhd.chain')}")
        with open(raw, "rb") as f:
            t.check(f.read() == want, f"{fmt}: @raw/{leaf}.raw reads other content after it")
        chains = sorted(os.listdir(M(f"@chains/{leaf}")))
        t.check(chains == [f"0-{leaf}", f"1-{base}", "status"], f"{fmt}: @chains: {chains}")
        t.check(mt.content(M(leaf), store=mnt) == want,
                f"{fmt}: vhdheal read of the relinked child through the mount: other content")
        m.stop()
    finally:
        m.kill()


def needs():
    if not shutil.which("qemu-io"):
        t.check(not os.environ.get("CI"), "qemu-io is missing (CI is set)")
        print("SKIP: qemu-io is missing")
        sys.exit(77 if not os.environ.get("CI") else 1)


if __name__ == "__main__":
    mt.run_in_root("mount_merge", run_format, ("vhd", "vhdx"), needs)
