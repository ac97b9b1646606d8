#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""merge_attack.py - attacks on `vhdheal merge` and the in-use locks (README "### `vhdheal
convert` and `vhdheal merge`", doc/design.md "Locks on disk files"):
- while a merge runs (it holds the in-use byte at 2^62 of each of its disks exclusively, as held
  here), an open through the mount fails with EBUSY and changes nothing: an O_TRUNC open must
  not empty the disk before it is refused;
- a disk its user may not write (a read-only VHD its owner merges) is held as every other, or
  the merge refused: otherwise a mount marks it in use mid-merge (a disk between CHILD and the
  ancestor read half merged, then removed under its reader);
- nothing holds the disks between an interruption and the resume: a VHD CHILD written then,
  below the offset recorded as copied, or after the copy, must keep that write;
- a merge plan names the files a resume writes and removes: one owned by another user, or one
  its group or others may write, is refused (exit 2, named) and the store left unchanged; the
  same plan, ours again and 0600, is resumed;
- `merge --dry-run` of disks in use (open through a mount, locked by qemu) is refused exactly as
  the merge is (exit 2, the same message), and writes nothing."""
import fcntl
import glob
import hashlib
import json
import os
import shutil
import struct
import subprocess
import time

import mounttest
from mounttest import Mount, create, child, fill
from vhdtest import VHDHEAL, check, vhdheal

INUSE = 1 << 62
# LeakSanitizer cannot run under ptrace: a sanitized vhdheal under strace runs without it
STRACE_ENV = dict(os.environ, ASAN_OPTIONS=":".join(
    filter(None, [os.environ.get("ASAN_OPTIONS"), "detect_leaks=0"])))


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


def read_only_members_held(root, fmt):
    """As an ordinary user (nobody) who owns the store: base <- mid <- top, mid and top mode
    0444, merged --into base with its writes slowed (strace); meanwhile a mount's mark of any of
    the three disks must be refused, or the merge refused before it writes anything."""
    mounttest.require_root("a merge as another user")
    if not shutil.which("strace"):
        check(False, "strace is missing")
        return
    store = os.path.join(root, f"ro-{fmt}")
    os.makedirs(store)
    os.chmod(root, 0o755)
    shutil.chown(store, "nobody", "nogroup")
    as_nobody = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]
    S = lambda r: os.path.join(store, r)
    for args in (["create", "--format", fmt, "--size", "64M", S("base." + fmt)],
                 ["create", "--parent", S("base." + fmt), S("mid." + fmt)],
                 ["create", "--parent", S("mid." + fmt), S("top." + fmt)]):
        subprocess.run(as_nobody + [VHDHEAL] + args, check=True, capture_output=True)
    data = os.path.join(store, "data")
    with open(data, "wb") as f:
        f.write(os.urandom(8 << 20))
    os.chmod(data, 0o644)
    subprocess.run(as_nobody + [VHDHEAL, "write", S("top." + fmt), "0", data], check=True,
                   capture_output=True)
    os.unlink(data)
    before = subprocess.run([VHDHEAL, "read", S("top." + fmt)], check=True,
                            capture_output=True).stdout
    os.chmod(S("mid." + fmt), 0o444)
    os.chmod(S("top." + fmt), 0o444)
    merge = subprocess.Popen(as_nobody + ["strace", "-f", "-o", "/dev/null", "-e",
                                          "inject=pwrite64:delay_enter=400000", VHDHEAL, "merge",
                                          S("top." + fmt), "--into", S("base." + fmt)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=STRACE_ENV)
    deadline = time.monotonic() + 20
    while merge.poll() is None and not glob.glob(S(".vhdheal/merge-*")):
        check(time.monotonic() < deadline, f"{fmt}: the merge neither started nor ended")
        time.sleep(0.01)
    taken = []
    if merge.poll() is None:
        for name in ("top", "mid", "base"):
            fd = os.open(S(f"{name}.{fmt}"), os.O_RDONLY)
            try:
                ofd(fd, fcntl.F_RDLCK)
                taken.append(name)
            except OSError:
                pass
            os.close(fd)
    out, err = merge.communicate(timeout=120)
    check(not taken, f"{fmt}: while the merge ran, a mount could mark {taken} in use")
    if merge.returncode != 0:
        check(merge.returncode == 2 and b"top." in err and not glob.glob(S(".vhdheal/merge-*")),
              f"{fmt}: a refused merge: exit {merge.returncode}, {err!r}")
        check(os.path.exists(S("top." + fmt)), f"{fmt}: a refused merge removed top")
        top = S("top." + fmt)
    else:
        top = S("base." + fmt)
    after = subprocess.run([VHDHEAL, "read", top], check=True, capture_output=True).stdout
    check(after == before, f"{fmt}: the content read changed")


def write_after_interruption_kept(root, fmt):
    """A merge stopped in its copy (ENOSPC injected) with part of it recorded as copied; then
    CHILD is written below that offset (nothing stops it: the merge's locks died with it); the
    resume must not drop that write (it restarted at the recorded offset and removed CHILD)."""
    if not shutil.which("strace"):
        check(False, "strace is missing")
        return
    store = os.path.join(root, f"resume-{fmt}")
    S = lambda r: os.path.join(store, r)
    a, b = os.urandom(1 << 20), os.urandom(1 << 20)
    for n in range(1, 40):
        shutil.rmtree(store, ignore_errors=True)
        os.makedirs(store)
        vhdheal("create", "--format", fmt, "--size", "64M", S("base." + fmt))
        vhdheal("create", "--parent", S("base." + fmt), S("top." + fmt))
        vhdheal("write", S("top." + fmt), "0", input=a)
        vhdheal("write", S("top." + fmt), str(40 << 20), input=b)
        subprocess.run(["strace", "-f", "-o", "/dev/null", "-e",
                        f"inject=pwrite64:error=ENOSPC:when={n}", VHDHEAL, "merge",
                        S("top." + fmt)], capture_output=True, env=STRACE_ENV)
        plans = glob.glob(S(".vhdheal/merge-*"))
        copied = [int(l.split("\t")[1]) for p in plans for l in open(p) if l.startswith("copied")]
        if copied and copied[0] > (1 << 20):
            break
    else:
        check(False, f"{fmt}: no interrupted merge with an offset recorded")
        return
    w = vhdheal("write", S("top." + fmt), "0", input=b"\x5a" * 4096, ok=False)
    if w.returncode != 0:  # a VHDX CHILD's link reads id-mismatch until the merge ends
        print(f"{fmt}: the write after the interruption was refused: {w.stderr[-120:]!r}")
        return
    want = vhdheal("read", S("top." + fmt)).stdout
    r = subprocess.run([VHDHEAL, "merge", "--resume", "--store", store], capture_output=True)
    if r.returncode == 0:
        got = vhdheal("read", S("base." + fmt)).stdout
        check(got == want, f"{fmt}: the resumed merge lost a write made to CHILD after the "
              f"interruption (base reads {got[:4]!r} at 0, top read {want[:4]!r})")
    else:
        top = vhdheal("read", S("top." + fmt)).stdout
        check(top == want, f"{fmt}: a refused resume changed what top reads")


def write_before_removal_kept(root, fmt):
    """A merge stopped at its first removal (EIO injected into unlinkat: CHILD's content is in
    the ancestor, its children relinked); CHILD is then written; the resume must not remove it
    with that write."""
    store = os.path.join(root, f"remove-{fmt}")
    S = lambda r: os.path.join(store, r)
    data = os.urandom(1 << 20)
    for n in range(1, 40):
        shutil.rmtree(store, ignore_errors=True)
        os.makedirs(store)
        vhdheal("create", "--format", fmt, "--size", "16M", S("base." + fmt))
        vhdheal("create", "--parent", S("base." + fmt), S("top." + fmt))
        vhdheal("write", S("top." + fmt), "0", input=data)
        subprocess.run(["strace", "-f", "-o", "/dev/null", "-e",
                        f"inject=unlinkat:error=EIO:when={n}", VHDHEAL, "merge",
                        S("top." + fmt)], capture_output=True, env=STRACE_ENV)
        plans = glob.glob(S(".vhdheal/merge-*"))
        if (plans and "phase\tremove" in open(plans[0]).read()
                and os.path.exists(S("top." + fmt))):
            break
    else:
        check(False, f"{fmt}: the merge never stopped at its removal")
        return
    w = vhdheal("write", S("top." + fmt), str(2 << 20), input=b"\x5a" * 4096, ok=False)
    if w.returncode != 0:
        print(f"{fmt}: the write before the removal was refused: {w.stderr[-120:]!r}")
        return
    want = vhdheal("read", S("top." + fmt)).stdout
    vhdheal("merge", "--resume", "--store", store, ok=False)
    check(os.path.exists(S("top." + fmt)) and vhdheal("read", S("top." + fmt)).stdout == want,
          f"{fmt}: the resumed merge removed CHILD with a write made after the interruption")


def store_hashes(store):
    """Every file under store (the plan too) -> (its bytes' hash, its mode, its owner)."""
    out = {}
    for top, _, names in os.walk(store):
        for n in names:
            p = os.path.join(top, n)
            st = os.stat(p)
            with open(p, "rb") as f:
                out[p] = (hashlib.sha256(f.read()).hexdigest(), st.st_mode, st.st_uid)
    return out


def plan_owner_checked(root, fmt):
    """A resumable plan (base <- top, copy not begun) owned by nobody, then root's but g+w or
    o+w: `merge --resume` refuses it, naming it, and writes nothing; 0600 and ours, it runs."""
    mounttest.require_root("a plan owned by another user")
    store = os.path.join(root, f"plan-owner-{fmt}")
    S = lambda r: os.path.join(store, r)
    os.makedirs(S(".vhdheal"), mode=0o700)
    vhdheal("create", "--format", fmt, "--size", "16M", S("base." + fmt))
    vhdheal("create", "--parent", S("base." + fmt), S("top." + fmt))
    vhdheal("write", S("top." + fmt), "4097", input=b"merged" * 1000)
    want = vhdheal("read", S("top." + fmt)).stdout

    def line(tag, name):
        st = os.stat(S(name))
        ident = json.loads(vhdheal("info", "--json", S(name)).stdout)["disks"][0]["id"]
        return f"{tag}\t{name}\t{st.st_dev}\t{st.st_ino}\t{fmt}\t{ident}\t0\n"
    plan = S(".vhdheal/merge-7-a")
    with open(plan, "w") as f:
        f.write(f"vhdheal-merge/1\nid\t7-a\nsize\t{16 << 20}\nphase\tcopy\ncopied\t0\n" +
                line("ancestor", "base." + fmt) + line("member", "top." + fmt) + "end\n")
    for owner, mode, what in (("nobody", 0o600, "owned by nobody"),
                              ("root", 0o620, "group-writable"),
                              ("root", 0o602, "world-writable")):
        shutil.chown(plan, owner)
        os.chmod(plan, mode)
        before = store_hashes(store)
        r = subprocess.run([VHDHEAL, "merge", "--resume", "--store", store], capture_output=True)
        check(r.returncode == 2 and b"merge-7-a" in r.stderr and b"owned by user" in r.stderr,
              f"{fmt}: a plan {what}: exit {r.returncode}, {r.stderr!r}")
        check(store_hashes(store) == before, f"{fmt}: a refused plan ({what}) changed the store")
    shutil.chown(plan, "root")
    os.chmod(plan, 0o600)
    r = subprocess.run([VHDHEAL, "merge", "--resume", "--store", store], capture_output=True)
    check(r.returncode == 0 and not os.path.exists(S("top." + fmt)) and not os.path.exists(plan),
          f"{fmt}: the plan, ours again, was not resumed: {r.stderr!r}")
    check(vhdheal("read", S("base." + fmt)).stdout == want, f"{fmt}: the resumed merge's base")


def dry_run_sees_in_use(root, fmt):
    """top open through a mount, then base locked as qemu locks it (byte 100, shared): `merge
    --dry-run top` fails as `merge top` does (same exit code, same message naming the disk) and
    leaves the store as it was (no plan, no journal, no .vhdheal/); free, it describes the merge."""
    store = os.path.join(root, f"dry-{fmt}")
    mnt = os.path.join(root, "mnt")
    S = lambda r: os.path.join(store, r)
    os.makedirs(store)
    create(S("base." + fmt), fmt, size="16M")
    child(S("top." + fmt), S("base." + fmt))
    fill(S("top." + fmt), 3, offsets=(0, 1 << 20))
    m = Mount(store, mnt, os.path.join(root, f"dry-{fmt}.log"))
    try:
        held = os.open(os.path.join(mnt, "top." + fmt), os.O_RDONLY)
        qemu = os.open(S("base." + fmt), os.O_RDONLY)
        for name, holder in (("top", held), ("base", qemu)):
            if name == "base":
                os.close(held)
                fcntl.fcntl(qemu, fcntl.F_OFD_SETLK,
                            struct.pack("hhqqi4x", fcntl.F_RDLCK, os.SEEK_SET, 100, 1, 0))
            before = store_hashes(store)
            had_meta = os.path.exists(S(".vhdheal"))
            dry = subprocess.run([VHDHEAL, "merge", "--dry-run", S("top." + fmt)],
                                 capture_output=True)
            want = f"{name}.{fmt}: in use".encode()
            check(dry.returncode == 2 and want in dry.stderr and b"would" not in dry.stdout,
                  f"{fmt}: a dry run with {name} in use: exit {dry.returncode}, {dry.stderr!r}")
            check(store_hashes(store) == before and os.path.exists(S(".vhdheal")) == had_meta,
                  f"{fmt}: a refused dry run with {name} in use changed the store")
            real = subprocess.run([VHDHEAL, "merge", S("top." + fmt)], capture_output=True)
            check(real.returncode == dry.returncode and real.stderr == dry.stderr,
                  f"{fmt}: {name} in use: the merge says {real.returncode} {real.stderr!r}, "
                  f"the dry run {dry.returncode} {dry.stderr!r}")
        os.close(qemu)
        before = store_hashes(store)
        dry = subprocess.run([VHDHEAL, "merge", "--dry-run", S("top." + fmt)], capture_output=True)
        check(dry.returncode == 0 and b"would copy" in dry.stdout,
              f"{fmt}: a dry run of free disks: {dry.returncode} {dry.stderr!r}")
        check(store_hashes(store) == before and not glob.glob(S(".vhdheal/*")),
              f"{fmt}: a dry run wrote to the store")
    finally:
        m.stop()


def body(root, fmt):
    dry_run_sees_in_use(root, fmt)
    plan_owner_checked(root, fmt)
    truncating_open_refused(root, fmt)
    read_only_members_held(root, fmt)
    write_after_interruption_kept(root, fmt)
    write_before_removal_kept(root, fmt)


if __name__ == "__main__":
    mounttest.run_formats("merge_attack", body)
