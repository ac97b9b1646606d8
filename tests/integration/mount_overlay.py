#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""mount_overlay - overlay healing through a real mount (doc/design.md "Overlay healing"): a store
with broken VHD and VHDX chains (a parent moved to another folder, a parent renamed), mounted
three ways: -o healmode=overlay, -o ro, and a read-only bind mount of the store (no option: a
read-only STORE implies overlay). Opening a child through the mount heals it in the overlay:
through the mount, vhdheal info and read (--store the mount) see the repaired link and the true
content (the test's own reference of what it wrote), qemu-img accepts the VHD child's patched
footer and header and reads its sectors (its vpc driver follows no parent), pyvhdi opens the child with its parent and reads the true content, @raw equals the
true content, stat shows the patched size, user.vhd.status says "healed (overlay)", writing a
disk gives EROFS (a plain file stays writable with healmode=overlay). user.vhd.parent repairs in
the overlay too (the kernel refuses every attribute write on an -o ro mount: EROFS). A child
changed on STORE loses its overlay (logged) and heals again on the next open. Every store file's
sha256 is the same before and after each whole session."""
import errno
import json
import os
import subprocess
import sys
import tempfile
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vhcraft  # noqa: E402
import vhdtest  # noqa: E402
from mounttest import (Mount, check, child, create, expected, ext, fill, getx,  # noqa: E402
                       require_fuse, setx, sha, vhdheal)

SIZE = 8 << 20
LAYERS = [(1, (0, 3 << 20)), (2, (1 << 20,))]


def build(store):
    """Three broken chains; returns {name: (child rel, parent rel now, reference content)}."""
    chains = {}
    ref = expected(SIZE, LAYERS)
    for fmt, tag, how in (("vhd", "vhd", "moved"), ("vhdx", "vhdx", "renamed"),
                          ("vhd", "vhdset", "moved")):
        base = os.path.join(store, tag, "vm", "base." + ext(fmt))
        top = os.path.join(store, tag, "vm", "child." + ext(fmt, True))
        create(base, fmt)
        fill(base, *LAYERS[0])
        child(top, base)
        fill(top, *LAYERS[1])
        if how == "moved":
            now = os.path.join(store, tag, "moved", "base." + ext(fmt))
            os.makedirs(os.path.dirname(now))
        else:
            now = os.path.join(store, tag, "vm", "renamed." + ext(fmt))
        os.rename(base, now)
        chains[tag] = (os.path.relpath(top, store), os.path.relpath(now, store), ref)
    with open(os.path.join(store, "notes.txt"), "w") as f:
        f.write("plain\n")
    return chains


def sums(store):
    out = {}
    for d, _, files in os.walk(store):
        for n in files:
            p = os.path.join(d, n)
            out[os.path.relpath(p, store)] = sha(p)
    return out


def rel_locator(disk):
    locs = {l["kind"]: l["path"] for l in disk["parent"]["locators"]}
    return locs.get("relative_path") or locs.get("W2ru")


def through_mount(mode, mnt, store, tag, crel, prel, ref):
    """A healed child seen through the mount: link, content, readers, size, status, EROFS."""
    cm, pm = os.path.join(mnt, crel), os.path.join(mnt, prel)
    want_rel = os.path.relpath(pm, os.path.dirname(cm)).replace("/", "\\")
    info = json.loads(vhdheal("info", "--json", cm).stdout)["disks"][0]
    check(rel_locator(info) in (want_rel, ".\\" + want_rel),
          f"{mode} {tag}: vhdheal info through the mount: relative locator {rel_locator(info)}, "
          f"want {want_rel}")
    check(vhdheal("read", "--store", mnt, cm).stdout == ref,
          f"{mode} {tag}: vhdheal read through the mount is not the true content")
    data = open(cm, "rb").read()
    check(os.stat(cm).st_size == len(data), f"{mode} {tag}: stat size {os.stat(cm).st_size} "
          f"but {len(data)} bytes read")
    parent_id = vhcraft.disk_id(pm)
    import pyvhdi
    f, p = pyvhdi.file(), pyvhdi.file()
    f.open(cm)
    p.open(pm)
    check(str(f.get_parent_identifier()).lower() == parent_id.lower(),
          f"{mode} {tag}: pyvhdi parent id {f.get_parent_identifier()} != {parent_id}")
    pname = f.get_parent_filename()  # libvhdi: the VHD's Parent Unicode Name; none for VHDX
    check(pname is None if crel.endswith(".avhdx") else
          pname == os.path.basename(prel), f"{mode} {tag}: pyvhdi parent file name {pname!r}")
    f.set_parent(p)
    check(f.read_buffer_at_offset(SIZE, 0) == ref, f"{mode} {tag}: pyvhdi chain content")
    f.close()
    p.close()
    if crel.endswith(".avhd"):
        # qemu's vpc driver follows no parent: it must accept the patched footer and header
        # (checksums) and read the child's own sectors as the store file holds them
        q = json.loads(vhdtest.run("qemu-img", "info", "-f", "vpc", "--output=json", cm).stdout)
        check(q.get("virtual-size") == SIZE, f"{mode} {tag}: qemu-img info {q}")
        out = os.path.join(os.path.dirname(mnt), "qemu.raw")
        check(vhdtest.qemu_raw(cm, out) == vhdtest.qemu_raw(os.path.join(store, crel), out),
              f"{mode} {tag}: qemu-img reads other sectors through the mount")
        os.unlink(out)
    raw = os.path.join(mnt, "@raw", crel + ".raw")
    check(open(raw, "rb").read() == ref, f"{mode} {tag}: @raw is not the true content")
    st, _ = getx(cm, "user.vhd.status")
    check(st is not None and st.startswith("healed (overlay) "), f"{mode} {tag}: status {st}")
    try:
        open(cm, "r+b").close()
        check(False, f"{mode} {tag}: a disk opened for writing through an overlay mount")
    except OSError as e:
        check(e.errno == errno.EROFS, f"{mode} {tag}: write open: {e!r}, want EROFS")


def session(root, mode):
    store = os.path.join(root, mode, "store")
    mnt = os.path.join(root, "mnt")
    os.makedirs(store)
    chains = build(store)
    before = sums(store)
    seen, opts, bind = store, "", None
    if mode == "healmode=overlay":
        opts = "healmode=overlay"
    elif mode == "ro":
        opts = "ro"
    else:
        bind = os.path.join(root, mode, "ro-store")
        os.makedirs(bind)
        vhdtest.run("mount", "--bind", store, bind)
        vhdtest.run("mount", "-o", "remount,bind,ro", bind)
        seen = bind
    mt = Mount(seen, mnt, os.path.join(root, mode + ".log"), opts)
    try:
        for tag in ("vhd", "vhdx"):
            crel, prel, ref = chains[tag]
            st, _ = getx(os.path.join(mnt, crel), "user.vhd.status")
            check(st is not None and st.startswith("broken "), f"{mode} {tag}: before: {st}")
            open(os.path.join(mnt, crel), "rb").read(1)  # heal on open
            through_mount(mode, mnt, store, tag, crel, prel, ref)
        if mode == "healmode=overlay":
            # a child changed on STORE (here only its mtime) loses its patch set, logged; the
            # next open heals it again
            crel, prel, ref = chains["vhdx"]
            st0 = os.stat(os.path.join(store, crel))
            os.utime(os.path.join(store, crel), ns=(st0.st_atime_ns, st0.st_mtime_ns + 10**9))
            st, _ = getx(os.path.join(mnt, crel), "user.vhd.status")
            check(st is not None and st.startswith("broken "), f"{mode}: changed child: {st}")
            check("changed on the store since its overlay was built" in mt.text(),
                  f"{mode}: the dropped overlay is not logged")
            open(os.path.join(mnt, crel), "rb").read(1)
            through_mount(mode, mnt, store, "vhdx again", crel, prel, ref)
        crel, prel, ref = chains["vhdset"]
        r = setx(os.path.join(mnt, crel), "user.vhd.parent", os.path.join(mnt, prel))
        if mode == "ro":
            check(r == errno.EROFS, f"{mode}: setfattr on an -o ro mount: {r}, want EROFS")
        else:
            check(r == 0, f"{mode}: setfattr user.vhd.parent: {os.strerror(r)}")
            through_mount(mode, mnt, store, "setfattr", crel, prel, ref)
        plain = os.path.join(mnt, "notes.txt")
        try:
            with open(plain, "a") as f:
                f.write("more\n")
            wrote = True
        except OSError as e:
            wrote = False
            check(e.errno == errno.EROFS, f"{mode}: writing a plain file: {e!r}")
        check(wrote == (mode == "healmode=overlay"), f"{mode}: plain file written: {wrote}")
        if wrote:  # the one change the test made itself
            before["notes.txt"] = sha(os.path.join(store, "notes.txt"))
        check("repairs are presented" in mt.text(), f"{mode}: the log does not say overlay")
    finally:
        mt.stop()
        if bind:
            subprocess.run(["umount", bind], check=False)
    after = sums(store)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    check(not changed, f"{mode}: store files changed: {changed}")


def main():
    require_fuse()
    with tempfile.TemporaryDirectory(prefix="vh-mount-overlay-") as root:
        os.makedirs(os.path.join(root, "mnt"))
        for mode in ("healmode=overlay", "ro", "ro-bind"):
            try:
                session(root, mode)
            except Exception as ex:  # a session that cannot run is a failure
                traceback.print_exc()
                check(False, f"{mode}: {ex!r}")
                if os.path.ismount(os.path.join(root, "mnt")):
                    subprocess.run(["fusermount3", "-u", "-z", os.path.join(root, "mnt")])
    vhdtest.finish("mount_overlay")


if __name__ == "__main__":
    main()
