#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""overlay_persist - overlay healing kept in -o overlaydir=DIR across remounts, through a real
mount (doc/design.md "Overlay healing", doc/design.md "The patch file"). A store with broken chains of every
kind (VHD and VHDX, parent moved or renamed, a VHDX child whose only locator is a Windows
absolute path resolved with -o winroot) is healed through an overlay mount with
-o overlaydir=DIR (heal on open, and setfattr user.vhd.parent); one patch file per child lands in
DIR; after the unmount every store file's sha256 is unchanged. vhdheal check --overlay DIR finds
the chains healthy, vhdheal read --overlay DIR reads the true content (the test's own
reference) and vhdheal info --overlay DIR shows the repaired locators, while plain vhdheal check
still finds them broken; none of them writes STORE or DIR.
A remount with the same DIR presents the healed chains at once (user.vhd.status "healed
(overlay)", the true content through the mount, no heal logged). A child changed on the store
while mounted, and one changed while unmounted, lose their patch (a log line naming the file,
its patch file removed) and heal again on the next open; a later user.vhd.parent replaces a
repair and its file. Hostile files in DIR (bad checksum, a
path with "..", an absolute path, a symlink) are logged and ignored and the mount starts. The
mount refuses an overlaydir inside STORE, equal to STORE, under the mount point, or not a
folder.
One DIR per STORE (doc/design.md "The marker"): the first mount marks DIR (vhdheal.store, 0600,
naming STORE); a DIR without a marker (made by the previous version) gets one at the next
mount, its repairs loaded (vhdheal --overlay reads it and writes no marker); a second store
given the same DIR is refused at startup (exit 2, both stores named) with nothing in DIR
touched, and so are vhdheal check/read/info --overlay DIR for that store; so is a second store
given the DIR without its marker (none of its repairs fits that store); the first store's patch
files are all still there and presented after a remount."""
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vhcraft  # noqa: E402
import vhdtest  # noqa: E402
from mounttest import (VHDHEALFS, Mount, check, child, create, dir_listing,  # noqa: E402
                       expected, ext, fill, getx, require_fuse, setx, sha, try_mount, vhdheal)

SIZE = 8 << 20
LAYERS = [(1, (0, 3 << 20)), (2, (1 << 20,))]
WINROOT = "D:/VMs"
WIN_PREFIX = "D:\\VMs\\"


def build(store):
    """Broken chains: {tag: (child rel, parent rel now)}; setfattr heals "set", opens the rest."""
    chains = {}
    for tag, fmt, how in (("vhd-moved", "vhd", "moved"), ("vhd-renamed", "vhd", "renamed"),
                          ("vhdx-moved", "vhdx", "moved"), ("vhdx-renamed", "vhdx", "renamed"),
                          ("win", "vhdx", "winroot"), ("set", "vhd", "moved")):
        base = os.path.join(store, tag, "vm", "base." + ext(fmt))
        top = os.path.join(store, tag, "vm", "child." + ext(fmt, True))
        create(base, fmt)
        fill(base, *LAYERS[0])
        child(top, base)
        fill(top, *LAYERS[1])
        if how == "winroot":
            # Hyper-V style: the only path is absolute, where Windows sees the store
            pid = vhcraft.disk_id(base)
            vhcraft.vhdx_set_locator(top, {"parent_linkage": "{%s}" % pid,
                                           "absolute_win32_path":
                                           WIN_PREFIX + "win\\vm\\base.vhdx"})
        if how == "renamed":
            now = os.path.join(store, tag, "vm", "renamed." + ext(fmt))
        else:
            os.makedirs(os.path.join(store, tag, "moved"))
            now = os.path.join(store, tag, "moved", "base." + ext(fmt))
        os.rename(base, now)
        chains[tag] = (os.path.relpath(top, store), os.path.relpath(now, store))
    return chains


def sums(top):
    out = {}
    for d, _, files in os.walk(top):
        for n in files:
            p = os.path.join(d, n)
            if not os.path.islink(p):
                out[os.path.relpath(p, top)] = sha(p)
    return out


def patch_files(odir):
    return sorted(n for n in os.listdir(odir) if n.endswith(".vhpatch") and
                  not os.path.islink(os.path.join(odir, n)))


MARKER = "vhdheal.store"


def marker_of(odir):
    """DIR's marker: (text, stat), or None when there is none."""
    p = os.path.join(odir, MARKER)
    if not os.path.lexists(p):
        return None
    with open(p) as f:
        return f.read(), os.lstat(p)


def check_marker(odir, store, what):
    m = marker_of(odir)
    check(m is not None, f"{what}: DIR has no marker")
    if m is None:
        return
    text, st = m
    sst = os.stat(store)
    want = (f"vhdheal overlay folder 1\nstore {os.path.realpath(store)}\n"
            f"device {os.major(sst.st_dev)}:{os.minor(sst.st_dev)}\ninode {sst.st_ino}\n")
    check(text == want, f"{what}: marker {text!r}, want {want!r}")
    check(st.st_mode & 0o7777 == 0o600 and st.st_uid == os.geteuid(),
          f"{what}: marker mode {st.st_mode:o} owner {st.st_uid}")


def other_store(root, store, odir, mnt, chains):
    """A second store given the same DIR: refused at mount and by vhdheal --overlay, nothing in
    DIR touched; the first store's repairs are all still there and presented after a remount."""
    other = os.path.join(root, "other")
    crel, _ = chains["vhd-moved"]
    # the same layout as STORE's vhd-moved chain, its parent moved too: every patch file's path
    # names nothing there, or a different file
    base = os.path.join(other, "vhd-moved", "vm", "base.vhd")
    create(base, "vhd")
    child(os.path.join(other, crel), base)
    os.makedirs(os.path.join(other, "vhd-moved", "moved"))
    os.rename(base, os.path.join(other, "vhd-moved", "moved", "base.vhd"))
    real, oreal = os.path.realpath(store), os.path.realpath(other)
    names = patch_files(odir)
    # DIR as an earlier version left it (no marker): none of its repairs fits the other store
    mpath = os.path.join(odir, MARKER)
    marker = None
    if os.path.isfile(mpath):  # (checked by check_marker)
        with open(mpath, "rb") as f:
            marker = f.read()
        os.unlink(mpath)
    before = dir_listing(odir)
    rc, err, mounted = try_mount(["-o", "overlaydir=" + odir, other, mnt], mnt)
    check(rc == 2 and not mounted and "has no marker" in err and oreal in err,
          f"another store, same DIR without a marker: exit {rc}, mounted {mounted}, {err!r}")
    check(dir_listing(odir) == before, "another store, same DIR without a marker: DIR changed")
    if marker is not None:
        with open(mpath, "wb") as f:
            f.write(marker)
        os.chmod(mpath, 0o600)
    # DIR marked as STORE's
    before = dir_listing(odir)
    rc, err, mounted = try_mount(["-o", "overlaydir=" + odir, other, mnt], mnt)
    check(rc == 2 and not mounted, f"another store, same DIR: exit {rc}, mounted {mounted}, "
          f"stderr {err!r}")
    check(real in err and oreal in err and "belongs to the store" in err,
          f"another store, same DIR: the message names both stores: {err!r}")
    check(dir_listing(odir) == before, "another store, same DIR: DIR changed")
    # vhdheal --overlay for that store: the same refusal, a usage error, nothing written
    top = os.path.join(other, crel)
    for args in (("check", "--overlay", odir, other),
                 ("read", "--overlay", odir, "--store", other, top),
                 ("info", "--overlay", odir, "--store", other, top)):
        r = vhdheal(*args, ok=False)
        e = r.stderr.decode()
        check(r.returncode == 2 and real in e and oreal in e and "belongs to the store" in e,
              f"vhdheal {args[0]} --overlay DIR of another store: exit {r.returncode}, {e!r}")
    check(dir_listing(odir) == before, "vhdheal --overlay for another store: DIR changed")
    # the first store's repairs: all kept, all presented
    check(patch_files(odir) == names and len(names) == len(chains),
          f"another store, same DIR: patch files now {patch_files(odir)}, were {names}")
    return other


def patch_name(rel):
    """The patch file of a store path (doc/design.md "The patch file")."""
    return hashlib.sha256(rel.encode()).hexdigest()[:32] + ".vhpatch"


def status(mnt, crel):
    st, _ = getx(os.path.join(mnt, crel), "user.vhd.status")
    return st or ""


def read_mount(mnt, crel):
    return vhdheal("read", "--store", mnt, "--winroot", WINROOT, os.path.join(mnt, crel)).stdout


def healed(mode, mnt, chains, ref, tags):
    for tag in tags:
        crel = chains[tag][0]
        st = status(mnt, crel)
        check(st.startswith("healed (overlay) "), f"{mode} {tag}: status {st!r}")
        check(read_mount(mnt, crel) == ref, f"{mode} {tag}: content through the mount")


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def patch_file(rel, st, note="hostile"):
    """A patch file (doc/design.md "The patch file") with no ranges, naming rel as given."""
    pb, nb = rel.encode(), note.encode()
    head = b"VHPATCH\n" + struct.pack("<II", 1, 128)
    total = 128 + len(pb) + len(nb) + 4
    head += struct.pack("<QQQqQQq", total, st.st_ino, st.st_size, st.st_mtime_ns, st.st_size,
                        st.st_size, 0)
    head += bytes(32) + struct.pack("<III", 0, len(pb), len(nb)) + bytes(12)
    body = head + pb + nb
    return body + struct.pack("<I", crc32c(body))


def hostile(root, store, odir, chains):
    """Files in DIR that must be ignored (and logged); returns their names."""
    names = []
    some = patch_files(odir)[0]
    with open(os.path.join(odir, some), "rb") as f:
        good = bytearray(f.read())
    good[200] ^= 0x40  # the checksum no longer matches
    with open(os.path.join(odir, "00badcrc.vhpatch"), "wb") as f:
        f.write(good)
    names.append("00badcrc.vhpatch")
    st = os.stat(os.path.join(store, chains["vhd-moved"][0]))
    for name, rel in (("00dotdot.vhpatch", "../outside/child.avhd"),
                      ("00absolute.vhpatch", os.path.join(store, chains["vhd-moved"][0]))):
        with open(os.path.join(odir, name), "wb") as f:
            f.write(patch_file(rel, st))
        names.append(name)
    elsewhere = os.path.join(root, "elsewhere.vhpatch")
    with open(elsewhere, "wb") as f:
        f.write(patch_file(chains["vhd-moved"][0], st))
    os.symlink(elsewhere, os.path.join(odir, "00symlink.vhpatch"))
    names.append("00symlink.vhpatch")
    return names


def info_locators(*args):
    d = json.loads(vhdheal("info", "--json", *args).stdout)["disks"][0]
    return {l["kind"]: l["path"] for l in d["parent"]["locators"]}


def cli(store, odir, chains, ref):
    """vhdheal check/read/info with and without --overlay; none writes STORE or DIR."""
    store_before, dir_before = sums(store), sums(odir)
    plain = vhdheal("check", "--winroot", WINROOT, store, ok=False)
    check(plain.returncode == 1, f"plain check: exit {plain.returncode}, want 1 (broken)\n"
          f"{plain.stdout.decode()}")
    ov = vhdheal("check", "--overlay", odir, "--winroot", WINROOT, store, ok=False)
    check(ov.returncode == 0, f"check --overlay: exit {ov.returncode}, want 0\n"
          f"{ov.stdout.decode()}{ov.stderr.decode()}")
    for tag, (crel, _) in chains.items():
        got = vhdheal("read", "--overlay", odir, "--store", store, "--winroot", WINROOT,
                      os.path.join(store, crel), ok=False)
        check(got.returncode == 0 and got.stdout == ref,
              f"read --overlay {tag}: exit {got.returncode} {got.stderr.decode()}")
        bare = vhdheal("read", "--store", store, "--winroot", WINROOT, os.path.join(store, crel),
                       ok=False)
        check(bare.returncode != 0, f"read {tag} without --overlay: exit {bare.returncode}")
    for tag, (crel, prel) in chains.items():
        locs = info_locators("--overlay", odir, "--store", store, os.path.join(store, crel))
        if tag == "win":
            want = WIN_PREFIX + prel.replace("/", "\\")
            got = locs.get("absolute_win32_path")
        else:
            want = os.path.relpath(prel, os.path.dirname(crel)).replace("/", "\\")
            got = locs.get("relative_path") or locs.get("W2ru")
            got = got[2:] if got and got.startswith(".\\") else got
        check(got == want, f"info --overlay {tag}: locator {got!r}, want {want!r}")
        check(info_locators(os.path.join(store, crel)) != locs,
              f"info {tag} without --overlay shows the repaired locators")
    check(sums(store) == store_before, "vhdheal --overlay changed a store file")
    check(not os.path.exists(os.path.join(store, ".vhdheal")), "vhdheal created STORE/.vhdheal")
    check(sums(odir) == dir_before, "vhdheal --overlay changed the overlay folder")


def refusals(root, store, mnt):
    """overlaydir inside STORE, STORE itself, a file, the mount point, a missing folder: refused
    at mount."""
    inside = os.path.join(store, "vhd-moved")
    afile = os.path.join(root, "a-file")
    open(afile, "w").close()
    for what, d, msg in (("inside", inside, "lies inside STORE"), ("store", store, "is STORE"),
                         ("file", afile, "not a folder"),
                         ("under the mount point", mnt, "lies inside MOUNTPOINT"),
                         ("missing", os.path.join(root, "nope"), "No such file")):
        p = subprocess.run([VHDHEALFS, "-f", "-o", "overlaydir=" + d, store, mnt],
                           capture_output=True, timeout=30)
        err = p.stderr.decode()
        check(p.returncode == 2 and msg in err,
              f"overlaydir {what}: exit {p.returncode}, stderr {err!r}")
        check(not os.path.ismount(mnt), f"overlaydir {what}: mounted")
        check(not os.path.lexists(os.path.join(d, MARKER)), f"overlaydir {what}: marked")


def main():
    require_fuse()
    with tempfile.TemporaryDirectory(prefix="vh-overlay-persist-") as root:
        store, odir, mnt = (os.path.join(root, n) for n in ("store", "overlay", "mnt"))
        for d in (store, odir, mnt):
            os.makedirs(d)
        chains = build(store)
        ref = expected(SIZE, LAYERS)
        before = sums(store)
        opts = "overlaydir=" + odir + ",winroot=" + WINROOT
        auto = [t for t in chains if t != "set"]
        logs = [os.path.join(root, f"daemon{i}.log") for i in range(4)]
        try:
            refusals(root, store, mnt)
            # 1: heal through the overlay, saved in DIR
            mt = Mount(store, mnt, logs[0], opts)
            try:
                for tag in auto:
                    st = status(mnt, chains[tag][0])
                    check(st.startswith("broken "), f"first mount {tag}: before: {st!r}")
                    open(os.path.join(mnt, chains[tag][0]), "rb").read(1)  # heal on open
                crel, prel = chains["set"]
                r = setx(os.path.join(mnt, crel), "user.vhd.parent", os.path.join(mnt, prel))
                check(r == 0, f"setfattr user.vhd.parent: {os.strerror(r)}")
                healed("first mount", mnt, chains, ref, chains)
                check(len(patch_files(odir)) == len(chains),
                      f"first mount: patch files {patch_files(odir)}")
                check_marker(odir, store, "first mount")
            finally:
                mt.stop()
            check(sums(store) == before, "first mount: a store file changed")
            cli(store, odir, chains, ref)

            # one DIR, one STORE: another store's mount is refused, this one's repairs stay
            other = other_store(root, store, odir, mnt, chains)
            other_before = sums(other)
            mt = Mount(store, mnt, logs[3], opts)
            try:
                healed("after another store's mount", mnt, chains, ref, chains)
                text = mt.text()
                check(f"{len(chains)} repairs loaded" in text,
                      f"after another store's mount: load line:\n{text}")
            finally:
                mt.stop()
            check(sums(other) == other_before, "the other store changed")
            # a DIR of the previous version (no marker) gets one at the next mount
            if marker_of(odir):
                os.unlink(os.path.join(odir, MARKER))
            legacy = dir_listing(odir)
            r = vhdheal("check", "--overlay", odir, "--winroot", WINROOT, store, ok=False)
            check(r.returncode == 0 and dir_listing(odir) == legacy,
                  f"vhdheal check --overlay of a DIR without a marker: exit {r.returncode}, "
                  f"DIR now {sorted(os.listdir(odir))} {r.stderr.decode()!r}")

            # 2: a remount presents them at once; a child changed while mounted heals again
            mt = Mount(store, mnt, logs[1], opts)
            try:
                healed("remount", mnt, chains, ref, chains)
                text = mt.text()
                check(f"{len(chains)} repairs loaded" in text, f"remount: load line:\n{text}")
                check_marker(odir, store, "remount of a DIR without a marker")
                check("marked as the store" in text, f"remount: no marking logged:\n{text}")
                check(not any(("healed " + c) in text for c, _ in chains.values()),
                      f"remount: a heal was logged:\n{text}")
                crel = chains["vhdx-moved"][0]
                n0 = len(patch_files(odir))
                s0 = os.stat(os.path.join(store, crel))
                os.utime(os.path.join(store, crel), ns=(s0.st_atime_ns, s0.st_mtime_ns + 10**9))
                st = status(mnt, crel)
                check(st.startswith("broken "), f"changed while mounted: {st!r}")
                text = mt.text()
                check(any(crel in l and "changed on the store" in l for l in text.splitlines()),
                      f"changed while mounted: no log line naming {crel}:\n{text}")
                check(len(patch_files(odir)) == n0 - 1, "changed while mounted: its patch file "
                      f"stays: {patch_files(odir)}")
                open(os.path.join(mnt, crel), "rb").read(1)
                check(("healed " + crel) in mt.text(), "changed while mounted: not healed again")
                healed("healed again", mnt, chains, ref, ["vhdx-moved"])
                check(len(patch_files(odir)) == n0, f"healed again: {patch_files(odir)}")
                # a later user.vhd.parent replaces the repair, and its file
                crel, prel = chains["set"]
                copy = os.path.join("set", "copy", os.path.basename(prel))
                os.makedirs(os.path.join(store, "set", "copy"))
                shutil.copy2(os.path.join(store, prel), os.path.join(store, copy))
                before[copy] = sha(os.path.join(store, copy))
                pfile = os.path.join(odir, patch_name(crel))
                old = sha(pfile)
                r = setx(os.path.join(mnt, crel), "user.vhd.parent", os.path.join(mnt, copy))
                check(r == 0, f"setfattr over a repair: {os.strerror(r)}")
                check(sha(pfile) != old and len(patch_files(odir)) == n0,
                      f"setfattr over a repair: its file is not replaced: {patch_files(odir)}")
                st = status(mnt, crel)
                check(f"reconnected to {copy} on request" in st, f"setfattr over a repair: {st!r}")
            finally:
                mt.stop()
            # the test's own change: the mtime only
            before[chains["vhdx-moved"][0]] = sha(os.path.join(store, chains["vhdx-moved"][0]))
            check(sums(store) == before, "remount: a store file changed")

            # 3: changed while unmounted, and hostile files in DIR
            crel = chains["vhd-renamed"][0]
            os.utime(os.path.join(store, crel))
            bad = hostile(root, store, odir, chains)
            mt = Mount(store, mnt, logs[2], opts)
            try:
                text = mt.text()
                lines = text.splitlines()
                check(any(crel in l and "changed on the store since its overlay was saved" in l
                          for l in lines), f"changed while unmounted: no log line:\n{text}")
                for name in bad:
                    check(any(name in l and "ignored" in l for l in lines),
                          f"hostile {name}: not logged as ignored:\n{text}")
                check(f"{len(chains) - 1} repairs loaded" in text, f"third mount:\n{text}")
                st = status(mnt, crel)
                check(st.startswith("broken "), f"changed while unmounted: {st!r}")
                st = status(mnt, chains["set"][0])
                check("reconnected to set/copy/" in st, f"third mount: the replaced repair: {st!r}")
                open(os.path.join(mnt, crel), "rb").read(1)
                healed("third mount", mnt, chains, ref, chains)
                check(not os.path.exists(os.path.join(root, "outside")), "a path escaped")
            finally:
                mt.stop()
            check(sums(store) == before, "third mount: a store file changed")
        except Exception as ex:  # a session that cannot run is a failure
            traceback.print_exc()
            check(False, f"{ex!r}")
            if os.path.ismount(mnt):
                subprocess.run(["fusermount3", "-u", "-z", mnt])
    vhdtest.finish("overlay_persist")


if __name__ == "__main__":
    main()
