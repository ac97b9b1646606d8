# SPDX-License-Identifier: GPL-2.0-or-later
"""mounttest.py - what the mount tests share: a vhdhealfs daemon in the foreground, waited for
with a deadline that fails if it died, unmounted at the end with its exit status and its log
checked (as mount_passthrough.sh does); building stores with vhdheal; reading attributes the
way programs do (os.getxattr, and libc's getxattr with a buffer of a chosen size)."""
import ctypes
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

import vhdtest
from vhdtest import check, run, vhdheal

VHDHEALFS = os.environ.get("VHDHEALFS", "")
LIBC = ctypes.CDLL(None, use_errno=True)
BAD_LOG = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "forget of")


def require_fuse():
    """Exits 77 (skip) without /dev/fuse, unless CI is set; fails without the tools."""
    if not os.path.exists("/dev/fuse"):
        if os.environ.get("CI"):
            print("FAIL: /dev/fuse is missing (CI is set)")
            sys.exit(1)
        print("SKIP: /dev/fuse is missing")
        sys.exit(77)
    for tool in ("fusermount3", "mountpoint", "getfattr", "setfattr", "vhdiinfo"):
        if not shutil.which(tool):
            print(f"FAIL: {tool} is missing")
            sys.exit(1)
    if not VHDHEALFS:
        print("FAIL: VHDHEALFS is not set")
        sys.exit(1)


def run_in_root(name, body, formats=None, needs=None):
    """The main of a mount test: FUSE required (then needs(), if given, for the test's own
    requirements), one temporary root with an empty mnt/, body(root) once or, with formats,
    body(root, fmt) per format; a run that raises fails the test and the next format still runs;
    then vhdtest.finish(name)."""
    require_fuse()
    if needs:
        needs()
    with tempfile.TemporaryDirectory(prefix=f"vh-{name.replace('_', '-')}-") as root:
        os.makedirs(os.path.join(root, "mnt"))
        for fmt in formats or (None,):
            try:
                body(root) if fmt is None else body(root, fmt)
            except Exception as ex:
                traceback.print_exc()
                check(False, repr(ex) if fmt is None else f"{fmt}: {ex!r}")
    vhdtest.finish(name)


def require_root(what):
    """Exits 77 (skip) unless root, or fails under CI: what needs root says why."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            print(f"FAIL: {what} needs root (CI is set)")
            sys.exit(1)
        print(f"SKIP: {what} needs root")
        sys.exit(77)


def format_paths(root, fmt):
    """A per-format run's store (ROOT/store-FMT) and mount point (ROOT/mnt), and S(rel), M(rel):
    paths in them."""
    store = os.path.join(root, "store-" + fmt)
    mnt = os.path.join(root, "mnt")
    return store, mnt, lambda r: os.path.join(store, r), lambda r: os.path.join(mnt, r)


def run_formats(name, run_format, formats=("vhd", "vhdx")):
    """run_in_root with run_format(root, fmt) for each format."""
    run_in_root(name, run_format, formats)


class Mount:
    """vhdhealfs -f STORE MNT [-o OPTS]; log in LOG (appended); `wrap`: a command line put in
    front (e.g. prlimit)."""

    def __init__(self, store, mnt, log, opts="", wrap=()):
        self.store, self.mnt, self.log = store, mnt, log
        args = list(wrap) + [VHDHEALFS, "-f"] + (["-o", opts] if opts else []) + [store, mnt]
        self.logf = open(log, "ab")
        self.proc = subprocess.Popen(args, stdout=self.logf, stderr=self.logf)
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon died before mounting ({self.proc.returncode}):"
                                   f"\n{self.text()}")
            if time.monotonic() > deadline:
                raise RuntimeError("no mount after 20 s")
            time.sleep(0.02)

    def text(self):
        if not self.logf.closed:
            self.logf.flush()
        with open(self.log, errors="replace") as f:
            return f.read()

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        """Unmounts (lazily if the mount is busy); the daemon must exit 0 with a clean log. A
        second stop does nothing."""
        if self.logf.closed:
            return
        subprocess.run(["fusermount3", "-u", self.mnt], check=False)
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", self.mnt], check=False)
        try:
            rc = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.logf.close()
        check(rc == 0, f"the daemon exited with status {rc} after unmount")
        bad = [l for l in self.text().splitlines() if any(b in l for b in BAD_LOG)]
        check(not bad, f"the daemon log shows errors: {bad[:5]}")

    def kill(self):
        """For clean-up after a failure."""
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", self.mnt], check=False)
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()


def try_mount(args, mnt):
    """vhdhealfs -f ARGS, expected to refuse: (exit status, stderr, whether it mounted). A daemon
    that mounts after all is unmounted (its status is then the one after the unmount)."""
    with tempfile.TemporaryFile() as errf:
        p = subprocess.Popen([VHDHEALFS, "-f"] + list(args), stdout=subprocess.DEVNULL,
                             stderr=errf)
        mounted = False
        deadline = time.monotonic() + 20
        while p.poll() is None and time.monotonic() < deadline:
            if os.path.ismount(mnt):
                mounted = True
                subprocess.run(["fusermount3", "-u", "-z", mnt], check=False)
                break
            time.sleep(0.02)
        try:
            rc = p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        errf.seek(0)
        return rc, errf.read().decode(errors="replace"), mounted


def dir_listing(d):
    """Every entry of folder d: {name: (mode, owner, inode, mtime ns, size, sha256 of a regular
    file's bytes or a symlink's target)}: what "nothing in d changed" compares."""
    out = {}
    for n in os.listdir(d):
        p = os.path.join(d, n)
        st = os.lstat(p)
        body = (os.readlink(p) if os.path.islink(p) else
                sha(p) if os.path.isfile(p) else None)
        out[n] = (st.st_mode, st.st_uid, st.st_ino, st.st_mtime_ns, st.st_size, body)
    return out


def getx(path, name):
    """(value as str, 0) or (None, errno)."""
    try:
        return os.getxattr(path, name).decode(), 0
    except OSError as e:
        return None, e.errno


def setx(path, name, value):
    """0 or the errno."""
    try:
        os.setxattr(path, name, value.encode() if isinstance(value, str) else value)
        return 0
    except OSError as e:
        return e.errno


def getx_raw(path, name, size):
    """libc getxattr with a buffer of `size` bytes: (result, errno)."""
    buf = ctypes.create_string_buffer(max(size, 1))
    n = LIBC.getxattr(path.encode(), name.encode(), buf if size else None, ctypes.c_size_t(size))
    return n, (ctypes.get_errno() if n < 0 else 0)


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def create(path, fmt, size="8M", kind="dynamic", block_size=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    bs = ["--block-size", block_size] if block_size else []
    vhdheal("create", "--format", fmt, "--type", kind, *bs, "--size", size, path)


def child(path, parent):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    vhdheal("create", "--parent", parent, path)


def pattern(seed, k=0):
    return bytes((seed * 31 + k * 7 + i) & 0xFF for i in range(4096))


def fill(path, seed, offsets=(0,), store=None):
    """Writes 4 KiB of a pattern at each offset (whole 4 KiB units: doc/formats.md §4a). A chain
    that spans folders needs its store (parents are never followed out of it)."""
    for k, off in enumerate(offsets):
        vhdheal("write", *(["--store", store] if store else []), path, str(off),
                input=pattern(seed, k))


def expected(size, layers):
    """The test's own reference: (seed, offsets) of each disk's fill, the base first."""
    buf = bytearray(size)
    for seed, offsets in layers:
        for k, off in enumerate(offsets):
            buf[off:off + 4096] = pattern(seed, k)
    return bytes(buf)


def content(path, store=None):
    """The virtual content through the chain, as the engine reads it."""
    args = ["read"] + (["--store", store] if store else []) + [path]
    return vhdheal(*args).stdout


def locators(path):
    """{kind: stored path} of a differencing disk, read from STORE by vhdheal info."""
    d = json.loads(vhdheal("info", "--json", path).stdout)["disks"][0]
    return {l["kind"]: l["path"] for l in d["parent"]["locators"]}


def parent_id_on_disk(path):
    return vhdtest.vhdiinfo(path).get("Parent identifier")


def ext(fmt, top=False):
    return ("a" if top else "") + fmt


__all__ = ["Mount", "try_mount", "dir_listing", "require_fuse", "getx", "setx", "getx_raw", "sha", "create", "child", "fill",
           "content", "expected", "pattern", "locators", "parent_id_on_disk", "ext", "check", "run", "vhdheal", "errno"]
