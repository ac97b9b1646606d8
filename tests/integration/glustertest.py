# SPDX-License-Identifier: GPL-2.0-or-later
"""glustertest.py - a real shared store for the multi-host tests: one GlusterFS volume on a local
brick, mounted several times (each mount is its own glusterfs client process, i.e. one "host").

    with Gluster(root, mounts=3) as g:       # g.mounts[0], g.mounts[1], ...
        g.check_locks(); g.check_coherence()

glusterd is started if it is not answering, and stopped again at the end unless another test's
volume (vhtest*) is still there; a glusterd found answering is left alone. The volume gets the
options doc/shared-stores.md lists (client-side caches off) and the mounts the FUSE options that
make one client see another's writes, renames and sizes at once. On exit the mounts are
unmounted, the volume stopped and deleted, the brick removed. Without the tools or without root
the test skips, unless CI is set: then it fails (as do all failures to start)."""
import errno
import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys
import time

# Measured on glusterfs 10.3 (doc/shared-stores.md): io-cache off (else an open fd on client B
# reads A's old bytes) and stat-prefetch off (else B sees A's old size and renamed-away names);
# the others off because they delay or reorder writes, opens and lookups between clients.
VOLUME_OPTIONS = {
    "performance.quick-read": "off",
    "performance.io-cache": "off",
    "performance.read-ahead": "off",
    "performance.stat-prefetch": "off",
    "performance.write-behind": "off",
    "performance.open-behind": "off",
    "performance.readdir-ahead": "off",
    "performance.nl-cache": "off",
}
# Without these the kernel of client B serves its own page cache and attribute/entry cache
# (1 s) for files client A changed.
CLIENT_OPTIONS = ["--attribute-timeout=0", "--entry-timeout=0", "--negative-timeout=0",
                  "--direct-io-mode=enable"]
TOOLS = ("glusterd", "gluster", "glusterfs", "umount")


def _sbin(tool):
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")


def require_gluster():
    """Exits 77 (skip) without the GlusterFS tools or root, unless CI is set (then fails)."""
    missing = [t for t in TOOLS if not _sbin(t)]
    why = (f"{', '.join(missing)} missing (scripts/setup installs glusterfs-server and "
           "glusterfs-client)") if missing else ("GlusterFS needs root" if os.geteuid() else "")
    if why:
        if os.environ.get("CI"):
            print(f"FAIL: {why} (CI is set)")
            sys.exit(1)
        print(f"SKIP: {why}")
        sys.exit(77)


def _gluster(*args, timeout=60, ok=True):
    p = subprocess.run([_sbin("gluster"), "--mode=script", *args], capture_output=True,
                       text=True, timeout=timeout)
    if ok and p.returncode != 0:
        raise RuntimeError(f"gluster {' '.join(args)} failed ({p.returncode}): "
                           f"{p.stdout.strip()} {p.stderr.strip()}")
    return p


def _answering():
    try:
        return _gluster("volume", "list", timeout=20, ok=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _lock(fd, kind):
    """One non-blocking OFD lock request on the whole file (struct flock, l_pid 0)."""
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", kind, os.SEEK_SET, 0, 0, 0))


def _try_lock(fd, kind):
    try:
        _lock(fd, kind)
        return 0
    except OSError as e:
        return e.errno


class Gluster:
    """A started volume NAME with its brick under ROOT, mounted `mounts` times."""

    def __init__(self, root, mounts=2, name=None):
        self.root = root
        self.name = name or f"vhtest{os.getpid()}"
        self.host = socket.gethostname()
        self.brick = os.path.join(root, "brick")
        self.mounts = [os.path.join(root, f"client{k}") for k in range(mounts)]
        self.glusterd_pid = None
        self.created = self.started = False

    def __enter__(self):
        try:
            os.makedirs(self.root, exist_ok=True)
            self._start_glusterd()
            os.makedirs(self.brick)
            self._create()
            for k, v in VOLUME_OPTIONS.items():
                _gluster("volume", "set", self.name, k, v)
            _gluster("volume", "start", self.name)
            self.started = True
            for m in self.mounts:
                self._mount(m)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start_glusterd(self):
        if _answering():
            return
        pidfile = os.path.join(self.root, "glusterd.pid")
        p = subprocess.run([_sbin("glusterd"), "-p", pidfile], capture_output=True, text=True,
                           timeout=60)
        deadline = time.monotonic() + 60
        while not _answering():
            if time.monotonic() > deadline:
                raise RuntimeError(f"glusterd ({p.returncode}: {p.stdout} {p.stderr}) does not "
                                   "answer `gluster volume list` (/var/log/glusterfs/glusterd.log)")
            time.sleep(0.2)
        if p.returncode == 0:  # else another test started one at the same moment: leave it be
            with open(pidfile) as f:
                self.glusterd_pid = int(f.read().strip())

    def _create(self):
        """gluster refuses localhost and 127.0.0.1 as a brick's host: the host name (which
        glusterd must resolve to this machine), else this machine's first address. "force":
        the brick may be on the root file system or a tmpfs (they keep trusted.* xattrs)."""
        addrs = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
        tried = []
        for host in [self.host] + addrs[:1]:
            p = _gluster("volume", "create", self.name, f"{host}:{self.brick}/b", "force",
                         ok=False)
            if p.returncode == 0:
                self.host, self.created = host, True
                return
            tried.append(f"{host}: {p.stdout.strip()} {p.stderr.strip()}")
        raise RuntimeError(f"gluster volume create {self.name} failed: {'; '.join(tried)}")

    def _mount(self, mnt):
        os.makedirs(mnt)
        subprocess.run([_sbin("glusterfs"), f"--volfile-server={self.host}",
                        f"--volfile-id={self.name}", *CLIENT_OPTIONS, mnt], check=True,
                       timeout=60)
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt) or not os.path.isdir(mnt):
            if time.monotonic() > deadline:
                raise RuntimeError(f"glusterfs did not mount {self.name} at {mnt}")
            time.sleep(0.1)

    def __exit__(self, *exc):
        for m in self.mounts:
            if os.path.ismount(m):
                if subprocess.run(["umount", m], capture_output=True).returncode != 0:
                    subprocess.run(["umount", "-l", m], capture_output=True)
        if self.started:
            _gluster("volume", "stop", self.name, "force", ok=False)
        if self.created:
            _gluster("volume", "delete", self.name, ok=False)
        shutil.rmtree(self.brick, ignore_errors=True)
        others = _gluster("volume", "list", ok=False).stdout.split()
        if self.glusterd_pid and not [v for v in others if v.startswith("vhtest")]:
            try:
                os.kill(self.glusterd_pid, 15)
                for _ in range(100):
                    os.kill(self.glusterd_pid, 0)
                    time.sleep(0.1)
            except ProcessLookupError:
                pass
        return False

    def check_locks(self):
        """The foundation of every shared-store guarantee: an OFD write lock taken through one
        client excludes every lock through another (EAGAIN), a read lock excludes writers and
        is shared, and closing the holder's file frees the lock for the other client. Returns a
        list of problems (empty when all hold)."""
        a, b = self.mounts[0], self.mounts[1]
        with open(os.path.join(a, ".locktest"), "wb") as f:
            f.write(b"\0" * 4096)
        bad = []
        fa = os.open(os.path.join(a, ".locktest"), os.O_RDWR)
        fb = os.open(os.path.join(b, ".locktest"), os.O_RDWR)
        fb2 = os.open(os.path.join(b, ".locktest"), os.O_RDWR)
        try:
            _lock(fa, fcntl.F_WRLCK)
            for kind, what in ((fcntl.F_WRLCK, "write"), (fcntl.F_RDLCK, "read")):
                e = _try_lock(fb, kind)
                if e != errno.EAGAIN:
                    bad.append(f"a {what} lock through client B while client A holds a write "
                               f"lock: {errno.errorcode.get(e, 'granted')} (want EAGAIN)")
            _lock(fa, fcntl.F_UNLCK)
            _lock(fb, fcntl.F_RDLCK)
            if _try_lock(fb2, fcntl.F_RDLCK) != 0:
                bad.append("two read locks through client B do not share")
            if _try_lock(fa, fcntl.F_WRLCK) != errno.EAGAIN:
                bad.append("a write lock through client A while client B reads: not EAGAIN")
            _lock(fb, fcntl.F_UNLCK)
            _lock(fb2, fcntl.F_UNLCK)
            _lock(fa, fcntl.F_WRLCK)
            os.close(fa)
            fa = -1
            deadline = time.monotonic() + 2
            while _try_lock(fb, fcntl.F_WRLCK) != 0:
                if time.monotonic() > deadline:
                    bad.append("client A closed its locked file; client B still cannot lock")
                    break
                time.sleep(0.005)
        finally:
            for fd in (fa, fb, fb2):
                if fd >= 0:
                    os.close(fd)
        os.unlink(os.path.join(a, ".locktest"))
        return bad

    def check_coherence(self, rounds=20):
        """Client B sees client A's writes (through a fresh open and an fd held open), sizes and
        renames at once. Returns a list of problems."""
        a, b = self.mounts[0], self.mounts[1]
        pa, pb = os.path.join(a, ".cohtest"), os.path.join(b, ".cohtest")
        with open(pa, "wb") as f:
            f.write(b"\0" * 65536)
        stale = {"held fd": 0, "fresh open": 0, "size": 0, "rename": 0}
        held = os.open(pb, os.O_RDONLY)
        try:
            for i in range(rounds):
                os.pread(held, 4096, 8192)
                os.stat(pb)
                data = bytes([i + 1]) * 4096
                fd = os.open(pa, os.O_RDWR)
                os.pwrite(fd, data, 8192)
                os.pwrite(fd, b"x", 65536 + i)
                os.fdatasync(fd)
                os.close(fd)
                stale["held fd"] += os.pread(held, 4096, 8192) != data
                fd = os.open(pb, os.O_RDONLY)
                stale["fresh open"] += os.pread(fd, 4096, 8192) != data
                os.close(fd)
                stale["size"] += os.stat(pb).st_size != 65537 + i
                os.rename(pa, pa + ".r")
                stale["rename"] += os.path.exists(pb)
                os.rename(pa + ".r", pa)
        finally:
            os.close(held)
        os.unlink(pa)
        return [f"client B saw client A's old {k} {n} time(s) of {rounds}"
                for k, n in stale.items() if n]


__all__ = ["Gluster", "require_gluster", "VOLUME_OPTIONS", "CLIENT_OPTIONS"]
