#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""kpt_attack.py - attacks on kernel passthrough (doc/mount.md "Kernel passthrough"), from the
outside: a file is served by the kernel when the page frame of a MAP_SHARED mapping through the
mount is the store file's.
- a mapping lives on after close(): a disk mapped through the mount (read-only, or read-write
  by a writer that joined readers) must stay in use (the byte 2^62, doc/design.md
  "Locks on disk files") until the mapping goes, so that a merge is refused meanwhile, as it
  is for a mapping of a file the daemon serves; also a disk replaced behind the mount's back
  under its name and reached through the mount's cached entry;
- a write through a mapping of a disk, made durable by msync, must reach a `.raw` file held
  open (README "What the views show, and when") before the writer closes;
- an O_DIRECT open of a file already open through the mount, on a STORE whose file system
  refuses O_DIRECT (ramfs), must open and read as it does with -o passthrough=off (not EIO);
- and, so that the above cannot pass by turning passthrough off, a plain file is still served
  by the kernel."""
import ctypes
import fcntl
import os
import platform
import struct
import subprocess
import sys
import time
import traceback

import mounttest
from mounttest import Mount, create, child, fill
from vhdtest import VHDHEAL, check, vhdheal

INUSE = 1 << 62
PAGE = 4096
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.mmap.restype = ctypes.c_void_p
LIBC.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
LIBC.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
LIBC.msync.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
PROT_READ, PROT_WRITE, MAP_SHARED, MS_SYNC = 1, 2, 1, 4


def map_shared(fd, write=False):
    """One page of fd mapped MAP_SHARED: its address."""
    a = LIBC.mmap(None, PAGE, PROT_READ | (PROT_WRITE if write else 0), MAP_SHARED, fd, 0)
    if a is None or a == ctypes.c_void_p(-1).value:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return a


def frame(path):
    """The page frame of the first page of path, mapped MAP_SHARED (needs root)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        a = map_shared(fd)
        ctypes.string_at(a, 1)
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(a // PAGE * 8)
            e = struct.unpack("Q", f.read(8))[0]
        LIBC.munmap(a, PAGE)
        return e & ((1 << 55) - 1) if e >> 63 else None
    finally:
        os.close(fd)


def in_use(path):
    """Whether anyone holds the in-use byte of path (as a mount's open does)."""
    fd = os.open(path, os.O_RDWR)
    try:
        got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK,
                          struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, INUSE, 1, 0))
        return struct.unpack("hhqqi4x", got)[0] != fcntl.F_UNLCK
    finally:
        os.close(fd)


def served_by_kernel(root):
    """A plain file of a tmpfs STORE is served by the kernel (the premise of the attacks)."""
    store, mnt = os.path.join(root, "plain"), os.path.join(root, "mnt")
    os.makedirs(store)
    with open(os.path.join(store, "plain.bin"), "wb") as f:
        f.write(os.urandom(1 << 20))
    m = Mount(store, mnt, os.path.join(root, "plain.log"))
    try:
        check(frame(os.path.join(mnt, "plain.bin")) == frame(os.path.join(store, "plain.bin")),
              "a plain file is not served by the kernel (passthrough is off)")
    finally:
        m.stop()


def mapping_keeps_disk_in_use(root, fmt):
    """base <- top; top mapped through the mount by a reader, or by a writer that joined a
    reader, then every descriptor closed: the mapping must keep top in use."""
    store, mnt, S, M = mounttest.format_paths(root, fmt)
    top = "top." + fmt
    for who in ("reader", "writer"):
        create(S("base." + fmt), fmt, size="8M")
        child(S(top), S("base." + fmt))
        fill(S(top), 3)
        m = Mount(store, mnt, os.path.join(root, f"inuse-{fmt}.log"))
        try:
            fds = [os.open(M(top), os.O_RDONLY)]
            if who == "writer":
                fds.append(os.open(M(top), os.O_RDWR))
            a = map_shared(fds[-1], write=who == "writer")
            for fd in fds:
                os.close(fd)
            time.sleep(0.3)  # the kernel's release is asynchronous
            check(in_use(S(top)), f"{fmt}: a {who}'s mapping of {top} left it not in use")
            r = subprocess.run([VHDHEAL, "merge", S(top)], capture_output=True)
            check(r.returncode == 2 and b"in use" in r.stderr and os.path.exists(S(top)),
                  f"{fmt}: merge of {top} while a {who} maps it through the mount: exit "
                  f"{r.returncode}, {r.stderr[-160:]!r} (refused as in use expected)")
            LIBC.munmap(a, PAGE)
            deadline = time.monotonic() + 10
            while os.path.exists(S(top)) and in_use(S(top)) and time.monotonic() < deadline:
                time.sleep(0.05)
            check(not os.path.exists(S(top)) or not in_use(S(top)),
                  f"{fmt}: {top} still in use after the munmap")
        finally:
            m.stop()
        for n in os.listdir(store):
            if n.endswith(fmt):
                os.unlink(S(n))


def replaced_disk_in_use(root):
    """base <- top, top looked up through the mount, then replaced behind its back: moved to
    other.vhd and a plain file put in its name. An open of top through the mount's cached entry
    reaches the disk (now other.vhd), which the index does not know by the inode's name: it is a
    disk all the same, and a mapping of it must keep it in use."""
    store, mnt = os.path.join(root, "replaced"), os.path.join(root, "mnt")
    S, M = (lambda r: os.path.join(store, r)), (lambda r: os.path.join(mnt, r))
    create(S("base.vhd"), "vhd", size="8M")
    child(S("top.vhd"), S("base.vhd"))
    fill(S("top.vhd"), 5)
    m = Mount(store, mnt, os.path.join(root, "replaced.log"))
    try:
        os.stat(M("top.vhd"))  # the kernel keeps the entry (60 s)
        os.link(S("top.vhd"), S("other.vhd"))
        os.unlink(S("top.vhd"))
        with open(S("top.vhd"), "wb") as f:
            f.write(b"plain" * 20000)
        fd = os.open(M("top.vhd"), os.O_RDONLY)
        check(os.fstat(fd).st_ino == os.stat(S("other.vhd")).st_ino,
              "the open through the cached entry did not reach the moved disk")
        a = map_shared(fd)
        os.close(fd)
        time.sleep(0.3)
        check(in_use(S("other.vhd")),
              "a mapping of a disk replaced behind the mount left it not in use")
        r = subprocess.run([VHDHEAL, "merge", S("other.vhd")], capture_output=True)
        check(r.returncode == 2 and b"in use" in r.stderr and os.path.exists(S("other.vhd")),
              f"merge of a disk replaced behind the mount and mapped through it: exit "
              f"{r.returncode}, {r.stderr[-160:]!r} (refused as in use expected)")
        LIBC.munmap(a, PAGE)
    finally:
        m.stop()


def mapped_write_reaches_raw(root):
    """A fixed VHD (its sector 0 at file offset 0), read through a held-open @raw file; a
    reader opens it, then a writer, whose mapping writes sector 0 and msyncs: the held @raw file
    must read the new bytes before the writer closes."""
    store, mnt = os.path.join(root, "raw"), os.path.join(root, "mnt")
    S, M = (lambda r: os.path.join(store, r)), (lambda r: os.path.join(mnt, r))
    create(S("f.vhd"), "vhd", size="4M", kind="fixed")
    new = bytes(range(256)) * (PAGE // 256)
    m = Mount(store, mnt, os.path.join(root, "raw.log"))
    try:
        raw = os.open(M("@raw/f.vhd.raw"), os.O_RDONLY)
        check(os.pread(raw, PAGE, 0) == bytes(PAGE), "@raw/f.vhd.raw does not read zeros first")
        r = os.open(M("f.vhd"), os.O_RDONLY)
        w = os.open(M("f.vhd"), os.O_RDWR)
        a = map_shared(w, write=True)
        ctypes.memmove(a, new, PAGE)
        check(LIBC.msync(a, PAGE, MS_SYNC) == 0, "msync of the mapping failed")
        with open(S("f.vhd"), "rb") as f:
            check(f.read(PAGE) == new, "msync did not reach the store file")
        check(os.pread(raw, PAGE, 0) == new,
              "a write through a mapping of a disk (msync'ed) does not show in its held-open "
              ".raw file while the writer is open")
        LIBC.munmap(a, PAGE)
        for fd in (w, r, raw):
            os.close(fd)
    finally:
        m.stop()


def direct_open_on_ramfs(root):
    """STORE on ramfs (no O_DIRECT): a file open through the mount, then opened O_DIRECT."""
    store, mnt = os.path.join(root, "ramfs"), os.path.join(root, "mnt")
    os.makedirs(store)
    subprocess.run(["mount", "-t", "ramfs", "ramfs", store], check=True)
    try:
        data = os.urandom(1 << 20)
        with open(os.path.join(store, "plain.bin"), "wb") as f:
            f.write(data)
        for opts in ("passthrough=off", ""):
            m = Mount(store, mnt, os.path.join(root, "ramfs.log"), opts)
            try:
                first = os.open(os.path.join(mnt, "plain.bin"), os.O_RDONLY)
                for flags in (os.O_RDONLY | os.O_DIRECT, os.O_RDWR | os.O_DIRECT):
                    try:
                        fd = os.open(os.path.join(mnt, "plain.bin"), flags)
                    except OSError as e:
                        check(False, f"ramfs STORE ({opts or 'passthrough on'}): an O_DIRECT "
                              f"open ({flags:#o}) of an open file failed: {e}")
                        continue
                    check(os.pread(fd, PAGE, 8192) == data[8192:8192 + PAGE],
                          f"ramfs STORE ({opts or 'passthrough on'}): O_DIRECT read wrong bytes")
                    os.close(fd)
                check(os.pread(first, PAGE, 0) == data[:PAGE], "ramfs STORE: a read failed")
                os.close(first)
            finally:
                m.stop()
    finally:
        subprocess.run(["umount", store], check=False)


def needs():
    mounttest.require_root("kernel passthrough (registering a backing file)")
    if tuple(int(x) for x in platform.release().split("-")[0].split(".")[:2]) < (6, 9):
        print("SKIP: kernel passthrough needs Linux 6.9")
        sys.exit(77)


def body(root):
    attacks = [served_by_kernel, lambda r: mapping_keeps_disk_in_use(r, "vhd"),
               lambda r: mapping_keeps_disk_in_use(r, "vhdx"), replaced_disk_in_use,
               mapped_write_reaches_raw,
               direct_open_on_ramfs]
    for attack in attacks:  # each runs even when one before it raised
        try:
            attack(root)
        except Exception as ex:
            traceback.print_exc()
            check(False, repr(ex))


if __name__ == "__main__":
    mounttest.run_in_root("kpt_attack", body, needs=needs)
