#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""journal_compaction.py - a compaction of the repair journal (doc/journal.md "Compaction")
killed (SIGKILL, injected by strace) at each of its steps while another process's repair is
live: after `vhdheal check`, no repair is left unfinished, none was lost, every listed
committed repair is undone byte for byte, and the next compaction works; a planted
journal.new (file, symbolic link, FIFO, hard link to the journal) is removed, not followed; and
a folder planted there (which stops root too) fails the compaction but not the repair, with one
warning naming the journal and the errno in vhdheal's stderr and in the mount's log."""
import errno
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mounttest  # noqa: E402
from vhdtest import VHDHEAL, check, finish, vhdheal  # noqa: E402

LIMIT = "30000"  # VHDHEAL_TEST_JOURNAL_COMPACT_AT: six VHD repairs pass it
# (syscall, the path strace filters on, relative to the store): the steps of a compaction
POINTS = [
    ("openat", ".vhdheal/journal.new"),
    ("pwrite64", ".vhdheal/journal.new"),
    ("fdatasync", ".vhdheal/journal.new"),
    ("renameat,renameat2", ".vhdheal/journal.new"),
    ("fsync", ".vhdheal"),  # renamed, the folder not yet flushed
]


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def listing(store):
    out = {}
    for line in vhdheal("undo", "--store", store, "--list").stdout.decode().splitlines():
        m = re.match(r"(\S+) \S+ (\S+) (\S+?):", line)
        if m:
            out[m.group(1)] = (m.group(2), m.group(3))
    return out


def env_without_limit():
    e = dict(os.environ)
    e.pop("VHDHEAL_TEST_JOURNAL_COMPACT_AT", None)
    return e


def make_store(root, fmt):
    """A store of six children whose parent moved; five repaired (one undone and repaired
    again), c0's repair undone: its link is broken again. No compaction yet."""
    store = os.path.join(root, "S")
    os.makedirs(os.path.join(store, "old"))
    os.makedirs(os.path.join(store, "new"))
    parent = os.path.join(store, "old", f"p.{fmt}")
    vhdheal("create", "--format", fmt, "--type", "dynamic", "--size", "64M", parent)
    kids = [f"c{i}.{fmt}" for i in range(6)]
    for k in kids:
        vhdheal("create", "--parent", parent, os.path.join(store, k))
    os.rename(parent, os.path.join(store, "new", f"p.{fmt}"))
    orig = {k: sha(os.path.join(store, k)) for k in kids}
    e = env_without_limit()

    def repair(k):
        p = subprocess.run([VHDHEAL, "repair", "--store", store, os.path.join(store, k)],
                           capture_output=True, text=True, env=e)
        return re.search(r"undo id: (\S+)", p.stdout).group(1)

    ids = {k: repair(k) for k in kids[:5]}
    for k in (kids[1], kids[0]):
        subprocess.run([VHDHEAL, "undo", "--store", store, ids[k]], check=True,
                       capture_output=True, env=e)
    repair(kids[1])
    return store, kids, orig


def crash_at(fmt, syscall, rel, live_end):
    root = tempfile.mkdtemp(prefix="vh-compact-")
    try:
        store, kids, orig = make_store(root, fmt)
        journal = os.path.join(store, ".vhdheal", "journal")
        size = os.path.getsize(journal)
        check(size > int(LIMIT), f"{fmt}: the journal ({size}) is past the limit")
        before = listing(store)
        # a live repair of c5 (slowed down), begun before the compaction: its later records
        # must land in the compacted journal
        live = subprocess.Popen(
            [VHDHEAL, "repair", "--store", store, os.path.join(store, kids[5])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(env_without_limit(), VHDHEAL_TEST_JOURNAL_DELAY_US="150000"))
        time.sleep(0.4)
        # -P matches a descriptor's path, and a name relative to the folder (openat and
        # renameat beneath the folder's descriptor) as a path relative to the current folder
        jdir = os.path.join(store, ".vhdheal")
        path = os.path.join(store, rel)
        name = syscall.split(",")[0]
        p = subprocess.run(
            ["strace", "-f", "-qq", "-o", "/dev/null", "-P", path, "-P",
             os.path.relpath(path, jdir), "-e", f"trace={syscall}", "-e",
             f"inject={syscall}:signal=KILL", VHDHEAL, "repair", "--store", store,
             os.path.join(store, kids[0])],
            capture_output=True, text=True, cwd=jdir,
            env=dict(os.environ, VHDHEAL_TEST_JOURNAL_COMPACT_AT=LIMIT))
        what = f"{fmt}: killed at {name} of {rel}, live repair {live_end}"
        check(p.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL),
              f"{what}: the compacting process was killed (rc {p.returncode})")
        if live_end == "killed":
            time.sleep(0.2)
            live.send_signal(signal.SIGKILL)
        out, _ = live.communicate()
        committed = re.search(r"undo id: (\S+)", out)
        c = vhdheal("check", "--store", store, store, ok=False)
        text = (c.stdout + c.stderr).decode()
        check("left alone" not in text, f"{what}: check left a repair alone: {text[:300]}")
        now = listing(store)
        for i, (st, child) in now.items():
            check(st != "unfinished", f"{what}: {i} of {child} still unfinished")
            if i in before and child != kids[0]:
                check(before[i][0] == st, f"{what}: {i} was {before[i][0]}, now {st}")
        if committed and live.returncode == 0:
            check(now.get(committed.group(1), ("?",))[0] == "done",
                  f"{what}: the live repair committed but is listed "
                  f"{now.get(committed.group(1))}")
        for k in kids:
            done = [i for i, (st, child) in now.items() if child == k and st == "done"]
            check(len(done) <= 1, f"{what}: {k} has {len(done)} committed repairs")
            for i in done:
                u = vhdheal("undo", "--store", store, i, ok=False)
                check(u.returncode == 0 and sha(os.path.join(store, k)) == orig[k],
                      f"{what}: undo {i} of {k} (rc {u.returncode}) does not give back the "
                      f"original bytes")
        # the store keeps working: a repair (and a compaction) now succeeds
        r = subprocess.run([VHDHEAL, "repair", "--store", store, os.path.join(store, kids[0])],
                           capture_output=True, text=True,
                           env=dict(os.environ, VHDHEAL_TEST_JOURNAL_COMPACT_AT="4096"))
        check(r.returncode == 0 and sha(os.path.join(store, kids[0])) != orig[kids[0]],
              f"{what}: the next repair failed: {r.stderr[:300]}")
        left = sorted(set(os.listdir(os.path.join(store, ".vhdheal"))) - {"journal"})
        check(not left, f"{what}: left behind in .vhdheal: {left}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def planted(kind):
    root = tempfile.mkdtemp(prefix="vh-plant-")
    try:
        store, kids, orig = make_store(root, "vhd")
        jdir = os.path.join(store, ".vhdheal")
        new = os.path.join(jdir, "journal.new")
        target = os.path.join(root, "precious")
        with open(target, "w") as f:
            f.write("precious")
        if kind == "file":
            with open(new, "w") as f:
                f.write("junk")
        elif kind == "symlink":
            os.symlink(target, new)
        elif kind == "fifo":
            os.mkfifo(new)
        elif kind == "hardlink":
            os.link(os.path.join(jdir, "journal"), new)
        size = os.path.getsize(os.path.join(jdir, "journal"))
        r = subprocess.run([VHDHEAL, "repair", "--store", store, os.path.join(store, kids[0])],
                           capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, VHDHEAL_TEST_JOURNAL_COMPACT_AT=LIMIT))
        what = f"journal.new planted as a {kind}"
        check(r.returncode == 0, f"{what}: the repair failed: {r.stderr[:300]}")
        check(os.path.getsize(os.path.join(jdir, "journal")) < size,
              f"{what}: the journal was not compacted")
        check(not os.path.lexists(new), f"{what}: still there")
        with open(target) as f:
            check(f.read() == "precious", f"{what}: the link's target was written")
        check(listing(store), f"{what}: the journal lists nothing")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def planted_dir():
    """A folder at journal.new: vhdheal repair, then the mount's heal on open, repair c0 all the
    same, each saying once, in its own log, that the journal was not compacted and why."""
    root = tempfile.mkdtemp(prefix="vh-plant-")
    try:
        store, kids, orig = make_store(root, "vhd")
        store = os.path.realpath(store)
        journal = os.path.join(store, ".vhdheal", "journal")
        os.mkdir(journal + ".new")
        size = os.path.getsize(journal)
        why = f"{journal}: not compacted, it keeps growing (errno {errno.EEXIST}, "
        r = subprocess.run([VHDHEAL, "repair", "--store", store, os.path.join(store, kids[0])],
                           capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, VHDHEAL_TEST_JOURNAL_COMPACT_AT=LIMIT))
        said = [ln for ln in r.stderr.splitlines() if "not compacted" in ln]
        check(r.returncode == 0 and os.path.getsize(journal) > size,
              f"a folder at journal.new: the repair: {r.returncode} {r.stderr[:300]}")
        check(len(said) == 1 and said[0].startswith("vhdheal: warning: " + why),
              f"the repair's warnings: {said or r.stderr[:600]}")
        undo_id = re.search(r"undo id: (\S+)", r.stdout).group(1)
        vhdheal("undo", "--store", store, undo_id)  # c0's link is broken again
        mnt = os.path.join(root, "mnt")
        os.mkdir(mnt)
        log = os.path.join(root, "mount.log")
        os.environ["VHDHEAL_TEST_JOURNAL_COMPACT_AT"] = LIMIT
        try:
            m = mounttest.Mount(store, mnt, log)
        finally:
            del os.environ["VHDHEAL_TEST_JOURNAL_COMPACT_AT"]
        try:
            with open(os.path.join(mnt, kids[0]), "rb") as f:  # heals it
                f.read(512)
            status = os.getxattr(os.path.join(mnt, kids[0]), "user.vhd.status").decode()
        finally:
            m.stop()
        check(status.startswith("healed"), f"the mount did not heal c0: {status}")
        said = [ln for ln in m.text().splitlines() if "not compacted" in ln]
        check(len(said) == 1 and said[0].startswith("vhdhealfs: " + why),
              f"the mount's log: {said or m.text()[-600:]}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main():
    if not shutil.which("strace"):
        if os.environ.get("CI"):
            check(False, "strace is missing (CI is set)")
            finish("journal_compaction")
        print("journal_compaction: skipped: strace is missing")
        sys.exit(77)
    rounds = 0
    for fmt in ("vhd", "vhdx"):
        for syscall, rel in POINTS:
            for live_end in ("committed", "killed"):
                crash_at(fmt, syscall, rel, live_end)
                rounds += 1
    for kind in ("file", "symlink", "fifo", "hardlink"):
        planted(kind)
    planted_dir()
    print(f"journal_compaction: {rounds} compactions killed, 5 planted journal.new")
    finish("journal_compaction")


if __name__ == "__main__":
    main()
