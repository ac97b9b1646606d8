#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""journal_concurrency - repairs are compare-and-swap and recovery never undoes a live repair
(DESIGN.md "Shared stores").

Part 1, on one store: every round plants fresh broken chains (a VHD and a VHDX whose base moved
to another folder), then at once opens them through a vhdhealfs mount (heal on open), runs
`vhdheal check` and `vhdheal repair` (both recover the journal first), and starts a second
vhdhealfs mount of the same store (its start recovers the journal) that opens them too. After
every round each chain reads its true content, each child is healed; at the end the journal is
well-formed, each broken link was repaired exactly once (one COMMIT per child, no ROLLBACK),
nothing printed "rolled back" or a non-zero "unreadable", and undoing every repair gives each
child back its original bytes.

Part 2, on another store: two daemons heal the same fresh broken chains; one is killed with
SIGKILL at a random moment of its heals and restarted (its start recovers the journal) while the
other keeps healing. Each child opens with its old or its new link and the true content, the
journal stays well-formed with every repair resolved, one COMMIT per child, and `qemu-img check`
passes on the VHDX base disks.

ROUNDS / KILL_ROUNDS can be raised with VH_JOURNAL_ROUNDS / VH_JOURNAL_KILL_ROUNDS."""
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vhdtest  # noqa: E402
from mounttest import (Mount, check, child, content, create, expected, ext, fill,  # noqa: E402
                       locators, require_fuse, sha)

ROUNDS = int(os.environ.get("VH_JOURNAL_ROUNDS", "50"))
KILL_ROUNDS = int(os.environ.get("VH_JOURNAL_KILL_ROUNDS", "20"))
SIZE = 2 << 20
FORMATS = ("vhd", "vhdx")
BAD_OUTPUT = re.compile(r"rolled back|UNREADABLE|\b[1-9][0-9]* unreadable")

# ---------------------------------------------------------------------------------------------
# The journal, read independently of the engine (doc/journal.md)

_CRC_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def journal(store):
    """The records of STORE's journal, each a list of fields; fails on anything not well formed
    (a torn record, a bad checksum, bytes between records)."""
    path = os.path.join(store, ".vhdheal", "journal")
    st = os.stat(path)
    check(st.st_mode & 0o777 == 0o600, f"journal mode {oct(st.st_mode & 0o777)}")
    check(os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700, "journal folder mode")
    with open(path, "rb") as f:
        data = f.read()
    recs, pos = [], 0
    while pos < len(data):
        if not data.startswith(b"@VHJ2 ", pos) or len(data) < pos + 24:
            check(False, f"journal: no record at offset {pos}: {data[pos:pos + 40]!r}")
            break
        n, crc = int(data[pos + 6:pos + 14], 16), int(data[pos + 15:pos + 23], 16)
        payload = data[pos + 24:pos + 24 + n]
        ok = len(payload) == n and data[pos + 24 + n:pos + 25 + n] == b"\n" and \
            crc32c(payload) == crc
        check(ok, f"journal: record at offset {pos} is torn or damaged")
        if not ok:
            break
        recs.append(payload.decode().split("\t"))
        pos += 25 + n
    return recs


def repairs(recs):
    """{id: {"child": .., "state": "open"|"commit"|"rollback"|"undo", "commits": n}}."""
    out = {}
    for r in recs:
        kind, rid = r[0], r[1]
        if kind == "BEGIN":
            out[rid] = {"child": r[3], "state": "open", "commits": 0, "rollbacks": 0}
        elif rid in out and kind == "COMMIT":
            out[rid]["state"] = "commit"
            out[rid]["commits"] += 1
        elif rid in out and kind == "ROLLBACK":
            check(out[rid]["state"] != "commit", f"repair {rid}: ROLLBACK after its COMMIT")
            out[rid]["state"] = "rollback"
            out[rid]["rollbacks"] += 1
        elif rid in out and kind == "UNDO":
            out[rid]["state"] = "undo"
    for rid, r in out.items():
        check(r["rollbacks"] <= 1 and r["commits"] <= 1, f"repair {rid} resolved twice: {r}")
    return out


def commits_per_child(reps):
    per = {}
    for r in reps.values():
        if r["state"] in ("commit", "undo"):
            per[r["child"]] = per.get(r["child"], 0) + 1
    return per

# ---------------------------------------------------------------------------------------------
# Chains


def plant(store, folder, seed):
    """A VHD and a VHDX chain under FOLDER whose bases moved to FOLDER/moved: [(child rel,
    moved base rel, reference content, sha256 of the child file)]."""
    out = []
    for i, fmt in enumerate(FORMATS):
        e, a = ext(fmt), ext(fmt, True)
        s = seed * 2 + i
        base, kid = f"{folder}/{fmt}/base.{e}", f"{folder}/{fmt}/child.{a}"
        create(os.path.join(store, base), fmt, "2M")
        fill(os.path.join(store, base), s % 200 + 1, (0, 1 << 20))
        child(os.path.join(store, kid), os.path.join(store, base))
        fill(os.path.join(store, kid), s % 200 + 31, (4096 * 3,))
        ref = expected(SIZE, [(s % 200 + 1, (0, 1 << 20)), (s % 200 + 31, (4096 * 3,))])
        moved = f"{folder}/moved/base.{e}"
        os.makedirs(os.path.join(store, folder, "moved"), exist_ok=True)
        os.rename(os.path.join(store, base), os.path.join(store, moved))
        out.append((kid, moved, ref, sha(os.path.join(store, kid))))
    return out


def open_all(mnt, chains, problems):
    for kid, _, _, _ in chains:
        try:
            with open(os.path.join(mnt, kid), "rb") as f:
                f.read(512)
        except OSError as e:
            problems.append(f"open {kid} through {mnt}: {e}")


def expect_clean(what, p, problems):
    text = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
    bad = [line for line in text.splitlines() if BAD_OUTPUT.search(line)]
    if bad:
        problems.append(f"{what}: {bad[:3]}")


def relative_locator(store, kid):
    locs = locators(os.path.join(store, kid))
    return locs.get("relative_path") or locs.get("W2ru")

# ---------------------------------------------------------------------------------------------
# Part 1


def one_round(store, mnt_a, mnt_b, root, n, problems):
    chains = plant(store, f"r{n}", n)
    folder = os.path.join(store, f"r{n}")
    threads = []

    def cli(*args):
        p = vhdtest.run(os.environ["VHDHEAL"], *args, ok=False)
        if p.returncode not in (0, 1):
            problems.append(f"vhdheal {args[0]} exited {p.returncode}: {p.stderr[-300:]!r}")
        expect_clean(f"vhdheal {args[0]}", p, problems)

    def second_mount():
        mb = Mount(store, mnt_b, os.path.join(root, "b.log"))
        try:
            open_all(mnt_b, chains, problems)
        finally:
            mb.stop()

    threads.append(threading.Thread(target=open_all, args=(mnt_a, chains, problems)))
    threads.append(threading.Thread(target=cli, args=("check", "--store", store, folder)))
    threads.append(threading.Thread(target=cli, args=("repair", "--store", store, folder)))
    threads.append(threading.Thread(target=second_mount))
    random.shuffle(threads)
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for kid, moved, ref, _ in chains:
        rel = relative_locator(store, kid)
        check(rel is not None and "moved" in rel,
              f"round {n}: {kid} not healed (relative locator {rel})")
        check(content(os.path.join(store, kid)) == ref, f"round {n}: {kid}: content differs")
    return chains


def part1(root):
    store, mnt_a, mnt_b = (os.path.join(root, x) for x in ("store1", "mnt1a", "mnt1b"))
    for d in (store, mnt_a, mnt_b):
        os.makedirs(d)
    ma = Mount(store, mnt_a, os.path.join(root, "a.log"))
    allchains, problems = [], []
    try:
        for n in range(ROUNDS):
            allchains += one_round(store, mnt_a, mnt_b, root, n, problems)
        check(ma.alive(), "the first daemon died")
    finally:
        ma.stop()
    for p in problems:
        check(False, p)
    for log in ("a.log", "b.log"):
        with open(os.path.join(root, log), errors="replace") as f:
            bad = [line for line in f if BAD_OUTPUT.search(line)]
        check(not bad, f"{log}: {bad[:3]}")
    reps = repairs(journal(store))
    per = commits_per_child(reps)
    links = len(allchains)
    once = sum(1 for kid, _, _, _ in allchains if per.get(kid) == 1)
    check(once == links, f"{links - once} of {links} broken links not repaired exactly once: "
          f"{[(k, per.get(k)) for k, _, _, _ in allchains if per.get(k) != 1][:5]}")
    rolled = [rid for rid, r in reps.items() if r["state"] != "commit"]
    check(not rolled, f"repairs not committed: {rolled[:5]}")
    ids = [rid for rid in reps]  # oldest first
    vhdtest.vhdheal("undo", "--store", store, *reversed(ids))
    restored = sum(1 for kid, _, _, orig in allchains if sha(os.path.join(store, kid)) == orig)
    check(restored == links, f"undo restored {restored} of {links} children")
    print(f"part 1: {ROUNDS} rounds, {links} broken links, {len(reps)} repairs journaled, "
          f"{once} repaired exactly once, {restored} restored by undo")

# ---------------------------------------------------------------------------------------------
# Part 2


def slow_mount(store, mnt, log):
    """A daemon whose repairs pause 15 ms after each journaled range (journal.c, tests only),
    so that a SIGKILL at a random moment often lands inside a repair."""
    os.environ["VHDHEAL_TEST_JOURNAL_DELAY_US"] = "15000"
    try:
        return Mount(store, mnt, log)
    finally:
        del os.environ["VHDHEAL_TEST_JOURNAL_DELAY_US"]


def part2(root):
    store = os.path.join(root, "store2")
    mnts = [os.path.join(root, x) for x in ("mnt2a", "mnt2b")]
    for d in [store] + mnts:
        os.makedirs(d)
    logs = [os.path.join(root, x) for x in ("k.log", "l.log")]
    victim = slow_mount(store, mnts[0], logs[0])
    keeper = Mount(store, mnts[1], logs[1])
    allchains, problems, kills, mid, inside = [], [], 0, 0, 0
    try:
        window = 0.3  # how long the victim takes to open (heal) a round's chains
        for n in range(KILL_ROUNDS):
            chains = plant(store, f"k{n}a", 1000 + n) + plant(store, f"k{n}b", 2000 + n)
            allchains += chains
            took = []

            def victim_opens():
                t = time.monotonic()
                open_all(mnts[0], chains, [])
                took.append(time.monotonic() - t)

            ts = [threading.Thread(target=victim_opens),
                  threading.Thread(target=open_all, args=(mnts[1], chains[::-1], []))]
            for t in ts:
                t.start()
            time.sleep(random.uniform(0, window))
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait()
            kills += 1
            subprocess.run(["fusermount3", "-u", "-z", mnts[0]], check=False)
            for t in ts:
                t.join(120)
            victim.logf.close()
            inside += sum(1 for r in repairs(journal(store)).values() if r["state"] == "open")
            if took and took[0] > 0.01:  # it finished before the kill: aim earlier next time
                window = (window + took[0]) / 2
            for kid, _, ref, _ in chains:
                # old or new link, and the true content either way (a crash at any point)
                rel = relative_locator(store, kid)
                healed = rel is not None and "moved" in rel
                mid += not healed
                check(rel is not None, f"kill round {n}: {kid} does not open")
            open_all(mnts[1], chains, problems)  # the other daemon heals what is left
            victim = slow_mount(store, mnts[0], logs[0])  # its start recovers the journal
            open_all(mnts[0], chains, problems)
            for kid, _, ref, _ in chains:
                rel = relative_locator(store, kid)
                check(rel is not None and "moved" in rel, f"kill round {n}: {kid} not healed")
                check(content(os.path.join(store, kid)) == ref,
                      f"kill round {n}: {kid}: content differs")
        check(keeper.alive(), "the surviving daemon died")
    finally:
        keeper.stop()
        victim.stop()
    for p in problems:
        check(False, p)
    reps = repairs(journal(store))
    unresolved = [rid for rid, r in reps.items() if r["state"] == "open"]
    check(not unresolved, f"unresolved repairs after the restarts: {unresolved[:5]}")
    per = commits_per_child(reps)
    once = sum(1 for kid, _, _, _ in allchains if per.get(kid) == 1)
    check(once == len(allchains), f"{len(allchains) - once} links not committed exactly once")
    qemu = 0
    for kid, moved, _, _ in allchains:
        if moved.endswith(".vhdx"):
            p = vhdtest.run("qemu-img", "check", "-f", "vhdx", os.path.join(store, moved),
                            ok=False)
            check(p.returncode == 0, f"qemu-img check {moved}: {p.stdout!r} {p.stderr!r}")
            qemu += 1
    rolled = sum(1 for r in reps.values() if r["state"] == "rollback")
    print(f"part 2: {KILL_ROUNDS} rounds, {kills} SIGKILLs ({inside} inside a repair), "
          f"{len(allchains)} broken links ({mid} not yet healed just after the kill), "
          f"{len(reps)} repairs journaled, {rolled} rolled "
          f"back, {once} committed exactly once, {qemu} qemu-img checks")


def main():
    require_fuse()
    check(shutil.which("qemu-img") is not None, "qemu-img is missing")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vh-journal-conc-") as root:
        try:
            part1(root)
            part2(root)
        except Exception as ex:
            traceback.print_exc()
            check(False, repr(ex))
    print(f"time: {time.monotonic() - t0:.1f} s")
    vhdtest.finish("journal_concurrency")


if __name__ == "__main__":
    main()
