#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""mount_users - one allow_other mount, two users the test creates (useradd; removed after):
alice keeps her VM in a 0700 folder with 0600 files, bob has his own folder in the same store
(doc/design.md "Many users on one mount", resolver rule 4). What bob tries must not reach alice's
files:

1. substitution: bob's disk with alice's base identity, her size, his bytes, named as her
   locator names her base; alice has archived her base inside the store. Her @raw shows her
   bytes, her open heals onto her own copy, never onto bob's.
2. reading through a repair: bob's write of user.vhd.parent[.force] naming her base fails with
   EACCES, and so does one naming a missing file in her folder (no probing); a locator bob
   writes into his own child towards her base is not followed: his @raw never shows her bytes,
   his user.vhd.chain never names her files.
3. the rename race: bob's broken child is swapped with a symlink to alice's checkpoint
   (renameat2 RENAME_EXCHANGE, >= 10000 swaps in >= 30 s) while bob renames its parent through
   the mount and opens the child, again and again: alice's file never changes (sha256, mtime).

Needs root (skipped otherwise, unless CI is set). VH_RACE_SECONDS shortens the race for a
quick run (at least 30 under CI)."""
import ctypes
import errno
import hashlib
import json
import os
import pwd
import re
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vhcraft  # noqa: E402
import vhdtest  # noqa: E402
from mounttest import (Mount, check, child, create, expected, fill, locators,  # noqa: E402
                       parent_id_on_disk, require_fuse, require_root, sha)

ALICE = "vhalice%d" % os.getpid()
BOB = "vhbob%d" % os.getpid()
SIZE = 8 << 20
RACE_SECONDS = float(os.environ.get("VH_RACE_SECONDS", "30"))
MIN_SWAPS = 10000


def as_user(user, *args):
    """Runs a command as user (uid, gid and groups); returns (rc, stdout, stderr)."""
    p = subprocess.run(["setpriv", "--reuid", user, "--regid", user, "--init-groups", *args],
                       capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def spawn_as(user, *args):
    return subprocess.Popen(["setpriv", "--reuid", user, "--regid", user, "--init-groups",
                             sys.executable, os.path.abspath(__file__), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ------------------------------------------------------------- helpers run as bob


def swapper(a, b, seconds):
    """Exchanges a and b (renameat2 RENAME_EXCHANGE) until time is up; prints the count."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.renameat2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    a, b = a.encode(), b.encode()
    n, end = 0, time.monotonic() + float(seconds)
    while time.monotonic() < end or n % 2:
        if fn(at_fdcwd, a, at_fdcwd, b, rename_exchange) != 0:
            raise OSError(ctypes.get_errno(), "renameat2")
        n += 1
    print(n)


def opener(child_path, base_a, base_b, seconds):
    """Renames the child's parent through the mount (relink) and opens the child (heal on
    open), again and again; prints the rounds and the failures. The child is reopened through a
    descriptor taken before the swapping starts: the kernel caches the names it looked up (for
    the mount's entry timeout), so an open by name could keep meeting the symlink, never the
    daemon; the reopen reaches the daemon every time, which then finds the child by its name in
    the store, the name the swapper keeps exchanging."""
    names = (base_a, base_b)
    pinned = os.open(child_path, os.O_PATH | os.O_NOFOLLOW)
    print("ready", flush=True)
    n, end, errs = 0, time.monotonic() + float(seconds), {}

    def failed(what, e):
        k = what + " " + errno.errorcode.get(e.errno, str(e.errno))
        errs[k] = errs.get(k, 0) + 1

    while time.monotonic() < end:
        try:
            os.rename(names[n % 2], names[(n + 1) % 2])
        except OSError as e:
            failed("rename", e)
            continue  # the same rename again
        try:
            os.close(os.open(f"/proc/self/fd/{pinned}", os.O_RDONLY))
        except OSError as e:
            failed("open", e)
        n += 1
    if n % 2:
        try:
            os.rename(names[1], names[0])
        except OSError:
            pass
    print(n, errs)


# ------------------------------------------------------------- the cases


def setup_store(root, ids):
    store = os.path.join(root, "store")
    S = lambda r: os.path.join(store, r)  # noqa: E731
    # alice: a base filled with her bytes, her checkpoint on it; the base archived since
    create(S("alice/vm/base.vhd"), "vhd")
    fill(S("alice/vm/base.vhd"), 11, (0, 65536))
    child(S("alice/vm/top.avhd"), S("alice/vm/base.vhd"))
    fill(S("alice/vm/top.avhd"), 12, (1 << 20,))
    os.makedirs(S("alice/archive"))
    os.rename(S("alice/vm/base.vhd"), S("alice/archive/base-2025.vhd"))
    # bob: a disk with alice's base identity and size, his own bytes, named as her locator says
    create(S("bob/base.vhd"), "vhd")
    fill(S("bob/base.vhd"), 66, (0, 65536))
    vhcraft.vhd_set_id(S("bob/base.vhd"), vhcraft.vhd_id(S("alice/archive/base-2025.vhd")))
    # bob's own chain, and a child whose locator bob pointed at alice's base
    create(S("bob/own.vhd"), "vhd")
    fill(S("bob/own.vhd"), 77, (0,))
    child(S("bob/child.avhd"), S("bob/own.vhd"))
    child(S("bob/stolen.avhd"), S("bob/own.vhd"))
    vhcraft.set_parent(S("bob/stolen.avhd"), vhcraft.vhd_id(S("alice/archive/base-2025.vhd")),
                       "..\\alice\\archive\\base-2025.vhd")
    # a disk of alice's that everyone may read: readable, but not trusted for bob's children
    create(S("shared/alice.vhd"), "vhd")
    pw = pwd.getpwnam(ALICE)
    os.chown(S("shared/alice.vhd"), pw.pw_uid, pw.pw_gid)
    os.chmod(S("shared/alice.vhd"), 0o644)
    # a child of bob's on root's base in root's private folder (trusted: root's; not readable)
    create(S("private/base.vhd"), "vhd")
    fill(S("private/base.vhd"), 99, (0,))
    child(S("bob/onroot.avhd"), S("private/base.vhd"))
    os.chmod(S("private"), 0o700)
    os.chmod(S("private/base.vhd"), 0o600)
    # the race: bob's child of his own base, with a symlink to alice's checkpoint beside it
    create(S("bob/race/base-0.vhd"), "vhd")
    child(S("bob/race/top.avhd"), S("bob/race/base-0.vhd"))
    os.symlink("../../alice/vm/top.avhd", S("bob/race/lnk"))
    ids["alice-base"] = vhcraft.vhd_id(S("alice/archive/base-2025.vhd"))
    ids["bob-own"] = vhcraft.vhd_id(S("bob/own.vhd"))
    for who, folder, dmode, fmode in ((ALICE, "alice", 0o700, 0o600),
                                      (BOB, "bob", 0o755, 0o644)):
        pw = pwd.getpwnam(who)
        for dirpath, dirs, files in os.walk(S(folder)):
            os.chown(dirpath, pw.pw_uid, pw.pw_gid)
            os.chmod(dirpath, dmode)
            for f in files:
                os.lchown(os.path.join(dirpath, f), pw.pw_uid, pw.pw_gid)
                if not os.path.islink(os.path.join(dirpath, f)):  # never through bob's symlink
                    os.chmod(os.path.join(dirpath, f), fmode)
    os.chmod(store, 0o755)
    return store


ALICE_BASE = expected(SIZE, [(11, (0, 65536))])
ALICE_BYTES = expected(SIZE, [(11, (0, 65536)), (12, (1 << 20,))])
ALICE_ON_BOB = expected(SIZE, [(66, (0, 65536)), (12, (1 << 20,))])
BOB_OWN = expected(SIZE, [(77, (0,))])


def read_as(user, path):
    """(rc, sha256 of what user reads at path)."""
    rc, out, err = as_user(user, "sh", "-c", f"sha256sum < '{path}'")
    return rc, out.split()[0] if rc == 0 and out else err.strip()


def digest(data):
    return hashlib.sha256(data).hexdigest()


def case_cli_trust(store):
    """vhdheal repair run by root trusts by the owners too: alice's copy, never bob's."""
    top = os.path.join(store, "alice/vm/top.avhd")
    for trust, status, parent in (("owner", "would-repair", "alice/archive/base-2025.vhd"),
                                  ("any", "left", None)):
        out = vhdtest.vhdheal("repair", "--dry-run", "--json", "--store", store, "--trust", trust,
                              top, ok=False).stdout
        links = json.loads(out)["links"]
        check(len(links) == 1 and links[0]["status"] == status and links[0]["parent"] == parent,
              f"cli: repair --trust {trust}: {links}")
        if trust == "any":
            check(links[0]["reason"] == "ambiguous", f"cli: --trust any: {links[0]['reason']}")
    # bob's child whose locator names alice's base: read follows it only by --trust any
    stolen = os.path.join(store, "bob/stolen.avhd")
    p = vhdtest.vhdheal("read", "--store", store, stolen, ok=False)
    check(p.returncode != 0 and b"alice" not in p.stderr, f"cli: read: {p.stderr[-300:]}")
    p = vhdtest.vhdheal("read", "--store", store, "--trust", "any", stolen, ok=False)
    check(p.returncode == 0 and p.stdout == ALICE_BASE, "cli: read --trust any")


def case_substitution(store, mnt):
    S = lambda r: os.path.join(store, r)  # noqa: E731
    M = lambda r: os.path.join(mnt, r)  # noqa: E731
    # before any heal: her @raw reads her own archived base, never bob's look-alike
    rc, got = read_as(ALICE, M("@raw/alice/vm/top.avhd.raw"))
    check(rc == 0 and got == digest(ALICE_BYTES),
          f"substitution: alice's @raw before the heal: {rc} {got} "
          f"(her checkpoint on bob's base: {got == digest(ALICE_ON_BOB)})")
    # her open heals onto her own copy
    rc, _, err = as_user(ALICE, "sh", "-c", f"cat '{M('alice/vm/top.avhd')}' >/dev/null")
    check(rc == 0, f"substitution: alice's open: {err}")
    locs = locators(S("alice/vm/top.avhd"))
    check("archive" in locs.get("W2ru", "") and "bob" not in " ".join(locs.values()),
          f"substitution: alice's child was healed onto {locs}")
    rc, got = read_as(ALICE, M("@raw/alice/vm/top.avhd.raw"))
    check(rc == 0 and got == digest(ALICE_BYTES), f"substitution: alice's @raw after: {rc}")
    rc, out, _ = as_user(ALICE, "getfattr", "--only-values", "-n", "user.vhd.chain",
                         M("alice/vm/top.avhd"))
    check(rc == 0 and "bob/" not in out, f"substitution: alice's chain: {out}")


def case_read_through_repair(store, mnt):
    S = lambda r: os.path.join(store, r)  # noqa: E731
    M = lambda r: os.path.join(mnt, r)  # noqa: E731
    before = sha(S("bob/child.avhd"))
    results = {}
    for name, target in (("existing", "alice/archive/base-2025.vhd"),
                         ("missing", "alice/archive/nosuch.vhd")):
        for attr in ("user.vhd.parent.force", "user.vhd.parent"):
            rc, _, err = as_user(BOB, "setfattr", "-n", attr, "-v", M(target),
                                 M("bob/child.avhd"))
            results[(name, attr)] = (rc, err.strip().split(":")[-1].strip())
            check(rc != 0 and "Permission denied" in err,
                  f"read through a repair: bob's {attr} naming alice's {name} file: {rc} {err}")
    check(len({v for v in results.values()}) == 1,
          f"read through a repair: alice's existing and missing files differ: {results}")
    check(sha(S("bob/child.avhd")) == before, "read through a repair: bob's child was rewritten")
    check(parent_id_on_disk(S("bob/child.avhd")) == ids_seen["bob-own"],
          "read through a repair: bob's child points elsewhere")
    # a disk bob may read, but alice's: not trusted for his child
    rc, _, err = as_user(BOB, "setfattr", "-n", "user.vhd.parent.force", "-v",
                         M("shared/alice.vhd"), M("bob/child.avhd"))
    rc2, st, _ = as_user(BOB, "getfattr", "--only-values", "-n", "user.vhd.status",
                         M("bob/child.avhd"))
    check(rc != 0 and "Permission denied" in err and "not trusted (trust=owner)" in st,
          f"read through a repair: bob's force to alice's readable disk: {rc} {err} {st}")
    # what bob may do: reconnect to his own base
    rc, _, err = as_user(BOB, "setfattr", "-n", "user.vhd.parent", "-v", M("bob/own.vhd"),
                         M("bob/child.avhd"))
    check(rc == 0, f"read through a repair: bob's reconnect to his own base: {err}")
    rc, got = read_as(BOB, M("@raw/bob/child.avhd.raw"))
    check(rc == 0 and got == digest(BOB_OWN), f"read through a repair: bob's @raw: {rc} {got}")
    # a locator bob wrote towards alice's base is not followed
    rc, got = read_as(BOB, M("@raw/bob/stolen.avhd.raw"))
    check(got != digest(ALICE_BASE), "read through a repair: bob's @raw shows alice's bytes")
    rc, _, _ = as_user(BOB, "sh", "-c", f"cat '{M('bob/stolen.avhd')}' >/dev/null")
    check(rc == 0, "read through a repair: bob's open of his own child")
    check(parent_id_on_disk(S("bob/stolen.avhd")) == ids_seen["alice-base"],
          "read through a repair: bob's child was healed onto someone's base")
    for f in ("bob/stolen.avhd", "bob/child.avhd"):
        rc, out, _ = as_user(BOB, "getfattr", "--only-values", "-n", "user.vhd.chain", M(f))
        check("alice" not in out, f"read through a repair: {f}'s chain names alice's: {out}")
    # @raw reads every disk of the chain for its caller: root's private base stays private
    rc, got = read_as(BOB, M("@raw/bob/onroot.avhd.raw"))
    check(rc != 0 and "Permission denied" in got,
          f"read through a repair: bob's @raw over root's private base: {rc} {got}")
    rc, got = read_as(BOB, M("bob/onroot.avhd"))
    check(rc == 0, f"read through a repair: bob's own child over root's base: {got}")
    rc, out, _ = as_user(BOB, "getfattr", "--only-values", "-n", "user.vhd.chain",
                         M("bob/onroot.avhd"))
    check(rc == 0 and "private" not in out, f"read through a repair: bob's chain: {out}")
    rc, got = read_as("root", M("@raw/bob/onroot.avhd.raw"))
    check(rc == 0 and got == digest(expected(SIZE, [(99, (0,))])),
          f"read through a repair: root's @raw of bob's child: {rc} {got}")


def case_parent_rule_trust(store, mnt):
    """Another user's child does not make a disk a parent its owner may not write: only children
    that trust the disk count (bob's child of alice's readable disk, under trust=owner)."""
    M = lambda r: os.path.join(mnt, r)  # noqa: E731
    rc, _, err = as_user(BOB, vhdtest.VHDHEAL, "create", "--parent", M("shared/alice.vhd"),
                         M("bob/ontheirs.avhd"))
    check(rc == 0, f"parent rule: bob's child of alice's disk: {rc} {err}")
    rc, _, err = as_user(ALICE, "/usr/bin/python3", "-c",
                         f"open({M('shared/alice.vhd')!r}, 'r+b').close()")
    check(rc == 0, f"parent rule: alice may not write her disk because of bob's child: {err}")
    rc, _, err = as_user(ALICE, vhdtest.VHDHEAL, "write", "--store", mnt, M("shared/alice.vhd"),
                         "0", "/dev/null")
    check(rc == 0, f"parent rule: vhdheal write of alice's disk refused for bob's child: {err}")


def case_race(store, mnt, mt):
    S = lambda r: os.path.join(store, r)  # noqa: E731
    M = lambda r: os.path.join(mnt, r)  # noqa: E731
    victim = S("alice/vm/top.avhd")
    before, mtime = sha(victim), os.stat(victim).st_mtime_ns
    pid_before = parent_id_on_disk(victim)
    log_start = len(mt.text())
    op = spawn_as(BOB, "open", M("bob/race/top.avhd"), M("bob/race/base-0.vhd"),
                  M("bob/race/base-1.vhd"), str(RACE_SECONDS))
    sw = None
    try:
        check(op.stdout.readline().strip() == "ready", "race: the opener did not start")
        sw = spawn_as(BOB, "swap", S("bob/race/top.avhd"), S("bob/race/lnk"),
                      str(RACE_SECONDS))
        out_sw, err_sw = sw.communicate(timeout=RACE_SECONDS + 120)
        out_op, err_op = op.communicate(timeout=RACE_SECONDS + 120)
    finally:
        for p in (sw, op):  # never leave bob's processes behind (userdel would refuse)
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    check(sw.returncode == 0 and op.returncode == 0,
          f"race: helpers failed: {err_sw[-500:]} {err_op[-500:]}")
    swaps = int(out_sw.strip() or 0)
    rounds = int(out_op.split()[0]) if out_op.strip() else 0
    print(f"race: {RACE_SECONDS:.0f} s, {swaps} swaps, {rounds} renames and opens; failures: "
          f"{out_op.strip().partition(' ')[2]}")
    check(swaps >= MIN_SWAPS, f"race: only {swaps} swaps")
    check(sha(victim) == before, "race: alice's checkpoint was rewritten")
    check(os.stat(victim).st_mtime_ns == mtime, "race: alice's checkpoint's mtime changed")
    check(parent_id_on_disk(victim) == pid_before, "race: alice's checkpoint has a new parent")
    log = mt.text()[log_start:]
    # the race went through detections and repairs of bob's child (each logged once per state),
    # named by where the daemon found it: top.avhd or lnk
    lines = re.findall(r"^vhdhealfs: (detected|healed|not healed) bob/race/(?:top\.avhd|lnk)[:\s]",
                       log, re.M)
    repairs = len(lines)
    why = {}
    for m in re.finditer(r"^vhdhealfs: not healed bob/race/\S+ [^:]+: [^:]+: (.*)$", log, re.M):
        why[m.group(1)[:200]] = why.get(m.group(1)[:200], 0) + 1
    print(f"race: refusals: {why}")
    print(f"race: {repairs} log lines about bob's child, {lines.count('healed')} repairs of it "
          f"made, {lines.count('not healed')} refused")
    check(repairs >= min(10, RACE_SECONDS), f"race: only {repairs} log lines about bob's child; "
          f"the log ends: "
          f"{log.splitlines()[-20:]}")
    check("alice/vm/top.avhd" not in "".join(l for l in log.splitlines() if "healed" in l),
          "race: the log names a repair of alice's checkpoint")
    # nothing of alice's checkpoint was read as bob's child (its link expects her base's id)
    leaked = [l for l in log.splitlines() if "bob/race/" in l and
              (ids_seen["alice-base"] in l or "bob/base.vhd" in l)]
    check(not leaked, f"race: bob's child was read through the symlink: {leaked[:3]}")
    check(mt.alive(), "race: the daemon died")


ids_seen = {}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "swap":
        return swapper(*sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "open":
        return opener(*sys.argv[2:])
    require_fuse()
    require_root("mount_users")
    if os.environ.get("CI") and RACE_SECONDS < 30:
        check(False, "VH_RACE_SECONDS below 30 under CI")
    for u in (ALICE, BOB):
        subprocess.run(["useradd", "--no-create-home", "--user-group", u], check=True)
    mt = None
    try:
        with tempfile.TemporaryDirectory(prefix="vh-mount-users-") as root:
            os.chmod(root, 0o755)
            mnt = os.path.join(root, "mnt")
            os.makedirs(mnt)
            store = setup_store(root, ids_seen)
            try:
                case_cli_trust(store)
            except Exception as ex:
                traceback.print_exc()
                check(False, f"cli: {ex!r}")
            mt = Mount(store, mnt, os.path.join(root, "daemon.log"), "allow_other")
            try:
                for case in (case_substitution, case_read_through_repair,
                             case_parent_rule_trust):
                    try:
                        case(store, mnt)
                    except Exception as ex:
                        traceback.print_exc()
                        check(False, f"{case.__name__}: {ex!r}")
                try:
                    case_race(store, mnt, mt)
                except Exception as ex:
                    traceback.print_exc()
                    check(False, f"race: {ex!r}")
                mt.stop()
                mt = None
            finally:
                if mt is not None:
                    mt.kill()
    finally:
        for u in (ALICE, BOB):
            subprocess.run(["userdel", u], check=False)
            subprocess.run(["groupdel", u], check=False, stderr=subprocess.DEVNULL)
    vhdtest.finish("mount_users")


if __name__ == "__main__":
    main()
