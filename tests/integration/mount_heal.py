#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""mount_heal - heal on open through a real mount (heal=auto, healmode=persist), VHD and VHDX:
a parent moved, renamed, replaced by another disk of the same name (id-mismatch), two copies (the
nearer wins), the whole store moved, Hyper-V-style absolute locators with -o winroot, a broken
ancestor above the opened disk; opened with cat, dd and Python's open. The store file is healed
before the first byte is read (checked on STORE with vhdiinfo and vhdheal right after the open),
the bytes read through the mount are the healed file's, and the virtual content equals the chain's
true content (libvhdi and the engine). An ambiguous link is not healed; heal=manual and heal=off
leave files byte for byte unchanged and say why in user.vhd.status; a disk held open for writing
through the mount is not rewritten; the daemon logs one line per detection and per repair."""
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vhcraft  # noqa: E402
import vhdtest  # noqa: E402
from mounttest import (Mount, check, child, content, create, expected, ext, fill, getx,  # noqa
                       locators, parent_id_on_disk, require_fuse, sha)

CORPUS = os.environ.get("VH_CORPUS", "")


def opener(kind, path):
    """Opens and reads a disk through the mount as users' programs do; returns the bytes."""
    if kind == "cat":
        return subprocess.run(["cat", path], capture_output=True, check=True).stdout
    if kind == "dd":
        return subprocess.run(["dd", f"if={path}", "bs=64k", "status=none"], capture_output=True,
                              check=True).stdout
    return subprocess.run([sys.executable, "-c",
                           "import sys; sys.stdout.buffer.write(open(sys.argv[1], 'rb').read())",
                           path], capture_output=True, check=True).stdout


def build(store, fmt, tag, depth=2):
    """vm/base <- vm/mid [<- vm/top], 4 KiB of data in each; returns (paths, reference of the
    top, reference of the mid), the references computed from what was written."""
    b = os.path.join(store, tag, "vm", "base." + ext(fmt))
    m = os.path.join(store, tag, "vm", "mid." + ext(fmt, True))
    t = os.path.join(store, tag, "vm", "top." + ext(fmt, True)) if depth == 3 else None
    layers = [(1, (0,)), (2, (1 << 20,)), (3, (2 << 20,))]
    create(b, fmt)
    fill(b, *layers[0])
    child(m, b)
    fill(m, *layers[1])
    if t:
        child(t, m)
        fill(t, *layers[2])
    size = 8 << 20
    return (b, m, t), expected(size, layers if t else layers[:2]), expected(size, layers[:2])


def healed_on_open(mnt_of, store, tag, how, broken_rel, ref, rel_open, expect_target):
    """Opens rel_open through the mount and checks the heal of broken_rel (-> expect_target)."""
    path = os.path.join(store, broken_rel)
    before = sha(path)
    data = opener(how, mnt_of(rel_open))
    # right after the open, on STORE (not through the mount)
    check(sha(path) != before, f"{tag}: {broken_rel} was not rewritten by the open ({how})")
    pid = parent_id_on_disk(path)
    check(pid == vhcraft.disk_id(os.path.join(store, expect_target)),
          f"{tag}: vhdiinfo parent id {pid}")
    locs = locators(path)
    rel_loc = locs.get("relative_path") or locs.get("W2ru")
    want = os.path.relpath(os.path.join(store, expect_target),
                           os.path.dirname(path)).replace("/", "\\")
    check(rel_loc in (".\\" + want, want), f"{tag}: relative locator {rel_loc}, want {want}")
    # what the open read is the healed file, and the chain reads its true content
    check(data == open(os.path.join(store, rel_open), "rb").read(),
          f"{tag}: bytes read through the mount ({how}) are not the store file's")
    check(content(os.path.join(store, rel_open)) == ref, f"{tag}: virtual content differs")
    st, _ = getx(mnt_of(broken_rel), "user.vhd.status")
    check(st is not None and st.startswith("healed "), f"{tag}: status after heal: {st}")
    return st


def libvhdi_check(tag, chain_paths, ref):
    got = vhdtest.libvhdi_read(chain_paths)
    check(got == ref, f"{tag}: libvhdi reads other content through the healed chain")


def scenarios(root, fmt):
    store = os.path.join(root, "store-" + fmt)
    mnt = os.path.join(root, "mnt")
    log = os.path.join(root, f"daemon-{fmt}.log")
    os.makedirs(store)
    e, a = ext(fmt), ext(fmt, True)
    # 1 moved parent (open with cat); 2 renamed (dd); 3 id-mismatch replacement (python)
    (b1, m1, t1), ref1, _ = build(store, fmt, "moved", 3)
    os.makedirs(os.path.join(store, "moved", "archive"))
    os.rename(b1, os.path.join(store, "moved", "archive", "base." + e))
    (b2, m2, t2), _, ref2 = build(store, fmt, "renamed")
    os.rename(b2, os.path.join(store, "renamed", "vm", "base-renamed." + e))
    (b3, m3, t3), _, ref3 = build(store, fmt, "replaced")
    os.makedirs(os.path.join(store, "replaced", "keep"))
    os.rename(b3, os.path.join(store, "replaced", "keep", "base." + e))
    create(b3, fmt)  # another disk, same name and size
    # 4 two copies: the one in the nearer folder wins; 5 two copies equally near: ambiguous
    (b4, m4, t4), _, ref4 = build(store, fmt, "copies")
    for d in ("copies/far/away", "copies/vm/near"):
        os.makedirs(os.path.join(store, d))
    subprocess.run(["cp", b4, os.path.join(store, "copies/far/away/base." + e)], check=True)
    subprocess.run(["cp", b4, os.path.join(store, "copies/vm/near/base." + e)], check=True)
    os.unlink(b4)
    (b5, m5, t5), _, _ = build(store, fmt, "ambig")
    for d in ("ambig/x", "ambig/y"):
        os.makedirs(os.path.join(store, d))
        subprocess.run(["cp", b5, os.path.join(store, d, "base." + e)], check=True)
    os.unlink(b5)
    # 6 heal=manual and heal=off leave files alone (their own store below)
    # 7 a store moved as a whole: relative links hold
    oldstore = os.path.join(root, "old-" + fmt)
    (b7, m7, t7), _, ref7 = build(oldstore, fmt, "whole")
    os.rename(os.path.join(oldstore, "whole"), os.path.join(store, "whole"))
    m7 = m7.replace(oldstore, store)

    mt = Mount(store, mnt, log)
    try:
        def mnt_of(rel):
            return os.path.join(mnt, rel)

        def rel(p):
            return os.path.relpath(p, store)

        # the mid's link is broken: opening the top heals the ancestor before the first byte
        healed_on_open(mnt_of, store, f"{fmt} moved", "cat", rel(m1), ref1, rel(t1),
                       "moved/archive/base." + e)
        libvhdi_check(f"{fmt} moved", [t1, m1, os.path.join(store, "moved/archive/base." + e)],
                      ref1)
        healed_on_open(mnt_of, store, f"{fmt} renamed", "dd", rel(m2), ref2, rel(m2),
                       "renamed/vm/base-renamed." + e)
        st = healed_on_open(mnt_of, store, f"{fmt} replaced", "py", rel(m3), ref3, rel(m3),
                            "replaced/keep/base." + e)
        check("id-mismatch" in st, f"{fmt} replaced: status {st}")
        healed_on_open(mnt_of, store, f"{fmt} copies", "cat", rel(m4), ref4, rel(m4),
                       "copies/vm/near/base." + e)
        # ambiguous: not healed, the status lists both
        before = sha(m5)
        opener("cat", mnt_of(rel(m5)))
        check(sha(m5) == before, f"{fmt} ambiguous: rewritten")
        st, _ = getx(mnt_of(rel(m5)), "user.vhd.status")
        check(st.startswith("broken ambiguous: 2 disks") and "ambig/x/base." in st and
              "ambig/y/base." in st, f"{fmt} ambiguous: status {st}")
        # the whole store moved: nothing to heal, nothing written
        before = sha(m7)
        check(opener("dd", mnt_of(rel(m7))) == open(m7, "rb").read(), f"{fmt} whole: read")
        check(sha(m7) == before and content(m7) == ref7, f"{fmt} whole store moved")
        st, _ = getx(mnt_of(rel(m7)), "user.vhd.status")
        check(st == "ok", f"{fmt} whole: status {st}")
        # a disk open for writing through the mount is not rewritten; the disks are made
        # through the mount (the index follows), the parent is then renamed behind its back
        (b8, m8, t8), _, _ = build(mnt, fmt, "busy")
        b8, m8 = (os.path.join(store, os.path.relpath(p, mnt)) for p in (b8, m8))
        with open(mnt_of(rel(m8)), "r+b"):
            os.rename(b8, os.path.join(store, "busy", "base2." + e))
            before = sha(m8)
            opener("cat", mnt_of(rel(m8)))  # a reader opens it while it is open for writing
            check(sha(m8) == before, f"{fmt} busy: a disk open for writing was rewritten")
            st, _ = getx(mnt_of(rel(m8)), "user.vhd.status")
            check(st is not None and "not healed: busy/vm/mid." in st and
                  "open for writing" in st, f"{fmt} busy: status {st}")
        opener("cat", mnt_of(rel(m8)))  # closed: now it heals
        check(parent_id_on_disk(m8) == vhcraft.disk_id(os.path.join(store, "busy", "base2." + e)),
              f"{fmt} busy: not healed after the writer closed")
        check(mt.alive(), "the daemon died")
    finally:
        if mt.alive():
            mt.stop()
        else:
            mt.kill()
    text = open(log).read()
    for r in (rel(m1), rel(m2), rel(m3), rel(m4), rel(m8)):
        check(f"detected {r}: " in text, f"no detection line for {r}")
        check(f"healed {r}: " in text, f"no repair line for {r}")
    check(f"detected {rel(m5)}: ambiguous" in text, "no detection line for the ambiguous link")
    check(f"healed {rel(m5)}" not in text, "the ambiguous link was healed")


def modes(root, fmt):
    """heal=manual and heal=off: detection only, files unchanged, the status says why."""
    e = ext(fmt)
    for mode, why in (("manual", "not healed: heal=manual"), ("off", "not healed: heal=off")):
        store = os.path.join(root, f"modes-{fmt}-{mode}")
        mnt = os.path.join(root, "mnt")
        os.makedirs(store)
        (b, m, t), _, _ = build(store, fmt, "s")
        os.rename(b, os.path.join(store, "s", "moved." + e))
        sums = {p: sha(p) for p in (m,)}
        log = os.path.join(root, f"daemon-{fmt}-{mode}.log")
        mt = Mount(store, mnt, log, f"heal={mode}")
        try:
            for how in ("cat", "dd", "py"):
                opener(how, os.path.join(mnt, "s/vm", os.path.basename(m)))
            st, _ = getx(os.path.join(mnt, "s/vm", os.path.basename(m)), "user.vhd.status")
            check(st and st.startswith("broken parent-missing: ") and st.endswith(why +
                  (" (write the parent's path to user.vhd.parent)" if mode == "manual" else "")),
                  f"{fmt} heal={mode}: status {st}")
        finally:
            mt.stop()
        check(all(sha(p) == s for p, s in sums.items()), f"{fmt} heal={mode}: a file changed")
        text = open(log).read()
        check(text.count("detected s/vm/mid.") == 1, f"{fmt} heal={mode}: detection lines:\n{text}")
        check("healed s/vm" not in text, f"{fmt} heal={mode}: a repair was logged")


def hyperv(root, fmt):
    """The corpus' Web01 tree (absolute locators under D:\\Hyper-V\\Web01\\Virtual Hard Disks):
    with -o winroot the absolute locator finds the parent; when every locator is stale the
    heal writes the absolute path under the winroot again."""
    store = os.path.join(root, "hv-" + fmt)
    web = os.path.join(store, "Web01")
    os.makedirs(web)
    with tarfile.open(os.path.join(CORPUS, "hyperv-style", f"Web01-{fmt}.tar.gz")) as tf:
        tf.extractall(web)
    with open(os.path.join(web, "manifest.json")) as f:
        chain = json.load(f)["chain_base_first"]
    base, mid, top = ("Web01/" + x["file"] for x in chain)
    ref = content(os.path.join(store, top))
    os.makedirs(os.path.join(web, "Snapshots"))
    newtop = "Web01/Snapshots/" + os.path.basename(top)
    os.rename(os.path.join(store, top), os.path.join(store, newtop))
    ptop = os.path.join(store, newtop)
    midname = os.path.basename(mid)
    mid_id = vhcraft.disk_id(os.path.join(store, mid))
    hv = "D:\\Hyper-V\\Web01\\Virtual Hard Disks\\" + midname
    if fmt == "vhdx":
        vhcraft.vhdx_set_locator(ptop, {"parent_linkage": "{%s}" % mid_id,
                                        "relative_path": ".\\" + midname,
                                        "absolute_win32_path": hv})
    else:
        vhcraft.vhd_set_locator(ptop, b"W2ku", hv)
    mnt = os.path.join(root, "mnt")
    wr = "D:/Hyper-V"
    mt = Mount(store, mnt, os.path.join(root, f"daemon-hv-{fmt}.log"), f"winroot={wr}")
    try:
        before = sha(ptop)
        opener("cat", os.path.join(mnt, newtop))
        check(sha(ptop) == before, f"{fmt} hyper-v: a link that holds by winroot was rewritten")
        st, _ = getx(os.path.join(mnt, newtop), "user.vhd.status")
        p, _ = getx(os.path.join(mnt, newtop), "user.vhd.parent")
        check(st == "ok" and p == os.path.join(mnt, mid), f"{fmt} hyper-v: {st}, parent {p}")
        # every locator stale: healed by identity, with the absolute path under the winroot
        stale = "D:\\Elsewhere\\nothing." + ext(fmt, True)
        if fmt == "vhdx":
            vhcraft.vhdx_set_locator(ptop, {"parent_linkage": "{%s}" % mid_id,
                                            "relative_path": ".\\nothing." + ext(fmt, True),
                                            "absolute_win32_path": stale})
        else:
            vhcraft.vhd_set_locator(ptop, b"W2ku", stale)
            vhcraft.vhd_set_locator(ptop, b"W2ru", ".\\nothing.avhd")
            vhcraft.vhd_set_parent_name(ptop, "nothing.avhd")
        opener("py", os.path.join(mnt, newtop))
        locs = locators(ptop)
        want_abs = "D:\\Hyper-V\\Web01\\Virtual Hard Disks\\" + midname
        got_abs = locs.get("absolute_win32_path") or locs.get("W2ku")
        check(got_abs == want_abs, f"{fmt} hyper-v: absolute locator {got_abs}")
        rel_loc = locs.get("relative_path") or locs.get("W2ru")
        check(rel_loc == "..\\Virtual Hard Disks\\" + midname, f"{fmt} hyper-v: relative {rel_loc}")
        check(content(ptop) == ref, f"{fmt} hyper-v: content after heal")
    finally:
        mt.stop()


def main():
    require_fuse()
    with tempfile.TemporaryDirectory(prefix="vh-mount-heal-") as root:
        os.makedirs(os.path.join(root, "mnt"))
        for fmt in ("vhd", "vhdx"):
            for fn in (scenarios, modes, hyperv):
                try:
                    fn(root, fmt)
                except Exception as ex:  # a scenario that cannot run is a failure
                    traceback.print_exc()
                    check(False, f"{fmt} {fn.__name__}: {ex!r}")
                    if os.path.ismount(os.path.join(root, "mnt")):
                        subprocess.run(["fusermount3", "-u", "-z", os.path.join(root, "mnt")])
    vhdtest.finish("mount_heal")


if __name__ == "__main__":
    main()
