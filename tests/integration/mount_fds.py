#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""mount_fds - bounded file descriptors (issue 15.5): with the daemon's descriptor limit at
20 000 (prlimit), a folder of 100 000 files is listed through the mount and every file stated;
afterwards the daemon holds fewer descriptors than its cache's bound (4096, fs.h
VHFS_MAX_PATH_FDS) plus a few, other opens work (a file, a disk's @raw view, a new file), and
the daemon unmounts with status 0 (it used to run out of descriptors, fail every other open with
EMFILE, and abort at unmount). Then one user holding every open handle it can get is stopped at
its share (EMFILE), and another user and root still open, list and create."""
import errno
import os
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mounttest import Mount, check, child, content, create, fill, run_in_root  # noqa: E402

NFILES = 100_000
LIMIT = 20_000
CAP = 4096  # VHFS_MAX_PATH_FDS
SLACK = 64  # the root, the log, /dev/fuse, open handles, the service's files


def daemon_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def run(root):
    store = os.path.join(root, "store")
    mnt = os.path.join(root, "mnt")
    big = os.path.join(store, "big")
    os.makedirs(big)
    t0 = time.monotonic()
    for k in range(NFILES):
        os.close(os.open(os.path.join(big, f"f{k:06d}"), os.O_CREAT | os.O_WRONLY, 0o644))
    create(os.path.join(store, "vm/base.vhd"), "vhd")
    fill(os.path.join(store, "vm/base.vhd"), 1)
    child(os.path.join(store, "vm/kid.vhd"), os.path.join(store, "vm/base.vhd"))
    ref = content(os.path.join(store, "vm/kid.vhd"))
    with open(os.path.join(store, "note.txt"), "w") as f:
        f.write("hello\n")
    print(f"{NFILES} files made in {time.monotonic() - t0:.1f} s", flush=True)

    mt = Mount(store, mnt, os.path.join(root, "daemon.log"),
               wrap=("prlimit", f"--nofile={LIMIT}:{LIMIT}", "--"))
    try:
        t0 = time.monotonic()
        seen, errors = 0, {}
        with os.scandir(os.path.join(mnt, "big")) as it:
            for e in it:
                try:
                    os.stat(e.path)
                    seen += 1
                except OSError as ex:
                    errors[ex.errno] = errors.get(ex.errno, 0) + 1
        print(f"listed and stated {seen} files in {time.monotonic() - t0:.1f} s", flush=True)
        check(seen == NFILES and not errors,
              f"listing: {seen} of {NFILES} stated, errors by errno {errors}")
        n = daemon_fds(mt.proc.pid)
        print(f"the daemon holds {n} descriptors (bound {CAP} + {SLACK})", flush=True)
        check(n <= CAP + SLACK, f"the daemon holds {n} descriptors after the listing")
        # everyone else's opens still work
        with open(os.path.join(mnt, "note.txt")) as f:
            check(f.read() == "hello\n", "note.txt reads wrong")
        with open(os.path.join(mnt, "@raw/vm/kid.vhd.raw"), "rb") as f:
            check(f.read() == ref, "@raw of the chain reads wrong")
        with open(os.path.join(mnt, "new.txt"), "w") as f:
            f.write("new\n")
        check(os.path.getsize(os.path.join(store, "new.txt")) == 4, "new.txt not written")
        # a second pass: the kernel still knows the first files, whose descriptors the daemon
        # gave back; asking for their attributes reopens them (by folder and name, or handle)
        bad = {}
        for k in range(0, 2 * CAP, 7):
            path = os.path.join(mnt, "big", f"f{k:06d}")
            try:
                os.listxattr(path)
                with open(path, "rb"):
                    pass
            except OSError as ex:
                bad[ex.errno] = bad.get(ex.errno, 0) + 1
        check(not bad, f"files whose descriptors were given back fail: errors by errno {bad}")
        last = os.path.join(mnt, "big", f"f{NFILES - 1:06d}")
        first = os.path.join(mnt, "big", "f000000")
        check(os.stat(first).st_ino == os.stat(os.path.join(big, "f000000")).st_ino,
              "an evicted file reopened as another object")
        with open(first, "w") as f:
            f.write("first\n")
        with open(os.path.join(big, "f000000")) as f:
            check(f.read() == "first\n", "a write to an evicted file did not reach STORE")
        os.rename(last, last + ".moved")
        check(os.path.exists(os.path.join(big, f"f{NFILES - 1:06d}.moved")), "rename failed")
        check(daemon_fds(mt.proc.pid) <= CAP + SLACK, "descriptors grew after the second pass")
        check(mt.alive(), "the daemon died")
    finally:
        mt.stop()


# A user holding open handles: raises its own descriptor limit, opens one file until EMFILE,
# says how many it got, then holds them until its standard input closes.
HOLDER = """
import os, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
fds = []
try:
    while len(fds) < 60000:
        fds.append(os.open(sys.argv[1], os.O_RDONLY))
except OSError as e:
    print(len(fds), e.errno, flush=True)
sys.stdin.read()
"""
USER_SHARE = (LIMIT - CAP) // 4  # fs/passthrough.c handles_init


def run_handles(root):
    """One user holding every handle it can get leaves the others theirs: its opens stop at its
    share (EMFILE), while another user and root still open, list and create."""
    store = os.path.join(root, "store2")
    mnt = os.path.join(root, "mnt")
    os.chmod(root, 0o755)  # the users reach the mount point
    os.makedirs(store)
    os.chmod(store, 0o777)
    for name in ("f.txt", "g.txt"):
        with open(os.path.join(store, name), "w") as f:
            f.write(name)
        os.chmod(os.path.join(store, name), 0o644)
    mt = Mount(store, mnt, os.path.join(root, "daemon2.log"), "allow_other",
               wrap=("prlimit", f"--nofile={LIMIT}:{LIMIT}", "--"))
    holder = None
    try:
        holder = subprocess.Popen(
            ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
             "/usr/bin/python3", "-c", HOLDER, os.path.join(mnt, "f.txt")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        got, err = holder.stdout.readline().split()
        got, err = int(got), int(err)
        print(f"a user holding handles got {got} (share {USER_SHARE}), then errno {err}",
              flush=True)
        check(err == errno.EMFILE and USER_SHARE - 8 <= got <= USER_SHARE,
              f"a user's handles stopped at {got} with errno {err}, want EMFILE at its share")
        p = subprocess.run(["setpriv", "--reuid", "4242", "--regid", "4242", "--clear-groups",
                            "cat", os.path.join(mnt, "g.txt")], capture_output=True, text=True)
        check(p.returncode == 0 and p.stdout == "g.txt",
              f"another user could not open a file meanwhile: {p.stderr.strip()}")
        with open(os.path.join(mnt, "g.txt")) as f:
            check(f.read() == "g.txt", "root could not read a file meanwhile")
        check(len(os.listdir(mnt)) >= 2, "root could not list meanwhile")
        with open(os.path.join(mnt, "h.txt"), "w") as f:
            f.write("h")
    finally:
        if holder is not None:
            holder.stdin.close()
            holder.wait()
        time.sleep(0.5)  # the kernel sends the releases
        n = daemon_fds(mt.proc.pid)
        check(n <= CAP + SLACK, f"the daemon holds {n} descriptors after the holder left")
        mt.stop()


def run_both(root):
    for part in (run, run_handles):
        try:
            part(root)
        except Exception as ex:
            traceback.print_exc()
            check(False, f"{part.__name__}: {ex!r}")


def main():
    run_in_root("mount_fds", run_both)


if __name__ == "__main__":
    main()
