#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""mount_xattr - the attribute interface through a real mount (heal=manual, so that only writes
repair): every attribute on fixed, dynamic and differencing VHD and VHDX disks, healthy and
broken, with exact values (identities as vhdiinfo prints them); getfattr, gio info and listxattr
show them; ENODATA and ERANGE; user.vhd.* never reaches the store file; writes of
user.vhd.parent by a path under the mount, under STORE and relative to the child's folder,
checked on STORE with vhdiinfo and by reading the chain with libvhdi; and every errno of
doc/design.md's errno table ("Extended attributes") with the message it leaves in
user.vhd.status."""
import fcntl
import os
import shutil
import struct
import subprocess
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vhcraft  # noqa: E402
import vhdtest  # noqa: E402
from mounttest import (Mount, check, child, content, create, errno, ext, fill, getx,  # noqa
                       getx_raw, locators, parent_id_on_disk, run_formats, setx, sha)

READABLE = ["user.vhd.format", "user.vhd.type", "user.vhd.size", "user.vhd.id",
            "user.vhd.chain", "user.vhd.status", "user.xdg.comment"]
CHILD_ONLY = ["user.vhd.parent", "user.vhd.parent.id"]


IDS = {}


def ident(path):
    """The identity vhdiinfo prints (remembered: some files move later)."""
    if path not in IDS:
        IDS[path] = vhdtest.vhdiinfo(path)["Identifier"]
    return IDS[path]


def build(store, fmt):
    e, a = ext(fmt), ext(fmt, True)
    p = {k: os.path.join(store, v) for k, v in {
        "fixed": f"disks/fixed.{e}", "base": f"disks/base.{e}", "child": f"disks/vm/child.{a}",
        "other": f"disks/other.{e}", "small": f"disks/small.{e}", "broken": f"disks/vm/broken.{a}",
        "lost": f"disks/lost.{e}", "gc": f"disks/vm/gc.{a}"}.items()}
    create(p["fixed"], fmt, "4M", "fixed")
    create(p["base"], fmt)
    fill(p["base"], 1, store=store)
    child(p["child"], p["base"])
    fill(p["child"], 2, (1 << 20,), store=store)
    child(p["gc"], p["child"])
    create(p["other"], fmt)
    create(p["small"], fmt, "4M")
    create(p["lost"], fmt)
    fill(p["lost"], 5, store=store)
    child(p["broken"], p["lost"])
    fill(p["broken"], 6, (2 << 20,), store=store)
    for path in p.values():
        ident(path)
    return p


def attributes(mnt, store, fmt, p, m):
    """Exact values of every attribute on each kind of disk."""
    e, a = ext(fmt), ext(fmt, True)
    FMT = fmt.upper()
    want = {
        "fixed": {"user.vhd.format": fmt, "user.vhd.type": "fixed", "user.vhd.size": "4194304",
                  "user.vhd.id": ident(p["fixed"]), "user.vhd.chain": m(p["fixed"]),
                  "user.vhd.status": "ok", "user.xdg.comment": f"fixed {FMT}, 4.0 MiB"},
        "base": {"user.vhd.format": fmt, "user.vhd.type": "dynamic", "user.vhd.size": "8388608",
                 "user.vhd.id": ident(p["base"]), "user.vhd.chain": m(p["base"]),
                 "user.vhd.status": "ok", "user.xdg.comment": f"dynamic {FMT}, 8.0 MiB"},
        "child": {"user.vhd.format": fmt, "user.vhd.type": "differencing",
                  "user.vhd.size": "8388608", "user.vhd.id": ident(p["child"]),
                  "user.vhd.parent": m(p["base"]), "user.vhd.parent.id": ident(p["base"]),
                  "user.vhd.chain": m(p["child"]) + "\n" + m(p["base"]),
                  "user.vhd.status": "ok",
                  "user.xdg.comment": f"differencing {FMT}, parent ../base.{e}"},
        "gc": {"user.vhd.chain": "\n".join(m(p[k]) for k in ("gc", "child", "base")),
               "user.vhd.parent": m(p["child"]), "user.vhd.status": "ok",
               "user.xdg.comment": f"differencing {FMT}, parent child.{a}"},
        "broken": {"user.vhd.type": "differencing", "user.vhd.parent": m(p["lost"]),
                   "user.vhd.parent.id": ident(p["lost"]), "user.vhd.chain": m(p["broken"]),
                   "user.xdg.comment":
                       f"differencing {FMT}, parent ../lost.{e} (broken: parent-missing)"},
    }
    for kind, attrs in want.items():
        for name, value in attrs.items():
            got, err = getx(m(p[kind]), name)
            check(got == value, f"{fmt} {kind} {name}: {got!r} (errno {err}), want {value!r}")
    st, _ = getx(m(p["broken"]), "user.vhd.status")
    check(st.startswith("broken parent-missing: no locator leads to the parent (id "
                        f"{ident(p['lost'])}); the store holds it at disks/moved/lost.{e}; "
                        "not healed: heal=manual"), f"{fmt} broken status {st!r}")
    # the identity as the engine's own report prints it (VHD: stored byte order)
    check(getx(m(p["child"]), "user.vhd.id")[0] == vhcraft.disk_id(p["child"]),
          f"{fmt}: id differs from the on-disk identity")
    # listxattr lists the readable ones, only those that apply
    for kind, names in (("fixed", READABLE), ("child", READABLE + CHILD_ONLY)):
        got = sorted(os.listxattr(m(p[kind])))
        check(got == sorted(names), f"{fmt} {kind} listxattr: {got}")
    check(os.listxattr(m(os.path.join(store, "notes.txt"))) == [], f"{fmt} plain listxattr")
    # getfattr and gio show them
    out = subprocess.run(["getfattr", "-d", "-m", "-", m(p["child"])], capture_output=True,
                         text=True).stdout
    check(f'user.vhd.parent="{m(p["base"])}"' in out and 'user.vhd.type="differencing"' in out,
          f"{fmt} getfattr -d:\n{out}")
    out = subprocess.run(["gio", "info", "-a", "xattr::*", m(p["child"])], capture_output=True,
                         text=True).stdout
    for name in READABLE + CHILD_ONLY:
        check(f"xattr::{name[5:]}: " in out, f"{fmt} gio info shows no {name}:\n{out}")
    check(f"xattr::xdg.comment: differencing {FMT}, parent ../base.{e}" in out,
          f"{fmt} gio comment:\n{out}")


def nodata_and_erange(mnt, store, fmt, p, m):
    plain = m(os.path.join(store, "notes.txt"))
    for name in READABLE + CHILD_ONLY + ["user.vhd.parent.force", "user.vhd.nosuch"]:
        if name != "user.xdg.comment":
            check(getx(plain, name)[1] == errno.ENODATA, f"{fmt} plain {name}: not ENODATA")
        check(getx(m(os.path.join(store, "disks")), name)[1] == errno.ENODATA,
              f"{fmt} folder {name}: not ENODATA")
    for name in CHILD_ONLY:
        check(getx(m(p["base"]), name)[1] == errno.ENODATA, f"{fmt} base {name}: not ENODATA")
    check(getx(m(p["child"]), "user.vhd.parent.force")[1] == errno.ENODATA,
          f"{fmt} parent.force is write-only")
    n, err = getx_raw(m(p["child"]), "user.vhd.format", 0)
    check(n == len(fmt), f"{fmt} size query: {n}")
    n, err = getx_raw(m(p["child"]), "user.vhd.format", len(fmt) - 1)
    check(n < 0 and err == errno.ERANGE, f"{fmt} short buffer: {n} errno {err}")
    n, err = getx_raw(m(p["child"]), "user.vhd.format", len(fmt))
    check(n == len(fmt), f"{fmt} exact buffer: {n} errno {err}")
    # read-only names: EROFS; unknown ones: ENOTSUP; nothing reaches the store file
    check(setx(m(p["child"]), "user.vhd.type", "fixed") == errno.EROFS, f"{fmt} EROFS")
    check(setx(m(p["child"]), "user.vhd.nosuch", "1") == errno.ENOTSUP, f"{fmt} ENOTSUP")
    try:
        os.removexattr(m(p["child"]), "user.vhd.format")
        check(False, f"{fmt}: removexattr of user.vhd.format succeeded")
    except OSError as ex:
        check(ex.errno == errno.EROFS, f"{fmt}: removexattr: {ex}")
    check(not [n for n in os.listxattr(p["child"]) if n.startswith("user.vhd.")],
          f"{fmt}: user.vhd.* stored on the backing file")
    # other names pass through; the file's own comment wins
    check(setx(m(p["base"]), "user.xdg.comment", "my base disk") == 0, f"{fmt} own comment")
    check(os.getxattr(p["base"], "user.xdg.comment") == b"my base disk", f"{fmt} comment stored")
    check(getx(m(p["base"]), "user.xdg.comment")[0] == "my base disk", f"{fmt} own comment wins")
    check(os.listxattr(m(p["base"])).count("user.xdg.comment") == 1, f"{fmt} comment listed once")
    os.removexattr(m(p["base"]), "user.xdg.comment")


def writes(mnt, store, fmt, p, m):
    """Successful writes, checked on STORE and through the chain with libvhdi."""
    e = ext(fmt)
    ref = None
    moved = os.path.join(store, "disks", "moved", "lost." + e)
    # by a path relative to the child's folder, with a trailing newline
    check(setx(m(p["broken"]), "user.vhd.parent", f"../moved/lost.{e}\n") == 0,
          f"{fmt}: relative write")
    check(parent_id_on_disk(p["broken"]) == ident(moved), f"{fmt}: vhdiinfo parent id")
    locs = locators(p["broken"])
    rel = locs.get("relative_path") or locs.get("W2ru")
    check(rel == f"..\\moved\\lost.{e}", f"{fmt}: relative locator {rel}")
    st, _ = getx(m(p["broken"]), "user.vhd.status")
    check(st.startswith("healed ") and st.endswith(f": reconnected to disks/moved/lost.{e} "
                                                   "on request"), f"{fmt}: status {st}")
    ref = content(p["broken"])
    libvhdi = vhdtest.libvhdi_read([p["broken"], moved])
    check(libvhdi == ref, f"{fmt}: libvhdi reads other content than the engine")
    chk = bytes((6 * 31 + i) & 0xFF for i in range(4096))
    check(ref[2 << 20:(2 << 20) + 4096] == chk, f"{fmt}: the child's own data")
    chk = bytes((5 * 31 + i) & 0xFF for i in range(4096))
    check(ref[:4096] == chk, f"{fmt}: the parent's data through the healed link")
    # by a path under the mount point, then under STORE
    check(setx(m(p["child"]), "user.vhd.parent", m(p["base"])) == 0, f"{fmt}: mount path")
    check(setx(m(p["child"]), "user.vhd.parent", p["base"]) == 0, f"{fmt}: STORE path")
    check(parent_id_on_disk(p["child"]) == ident(p["base"]), f"{fmt}: STORE write")
    # force: another disk of the same size
    check(setx(m(p["gc"]), "user.vhd.parent.force", m(p["other"])) == 0, f"{fmt}: force")
    check(parent_id_on_disk(p["gc"]) == ident(p["other"]), f"{fmt}: forced parent id")


def errors(mnt, store, fmt, p, m):
    """Every errno of the table, and the message it leaves in user.vhd.status."""
    e, a = ext(fmt), ext(fmt, True)
    c = m(p["child"])
    corrupt = os.path.join(store, "disks", "vm", "corrupt." + a)
    shutil.copy(p["child"], corrupt)
    if fmt == "vhdx":
        vhcraft.vhdx_break_headers(corrupt)
    else:
        vhcraft.vhd_break_header(corrupt)
    cases = [
        (c, "user.vhd.parent", "../nosuch." + e, errno.ENOENT, "the parent does not exist"),
        (c, "user.vhd.parent", "", errno.EINVAL, "the parent path is empty"),
        (c, "user.vhd.parent", "x" * 5000, errno.EINVAL, "longer than"),
        (c, "user.vhd.parent", "../../notes.txt", errno.EINVAL, "not a VHD or VHDX file"),
        (c, "user.vhd.parent", "../other." + e, errno.EINVAL, "id-mismatch"),
        (c, "user.vhd.parent.force", "../small." + e, errno.EINVAL, "size-mismatch"),
        (c, "user.vhd.parent", "child." + a, errno.EINVAL, "cycle"),
        (c, "user.vhd.parent", "/etc/hostname", errno.EXDEV, "outside the store"),
        (c, "user.vhd.parent", "../../../outside." + e, errno.EXDEV, "outside the store"),
        (m(p["base"]), "user.vhd.parent", "x", errno.ENOTSUP, "has no parent to reconnect"),
        (m(os.path.join(store, "notes.txt")), "user.vhd.parent", "x", errno.ENOTSUP, None),
        (m(corrupt), "user.vhd.parent", "../base." + e, errno.EIO, "cannot be read"),
    ]
    other_fmt = os.path.join(store, "disks", "wrongfmt." + ("vhdx" if fmt == "vhd" else "vhd"))
    create(other_fmt, "vhdx" if fmt == "vhd" else "vhd")
    cases.append((c, "user.vhd.parent.force", m(other_fmt), errno.EINVAL, "format-mismatch"))
    for path, name, value, code, msg in cases:
        got = setx(path, name, value)
        check(got == code, f"{fmt} {name}={value[:40]!r} on {os.path.basename(path)}: "
                           f"errno {got}, want {code}")
        if msg:
            st, _ = getx(path, "user.vhd.status")
            check(st is not None and msg in st, f"{fmt} status after errno {code}: {st!r}")
    # the paths in the message are the mount's
    st, _ = getx(c, "user.vhd.status")
    check(store not in st, f"{fmt}: status shows a STORE path: {st}")
    # EBUSY: open for writing through the mount
    with open(c, "r+b"):
        check(setx(c, "user.vhd.parent", "../base." + e) == errno.EBUSY, f"{fmt}: EBUSY (writer)")
        st, _ = getx(c, "user.vhd.status")
        check("open for writing through the mount" in st, f"{fmt}: EBUSY status {st}")
    # EBUSY: locked by another host's repair (an OFD lock on the data range of the store file,
    # chain/inuse.h: the mount marks files it has open on the byte past it, and its release of
    # the file just closed may come after the close returned)
    fd = os.open(p["child"], os.O_RDWR)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 1 << 62, 0))
        check(setx(c, "user.vhd.parent", "../base." + e) == errno.EBUSY, f"{fmt}: EBUSY (lock)")
        st, _ = getx(c, "user.vhd.status")
        check("in use" in st, f"{fmt}: lock status {st}")
    finally:
        os.close(fd)
    check(setx(c, "user.vhd.parent", "../base." + e) == 0, f"{fmt}: write after the lock")


def ro_and_overlay(root, store, fmt, p):
    """A read-only mount: EROFS (the kernel refuses). healmode=overlay: the write is taken (a
    child already linked to that parent: nothing to present, the status stays ok); the store file
    is unchanged either way (mount_overlay.py covers overlay healing)."""
    mnt = os.path.join(root, "mnt")
    e = ext(fmt)
    for opts in ("ro", "healmode=overlay"):
        before = sha(p["child"])
        mt = Mount(store, mnt, os.path.join(root, f"daemon-{fmt}-ro.log"), opts)
        try:
            c = os.path.join(mnt, os.path.relpath(p["child"], store))
            want = errno.EROFS if opts == "ro" else 0
            check(setx(c, "user.vhd.parent", "../base." + e) == want, f"{fmt} {opts}")
            if opts != "ro":
                st, _ = getx(c, "user.vhd.status")
                check(st == "ok", f"{fmt} {opts}: status {st}")
            st, _ = getx(os.path.join(mnt, os.path.relpath(p["lost"], store)), "user.vhd.id")
            check(st is None, f"{fmt} {opts}: a moved file still answers")
        finally:
            mt.stop()
        check(sha(p["child"]) == before, f"{fmt} {opts}: the child changed")


def run_format(root, fmt):
    store = os.path.join(root, "store-" + fmt)
    mnt = os.path.join(root, "mnt")
    os.makedirs(store)
    with open(os.path.join(store, "notes.txt"), "w") as f:
        f.write("just text\n")
    p = build(store, fmt)
    os.makedirs(os.path.join(store, "disks", "moved"))
    os.rename(p["lost"], os.path.join(store, "disks", "moved", "lost." + ext(fmt)))
    mt = Mount(store, mnt, os.path.join(root, f"daemon-{fmt}.log"), "heal=manual")

    def m(path):
        return os.path.join(mnt, os.path.relpath(path, store))

    try:
        for fn in (attributes, nodata_and_erange, writes, errors):
            try:
                fn(mnt, store, fmt, p, m)
            except Exception as ex:
                traceback.print_exc()
                check(False, f"{fmt} {fn.__name__}: {ex!r}")
        check(mt.alive(), f"{fmt}: the daemon died")
    finally:
        mt.stop()
    text = open(os.path.join(root, f"daemon-{fmt}.log")).read()
    check("reconnected disks/vm/broken." in text and "refused: " in text,
          f"{fmt}: the log lacks repair lines:\n{text[-2000:]}")
    ro_and_overlay(root, store, fmt, p)


def main():
    run_formats("mount_xattr", run_format)


if __name__ == "__main__":
    main()
