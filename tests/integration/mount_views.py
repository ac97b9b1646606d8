#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""mount_views.py - the @raw and @chains views of a real vhdhealfs mount (doc/design.md "Views").

A store of VHD and VHDX disks built with `vhdheal create/write` (fixed, dynamic, differencing,
chains of depth 3, one broken link whose parent the store holds elsewhere, one whose parent is
gone, one unreadable disk, folders without disks) is mounted. Every @raw/....raw file is as
large as its disk's virtual size and reads the same bytes as `vhdheal read` (through the right
parent) and as libvhdi (pyvhdi with the parents set; VHD written in aligned 4 KiB units,
doc/formats.md §4a); SEEK_HOLE regions read as zeros; concurrent readers agree; writes fail; an ext4
file system inside a VHDX chain reads through debugfs, fuse2fs and a loop mount; @chains lists
the chain tops with relative symlinks that readlink -f follows to the real files, and a status
file; the store is byte-for-byte unchanged. Then: a change made through the mount shows in @raw
at once, also through an fd held open since before the change (a write into a block the top
holds, one that allocates a new block, one into the base); a disk created or renamed in the
store itself shows in @raw at once and its old name is gone within the 1 s entry timeout; five
@raw opens of a 64 TiB VHDX keep the daemon under 300 MiB RSS; a real @raw folder at the
store's root wins over the view, and views=off hides both.
Each mount is waited for with a deadline that fails if the daemon died, unmounted in a
`finally`, and the daemon must exit with status 0 and a log free of sanitizer reports."""
import concurrent.futures
import errno
import hashlib
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vhdtest as t  # noqa: E402
from mounttest import Mount, require_fuse  # noqa: E402

MIB = 1 << 20


def tail(path, n=30):
    try:
        return "".join(open(path, errors="replace").readlines()[-n:])
    except OSError:
        return ""


def sha_tree(root):
    """sha256 of every file under root (and the list of folders), by relative path."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(d, name), root) + "/"] = "dir"
        for name in files:
            p = os.path.join(d, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hashlib.file_digest(f, "sha256").hexdigest()
    return out


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def errno_of(fn, *args):
    try:
        fn(*args)
    except OSError as e:
        return e.errno
    return 0


# ---------------------------------------------------------------------------------------------
# The store


def write_random(path, rng, count, size, align=4096, maxlen=256 * 1024, store=None):
    """`count` random writes in whole aligned units (libvhdi reads VHD bitmaps right only then);
    a chain that spans folders needs its store."""
    opt = ["--store", store] if store else []
    for _ in range(count):
        off = rng.randrange(size // align) * align
        n = min(size - off, rng.randrange(1, maxlen // align + 1) * align)
        t.vhdheal("write", *opt, path, off, input=rng.randbytes(n))


def ext4_images(d):
    """Two ext4 images of one 48 MiB file system: as made, and after more files were written."""
    src = os.path.join(d, "tree")
    os.makedirs(os.path.join(src, "sub"))
    first = os.urandom(300 * 1024)
    with open(os.path.join(src, "first.bin"), "wb") as f:
        f.write(first)
    with open(os.path.join(src, "sub", "hello.txt"), "w") as f:
        f.write("hello from inside a VHDX chain\n")
    img = os.path.join(d, "fs1.img")
    t.run("mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "root_owner=0:0", "-d", src, img, "48M")
    img2 = os.path.join(d, "fs2.img")
    shutil.copyfile(img, img2)
    second = os.urandom(700 * 1024 + 123)
    with open(os.path.join(d, "second.bin"), "wb") as f:
        f.write(second)
    t.run("debugfs", "-w", "-R", f"write {os.path.join(d, 'second.bin')} second.bin", img2)
    return img, img2, {"first.bin": first, "second.bin": second,
                       "sub/hello.txt": b"hello from inside a VHDX chain\n"}


def write_changes(disk, old, new, unit=64 * 1024, store=None):
    """Writes into disk only the units in which image `new` differs from `old`."""
    with open(old, "rb") as a, open(new, "rb") as b:
        off = 0
        while True:
            x, y = a.read(unit), b.read(unit)
            if not y:
                break
            if x != y:
                t.vhdheal("write", *(["--store", store] if store else []), disk, off, input=y)
            off += len(y)


def build_store(store, work, rng):
    """Makes the store; returns {disk path: its chain, top first} for the readable chains, and
    facts about the special cases."""
    def p(rel):
        full = os.path.join(store, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        return full

    chains = {}
    # VHDX: a dynamic base (1 MiB blocks: many runs), two children (writes before each child
    # exists: a write changes a VHDX's DataWriteGuid), and a fixed disk.
    t.vhdheal("create", "--format", "vhdx", "--type", "dynamic", "--block-size", "1M",
              "--size", "24M", p("vhdx/base.vhdx"))
    write_random(p("vhdx/base.vhdx"), rng, 12, 24 * MIB, store=store)
    t.vhdheal("create", "--parent", p("vhdx/base.vhdx"), p("vhdx/vm1/mid.vhdx"))
    write_random(p("vhdx/vm1/mid.vhdx"), rng, 8, 24 * MIB, align=512, store=store)
    t.vhdheal("create", "--parent", p("vhdx/vm1/mid.vhdx"), p("vhdx/vm1/top.avhdx"))
    write_random(p("vhdx/vm1/top.avhdx"), rng, 8, 24 * MIB, align=512, store=store)
    chains["vhdx/vm1/top.avhdx"] = ["vhdx/vm1/top.avhdx", "vhdx/vm1/mid.vhdx", "vhdx/base.vhdx"]
    chains["vhdx/vm1/mid.vhdx"] = ["vhdx/vm1/mid.vhdx", "vhdx/base.vhdx"]
    chains["vhdx/base.vhdx"] = ["vhdx/base.vhdx"]
    t.vhdheal("create", "--format", "vhdx", "--type", "fixed", "--size", "6M",
              p("vhdx/fixed.vhdx"))
    write_random(p("vhdx/fixed.vhdx"), rng, 4, 6 * MIB, store=store)
    chains["vhdx/fixed.vhdx"] = ["vhdx/fixed.vhdx"]

    # VHD: fixed, and a dynamic base with two children, all written in aligned 4 KiB units.
    t.vhdheal("create", "--format", "vhd", "--type", "fixed", "--size", "5M", p("vhd/fixed.vhd"))
    write_random(p("vhd/fixed.vhd"), rng, 4, 5 * MIB, store=store)
    chains["vhd/fixed.vhd"] = ["vhd/fixed.vhd"]
    t.vhdheal("create", "--format", "vhd", "--type", "dynamic", "--block-size", "512K",
              "--size", "20M", p("vhd/base.vhd"))
    # each disk is written before its child exists (vhdheal write refuses a parent in use)
    write_random(p("vhd/base.vhd"), rng, 10, 20 * MIB, store=store)
    t.vhdheal("create", "--parent", p("vhd/base.vhd"), p("vhd/vm/child.vhd"))
    write_random(p("vhd/vm/child.vhd"), rng, 10, 20 * MIB, store=store)
    t.vhdheal("create", "--parent", p("vhd/vm/child.vhd"), p("vhd/vm/grand.vhd"))
    write_random(p("vhd/vm/grand.vhd"), rng, 10, 20 * MIB, store=store)
    chains["vhd/vm/grand.vhd"] = ["vhd/vm/grand.vhd", "vhd/vm/child.vhd", "vhd/base.vhd"]
    chains["vhd/vm/child.vhd"] = ["vhd/vm/child.vhd", "vhd/base.vhd"]
    chains["vhd/base.vhd"] = ["vhd/base.vhd"]

    # A broken link with one heal target: the parent was renamed into another folder.
    t.vhdheal("create", "--format", "vhdx", "--type", "dynamic", "--size", "12M",
              p("moved/parent.vhdx"))
    write_random(p("moved/parent.vhdx"), rng, 5, 12 * MIB, store=store)
    t.vhdheal("create", "--parent", p("moved/parent.vhdx"), p("moved/kid.vhdx"))
    write_random(p("moved/kid.vhdx"), rng, 5, 12 * MIB, store=store)
    os.rename(p("moved/parent.vhdx"), p("moved/old/parent-renamed.vhdx"))
    chains["moved/kid.vhdx"] = ["moved/kid.vhdx", "moved/old/parent-renamed.vhdx"]
    chains["moved/old/parent-renamed.vhdx"] = ["moved/old/parent-renamed.vhdx"]

    # A broken link nothing can heal: the parent is gone.
    t.vhdheal("create", "--format", "vhd", "--type", "dynamic", "--size", "4M",
              p("orphan/gone.vhd"))
    t.vhdheal("create", "--parent", p("orphan/gone.vhd"), p("orphan/lost.vhd"))
    write_random(p("orphan/lost.vhd"), rng, 2, 4 * MIB, store=store)
    os.unlink(p("orphan/gone.vhd"))

    # A file that looks like a disk but cannot be read.
    t.vhdheal("create", "--format", "vhd", "--type", "dynamic", "--size", "1M", p("bad/bad.vhd"))
    with open(p("bad/bad.vhd"), "r+b") as f:
        f.seek(512)
        f.write(b"garbage!")

    # ext4 inside a VHDX chain: the file system in a dynamic VHDX, more files in a child.
    img, img2, files = ext4_images(work)
    t.vhdheal("create", "--format", "vhdx", "--type", "dynamic", "--size", "48M",
              p("fs/ext.vhdx"))
    t.vhdheal("write", p("fs/ext.vhdx"), 0, img)
    t.vhdheal("create", "--parent", p("fs/ext.vhdx"), p("fs/ext-child.vhdx"))
    write_changes(p("fs/ext-child.vhdx"), img, img2, store=store)
    chains["fs/ext-child.vhdx"] = ["fs/ext-child.vhdx", "fs/ext.vhdx"]
    chains["fs/ext.vhdx"] = ["fs/ext.vhdx"]

    # Folders without disks, and a file that is not one.
    os.makedirs(p("docs/empty"))
    with open(p("docs/readme.txt"), "w") as f:
        f.write("not a disk\n")
    with open(p("vhd/notes.txt"), "w") as f:
        f.write("not a disk either\n")
    return chains, files, img2


# ---------------------------------------------------------------------------------------------
# The checks


def raw_path(mnt, disk):
    return os.path.join(mnt, "@raw", disk + ".raw")


def check_root_listing(mnt):
    entries = {e.name: e for e in os.scandir(mnt)}
    for name in ("@raw", "@chains"):
        t.check(name in entries, f"ls {mnt} lists {name}")
        if name in entries:
            st = entries[name].stat(follow_symlinks=False)
            t.check(stat.S_ISDIR(st.st_mode), f"{name} is a folder")
            t.check(st.st_mode & 0o222 == 0, f"{name} has no write bits: {oct(st.st_mode)}")
    ls = t.run("ls", "-la", mnt).stdout.decode()
    t.check(" @raw\n" in ls and " @chains\n" in ls, f"ls -la shows the views:\n{ls}")


def check_raw_tree(mnt, all_disks):
    found = set()
    folders = set()
    for d, dirs, files in os.walk(os.path.join(mnt, "@raw")):
        rel = os.path.relpath(d, os.path.join(mnt, "@raw"))
        folders.add(rel)
        for name in files:
            found.add(os.path.normpath(os.path.join(rel, name)))
    want = {d + ".raw" for d in all_disks}
    t.check(found == want, f"@raw holds every disk as NAME.raw: {sorted(found ^ want)}")
    t.check("docs" not in folders and "docs/empty" not in folders,
            f"folders without disks are left out of @raw: {sorted(folders)}")


def check_raw_contents(store, mnt, chains, sizes, repaired):
    for disk, members in sorted(chains.items()):
        rp = raw_path(mnt, disk)
        st = os.stat(rp)
        t.check(st.st_size == sizes[disk],
                f"{disk}: @raw size {st.st_size} = virtual size {sizes[disk]}")
        t.check(stat.S_ISREG(st.st_mode) and st.st_mode & 0o222 == 0,
                f"{disk}: @raw file is read-only: {oct(st.st_mode)}")
        got = read_file(rp)
        if disk in repaired:  # the reference reads the chain through the right parent
            want = t.vhdheal("read", os.path.join(repaired[disk], disk)).stdout
        else:
            want = t.vhdheal("read", "--store", store, os.path.join(store, disk)).stdout
        t.check(got == want, f"{disk}: @raw equals vhdheal read ({len(got)} vs {len(want)})")
        theirs = t.libvhdi_read([os.path.join(store, m) for m in members])
        t.check(got == theirs, f"{disk}: @raw equals libvhdi's read of {members}")
        check_holes(rp, got, disk)


def check_holes(path, content, disk):
    """SEEK_DATA/SEEK_HOLE cover the file, and every hole reads as zeros."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        off, holes = 0, 0
        while off < size:
            try:
                data = os.lseek(fd, off, os.SEEK_DATA)
            except OSError as e:
                t.check(e.errno == errno.ENXIO, f"{disk}: SEEK_DATA: {e}")
                data = size
            if data > off:
                holes += 1
                t.check(content[off:data] == bytes(data - off),
                        f"{disk}: the hole {off}..{data} reads as zeros")
            if data >= size:
                break
            off = os.lseek(fd, data, os.SEEK_HOLE)
            t.check(off > data, f"{disk}: SEEK_HOLE from {data} moves on ({off})")
        t.check(os.lseek(fd, 0, os.SEEK_HOLE) <= size, f"{disk}: SEEK_HOLE within the file")
    finally:
        os.close(fd)


def check_failures(mnt, sizes, log):
    lost = raw_path(mnt, "orphan/lost.vhd")
    t.check(os.stat(lost).st_size == sizes["orphan/lost.vhd"],
            "a disk whose chain is broken shows its virtual size")
    t.check(errno_of(read_file, lost) == errno.EIO, "reading a broken chain fails with EIO")
    bad = raw_path(mnt, "bad/bad.vhd")
    t.check(os.stat(bad).st_size == 0, "an unreadable disk shows size 0")
    t.check(errno_of(os.open, bad, os.O_RDONLY) == errno.EIO, "opening an unreadable disk: EIO")
    text = open(log, errors="replace").read()
    t.check("@raw/orphan/lost.vhd.raw: the chain is broken at orphan/lost.vhd: parent-missing"
            in text, f"the broken chain's failure is logged:\n{tail(log)}")
    t.check("@raw/bad/bad.vhd.raw:" in text and "cxsparse" in text,
            "the unreadable disk's failure is logged")


def check_read_only(mnt, store):
    rp = raw_path(mnt, "vhd/fixed.vhd")
    t.check(errno_of(os.open, rp, os.O_WRONLY) == errno.EROFS, "open for writing: EROFS")
    t.check(errno_of(os.open, rp, os.O_RDONLY | os.O_TRUNC) == errno.EROFS, "O_TRUNC: EROFS")
    t.check(errno_of(os.truncate, rp, 0) == errno.EROFS, "truncate: EROFS")
    t.check(errno_of(os.chmod, rp, 0o644) == errno.EROFS, "chmod: EROFS")
    t.check(errno_of(os.utime, rp) == errno.EROFS, "touch: EROFS")
    t.check(errno_of(os.unlink, rp) == errno.EROFS, "rm: EROFS")
    t.check(errno_of(os.mkdir, os.path.join(mnt, "@raw", "new")) == errno.EROFS, "mkdir: EROFS")
    t.check(errno_of(os.rename, rp, os.path.join(mnt, "x")) == errno.EXDEV, "mv out: EXDEV")
    t.check(errno_of(os.link, rp, os.path.join(mnt, "x")) == errno.EXDEV, "ln out: EXDEV")
    t.check(errno_of(os.symlink, "x", os.path.join(mnt, "@chains", "x")) == errno.EROFS,
            "ln -s in @chains: EROFS")
    t.check(errno_of(os.setxattr, rp, "user.x", b"1") == errno.EROFS, "setxattr: EROFS")
    # a user who may read the disk may read its view, and nobody may write it
    r = subprocess.run(["setpriv", "--reuid=1234", "--regid=1234", "--clear-groups", "sh", "-c",
                        f"echo x >> '{rp}'"], capture_output=True)
    t.check(r.returncode != 0 and b"denied" in r.stderr,
            f"a user's write is refused by the kernel: {r.stderr!r}")
    # copying out of the views works (the kernel copies by reading)
    out = os.path.join(store, "..", "copy.raw")
    t.run("cp", rp, out)
    t.check(read_file(out) == read_file(rp), "cp of an @raw file")
    os.unlink(out)


def check_concurrent(mnt, disk):
    rp = raw_path(mnt, disk)
    want = hashlib.sha256(read_file(rp)).hexdigest()

    def digest(k):
        # different request sizes; two readers with O_DIRECT, so that the daemon serves every
        # byte they read, two through the page cache
        fd = os.open(rp, os.O_RDONLY | (os.O_DIRECT if k % 2 else 0))
        try:
            h = hashlib.sha256()
            off = 0
            while chunk := os.pread(fd, 4096 * (k + 1) * 7 + 1000 * k, off):
                h.update(chunk)
                off += len(chunk)
            return h.hexdigest()
        finally:
            os.close(fd)
    fd = os.open(rp, os.O_RDONLY)  # evict this file's cached pages only
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        got = list(ex.map(digest, range(4)))
    t.check(all(g == want for g in got), f"{disk}: 4 concurrent readers read the same bytes")


def check_ext4(mnt, work, files):
    rp = raw_path(mnt, "fs/ext-child.vhdx")
    for name, data in files.items():
        out = t.run("debugfs", "-R", f"cat /{name}", rp).stdout
        t.check(out == data, f"debugfs -R 'cat /{name}' through @raw")
    fsck = t.run("e2fsck", "-f", "-n", rp, ok=False)
    t.check(fsck.returncode == 0, f"e2fsck -n of the @raw image is clean: {fsck.stdout[-300:]}")
    # fuse2fs
    m2 = os.path.join(work, "fuse2fs")
    os.mkdir(m2)
    if shutil.which("fuse2fs"):
        r = subprocess.run(["fuse2fs", "-o", "ro,fakeroot", rp, m2], capture_output=True)
        if t.check(r.returncode == 0, f"fuse2fs -o ro: {r.stderr!r}"):
            try:
                for name, data in files.items():
                    t.check(read_file(os.path.join(m2, name)) == data, f"fuse2fs reads /{name}")
            finally:
                subprocess.run(["fusermount3", "-u", m2], check=False)
    else:
        t.check(not os.environ.get("CI"), "fuse2fs is missing (CI is set)")
    # a loop device
    if not os.path.exists("/dev/loop-control"):
        t.check(not os.environ.get("CI"), "/dev/loop-control is missing (CI is set)")
        print("SKIP: loop mount (/dev/loop-control is missing)")
        return
    r = subprocess.run(["losetup", "-r", "-f", "--show", rp], capture_output=True, text=True)
    if not t.check(r.returncode == 0, f"losetup -r -f --show: {r.stderr}"):
        return
    loop = r.stdout.strip()
    lm = os.path.join(work, "loopmnt")
    os.mkdir(lm)
    try:
        size = int(t.run("blockdev", "--getsize64", loop).stdout)
        t.check(size == 48 * MIB, f"the loop device is as large as the disk ({size})")
        r = subprocess.run(["mount", "-t", "ext4", "-o", "ro,noload", loop, lm],
                           capture_output=True, text=True)
        if t.check(r.returncode == 0, f"mount {loop}: {r.stderr}"):
            try:
                for name, data in files.items():
                    t.check(read_file(os.path.join(lm, name)) == data, f"loop mount reads /{name}")
            finally:
                subprocess.run(["umount", lm], check=False)
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


def check_chains(store, mnt, tops, chains):
    base = os.path.join(mnt, "@chains")
    found = set()
    for d, dirs, files in os.walk(base):
        if "status" in files:
            found.add(os.path.relpath(d, base))
            dirs.clear()
    t.check(found == set(tops), f"@chains lists the tops: {sorted(found ^ set(tops))}")
    for top in tops:
        folder = os.path.join(base, top)
        members = chains.get(top, [top])
        names = sorted(os.listdir(folder))
        want = sorted([f"{k}-{os.path.basename(m)}" for k, m in enumerate(members)] + ["status"])
        t.check(names == want, f"@chains/{top} holds {want}, not {names}")
        for k, m in enumerate(members):
            link = os.path.join(folder, f"{k}-{os.path.basename(m)}")
            target = os.readlink(link)
            t.check(target == "../" * (top.count("/") + 2) + m,
                    f"@chains/{top}: readlink {k}: {target}")
            t.check(os.path.realpath(link) == os.path.join(mnt, m),
                    f"@chains/{top}: readlink -f {k} reaches the real file in the mount")
            t.check(read_file(link)[:4096] == read_file(os.path.join(store, m))[:4096],
                    f"@chains/{top}: the link {k} opens the real file")
        status = read_file(os.path.join(folder, "status")).decode()
        t.check(os.stat(os.path.join(folder, "status")).st_size == len(status.encode()),
                f"@chains/{top}/status: its size is its length")
        for child in members[:-1]:
            t.check(f"\n{child}: " in status, f"@chains/{top}/status has a line for {child}")
        yield top, status


def expect_status(statuses):
    top = statuses["vhdx/vm1/top.avhdx"]
    t.check(top.startswith("ok ") and "vhdx/vm1/top.avhdx: ok: parent vhdx/vm1/mid.vhdx" in top
            and "vhdx/vm1/mid.vhdx: ok: parent vhdx/base.vhdx" in top
            and "vhdx/base.vhdx: base: dynamic vhdx" in top, f"status of a healthy chain:\n{top}")
    kid = statuses["moved/kid.vhdx"]
    t.check(kid.startswith("BROKEN ") and "moved/kid.vhdx: parent-missing: " in kid
            and "the store holds it at moved/old/parent-renamed.vhdx" in kid,
            f"status of a broken link with a heal target:\n{kid}")
    lost = statuses["orphan/lost.vhd"]
    t.check("orphan/lost.vhd: parent-missing: " in lost and "-> ?" in lost,
            f"status of an unresolvable link:\n{lost}")
    bad = statuses["bad/bad.vhd"]
    t.check("bad/bad.vhd: unreadable: " in bad, f"status of an unreadable disk:\n{bad}")


# ---------------------------------------------------------------------------------------------
# Coherence and memory


def pread_all(fd, off, n):
    out = b""
    while len(out) < n:
        b = os.pread(fd, n - len(out), off + len(out))
        if not b:
            break
        out += b
    return out


def check_held_open_raw(store, mnt):
    """An fd kept open on @raw (as a loop device or a backup keeps it) sees every write made
    through the mount into the chain: into a block the top holds and into a new one."""
    top = "coh/top.vhd"
    fd = os.open(raw_path(mnt, top), os.O_RDONLY)
    try:
        before = pread_all(fd, 0, 8 * MIB)  # every page of the disk is now cached
        t.check(before == t.vhdheal("read", "--store", store, os.path.join(store, top)).stdout,
                "the held-open @raw reads the chain")
        # block 0 is in the top already; block 2 (4 MiB) only in the base: a new block
        t.vhdheal("write", os.path.join(mnt, top), 4096, input=b"\x11" * 8192)
        t.vhdheal("write", os.path.join(mnt, top), 4 * MIB + 512, input=b"\x22" * 65536)
        after = pread_all(fd, 0, 8 * MIB)
        want = t.vhdheal("read", "--store", store, os.path.join(store, top)).stdout
        t.check(after[4096:4096 + 8192] == b"\x11" * 8192,
                "the held-open @raw shows a write into a block the top holds")
        t.check(after[4 * MIB + 512:4 * MIB + 512 + 65536] == b"\x22" * 65536,
                "the held-open @raw shows a write that allocated a new block in the top")
        t.check(after == want, "the held-open @raw reads what vhdheal reads after the writes")
        # a change to the base through the mount reaches the top's @raw too (a parent in use:
        # --force, and a mount with allow_parent_writes)
        t.vhdheal("write", "--force", os.path.join(mnt, "coh/base.vhd"), 6 * MIB,
                  input=b"\x33" * 4096)
        again = pread_all(fd, 6 * MIB, 4096)
        t.check(again == b"\x33" * 4096, "the held-open @raw shows a write into the base")
    finally:
        os.close(fd)


def check_direct_changes(store, mnt):
    """Disks created, renamed and removed in the store itself (not through the mount)."""
    os.listdir(os.path.join(mnt, "@raw", "coh"))  # the views have just looked at the store
    new = os.path.join(store, "coh", "new.vhd")
    t.vhdheal("create", "--format", "vhd", "--size", "4M", new)
    t.vhdheal("write", new, MIB, input=b"\x44" * 4096)
    try:
        data = read_file(raw_path(mnt, "coh/new.vhd"))
    except OSError as e:
        data = None
        t.check(False, f"a disk created in the store shows in @raw at once: {e}")
    if data is not None:
        t.check(data == t.vhdheal("read", new).stdout, "it reads as the disk")
    os.rename(new, os.path.join(store, "coh", "renamed.vhd"))
    t.check(os.path.exists(raw_path(mnt, "coh/renamed.vhd")),
            "a disk renamed in the store shows under its new name at once")
    gone_after = None
    start = time.monotonic()
    while time.monotonic() - start < 5:
        if not os.path.exists(raw_path(mnt, "coh/new.vhd")):
            gone_after = time.monotonic() - start
            break
        time.sleep(0.05)
    t.check(gone_after is not None and gone_after <= 1.5,
            f"its old name is gone from @raw within the 1 s entry timeout ({gone_after})")
    os.remove(os.path.join(store, "coh", "renamed.vhd"))
    time.sleep(1.1)  # the entry timeout
    t.check(not os.path.exists(raw_path(mnt, "coh/renamed.vhd")),
            "a disk removed from the store is gone from @raw")
    t.check("coh/renamed.vhd" not in os.listdir(os.path.join(mnt, "@raw", "coh")),
            "and from the listing")


def vm_rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


RSS_BOUND_MIB = 300


def check_huge_raw_memory(store, mnt, pid):
    """Five opens at once of the @raw of a 64 TiB dynamic VHDX with 1 MiB blocks (a 512 MiB
    BAT): the daemon stays under RSS_BOUND_MIB."""
    huge = os.path.join(store, "huge", "huge.vhdx")
    os.mkdir(os.path.dirname(huge))
    t.vhdheal("create", "--size", "64T", "--block-size", "1M", huge)
    t.vhdheal("write", huge, 0, input=b"\x55" * 4096)  # the open that writes loads the BAT
    fds = [os.open(raw_path(mnt, "huge/huge.vhdx"), os.O_RDONLY) for _ in range(5)]
    try:
        t.check(os.fstat(fds[0]).st_size == 64 << 40, "the @raw file is 64 TiB")
        for k, fd in enumerate(fds):
            for off in (0, (17 + k) << 40, (64 << 40) - 4096):
                data = os.pread(fd, 4096, off)
                t.check(data == (b"\x55" if off == 0 else b"\0") * 4096,
                        f"@raw of the 64 TiB disk reads right at {off}")
        rss = vm_rss_kib(pid)
        t.check(0 < rss <= RSS_BOUND_MIB * 1024,
                f"five open @raw files of a 64 TiB disk: daemon RSS {rss} KiB "
                f"<= {RSS_BOUND_MIB} MiB")
        print(f"daemon RSS with five @raw of a 64 TiB disk open: {rss // 1024} MiB")
    finally:
        for fd in fds:
            os.close(fd)
    shutil.rmtree(os.path.dirname(huge))


def main():
    require_fuse()
    for tool in ("mkfs.ext4", "debugfs", "e2fsck", "setpriv"):
        if not shutil.which(tool):
            print(f"FAIL: {tool} is missing")
            sys.exit(1)
    rng = random.Random(20261125)
    tmp = tempfile.mkdtemp(prefix="vh-views-")
    os.chmod(tmp, 0o755)
    store, mnt, work = (os.path.join(tmp, n) for n in ("store", "mnt", "work"))
    for d in (store, mnt, work):
        os.mkdir(d)
    log = os.path.join(tmp, "daemon.log")
    m = None
    try:
        chains, files, _ = build_store(store, work, rng)
        all_disks = list(chains) + ["orphan/lost.vhd", "bad/bad.vhd"]
        sizes = {d: t.info(os.path.join(store, d))["virtual_size"]
                 for d in all_disks if d != "bad/bad.vhd"}
        # The reference for the healed link: a copy of the store, repaired.
        fixed = os.path.join(tmp, "fixed")
        shutil.copytree(store, fixed)
        t.vhdheal("repair", fixed, ok=False)
        repaired = {"moved/kid.vhdx": fixed}
        before = sha_tree(store)

        print("== views of a mounted store")
        # heal=off: the links are opened through the mount too, and only the views are tested
        m = Mount(store, mnt, log, "heal=off")
        check_root_listing(mnt)
        check_raw_tree(mnt, all_disks)
        check_raw_contents(store, mnt, chains, sizes, repaired)
        check_failures(mnt, sizes, log)
        check_read_only(mnt, store)
        check_concurrent(mnt, "vhd/vm/grand.vhd")
        check_concurrent(mnt, "vhdx/vm1/top.avhdx")
        check_ext4(mnt, work, files)
        tops = ["vhdx/vm1/top.avhdx", "vhdx/fixed.vhdx", "vhd/fixed.vhd", "vhd/vm/grand.vhd",
                "moved/kid.vhdx", "orphan/lost.vhd", "bad/bad.vhd", "fs/ext-child.vhdx"]
        statuses = dict(check_chains(store, mnt, tops, chains))
        if set(statuses) == set(tops):
            expect_status(statuses)
        m.stop()
        t.check(sha_tree(store) == before, "the store is byte-for-byte unchanged by the views")

        print("== a change through the mount shows in @raw at once")
        m = Mount(store, mnt, log, "heal=off")
        top = "vhdx/vm1/top.avhdx"
        old = read_file(raw_path(mnt, top))
        t.vhdheal("write", "--store", mnt, os.path.join(mnt, top), 3 * MIB,
                  input=b"\x5a" * 65536)
        new = read_file(raw_path(mnt, top))
        t.check(new == t.vhdheal("read", "--store", store, os.path.join(store, top)).stdout,
                "after a write through the mount, @raw reads the new content")
        t.check(new != old and new[3 * MIB:3 * MIB + 65536] == b"\x5a" * 65536,
                "the new content is there")
        # the parent renamed through the mount: the chain still reads, through its heal target
        os.rename(os.path.join(mnt, "vhd/base.vhd"), os.path.join(mnt, "vhd/base-renamed.vhd"))
        grand = read_file(raw_path(mnt, "vhd/vm/grand.vhd"))
        t.check(grand == t.libvhdi_read([os.path.join(store, p) for p in
                                         ("vhd/vm/grand.vhd", "vhd/vm/child.vhd",
                                          "vhd/base-renamed.vhd")]),
                "after the base was renamed, @raw reads the chain through the renamed base")
        t.check(os.path.exists(raw_path(mnt, "vhd/base-renamed.vhd")),
                "@raw shows the renamed disk")
        t.check(os.readlink(os.path.join(mnt, "@chains/vhd/vm/grand.vhd/2-base-renamed.vhd"))
                == "../../../../vhd/base-renamed.vhd", "@chains follows the rename")
        m.stop()

        print("== a held-open @raw, disks changed behind the mount, a 64 TiB disk")
        coh = os.path.join(store, "coh")
        os.mkdir(coh)
        t.vhdheal("create", "--format", "vhd", "--size", "8M", os.path.join(coh, "base.vhd"))
        t.vhdheal("write", os.path.join(coh, "base.vhd"), 0, input=rng.randbytes(8 * MIB))
        t.vhdheal("create", "--parent", os.path.join(coh, "base.vhd"), os.path.join(coh, "top.vhd"))
        t.vhdheal("write", os.path.join(coh, "top.vhd"), 0, input=rng.randbytes(MIB))
        m = Mount(store, mnt, log, "heal=off,allow_parent_writes")
        check_held_open_raw(store, mnt)
        check_direct_changes(store, mnt)
        check_huge_raw_memory(store, mnt, m.proc.pid)
        m.stop()
        shutil.rmtree(coh)

        print("== a real @raw at the store's root wins")
        os.mkdir(os.path.join(store, "@raw"))
        with open(os.path.join(store, "@raw", "mine.txt"), "w") as f:
            f.write("real\n")
        m = Mount(store, mnt, log)
        t.check(os.listdir(os.path.join(mnt, "@raw")) == ["mine.txt"],
                f"the real @raw is shown: {os.listdir(os.path.join(mnt, '@raw'))}")
        names = os.listdir(mnt)
        t.check(names.count("@raw") == 1 and "@chains" in names, f"root listing: {names}")
        t.check(os.path.isdir(os.path.join(mnt, "@chains", "vhd")), "@chains is still a view")
        m.stop()
        t.check("@raw exists: the store's entry is shown" in open(log).read(),
                "the shadowed view is logged")
        shutil.rmtree(os.path.join(store, "@raw"))

        print("== views=off")
        m = Mount(store, mnt, log, "views=off")
        names = os.listdir(mnt)
        t.check("@raw" not in names and "@chains" not in names, f"views=off: {names}")
        t.check(not os.path.exists(os.path.join(mnt, "@raw")), "views=off: no @raw by lookup")
        m.stop()
    finally:
        if m is not None:
            m.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    t.finish("mount_views")


if __name__ == "__main__":
    main()
