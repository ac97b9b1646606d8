#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""shared_gluster - one store shared by several hosts (doc/design.md "Shared stores"), on a real
GlusterFS volume mounted by three clients: a vhdhealfs daemon on client A, another on client B,
and `vhdheal` run against client C.

Part 1: N broken VMs (VHD and VHDX, a base and three checkpoints each, known bytes written at
every level, the bases moved to archive/), every top opened many times at once through both
daemons while `vhdheal repair` runs. Afterwards every chain reads its true content (vhdheal read
and @raw on both mounts), `vhdheal check` is healthy, the journal holds each broken link's repair
exactly once, `vhdheal undo` of one repair brings back exactly that broken link, and nothing
printed says "rolled back" or "unreadable".

Part 2: rounds of fresh broken VMs opened through daemon A, which is killed (-9) at a random
moment after the journal grew (a repair began), while daemon B opens them too (from a random
moment before or after the kill); A is restarted each round. After each round every link is the
old one or the new one and the journal agrees (one committed repair for a new link, none for an
old one, none unfinished) and @raw on both mounts reads each top's true content; after a
final `vhdheal repair` every chain reads its true content through vhdheal too,
each link has exactly one committed repair, and qemu-img finds the VHDX base disks clean."""
import collections
import concurrent.futures
import hashlib
import json
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
from glustertest import Gluster, require_gluster  # noqa: E402
from mounttest import (Mount, check, child, create, expected, fill, require_fuse,  # noqa: E402
                       vhdheal)

# VH_VMS, VH_ROUNDS: smaller runs while developing; VH_SEED: repeat a run's random choices
N_VMS = int(os.environ.get("VH_VMS", "24"))  # part 1, half VHD, half VHDX
OPENS = 5           # part 1: opens of each top through each daemon
KILL_ROUNDS = int(os.environ.get("VH_ROUNDS", "20"))  # part 2
ROUND_VMS = 2       # part 2: fresh broken VMs per round (one VHD, one VHDX)
ROUND_OPENS = 3     # part 2: opens of each top through each daemon per round
KILL_SPAN = 0.25    # part 2: s after a repair began in which the kill (and B's opens) fall
SIZE = 4 << 20
LINE = re.compile(r"^(\S+) (\S+) (\S+) (.*): (.*) -> (.*)$")
seen_output = []    # (part, where, text) of everything the programs printed, checked at the end
part = ["part 1"]


class VM:
    """NAME/{base,c1,c2,c3}; the base moved to archive/NAME/ so that c1's link breaks."""

    def __init__(self, name, fmt, seed):
        self.name, self.fmt = name, fmt
        e = fmt
        self.base = f"archive/{name}/base.{e}"
        self.c1 = f"{name}/c1.a{e}"
        self.top = f"{name}/c3.a{e}"
        # each level writes its own 4 KiB unit and one at 2 MiB that the next level overwrites
        self.layers = [(seed * 4 + lv, (lv << 20 | 65536 * lv, 2 << 20)) for lv in range(4)]
        self.ref = hashlib.sha256(expected(SIZE, self.layers)).hexdigest()

    def build(self, stage):
        """Creates the chain in STAGE (a local folder) and breaks it."""
        e = self.fmt
        paths = [os.path.join(stage, self.name, p)
                 for p in (f"base.{e}", f"c1.a{e}", f"c2.a{e}", f"c3.a{e}")]
        create(paths[0], self.fmt, "4M", block_size="1M")  # small files to copy
        for lv, p in enumerate(paths):
            if lv:
                child(p, paths[lv - 1])
            fill(p, *self.layers[lv])
        os.makedirs(os.path.join(stage, "archive", self.name))
        os.rename(paths[0], os.path.join(stage, self.base))


def make_vms(stage, names_fmts, seed0):
    vms = [VM(n, f, seed0 + k) for k, (n, f) in enumerate(names_fmts)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as ex:
        list(ex.map(lambda v: v.build(stage), vms))
    return vms


def publish(stage, vms, store):
    """Copies built VMs into the shared store (through a client) and empties STAGE."""
    os.makedirs(os.path.join(store, "archive"), exist_ok=True)
    for v in vms:
        for rel in (v.name, f"archive/{v.name}"):
            subprocess.run(["cp", "-r", "--sparse=always", os.path.join(stage, rel),
                            os.path.join(store, rel)], check=True)
    shutil.rmtree(stage)
    os.makedirs(stage)


def sha_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()


def vh(*args, ok=None):
    """vhdheal with its output remembered (but JSON, checked by the caller); returns (rc,
    stdout, stderr)."""
    p = vhdheal(*args, ok=False)
    out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    seen_output.append((part[0], f"vhdheal {' '.join(map(str, args))}",
                        err + ("" if "--json" in args else out)))
    if ok is not None:
        check(p.returncode in ok, f"vhdheal {' '.join(map(str, args))}: exit {p.returncode}: "
              f"{(out + err).strip()[:600]}")
    return p.returncode, out, err


def journal(store):
    """vhdheal undo --list: [(id, state, child, old, new)]."""
    rc, out, _ = vh("undo", "--store", store, "--list", ok=(0,))
    recs = []
    for line in out.splitlines():
        m = LINE.match(line)
        if check(m is not None, f"undo --list: unparsable line {line!r}"):
            recs.append((m[1], m[3], m[4], m[5], m[6]))
    return recs


def links(store, paths=None):
    """{child: link object} from vhdheal check --json (of PATHS, or the whole store)."""
    rc, out, _ = vh("check", "--json", "--store", store, *(paths or [store]), ok=(0, 1))
    doc = json.loads(out) if out.strip() else {"links": [], "unreadable": []}
    check(not doc.get("unreadable"), f"check: unreadable disks {doc.get('unreadable')}")
    return {lk["child"]: lk for lk in doc["links"]}, rc


def open_top(mnt, vm):
    """One open and read of the top through a daemon: the error as text, or None."""
    try:
        with open(os.path.join(mnt, vm.top), "rb") as f:
            f.read(4096)
        return None
    except OSError as e:
        return f"{mnt}/{vm.top}: {e}"


def hammer(jobs, workers=16):
    """Runs the (mnt, vm) opens at once; returns (errors by mnt, open latencies)."""
    random.shuffle(jobs)
    errors, lat = collections.defaultdict(list), []
    start = threading.Barrier(min(workers, len(jobs)))

    def one(job, k):
        if k < workers:
            start.wait()
        t = time.monotonic()
        err = open_top(*job)
        lat.append(time.monotonic() - t)
        if err:
            errors[job[0]].append(err)

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as ex:
        list(ex.map(one, jobs, range(len(jobs))))
    return errors, lat


def check_content(store, vms, mnts, what):
    """Each top's content through its whole chain: vhdheal read (when STORE is given) and the
    @raw view of each daemon mount (which reads a broken link through its heal target)."""
    for v in vms:
        if store:
            p = vhdheal("read", "--store", store, os.path.join(store, v.top), ok=False)
            got = hashlib.sha256(p.stdout).hexdigest() if p.returncode == 0 else p.stderr.decode()
            check(got == v.ref, f"{what}: vhdheal read {v.top}: {got[:200]} (want {v.ref[:16]})")
        for m in mnts:
            raw = os.path.join(m, "@raw", v.top + ".raw")
            got = raw_sha(raw)
            check(got == v.ref, f"{what}: {raw}: {got[:200]} (want {v.ref[:16]})")


def raw_sha(raw, wait=5):
    """The sha256 of a @raw file, or the error. A disk another client just made may take a
    moment to appear in a view (README: within about a second), so ENOENT is retried."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return sha_file(raw)
        except FileNotFoundError as e:
            if time.monotonic() > deadline:
                return str(e)
            time.sleep(0.2)
        except OSError as e:
            return str(e)


def start_daemon(store, mnt, log):
    os.makedirs(mnt, exist_ok=True)
    return Mount(store, mnt, log)


def part1(g, root, stage):
    a, b, c = g.mounts
    names = [(f"vm{k:02d}", "vhd" if k % 2 else "vhdx") for k in range(N_VMS)]
    t = time.monotonic()
    vms = make_vms(stage, names, 1)
    publish(stage, vms, a)
    before, rc = links(c)
    broken = sorted(ch for ch, lk in before.items() if lk["status"] == "broken")
    check(broken == sorted(v.c1 for v in vms), f"before: broken links {broken}")
    print(f"part 1: {N_VMS} VMs ({len(before)} links, {len(broken)} broken) made in "
          f"{time.monotonic() - t:.1f} s", flush=True)
    da = start_daemon(a, os.path.join(root, "mntA"), os.path.join(root, "daemonA.log"))
    db = start_daemon(b, os.path.join(root, "mntB"), os.path.join(root, "daemonB.log"))
    try:
        jobs = [(m.mnt, v) for v in vms for m in (da, db) for _ in range(OPENS)]
        t = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as ex:
            opens = ex.submit(hammer, jobs)
            # once the daemons are repairing (the journal grew), check and repair from client
            # C: their recovery meets the daemons' unfinished records, their reads the disks
            # being rewritten
            grew = wait_growth(os.path.join(c, ".vhdheal", "journal"), 0, 30)
            progs = [subprocess.Popen([vhdtest.VHDHEAL, cmd, "--store", c, c],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                     for cmd in ("repair", "check")]
            errors, lat = opens.result()
        rout, cout = (p.communicate(timeout=300)[0].decode(errors="replace") for p in progs)
        seen_output.append((part[0], "vhdheal repair (during the opens)", rout))
        seen_output.append((part[0], "vhdheal check (during the opens)", cout))
        print(f"part 1: {len(jobs)} opens through 2 daemons, vhdheal repair and check (started "
              f"{'once the journal grew' if grew else 'after 30 s without a repair'}) in "
              f"{time.monotonic() - t:.1f} s (slowest open {max(lat):.2f} s); repair said: "
              f"{rout.strip().splitlines()[-1] if rout.strip() else ''}", flush=True)
        repair = progs[0]
        check(repair.returncode in (0, 1), f"vhdheal repair exit {repair.returncode}: {rout}")
        check(progs[1].returncode in (0, 1), f"vhdheal check exit {progs[1].returncode}: {cout}")
        if repair.returncode:  # links the daemons were healing at that moment may be left
            print("part 1: vhdheal repair left links; its output:\n" + rout[-1500:], flush=True)
        for m, errs in errors.items():
            check(False, f"{len(errs)} opens through {m} failed: {errs[:3]}")
        check(da.alive() and db.alive(), "a daemon died")
        check_part1_state(c, vms, [da.mnt, db.mnt])
    finally:
        for d in (da, db):
            d.stop()
            seen_output.append((part[0], f"daemon log {d.log}", d.text()))


def check_part1_state(c, vms, mnts):
    check_content(c, vms, mnts, "part 1")
    now, rc = links(c)
    bad = {ch: lk["reason"] for ch, lk in now.items() if lk["status"] != "ok"}
    check(rc == 0 and not bad, f"part 1: check is not healthy (exit {rc}): {bad}")
    recs = journal(c)
    per = collections.Counter(r[2] for r in recs)
    states = collections.Counter(r[1] for r in recs)
    print(f"part 1: journal holds {len(recs)} repairs for {len(vms)} broken links "
          f"(states {dict(states)}; most for one link: {max(per.values(), default=0)})",
          flush=True)
    for v in vms:
        check(per[v.c1] == 1, f"part 1: the journal holds {per[v.c1]} repairs of {v.c1}")
    check(len(recs) == len(vms) and set(states) <= {"done"},
          f"part 1: journal: {len(recs)} records, states {dict(states)}")
    done = [r for r in recs if r[1] == "done"]  # any one (issue 9: undoing one of a link's
    # duplicate repairs changed nothing)
    if check(done, "part 1: no repair to undo"):
        rid, _, chld, _, _ = random.choice(done)
        vh("undo", "--store", c, rid, ok=(0,))
        after, rc = links(c)
        bad = sorted(ch for ch, lk in after.items() if lk["status"] != "ok")
        check(bad == [chld], f"part 1: after undo {rid} of {chld}, broken links are {bad}")
        print(f"part 1: after undo {rid} (a repair of {chld}) the broken links are {bad}",
              flush=True)
        vh("repair", "--store", c, c, ok=(0,))


def introduce(vms, mnts):
    """Each daemon looks at the round's new base disks (copied in by another client) before
    the opens, so that their heals find the heal target at once: a daemon rescans the store
    for a missing heal target at most once a second, and the kill should land in heals."""
    for m in mnts:
        for v in vms:
            os.getxattr(os.path.join(m, v.base), "user.vhd.id")


def wait_growth(path, size0, timeout):
    """Waits until the file at PATH grows past SIZE0: True, or False after TIMEOUT s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.stat(path).st_size > size0:
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    return False


def kill_round(a_args, da, db, vms, journal_path):
    """Daemon A opens the round's tops; once the journal grows (A began a repair), A gets
    SIGKILL after a random part of KILL_SPAN, and B's opens of the same tops begin at another
    random moment of it (before or after the kill). A is started again (its recovery done: the
    FUSE loop serves nothing before it). Returns B's failed opens, the new daemon A, the kill's
    delay and whether it followed a journal append."""
    try:
        size0 = os.stat(journal_path).st_size
    except FileNotFoundError:
        size0 = 0
    kill_at, b_at = random.uniform(0, KILL_SPAN), random.uniform(0, KILL_SPAN)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as ex:
        fa = ex.submit(hammer, [(da.mnt, v) for v in vms for _ in range(ROUND_OPENS)], 6)
        grew = wait_growth(journal_path, size0, 5)
        t0, fb = time.monotonic(), None
        for at, what in sorted([(kill_at, "kill"), (b_at, "b")]):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            if what == "kill":
                da.proc.send_signal(signal.SIGKILL)
            else:
                fb = ex.submit(hammer, [(db.mnt, v) for v in vms for _ in range(ROUND_OPENS)], 6)
        fa.result()
        b_errors = fb.result()[0].get(db.mnt, [])
    da.proc.wait()
    da.logf.close()
    subprocess.run(["fusermount3", "-u", "-z", da.mnt], check=False)
    da = start_daemon(*a_args)
    os.stat(os.path.join(da.mnt, ".vhdheal"))  # answered once the start's recovery is done
    return b_errors, da, kill_at, grew


def check_round(c, vms, k):
    """Each round VM's link is the old one (broken, healable) or the new one (ok, to the
    archived base), and the journal agrees: one committed repair for a new link, none for an
    old one, none unfinished. Returns how many links are new."""
    now, _ = links(c, [os.path.join(c, v.top) for v in vms])
    recs = [r for r in journal(c) if r[2] in {v.c1 for v in vms}]
    new_links = 0
    for v in vms:
        lk = now.get(v.c1)
        if not check(lk is not None, f"round {k}: {v.c1} missing from check"):
            continue
        new = lk["status"] == "ok" and lk["parent"] == v.base
        old = (lk["status"] == "broken" and lk["reason"] == "parent-missing"
               and lk["heal_target"] == v.base)
        check(new or old, f"round {k}: {v.c1}: neither the old nor the new link: {lk}")
        mine = collections.Counter(r[1] for r in recs if r[2] == v.c1)
        check(mine["done"] == (1 if new else 0) and not mine["unfinished"],
              f"round {k}: {v.c1}: link {'new' if new else 'old'}, journal {dict(mine)}")
        new_links += new
    return new_links


def part2(g, root, stage):
    a, b, c = g.mounts
    a_args = (a, os.path.join(root, "mntA"), os.path.join(root, "daemonA2.log"))
    da = start_daemon(*a_args)
    db = start_daemon(b, os.path.join(root, "mntB"), os.path.join(root, "daemonB2.log"))
    all_vms, b_errors, new_links, in_repair, t = [], [], 0, 0, time.monotonic()
    try:
        for k in range(KILL_ROUNDS):
            t0 = time.monotonic()
            names = [(f"r{k:02d}{f}", f) for f in ("vhd", "vhdx")[:ROUND_VMS]]
            vms = make_vms(stage, names, 1000 + 10 * k)
            publish(stage, vms, c)
            all_vms += vms
            introduce(vms, [da.mnt, db.mnt])
            t1 = time.monotonic()
            errs, da, delay, grew = kill_round(a_args, da, db, vms,
                                               os.path.join(c, ".vhdheal", "journal"))
            b_errors += errs
            in_repair += grew
            check(db.alive(), f"round {k}: daemon B died")
            t2 = time.monotonic()
            n = check_round(c, vms, k)
            check_content(None, vms, [da.mnt, db.mnt], f"round {k}")
            new_links += n
            print(f"round {k}: kill -9 {delay * 1000:.0f} ms after "
                  f"{'a journal append' if grew else '5 s without a repair'}; {n} of {len(vms)}"
                  f" links new; {t1 - t0:.1f} s to make, {t2 - t1:.1f} s to open/kill/restart, "
                  f"{time.monotonic() - t2:.1f} s to check", flush=True)
        print(f"part 2: {KILL_ROUNDS} rounds of kill -9 ({in_repair} during a repair), "
              f"{len(all_vms)} VMs, {len(all_vms) * 2 * ROUND_OPENS} opens, {new_links} links "
              f"healed by the daemons, in {time.monotonic() - t:.1f} s", flush=True)
        check(not b_errors, f"part 2: {len(b_errors)} opens through daemon B failed: "
              f"{b_errors[:3]}")
    finally:
        for d in (da, db):
            d.stop()
    seen_output.append((part[0], "daemon A log (killed and restarted)", da.text()))
    seen_output.append((part[0], "daemon B log", db.text()))
    check_part2_state(c, all_vms)


def check_part2_state(c, vms):
    healed_before = journal(c)
    vh("repair", "--store", c, c, ok=(0,))
    recs = journal(c)
    states = collections.Counter(r[1] for r in recs if r[2].startswith("r"))
    per = collections.Counter(r[2] for r in recs if r[1] == "done")
    print(f"part 2: journal: {len(healed_before)} repairs before the final vhdheal repair, "
          f"{len(recs)} after; states of the rounds' records {dict(states)}", flush=True)
    check(states.get("unfinished", 0) == 0, f"part 2: unfinished repairs left: {dict(states)}")
    for v in vms:
        check(per[v.c1] == 1, f"part 2: the journal holds {per[v.c1]} committed repairs of "
              f"{v.c1}")
    check_content(c, vms, [], "part 2")
    now, rc = links(c)
    check(rc == 0, f"part 2: check is not healthy after the final repair (exit {rc})")
    n = 0
    for v in vms:
        if v.fmt == "vhdx":
            p = subprocess.run(["qemu-img", "check", "-f", "vhdx", os.path.join(c, v.base)],
                               capture_output=True, text=True)
            n += 1
            check(p.returncode == 0, f"qemu-img check {v.base}: {p.returncode} {p.stdout}")
    print(f"part 2: qemu-img check clean on {n} VHDX base disks", flush=True)


def check_outputs():
    """Nothing reported an unreadable disk, and nothing in part 1 (where no process dies) said
    "rolled back". In part 2 the repairs of the killed daemon are rolled back legitimately (by
    its restart, by daemon B, by vhdheal): what matters there is checked on the store and the
    journal."""
    for when, where, text in seen_output:
        for line in text.splitlines():
            if "rolled back" in line and when == "part 1":
                check(False, f"{when}: {where}: {line}")
            if "unreadable" in re.sub(r"\b0 unreadable", "", line).lower():
                check(False, f"{when}: {where}: {line}")


def main():
    require_fuse()
    require_gluster()
    seed = int(os.environ.get("VH_SEED", str(int(time.time()))))
    random.seed(seed)
    print(f"VH_SEED={seed}", flush=True)
    with tempfile.TemporaryDirectory(prefix="vh-gluster-") as root:
        stage = os.path.join(root, "stage")
        os.makedirs(stage)
        try:
            with Gluster(os.path.join(root, "gluster"), mounts=3) as g:
                for what, problems in (("locks", g.check_locks()),
                                       ("coherence", g.check_coherence())):
                    check(not problems, f"GlusterFS {what}: {problems}")
                print("GlusterFS: OFD locks exclusive across clients, writes seen at once",
                      flush=True)
                part1(g, root, stage)
                part[0] = "part 2"
                part2(g, root, stage)
                check_outputs()
        except Exception as ex:
            traceback.print_exc()
            check(False, repr(ex))
    vhdtest.finish("shared_gluster")


if __name__ == "__main__":
    main()
