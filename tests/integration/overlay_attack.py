#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""overlay_attack.py - the overlay folder (-o overlaydir=DIR, vhdheal --overlay DIR) attacked by
someone who is not the daemon (README "Overlay healing", doc/design.md "The patch file"):

- forged: a user who may write DIR (not root) plants a well-formed patch file for a disk of
  the store that is not theirs. Its identity fields (inode, size, mtime) come from stat; its hash
  covers no base byte (visible 0: the whole file comes from the patch) or only bytes past the
  end. It must be ignored (logged), by the mount and by vhdheal read --overlay: the disk is
  presented as STORE has it, not as the attacker's disk. A root-owned patch file that others may
  write is ignored too.
- revert: in overlay mode, user.vhd.parent.force to another disk, then user.vhd.parent back to
  the parent STORE's bytes name: the mount must present the child linked to that parent again
  (not keep the forced link, saying "already linked"), before and after a remount, and STORE
  stays unchanged.
- crash: the daemon killed (SIGKILL injected by strace) at the fsync of a patch file's temporary
  file leaves `.NAME.RANDOM.tmp` in DIR; a later mount that writes DIR removes it once it is
  older than a save can last (a fresh one, maybe another mount's save in flight, stays).
- bind: DIR given as a path that is STORE's subfolder through a bind mount is refused like
  DIR inside STORE (the mount would write patch files into STORE).
- marker: DIR's marker (vhdheal.store, doc/design.md "The marker") planted or spoilt by someone
  else: owned by another user, writable by group or others, a symlink (to a good marker, or
  dangling), a folder, a FIFO, 1 GiB, binary. The mount refuses to start (exit 2, a message
  naming the marker and why), vhdheal read --overlay refuses too (exit 2), nothing in DIR
  changes (the marker is not replaced, no patch file removed); with the good marker back the
  kept repair is presented again. A DIR where no marker can be written (a read-only bind
  mount) is logged and only read: the mount heals in memory and writes nothing there.
"""
import hashlib
import os
import shutil
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mounttest  # noqa: E402
from mounttest import (Mount, check, child, content, create, fill, getx, setx, sha,  # noqa: E402
                       vhdheal)

NOBODY = 65534


def crc32c(data):
    poly, crc = 0x82F63B78, 0xFFFFFFFF
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def patch_name(rel):
    return hashlib.sha256(rel.encode()).hexdigest()[:32] + ".vhpatch"


def forge(rel, st, visible, size, ranges, hash32):
    """A patch file (doc/design.md "The patch file") for rel over the file stat st."""
    path, note = rel.encode(), b"parent-missing: reconnected"
    table = b"".join(struct.pack("<QQ", off, len(data)) for off, data in ranges)
    body = path + note + table + b"".join(data for _, data in ranges)
    total = 128 + len(body) + 4
    fixed = b"VHPATCH\n" + struct.pack("<II", 1, 128)
    fixed += struct.pack("<QQQqQQq", total, st.st_ino, st.st_size, st.st_mtime_ns, visible, size,
                         1700000000)
    fixed += hash32 + struct.pack("<III", len(ranges), len(path), len(note)) + bytes(12)
    buf = fixed + body
    return buf + struct.pack("<I", crc32c(buf))


def plant(ovl, rel, blob, uid, mode):
    p = os.path.join(ovl, patch_name(rel))
    with open(p, "wb") as f:
        f.write(blob)
    os.chown(p, uid, uid)
    os.chmod(p, mode)
    return p


def mounted_bytes(store, mnt, log, ovl, rel):
    m = Mount(store, mnt, log, f"ro,overlaydir={ovl}")
    try:
        with open(os.path.join(mnt, rel), "rb") as f:
            data = f.read()
    finally:
        m.stop()
    return data, m.text()


def forged(root, fmt):
    store, mnt = os.path.join(root, "store-" + fmt), os.path.join(root, "mnt")
    ovl = os.path.join(root, "ovl-" + fmt)
    os.makedirs(ovl)
    os.chmod(ovl, 0o1777)  # a folder others may write (a sticky /tmp-like folder)
    rel = f"vm/victim.{fmt}"
    victim, evil = os.path.join(store, rel), os.path.join(root, f"evil.{fmt}")
    create(victim, fmt, size="4M")
    fill(victim, 1, (0, 65536))
    create(evil, fmt, size="4M")
    fill(evil, 2, (0, 65536))
    want = content(victim)
    check(content(evil) != want, f"{fmt}: the attacker's disk differs from the victim")
    before = {r: sha(os.path.join(store, r)) for r in [rel]}
    with open(victim, "rb") as f:
        victim_bytes = f.read()
    with open(evil, "rb") as f:
        evil_bytes = f.read()
    st = os.stat(victim)
    empty = bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    # (a) visible 0: the whole disk is the attacker's; (b) visible = the base: the attacker's
    # disk appended past the end, covered by no hash (its footer, found at the new end, wins)
    cases = [("visible-0", 0, len(evil_bytes), [(0, evil_bytes)]),
             ("appended", st.st_size, st.st_size + len(evil_bytes),
              [(st.st_size, evil_bytes)])]
    if fmt == "vhdx":
        cases = cases[:1]  # a VHDX is found from its start: only (a) replaces it
    for what, visible, size, ranges in cases:
        for uid, mode in ((NOBODY, 0o644), (0, 0o666)):
            tag = f"{fmt}: {what}, a patch file of user {uid} mode {mode:o}"
            p = plant(ovl, rel, forge(rel, st, visible, size, ranges, empty), uid, mode)
            got = vhdheal("read", "--overlay", ovl, "--store", store, victim, ok=False)
            check(got.returncode == 0 and got.stdout == want,
                  f"{tag}: vhdheal read --overlay presents the victim as STORE has it")
            data, log = mounted_bytes(store, mnt, os.path.join(root, f"{fmt}.log"), ovl, rel)
            whose = "the attacker's" if evil_bytes in data else "other"
            check(data == victim_bytes,
                  f"{tag}: the mount serves STORE's bytes (it serves {len(data)} bytes, {whose})")
            check(patch_name(rel) in log and "ignored" in log,
                  f"{tag}: the mount logs the file as ignored")
            os.unlink(p)
    check(before == {rel: sha(victim)}, f"{fmt}: STORE unchanged")


def revert(root, fmt):
    store, mnt = os.path.join(root, "rstore-" + fmt), os.path.join(root, "mnt")
    ovl = os.path.join(root, "rovl-" + fmt)
    os.makedirs(ovl)
    base, other = os.path.join(store, f"base.{fmt}"), os.path.join(store, f"other.{fmt}")
    create(base, fmt, size="4M")
    fill(base, 1, (0,))
    create(other, fmt, size="4M")
    fill(other, 9, (0,))
    top = os.path.join(store, "vm", f"child.a{fmt}")
    child(top, base)
    fill(top, 2, (8192,), store=store)
    want = content(top, store)
    before = {p: sha(p) for p in (base, other, top)}
    log = os.path.join(root, f"revert-{fmt}.log")
    m = Mount(store, mnt, log, f"healmode=overlay,overlaydir={ovl}")
    try:
        c = os.path.join(mnt, "vm", f"child.a{fmt}")
        check(setx(c, "user.vhd.parent.force", f"../other.{fmt}") == 0, f"{fmt}: forced")
        check(content(c, mnt) != want, f"{fmt}: the forced link is presented")
        check(setx(c, "user.vhd.parent", f"../base.{fmt}") == 0, f"{fmt}: reconnected back")
        check(content(c, mnt) == want, f"{fmt}: after the reconnect back, the child reads through "
              f"its own parent again ({getx(c, 'user.vhd.status')[0]})")
    finally:
        m.stop()
    m = Mount(store, mnt, log, f"ro,overlaydir={ovl}")
    try:
        check(content(c, mnt) == want, f"{fmt}: and after a remount")
    finally:
        m.stop()
    check(before == {p: sha(p) for p in (base, other, top)}, f"{fmt}: STORE unchanged")


def crash(root, fmt):
    store, mnt = os.path.join(root, "cstore-" + fmt), os.path.join(root, "mnt")
    ovl = os.path.join(root, "covl-" + fmt)
    os.makedirs(ovl)
    base = os.path.join(store, f"base.{fmt}")
    create(base, fmt, size="4M")
    top = os.path.join(store, "vm", f"child.a{fmt}")
    child(top, base)
    os.rename(base, os.path.join(store, f"moved.{fmt}"))
    log = os.path.join(root, f"crash-{fmt}.log")
    Mount(store, mnt, log, f"ro,overlaydir={ovl}").stop()  # marks DIR: the next fsync is a save's
    m = Mount(store, mnt, log, f"ro,overlaydir={ovl}",
              wrap=("strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=fsync", "-e",
                    "inject=fsync:signal=SIGKILL:when=1"))
    try:
        with open(os.path.join(mnt, "vm", f"child.a{fmt}"), "rb") as f:
            f.read(512)
    except OSError:
        pass  # the daemon died in the open
    m.proc.wait(timeout=20)
    subprocess.run(["fusermount3", "-u", "-z", mnt], check=False)
    m.logf.close()
    tmps = [n for n in os.listdir(ovl) if n.endswith(".tmp")]
    check(len(tmps) == 1, f"{fmt}: the killed save left its temporary file ({os.listdir(ovl)})")
    old = os.path.join(ovl, tmps[0]) if tmps else None
    if old:
        os.utime(old, (0, 1700000000))  # as after a reboot: long ago
    fresh = os.path.join(ovl, "." + patch_name("vm/other") + ".0badf00d.tmp")
    with open(fresh, "wb") as f:
        f.write(b"in flight")
    m = Mount(store, mnt, log, f"ro,overlaydir={ovl}")
    m.stop()
    check(old is None or not os.path.exists(old), f"{fmt}: the next mount removes the old one")
    check(os.path.exists(fresh), f"{fmt}: a fresh temporary file (another save) stays")


def spoil(marker, kind, good, spare):
    """Puts a marker of `kind` at `marker`; good: a good marker's bytes; spare: a path outside."""
    if os.path.isdir(marker) and not os.path.islink(marker):
        os.rmdir(marker)
    elif os.path.lexists(marker):
        os.unlink(marker)
    if kind == "folder":
        os.mkdir(marker, 0o700)
        return
    if kind == "fifo":
        os.mkfifo(marker, 0o600)
        return
    if kind in ("symlink", "dangling symlink"):
        with open(spare, "wb") as f:
            f.write(good)
        os.chmod(spare, 0o600)
        os.symlink(spare if kind == "symlink" else spare + ".gone", marker)
        return
    with open(marker, "wb") as f:
        f.write(os.urandom(4096) if kind == "binary" else good)
    os.chmod(marker, {"world-writable": 0o606, "group-writable": 0o620}.get(kind, 0o600))
    if kind == "another user's":
        os.chown(marker, NOBODY, NOBODY)
    if kind == "1 GiB":
        os.truncate(marker, 1 << 30)


def marker(root, fmt):
    store, mnt = os.path.join(root, "mstore-" + fmt), os.path.join(root, "mnt")
    ovl = os.path.join(root, "movl-" + fmt)
    os.makedirs(ovl)
    base = os.path.join(store, f"base.{fmt}")
    create(base, fmt, size="4M")
    rel = f"vm/child.a{fmt}"
    top = os.path.join(store, rel)
    child(top, base)
    os.rename(base, os.path.join(store, f"moved.{fmt}"))
    log = os.path.join(root, f"marker-{fmt}.log")
    m = Mount(store, mnt, log, f"ro,overlaydir={ovl}")
    try:
        with open(os.path.join(mnt, rel), "rb") as f:
            f.read(512)  # heals, kept in DIR
    finally:
        m.stop()
    mpath = os.path.join(ovl, "vhdheal.store")
    check(os.path.isfile(mpath) and os.path.exists(os.path.join(ovl, patch_name(rel))),
          f"{fmt}: the first mount marks DIR and keeps its repair ({os.listdir(ovl)})")
    sst = os.stat(store)
    good = (f"vhdheal overlay folder 1\nstore {os.path.realpath(store)}\n"
            f"device {os.major(sst.st_dev)}:{os.minor(sst.st_dev)}\ninode {sst.st_ino}\n").encode()
    if os.path.isfile(mpath):
        with open(mpath, "rb") as f:
            check(f.read() == good, f"{fmt}: the marker names the store")
    spare = os.path.join(root, f"spare-{fmt}.store")
    for kind, says in (("another user's", "owned by user 65534"),
                       ("world-writable", "mode 0606"), ("group-writable", "mode 0620"),
                       ("symlink", "symlink"), ("dangling symlink", "symlink"),
                       ("folder", "not a regular file"), ("fifo", "not a regular file"),
                       ("1 GiB", "more than"), ("binary", "not an overlay folder marker")):
        spoil(mpath, kind, good, spare)
        before = mounttest.dir_listing(ovl)
        rc, err, mounted = mounttest.try_mount(["-o", f"ro,overlaydir={ovl}", store, mnt], mnt)
        check(rc == 2 and not mounted and mpath in err and says in err and "which store" in err,
              f"{fmt}: a marker {kind}: the mount starts or says something else "
              f"(exit {rc}, mounted {mounted}): {err.strip()[:300]!r}")
        got = vhdheal("read", "--overlay", ovl, "--store", store, top, ok=False)
        e = got.stderr.decode(errors="replace")
        check(got.returncode == 2 and mpath in e and says in e,
              f"{fmt}: a marker {kind}: vhdheal read --overlay: exit {got.returncode}: "
              f"{e.strip()[:300]!r}")
        check(mounttest.dir_listing(ovl) == before, f"{fmt}: a marker {kind}: DIR changed")
    spoil(mpath, "good", good, spare)
    m = Mount(store, mnt, log, f"ro,overlaydir={ovl}")
    try:
        st, _ = getx(os.path.join(mnt, rel), "user.vhd.status")
        check((st or "").startswith("healed (overlay) "),
              f"{fmt}: the good marker back: the kept repair is presented ({st!r})")
    finally:
        m.stop()
    # a DIR that cannot be marked: read, never written
    empty = os.path.join(root, f"rodir-{fmt}")
    view = os.path.join(root, f"roview-{fmt}")
    os.makedirs(empty)
    os.makedirs(view)
    subprocess.run(["mount", "--bind", empty, view], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", view], check=True)
        rolog = os.path.join(root, f"marker-ro-{fmt}.log")
        m = Mount(store, mnt, rolog, f"ro,overlaydir={view}")
        try:
            with open(os.path.join(mnt, rel), "rb") as f:
                f.read(512)
            st, _ = getx(os.path.join(mnt, rel), "user.vhd.status")
            check((st or "").startswith("healed (overlay) "),
                  f"{fmt}: a read-only DIR: heals in memory ({st!r})")
        finally:
            m.stop()
        text = m.text()
        check("cannot mark it" in text and "nothing is written into it" in text and
              "new ones are kept in memory only" in text,
              f"{fmt}: a read-only DIR: not logged:\n{text}")
        check(os.listdir(empty) == [], f"{fmt}: a read-only DIR: written ({os.listdir(empty)})")
    finally:
        subprocess.run(["umount", view], check=False)


def bind(root, fmt):
    store, mnt = os.path.join(root, "bstore-" + fmt), os.path.join(root, "mnt")
    create(os.path.join(store, f"base.{fmt}"), fmt, size="4M")
    os.makedirs(os.path.join(store, "ovl"))
    view = os.path.join(root, "bview-" + fmt)
    os.makedirs(view)
    subprocess.run(["mount", "--bind", store, view], check=True)
    try:
        p = subprocess.run([mounttest.VHDHEALFS, "-f", "-o", f"overlaydir={view}/ovl", store, mnt],
                           capture_output=True, timeout=20)
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", mnt], check=False)
        check(p.returncode != 0 and b"overlaydir" in p.stderr,
              f"{fmt}: overlaydir inside STORE through a bind mount is refused "
              f"({p.returncode}: {p.stderr.decode(errors='replace').strip()[:200]})")
    except subprocess.TimeoutExpired:
        check(False, f"{fmt}: overlaydir inside STORE through a bind mount: the daemon ran")
        subprocess.run(["fusermount3", "-u", "-z", mnt], check=False)
    finally:
        subprocess.run(["umount", view], check=False)


def main():
    mounttest.require_root("patch files of another user, bind mounts")
    if not shutil.which("strace"):
        print("FAIL: strace is missing")
        sys.exit(1)

    def run(root, fmt):
        forged(root, fmt)
        revert(root, fmt)
        crash(root, fmt)
        bind(root, fmt)
        marker(root, fmt)

    mounttest.run_in_root("overlay_attack", run, ("vhd", "vhdx"))


if __name__ == "__main__":
    main()
