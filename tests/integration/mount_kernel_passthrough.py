#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""mount_kernel_passthrough - kernel passthrough (doc/mount.md "Kernel passthrough"): where the
kernel offers FUSE passthrough (Linux 6.9+ with CONFIG_FUSE_PASSTHROUGH) and the daemon runs as
root, an open file of the default mount that is not a disk is served by the kernel from the
store file (a disk always by the daemon): a mapping
through the mount shows the store file's own pages (the same page frames, read from
/proc/self/pagemap). Where it does not apply, the mount's own pages: with -o passthrough=off,
with -o healmode=overlay, on a store the kernel refuses as backing (an overlayfs STORE), and
everywhere on a kernel without passthrough.

Whatever the mode, no open fails: the kernel answers EIO to an open whose mode differs from the
inode's other open files, and the daemon must choose consistently. Checked with readers,
writers, O_DIRECT and mmap in every order, on a plain file and on a disk, and by four processes
opening both at random for 2 s. A disk opened for writing while readers have it in passthrough
still tells @raw of each write before it returns (an open @raw file reads the new bytes). Writes
through either kind of open file are seen by the other, and by STORE. The kernel's backing files
are let go: a 32 MiB file opened 40 times through the mount and removed frees its space."""
import ctypes
import gzip
import mmap
import os
import platform
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mounttest import Mount, check, create, require_root, run_in_root  # noqa: E402

PAGE = 4096
PLAIN_SIZE = 4 << 20
READ_OPENS = [os.O_RDONLY, os.O_RDONLY | os.O_DIRECT]
ALL_OPENS = READ_OPENS + [os.O_RDWR, os.O_WRONLY]


def kernel_offers_passthrough():
    """Linux 6.9+ built with CONFIG_FUSE_PASSTHROUGH (the config when the kernel publishes it)."""
    major, minor = (int(x) for x in platform.release().split(".")[:2])
    if (major, minor) < (6, 9):
        return False
    for path in ("/proc/config.gz", f"/boot/config-{platform.release()}"):
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as f:
                return "CONFIG_FUSE_PASSTHROUGH=y" in f.read()
        except OSError:
            continue
    return True


def frame(path, page=0, flags=os.O_RDONLY):
    """The page frame number behind page `page` of a shared mapping of path."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    length = (page + 1) * PAGE
    fd = os.open(path, flags)
    try:
        addr = libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        check(addr not in (None, ctypes.c_void_p(-1).value), f"{path}: mmap failed")
        try:
            ctypes.string_at(addr + page * PAGE, 1)  # fault it in
            with open("/proc/self/pagemap", "rb") as pm:
                pm.seek((addr // PAGE + page) * 8)
                entry = int.from_bytes(pm.read(8), "little")
            check(entry >> 63 & 1, f"{path}: page {page} not present after a read")
            return entry & ((1 << 55) - 1)
        finally:
            libc.munmap(addr, length)
    finally:
        os.close(fd)


def served_by_kernel(store_path, mnt_path):
    """True when a mapping through the mount shows the store file's own page."""
    return frame(store_path) == frame(mnt_path)


def write_file(path, size, seed):
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.write(rnd.randbytes(size))


def open_all_orders(mnt, store, name, flag_sets):
    """Opens of each kind (flag_sets) in each order, and mmap beside each: none fails."""
    m, s = os.path.join(mnt, name), os.path.join(store, name)
    for first in flag_sets:
        for second in flag_sets:
            fds = []
            try:
                for flags in (first, second, os.O_RDONLY):
                    fds.append(os.open(m, flags))
                head = os.pread(fds[-1], 512, 0)
                check(head == open(s, "rb").read(512),
                      f"{name}: opened {first:#o} then {second:#o}: the first bytes differ")
            except OSError as e:
                check(False, f"{name}: opened {first:#o} then {second:#o}: {e!r}")
            finally:
                for fd in fds:
                    os.close(fd)
    # mapped while another open file is of each kind
    for flags in flag_sets:
        fd = os.open(m, flags)
        try:
            check(frame(m) > 0, f"{name}: mapped beside an open {flags:#o}")
        except OSError as e:
            check(False, f"{name}: mapped beside an open {flags:#o}: {e!r}")
        finally:
            os.close(fd)


def plain_coherence(mnt, store):
    """A reader and a writer of one plain file see each other's writes, and STORE sees both."""
    m, s = os.path.join(mnt, "plain.bin"), os.path.join(store, "plain.bin")
    r = os.open(m, os.O_RDONLY)
    w = os.open(m, os.O_RDWR)
    try:
        os.pwrite(w, b"written through the mount", 1000)
        check(os.pread(r, 25, 1000) == b"written through the mount", "plain: reader sees writer")
        with open(s, "rb") as f:
            f.seek(1000)
            check(f.read(25) == b"written through the mount", "plain: STORE sees the write")
        with open(s, "r+b") as f:
            f.seek(5000)
            f.write(b"written in STORE")
        check(os.pread(r, 16, 5000) == b"written in STORE", "plain: reader sees a STORE write")
        mm = mmap.mmap(w, PAGE * 4)
        mm[PAGE:PAGE + 6] = b"mapped"
        mm.flush()
        mm.close()
        check(os.pread(r, 6, PAGE) == b"mapped", "plain: reader sees a write through mmap")
        with open(s, "rb") as f:
            f.seek(PAGE)
            check(f.read(6) == b"mapped", "plain: STORE sees a write through mmap")
    finally:
        os.close(r)
        os.close(w)


def disk_views_fresh(mnt, store, at):
    """A fixed VHD opened read-only (passthrough where offered), then for writing: each write
    through the writer shows at once in an open @raw file of the disk."""
    m = os.path.join(mnt, "disks", "fixed.vhd")
    raw = os.path.join(mnt, "@raw", "disks", "fixed.vhd.raw")
    reader = os.open(m, os.O_RDONLY)
    rawfd = os.open(raw, os.O_RDONLY)
    try:
        check(os.pread(rawfd, 8, at) == bytes(8), "@raw of the fixed disk starts zeroed")
        writer = os.open(m, os.O_RDWR)
        try:
            for k in range(3):
                data = f"write {k:02}".encode()
                os.pwrite(writer, data, at + k * 512)
                got = os.pread(rawfd, len(data), at + k * 512)
                check(got == data, f"@raw shows write {k} at once: {got!r}")
                check(os.pread(reader, len(data), at + k * 512) == data,
                      f"the disk's reader sees write {k}")
        finally:
            os.close(writer)
    finally:
        os.close(rawfd)
        os.close(reader)


def random_openers(mnt, names, flags, seconds=2.0, procs=4):
    """procs processes open the files at random (reader, writer, O_DIRECT) for `seconds`: no
    open, read or close fails."""
    code = r"""
import fcntl, mmap, os, random, sys, time
names, end = sys.argv[1].split(","), time.monotonic() + float(sys.argv[2])
rnd, fails, n, held = random.Random(int(sys.argv[3])), [], 0, []
flags = [int(f) for f in sys.argv[4].split(",")]
buf = mmap.mmap(-1, 4096)  # aligned, for O_DIRECT
while time.monotonic() < end:
    n += 1
    try:
        if held and rnd.random() < 0.5:
            os.close(held.pop(rnd.randrange(len(held))))
        else:
            held.append(os.open(rnd.choice(names), rnd.choice(flags)))
            if fcntl.fcntl(held[-1], fcntl.F_GETFL) & 3 != os.O_WRONLY:
                os.preadv(held[-1], [buf], 0)
    except OSError as e:
        fails.append(repr(e))
for fd in held:
    os.close(fd)
print(n, len(fails), fails[:3])
"""
    fl = ",".join(str(f) for f in flags)
    ps = [subprocess.Popen([sys.executable, "-c", code, ",".join(names), str(seconds), str(k), fl],
                           stdout=subprocess.PIPE, text=True) for k in range(procs)]
    total = 0
    for p in ps:
        out, _ = p.communicate(timeout=60)
        n, nfail, sample = out.split(" ", 2)
        total += int(n)
        check(int(nfail) == 0, f"random openers: {nfail} of {n} operations failed: {sample}")
    check(total > 100, f"random openers made only {total} operations")


def space_freed(root, mt_opts, expect_kernel):
    """On a 64 MiB tmpfs STORE: a 32 MiB file opened 40 times through the mount, then removed
    through it, frees its space (the kernel's backing files are let go)."""
    store, mnt = os.path.join(root, "tmpfs"), os.path.join(root, "mnt")
    os.makedirs(store)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", store], check=True)
    try:
        base = os.statvfs(store).f_bfree
        write_file(os.path.join(store, "big.bin"), 32 << 20, 7)
        mt = Mount(store, mnt, os.path.join(root, "tmpfs.log"), mt_opts)
        try:
            m = os.path.join(mnt, "big.bin")
            check(served_by_kernel(os.path.join(store, "big.bin"), m) == expect_kernel,
                  "tmpfs: served by the kernel as expected")
            for k in range(40):
                with open(m, "rb" if k % 2 else "r+b") as f:
                    f.seek(k << 20)
                    f.read(4096)
            os.unlink(m)
            deadline = time.monotonic() + 5
            while os.statvfs(store).f_bfree < base - 16 and time.monotonic() < deadline:
                time.sleep(0.1)
            freed = os.statvfs(store).f_bfree
            check(freed >= base - 16,
                  f"tmpfs: the removed file's space is freed ({base - freed} blocks still held)")
        finally:
            mt.stop()
    finally:
        subprocess.run(["umount", "-l", store], check=False)


def overlay_store(root):
    """STORE on overlayfs (its stacking depth 1): the kernel refuses it as backing; the daemon
    serves it and logs why once."""
    lower, upper, work, store = (os.path.join(root, "ovl", d)
                                 for d in ("lower", "upper", "work", "store"))
    for d in (lower, upper, work, store):
        os.makedirs(d)
    write_file(os.path.join(lower, "plain.bin"), PLAIN_SIZE, 3)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={upper},workdir={work}", store], check=True)
    mnt = os.path.join(root, "mnt")
    try:
        mt = Mount(store, mnt, os.path.join(root, "ovl.log"))
        try:
            m, s = os.path.join(mnt, "plain.bin"), os.path.join(store, "plain.bin")
            check(not served_by_kernel(s, m), "overlayfs STORE: served by the daemon")
            with open(m, "rb") as a, open(s, "rb") as b:
                check(a.read() == b.read(), "overlayfs STORE: content through the mount")
            open_all_orders(mnt, store, "plain.bin", ALL_OPENS)
            if kernel_offers_passthrough():
                check("refused as backing file" in mt.text(),
                      "overlayfs STORE: the refusal is logged")
        finally:
            mt.stop()
    finally:
        subprocess.run(["umount", "-l", store], check=False)


def body(root):
    require_root("kernel passthrough (backing files need CAP_SYS_ADMIN; pagemap frames)")
    offered = kernel_offers_passthrough()
    print(f"kernel {platform.release()}: passthrough {'offered' if offered else 'not offered'}")
    store, mnt = os.path.join(root, "store"), os.path.join(root, "mnt")
    os.makedirs(os.path.join(store, "disks"))
    write_file(os.path.join(store, "plain.bin"), PLAIN_SIZE, 1)
    create(os.path.join(store, "disks", "fixed.vhd"), "vhd", size="4M", kind="fixed")
    create(os.path.join(store, "disks", "dyn.vhdx"), "vhdx", size="16M")
    create(os.path.join(store, "disks", "first-writer.vhdx"), "vhdx", size="16M")
    log = os.path.join(root, "daemon.log")

    for session, (opts, kernel) in enumerate((("", offered), ("passthrough=off", False),
                                              ("healmode=overlay", False))):
        mt = Mount(store, mnt, log, opts)
        try:
            tag = opts or "default"
            s, m = os.path.join(store, "plain.bin"), os.path.join(mnt, "plain.bin")
            check(served_by_kernel(s, m) == kernel,
                  f"{tag}: plain file served by the kernel: expected {kernel}")
            ds, dm = (os.path.join(d, "disks", "dyn.vhdx") for d in (store, mnt))
            # a disk is served by the daemon in every mode (kpt_attack: a mapping outlives close)
            check(not served_by_kernel(ds, dm),
                  f"{tag}: a disk opened read-only is served by the kernel")
            writes_disks = opts != "healmode=overlay"  # overlay: EROFS for disks
            if writes_disks:
                # a disk opened for writing first is served by the daemon, its readers too
                fs_, fm = (os.path.join(d, "disks", "first-writer.vhdx") for d in (store, mnt))
                w = os.open(fm, os.O_RDWR)
                try:
                    check(not served_by_kernel(fs_, fm),
                          f"{tag}: a disk opened for writing first is served by the daemon")
                finally:
                    os.close(w)
            disk_opens = ALL_OPENS if writes_disks else READ_OPENS
            open_all_orders(mnt, store, "plain.bin", ALL_OPENS)
            open_all_orders(mnt, store, "disks/dyn.vhdx", disk_opens)
            plain_coherence(mnt, store)
            if writes_disks:
                disk_views_fresh(mnt, store, 8192 * (1 + session))
            random_openers(mnt, [m], ALL_OPENS)
            random_openers(mnt, [dm], disk_opens)
        finally:
            mt.stop()
    space_freed(root, "", offered)
    overlay_store(root)


if __name__ == "__main__":
    run_in_root("mount_kernel_passthrough", body)
