#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""journal_concurrency - repairs are compare-and-swap and recovery never undoes a live repair
(doc/design.md "Shared stores").

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
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vhcraft  # noqa: E402
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


class Journal:
    """STORE's journal, read independently of the engine, record by record as it grows. A
    record torn by a killed writer must be closed by the mark the next append puts after it
    ("\\x15\\n"); it is skipped and counted when torn_ok, else it is a failure, and so is
    anything else not well formed (a bad checksum, bytes between records)."""

    def __init__(self, store, torn_ok=False):
        self.path = os.path.join(store, ".vhdheal", "journal")
        self.recs, self.pos, self.torn, self.torn_ok, self.size = [], 0, 0, torn_ok, 0

    def exists(self):
        return os.path.exists(self.path)

    def peek(self):
        """The records appended since the last update(), as far as they are whole (others may
        be appending); nothing is consumed."""
        if not self.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            data = f.read()
        recs, pos = [], 0
        while True:
            n = self._record(data, pos)
            if not n:
                return recs
            recs.append(data[pos + 24:pos + n - 1].decode().split("\t"))
            pos += n

    def update(self):
        """Reads what was appended since (the store must be quiet); returns the new records."""
        check(self.exists(), "no journal")
        st = os.stat(self.path)
        check(st.st_mode & 0o777 == 0o600, f"journal mode {oct(st.st_mode & 0o777)}")
        check(os.stat(os.path.dirname(self.path)).st_mode & 0o777 == 0o700,
              "journal folder mode")
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            data = f.read()
        new, pos = [], 0
        while pos < len(data):
            n = self._record(data, pos)
            if n:
                new.append(data[pos + 24:pos + n - 1].decode().split("\t"))
                pos += n
                continue
            nxt = data.find(b"\n@VHJ2 ", pos)
            closed = nxt > 0 and data[nxt - 1:nxt] == b"\x15"
            check(self.torn_ok and closed,
                  f"journal: damaged record at offset {self.pos + pos}: {data[pos:pos + 40]!r}")
            if not (self.torn_ok and closed):
                break
            self.torn += 1
            pos = nxt + 1
        self.pos += pos
        self.size = self.pos
        self.recs += new
        return new

    @staticmethod
    def _record(data, pos):
        """The length of the whole record at pos, or 0."""
        if not data.startswith(b"@VHJ2 ", pos) or len(data) < pos + 24:
            return 0
        try:
            n, crc = int(data[pos + 6:pos + 14], 16), int(data[pos + 15:pos + 23], 16)
        except ValueError:
            return 0
        payload = data[pos + 24:pos + 24 + n]
        if len(payload) != n or data[pos + 24 + n:pos + 25 + n] != b"\n" or \
                crc32c(payload) != crc:
            return 0
        return 25 + n


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
        fill(os.path.join(store, base), s % 200 + 1, (1 << 20,))
        child(os.path.join(store, kid), os.path.join(store, base))
        fill(os.path.join(store, kid), s % 200 + 31, (4096 * 3,))
        ref = expected(SIZE, [(s % 200 + 1, (1 << 20,)), (s % 200 + 31, (4096 * 3,))])
        moved = f"{folder}/moved/base.{e}"
        os.makedirs(os.path.join(store, folder, "moved"), exist_ok=True)
        os.rename(os.path.join(store, base), os.path.join(store, moved))
        out.append((kid, moved, ref, sha(os.path.join(store, kid))))
    return out


def content_is(store, kid, ref):
    """Does the child's chain read REF (the test's own reference)? False when it does not open."""
    try:
        return content(os.path.join(store, kid)) == ref
    except RuntimeError:
        return False


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
    """The child's relative parent locator as the engine reads it (None: it does not open)."""
    try:
        locs = locators(os.path.join(store, kid))
    except RuntimeError:
        return None
    return locs.get("relative_path") or locs.get("W2ru")


def healed(store, kid):
    """Does the child's relative locator on disk lead to the moved base (read by vhcraft, not by
    the engine)?"""
    path = os.path.join(store, kid)
    locs = vhcraft.vhdx_locator(path) if path.endswith("x") else vhcraft.vhd_locators(path)
    rel = locs.get("relative_path") or locs.get("W2ru") or ""
    return "moved" in rel

# ---------------------------------------------------------------------------------------------
# Part 1


def plant_all(where, folders):
    """plant() for every (folder, seed) under WHERE (outside the store), several at a time;
    each round moves its folder into the store, and out again when it is done, so that the
    store (scanned by every check, repair and mount) stays small."""
    with ThreadPoolExecutor(max_workers=3) as ex:
        return list(ex.map(lambda fs: plant(where, *fs), folders))


def move_in(where, store, folder):
    os.rename(os.path.join(where, folder), os.path.join(store, folder))


def settle(since):
    """A daemon finds files that appeared behind its back (moved into STORE directly) at its
    next rescan, at most one a second (chain/service.c): let a second pass since SINCE, the
    time of its last scan at the latest."""
    time.sleep(max(0.0, since + 1.05 - time.monotonic()))


def move_out(store, done, folder):
    os.rename(os.path.join(store, folder), os.path.join(done, folder))


def undo_round(store, new_recs, chains, what):
    """Undoes the round's repairs, newest first: every child gets its original bytes back."""
    ids = [r[1] for r in new_recs if r[0] == "BEGIN"]
    if ids:
        vhdtest.vhdheal("undo", "--store", store, *reversed(ids))
    restored = sum(1 for kid, _, _, orig in chains if sha(os.path.join(store, kid)) == orig)
    check(restored == len(chains), f"{what}: undo restored {restored} of {len(chains)} children")
    return restored


def one_round(store, mnt_a, mnt_b, root, n, chains, problems):
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
        check(healed(store, kid), f"round {n}: {kid} not healed")
        check(content_is(store, kid, ref), f"round {n}: {kid}: content differs")


def part1(root):
    store, mnt_a, mnt_b, where, done = (os.path.join(root, x) for x in
                                        ("store1", "mnt1a", "mnt1b", "plant1", "done1"))
    for d in (store, mnt_a, mnt_b, where, done):
        os.makedirs(d)
    planted = plant_all(where, [(f"r{n}", n) for n in range(ROUNDS)])
    j = Journal(store)
    ma = Mount(store, mnt_a, os.path.join(root, "a.log"))
    problems, links, once, repairs_seen, restored = [], 0, 0, 0, 0
    last = time.monotonic()
    try:
        for n in range(ROUNDS):
            chains = planted[n]
            move_in(where, store, f"r{n}")
            settle(last)
            last = time.monotonic()
            one_round(store, mnt_a, mnt_b, root, n, chains, problems)
            new = j.update()
            reps = repairs(new)
            per = commits_per_child(reps)
            links += len(chains)
            repairs_seen += len(reps)
            ok = sum(1 for kid, _, _, _ in chains if per.get(kid) == 1)
            once += ok
            check(ok == len(chains), f"round {n}: links not repaired exactly once: "
                  f"{[(k, per.get(k)) for k, _, _, _ in chains]}")
            rolled = [rid for rid, r in reps.items() if r["state"] != "commit"]
            check(not rolled, f"round {n}: repairs not committed: {rolled}")
            restored += undo_round(store, new, chains, f"round {n}")
            undo = repairs(new + j.update())
            check(all(r["state"] == "undo" for r in undo.values()), f"round {n}: not all undone")
            move_out(store, done, f"r{n}")
        check(ma.alive(), "the first daemon died")
    finally:
        ma.stop()
    for p in problems:
        check(False, p)
    for log in ("a.log", "b.log"):
        with open(os.path.join(root, log), errors="replace") as f:
            bad = [line for line in f if BAD_OUTPUT.search(line)]
        check(not bad, f"{log}: {bad[:3]}")
    j.update()
    check(j.pos == os.path.getsize(j.path), "the journal ends in a damaged record")
    print(f"part 1: {ROUNDS} rounds, {links} broken links, {repairs_seen} repairs journaled, "
          f"{once} repaired exactly once, {restored} restored by undo, "
          f"journal {j.pos} bytes, {len(j.recs)} records, all well formed")

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
    store, where, done = (os.path.join(root, x) for x in ("store2", "plant2", "done2"))
    mnts = [os.path.join(root, x) for x in ("mnt2a", "mnt2b")]
    for d in [store, where, done] + mnts:
        os.makedirs(d)
    logs = [os.path.join(root, x) for x in ("k.log", "l.log")]
    planted = plant_all(where, [(f"k{n}", 1000 + n) for n in range(KILL_ROUNDS)] +
                        [(f"k{n}b", 2000 + n) for n in range(KILL_ROUNDS)])
    j = Journal(store, torn_ok=True)
    victim = slow_mount(store, mnts[0], logs[0])
    keeper = Mount(store, mnts[1], logs[1])
    last = time.monotonic()
    problems, kills, mid, inside, links, once, nreps, rolled, qemu = [], 0, 0, 0, 0, 0, 0, 0, 0
    try:
        for n in range(KILL_ROUNDS):
            chains = planted[n] + planted[KILL_ROUNDS + n]
            for f in (f"k{n}", f"k{n}b"):
                move_in(where, store, f)
            settle(last)

            def keeper_opens():
                time.sleep(0.05)  # the victim usually begins; then both heal at once
                open_all(mnts[1], chains[::-1], [])

            ts = [threading.Thread(target=open_all, args=(mnts[0], chains, [])),
                  threading.Thread(target=keeper_opens)]
            for t in ts:
                t.start()
            # kill at a random moment once a repair has begun (or after 3 s in any case)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and not any(r[0] == "BEGIN" for r in j.peek()):
                time.sleep(0.005)
            time.sleep(random.uniform(0, 0.1))
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait()
            kills += 1
            subprocess.run(["fusermount3", "-u", "-z", mnts[0]], check=False)
            for t in ts:
                t.join(120)
            victim.logf.close()
            for kid, _, ref, _ in chains:
                # the engine opens it, with its old link or its new one
                rel = relative_locator(store, kid)
                check(rel is not None, f"kill round {n}: {kid} does not open")
                mid += rel is not None and "moved" not in rel
            open_all(mnts[1], chains, problems)  # the other daemon heals what is left
            victim = slow_mount(store, mnts[0], logs[0])  # its start recovers the journal
            last = time.monotonic()
            open_all(mnts[0], chains, problems)
            for kid, _, ref, _ in chains:
                check(healed(store, kid), f"kill round {n}: {kid} not healed")
                check(content_is(store, kid, ref), f"kill round {n}: {kid}: content differs")
            reps = repairs(j.update() if j.exists() else [])
            unresolved = [rid for rid, r in reps.items() if r["state"] == "open"]
            check(not unresolved, f"kill round {n}: unresolved repairs: {unresolved}")
            per = commits_per_child(reps)
            ok = sum(1 for kid, _, _, _ in chains if per.get(kid) == 1)
            check(ok == len(chains), f"kill round {n}: links not committed exactly once: "
                  f"{[(k, per.get(k)) for k, _, _, _ in chains]}")
            inside += any(r["state"] == "rollback" for r in reps.values())
            rolled += sum(1 for r in reps.values() if r["state"] == "rollback")
            links, once, nreps = links + len(chains), once + ok, nreps + len(reps)
            for kid, moved, _, _ in chains:
                if moved.endswith(".vhdx"):
                    p = vhdtest.run("qemu-img", "check", "-f", "vhdx", os.path.join(store, moved),
                                    ok=False)
                    check(p.returncode == 0, f"qemu-img check {moved}: {p.stdout!r} {p.stderr!r}")
                    qemu += 1
            for f in (f"k{n}", f"k{n}b"):
                move_out(store, done, f)
        check(keeper.alive(), "the surviving daemon died")
    finally:
        keeper.stop()
        if victim.alive():
            victim.stop()
        else:
            victim.kill()
    for p in problems:
        check(False, p)
    j.update()
    check(j.pos == os.path.getsize(j.path), "the journal ends in a damaged record")
    print(f"part 2: {KILL_ROUNDS} rounds, {kills} SIGKILLs ({inside} inside a repair, rolled "
          f"back by the other daemon or the restart), {links} broken links ({mid} still with the "
          f"old link once the other daemon was done), {nreps} repairs journaled, {rolled} rolled back, {once} "
          f"committed exactly once, {j.torn} torn journal records skipped, {qemu} qemu-img checks")


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
