#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""merge_attack.py - what an open through a mount may do to a disk a merge holds (README
"### `vhdheal convert` and `vhdheal merge`"): while a merge runs (it holds the in-use byte at
2^62 of each of its disks exclusively, as held here), an open through the mount fails with
EBUSY and changes nothing: an O_TRUNC open must not empty the disk before it is refused (the
merge would then copy from, and the user lose, a truncated disk)."""
import fcntl
import os
import struct

import mounttest
from mounttest import Mount, create, child, fill
from vhdtest import check

INUSE = 1 << 62


def ofd(fd, kind, cmd=fcntl.F_OFD_SETLK):
    """An OFD lock (or, with F_OFD_GETLK, the lock that would block it: its type)."""
    got = fcntl.fcntl(fd, cmd, struct.pack("hhqqi4x", kind, os.SEEK_SET, INUSE, 1, 0))
    return struct.unpack("hhqqi4x", got)[0]


def merge_holds(path):
    """A descriptor holding what a running merge holds on path: its in-use byte, exclusively."""
    fd = os.open(path, os.O_RDWR)
    ofd(fd, fcntl.F_WRLCK)
    return fd


def truncating_open_refused(root, fmt):
    store, mnt, S, M = mounttest.format_paths(root, fmt)
    create(S("base." + fmt), fmt, size="16M")
    child(S("top." + fmt), S("base." + fmt))
    fill(S("top." + fmt), 3, offsets=(0, 1 << 20))
    with open(S("top." + fmt), "rb") as f:
        before = f.read()
    m = Mount(store, mnt, os.path.join(root, f"trunc-{fmt}.log"))
    try:
        hold = merge_holds(S("top." + fmt))
        for flags in (os.O_WRONLY | os.O_TRUNC, os.O_RDWR | os.O_TRUNC,
                      os.O_WRONLY | os.O_CREAT | os.O_TRUNC):
            try:
                os.close(os.open(M("top." + fmt), flags, 0o644))
                check(False, f"{fmt}: open {flags:#o} while a merge holds the disk succeeded")
            except OSError as e:
                check(e.errno == 16, f"{fmt}: open {flags:#o}: {e} (EBUSY expected)")
            with open(S("top." + fmt), "rb") as f:
                check(f.read() == before,
                      f"{fmt}: a refused O_TRUNC open ({flags:#o}) changed the disk "
                      f"(size now {os.path.getsize(S('top.' + fmt))})")
        os.close(hold)
        # without a merge the truncating open truncates, and the file is marked in use
        fd = os.open(M("top." + fmt), os.O_WRONLY | os.O_TRUNC)
        check(os.path.getsize(S("top." + fmt)) == 0, f"{fmt}: O_TRUNC did not truncate")
        probe = os.open(S("top." + fmt), os.O_RDONLY)
        check(ofd(probe, fcntl.F_WRLCK, fcntl.F_OFD_GETLK) == fcntl.F_RDLCK,
              f"{fmt}: a truncating open through the mount is not marked in use")
        os.close(probe)
        os.close(fd)
    finally:
        m.stop()


def body(root, fmt):
    truncating_open_refused(root, fmt)


if __name__ == "__main__":
    mounttest.run_formats("merge_attack", body)
