#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""hostile_store - parents are never followed out of the store, and nothing hangs on a FIFO
(doc/chain.md "The chain opener").

A store holds differencing disks whose only locator is hostile: an absolute POSIX path outside
the store, "..\\..\\outside\\base.vhdx", a file:// URL, a UNC path (\\\\dir\\...\\base.vhdx, which a
naive mapping opens as //dir/...), a symlink in the store that points outside, and ".\\fifo.vhdx"
naming a FIFO. `vhdheal info/read/write/check/repair/reconnect` on each must finish (each under
`timeout`: a hang is a failure) with a clear error, and an `strace -f -y` of each shows that no
file outside the store and no FIFO was opened (an open here is a successful open, openat or
openat2 without O_PATH: an O_PATH descriptor gives no access to the data and never blocks). A
positive control shows that the watch does see an open of the outside file when it is named
directly. A forced reconnect that would make a cycle (through a parent only the store index
finds) is refused. Through a vhdhealfs mount: `setfattr user.vhd.parent` naming the FIFO and
opening a child whose locator names it return within seconds, and the daemon still stops on
SIGTERM."""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vhcraft  # noqa: E402
import vhdtest  # noqa: E402
from vhdtest import VHDHEAL, check, vhdheal  # noqa: E402

LIMIT = 10  # seconds for one command: far more than any of them needs
HUNG = (124, 137, -9)


def need(tool):
    if not shutil.which(tool):
        print(f"FAIL: {tool} is missing")
        sys.exit(1)


RESULT = re.compile(r"= (\d+)<(.*)>$")


def opens(log):
    """(flags text, resolved path) of every successful open/openat/openat2 in an strace -f -y
    log; calls split by another process's output (<unfinished ...>/resumed) are joined."""
    pending, out = {}, []
    with open(log, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            pid, _, rest = line.partition(" ")
            if rest.endswith("<unfinished ...>"):
                pending[pid] = rest
                continue
            if "resumed>" in rest:
                rest = pending.pop(pid, "") + rest
            m = RESULT.search(rest)
            if m:
                out.append((rest, m.group(2)))
    return out


def traced(top, args, stdin=b""):
    """Runs vhdheal ARGS under strace and timeout: (returncode, stderr, [opened paths])."""
    fd, log = tempfile.mkstemp(prefix="strace-", dir=top)
    os.close(fd)
    cmd = ["strace", "-f", "-y", "-qq", "-e", "trace=open,openat,openat2", "-o", log,
           "timeout", "-s", "KILL", str(LIMIT), VHDHEAL] + [str(a) for a in args]
    env = dict(os.environ)  # LeakSanitizer cannot run under ptrace (sanitizer builds)
    env["ASAN_OPTIONS"] = ":".join(filter(None, [env.get("ASAN_OPTIONS"), "detect_leaks=0"]))
    p = subprocess.run(cmd, input=stdin, capture_output=True, timeout=3 * LIMIT, env=env)
    paths = [path for text, path in opens(log) if "O_PATH" not in text]
    os.unlink(log)
    return p.returncode, p.stderr.decode(errors="replace"), paths


def under(path, folder):
    return path == folder or path.startswith(folder + "/")


def judge(top, store, what, args, want_rc, want_text, stdin=b""):
    rc, err, paths = traced(top, args, stdin)
    check(rc not in HUNG, f"{what}: did not finish within {LIMIT} s")
    check(rc == want_rc, f"{what}: exit {rc}, want {want_rc}: {err.strip()}")
    check(want_text is None or want_text in err, f"{what}: no '{want_text}' in: {err.strip()}")
    check("Sanitizer" not in err and "runtime error:" not in err, f"{what}: {err.strip()}")
    outside = [p for p in paths if under(p, top) and not under(p, store)]
    check(not outside, f"{what}: opened outside the store: {outside}")
    fifos = [p for p in paths if p.endswith("fifo.vhdx")]
    check(not fifos, f"{what}: opened the FIFO: {fifos}")
    return paths


def hostile_store(top):
    outside = os.path.join(top, "outside")
    store = os.path.join(top, "store")
    os.makedirs(outside)
    os.makedirs(store)
    base = os.path.join(outside, "base.vhdx")
    vhdheal("create", "--format", "vhdx", "--size", "8M", base)
    vhdheal("write", base, "0", input=b"\x42" * 4096)
    base_id = vhcraft.disk_id(base)
    unc = "\\\\" + base[1:].replace("/", "\\")
    cases = {  # folder: (locator, the reason of the broken link)
        "abs": (base, "outside-store"),
        "dotdot": ("..\\..\\outside\\base.vhdx", "outside-store"),
        "url": ("file://" + base, "outside-store"),
        "unc": (unc, "parent-missing"),
        "symlink": (".\\base.vhdx", "outside-store"),
        "fifo": (".\\fifo.vhdx", "parent-missing"),
    }
    children = {}
    for name, (loc, _) in cases.items():
        c = os.path.join(store, name, "child.vhdx")
        os.makedirs(os.path.dirname(c))
        vhdheal("create", "--parent", base, c)
        vhcraft.set_parent(c, base_id, loc)
        children[name] = c
    os.symlink("../../outside/base.vhdx", os.path.join(store, "symlink", "base.vhdx"))
    fifo = os.path.join(store, "fifo", "fifo.vhdx")
    os.mkfifo(fifo)

    for name, c in children.items():
        why = cases[name][1]
        judge(top, store, f"info {name}", ["info", c], 0, None)
        judge(top, store, f"read {name}", ["read", "--store", store, c], 2, why)
        judge(top, store, f"write {name}", ["write", "--store", store, c, "0"], 2, why,
              stdin=b"\x01" * 4096)
        # without --store the store is the child's folder: still nothing outside it
        judge(top, store, f"write {name} (no --store)", ["write", c, "0"], 2, why,
              stdin=b"\x01" * 4096)
        judge(top, store, f"check {name}", ["check", "--store", store, c], 1, None)
        judge(top, store, f"repair {name}", ["repair", "--store", store, c], 1, None)
        judge(top, store, f"reconnect {name} to the FIFO",
              ["reconnect", "--store", store, c, fifo], 2, "not a regular file")
        judge(top, store, f"reconnect {name} to the outside base",
              ["reconnect", "--ignore-id-mismatch", "--store", store, c, base], 2,
              "outside the store")
    judge(top, store, "reconnect through the symlink",
          ["reconnect", "--store", store, children["symlink"],
           os.path.join(store, "symlink", "base.vhdx")], 2, "outside the store")
    # the FIFO named directly
    for cmd in (["info"], ["read", "--store", store], ["write", "--store", store]):
        args = cmd + [fifo] + (["0"] if cmd[0] == "write" else [])
        judge(top, store, f"{cmd[0]} of the FIFO", args, 2, "not a regular file")
    judge(top, store, "check of the FIFO", ["check", "--store", store, fifo], 2, None)
    # the children are unchanged: nothing was written
    for name, c in children.items():
        check(vhcraft.vhdx_locator(c).get("relative_path") == cases[name][0],
              f"{name}: the child's locator changed")

    # the positive control: the watch sees the outside file when it is named directly
    rc, err, paths = traced(top, ["info", base])
    check(rc == 0, f"control: info of the outside base: {err}")
    check(base in paths, f"control: the strace watch did not see the open of {base}: {paths}")


def forced_cycle(top):
    """a <- c <- m <- p, m moved: only the index finds m; c -> p (forced) would be a cycle."""
    store = os.path.join(top, "cyc")
    vm = os.path.join(store, "vm")
    os.makedirs(os.path.join(store, "moved"))
    os.makedirs(vm)
    a, c, m, p = (os.path.join(vm, f"{n}.vhdx") for n in "acmp")
    vhdheal("create", "--format", "vhdx", "--size", "8M", a)
    vhdheal("create", "--parent", a, c)
    vhdheal("create", "--parent", c, m)
    vhdheal("create", "--parent", m, p)
    os.rename(m, os.path.join(store, "moved", "m.vhdx"))
    before = vhcraft.vhdx_locator(c)
    for force in ([], ["--ignore-id-mismatch"]):
        judge(top, store, f"reconnect c to p {force}",
              ["reconnect", *force, "--store", store, c, p], 2, "would make a cycle")
    check(vhcraft.vhdx_locator(c) == before, "the cycle was written")


def bounded(top, args):
    """Runs args under `timeout -s KILL`: (returncode, stdout, stderr). Output goes to files, not
    pipes: a caller stuck in a hung FUSE request (D state, where even SIGKILL waits) would hold
    a pipe open, and reading it would hang the test too."""
    with tempfile.TemporaryFile(dir=top) as out, tempfile.TemporaryFile(dir=top) as err:
        try:
            p = subprocess.run(["timeout", "-s", "KILL", str(LIMIT)] + args, stdout=out,
                               stderr=err, timeout=3 * LIMIT)
        except subprocess.TimeoutExpired:
            return -9, "", ""
        out.seek(0)
        err.seek(0)
        return (p.returncode, out.read().decode(errors="replace"),
                err.read().decode(errors="replace"))


def mounted(top):
    """setfattr naming the FIFO, and a child whose locator names it, through a mount."""
    import mounttest
    store = os.path.join(top, "mstore")
    mnt = os.path.join(top, "mnt")
    vm = os.path.join(store, "vm")
    os.makedirs(vm)
    os.makedirs(mnt)
    base, child, orphan = (os.path.join(vm, n) for n in ("base.vhdx", "child.vhdx",
                                                         "orphan.vhdx"))
    vhdheal("create", "--format", "vhdx", "--size", "8M", base)
    vhdheal("create", "--parent", base, child)
    vhdheal("create", "--parent", base, orphan)
    # the orphan expects a parent no disk has, at a locator that names the FIFO
    vhcraft.set_parent(orphan, "0badc0de-0000-4000-8000-000000000001", ".\\fifo.vhdx")
    os.mkfifo(os.path.join(vm, "fifo.vhdx"))
    mt = mounttest.Mount(store, mnt, os.path.join(top, "daemon.log"))
    try:
        t0 = time.monotonic()
        kid = os.path.join(mnt, "vm/child.vhdx")
        rc, _, err = bounded(top, ["setfattr", "-n", "user.vhd.parent", "-v", "fifo.vhdx", kid])
        check(rc not in HUNG, "setfattr user.vhd.parent=fifo.vhdx hung")
        check(rc != 0 and "Invalid argument" in err,
              f"setfattr naming the FIFO: exit {rc}: {err.strip()}")
        # every access to the mount runs bounded: a daemon that hangs hangs its callers
        rc, status, _ = bounded(top, ["getfattr", "--only-values", "-n", "user.vhd.status", kid])
        check(rc == 0 and "not a regular file" in status,
              f"the child's status does not say why: exit {rc}: {status!r}")
        rc, _, _ = bounded(top, ["head", "-c", "4096", os.path.join(mnt, "vm/orphan.vhdx")])
        check(rc not in HUNG, "opening the child whose locator names the FIFO hung")
        check(time.monotonic() - t0 < 2 * LIMIT, "the mount took too long")
        check(mt.alive(), "the daemon died")
    finally:
        if mt.alive():
            mt.proc.send_signal(signal.SIGTERM)
        try:
            rc = mt.proc.wait(timeout=LIMIT)
            check(rc == 0, f"the daemon exited {rc} on SIGTERM")
        except subprocess.TimeoutExpired:
            check(False, "the daemon did not stop on SIGTERM")
            mt.proc.kill()
            mt.proc.wait()
        subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
        mt.logf.close()
        check(not os.path.ismount(mnt), "still mounted after SIGTERM")
        bad = [l for l in mt.text().splitlines() if any(b in l for b in mounttest.BAD_LOG)]
        check(not bad, f"the daemon log shows errors: {bad[:5]}")


def main():
    for tool in ("strace", "timeout"):
        need(tool)
    with tempfile.TemporaryDirectory(prefix="vh-hostile-") as tmp:
        top = os.path.realpath(tmp)
        for fn in (hostile_store, forced_cycle):
            try:
                fn(top)
            except Exception as ex:
                traceback.print_exc()
                check(False, f"{fn.__name__}: {ex!r}")
        if not os.path.exists("/dev/fuse") and not os.environ.get("CI"):
            print("SKIP: the mount part (/dev/fuse is missing)")
        else:
            for tool in ("fusermount3", "setfattr", "getfattr", "head"):
                need(tool)
            check(bool(os.environ.get("VHDHEALFS")), "VHDHEALFS is not set")
            try:
                mounted(top)
            except Exception as ex:
                traceback.print_exc()
                check(False, f"mounted: {ex!r}")
    vhdtest.finish("hostile_store")


if __name__ == "__main__":
    main()
