#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""mount_rename - relink on rename through a real mount, VHD and VHDX: `mv base elsewhere/`, a
rename in place, a folder holding a parent moved, a folder holding a child moved, and
RENAME_EXCHANGE; right after each, the children's locators on STORE (vhdheal info, vhdiinfo; not
through the mount) point at the new place and the chains read their true content. With heal=off
a rename relinks nothing. Files that are not disks are renamed as usual. A parent created empty
through the mount and then written through it is relinked too, also when renamed to a name no
disk has and back."""
import ctypes
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vhcraft  # noqa: E402
import vhdtest  # noqa: E402
from mounttest import (Mount, check, child, content, create, ext, fill,  # noqa: E402
                       format_paths, locators, parent_id_on_disk, run_formats, sha)

LIBC = ctypes.CDLL(None, use_errno=True)


def exchange(a, b):
    if LIBC.renameat2(-100, a.encode(), -100, b.encode(), 2) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def points_at(tag, store, child_path, parent_path):
    """The child's relative locator on STORE leads to parent_path, its id matches."""
    locs = locators(child_path)
    rel = locs.get("relative_path") or locs.get("W2ru")
    want = os.path.relpath(parent_path, os.path.dirname(child_path)).replace("/", "\\")
    check(rel in (want, ".\\" + want), f"{tag}: {os.path.relpath(child_path, store)} locator "
                                       f"{rel}, want {want}")
    check(parent_id_on_disk(child_path) == vhcraft.disk_id(parent_path), f"{tag}: parent id")


def run_format(root, fmt):
    e, a = ext(fmt), ext(fmt, True)
    store, mnt, S, M = format_paths(root, fmt)
    create(S(f"vm/base.{e}"), fmt)
    fill(S(f"vm/base.{e}"), 1)
    child(S(f"vm/c1.{a}"), S(f"vm/base.{e}"))
    fill(S(f"vm/c1.{a}"), 2, (1 << 20,))
    child(S(f"other/c2.{a}"), S(f"vm/base.{e}"))
    child(S(f"vm/gc.{a}"), S(f"vm/c1.{a}"))
    with open(S("vm/notes.txt"), "w") as f:
        f.write("notes\n")
    ref = content(S(f"vm/gc.{a}"))
    mt = Mount(store, mnt, os.path.join(root, f"daemon-{fmt}.log"))
    try:
        # mv base.vhdx elsewhere/: both children follow at once
        os.makedirs(M("lib"))
        subprocess.run(["mv", M(f"vm/base.{e}"), M("lib/")], check=True)
        points_at(f"{fmt} mv", store, S(f"vm/c1.{a}"), S(f"lib/base.{e}"))
        points_at(f"{fmt} mv", store, S(f"other/c2.{a}"), S(f"lib/base.{e}"))
        check(content(S(f"vm/gc.{a}")) == ref, f"{fmt} mv: content")
        # a rename in place
        os.rename(M(f"lib/base.{e}"), M(f"lib/renamed.{e}"))
        points_at(f"{fmt} rename", store, S(f"vm/c1.{a}"), S(f"lib/renamed.{e}"))
        # the folder holding the parent moves
        subprocess.run(["mv", M("lib"), M("vm/")], check=True)
        points_at(f"{fmt} folder", store, S(f"vm/c1.{a}"), S(f"vm/lib/renamed.{e}"))
        points_at(f"{fmt} folder", store, S(f"other/c2.{a}"), S(f"vm/lib/renamed.{e}"))
        # the folder holding a child and a grandchild moves: the child is relinked, the
        # grandchild's link (to a disk that moved with it) still holds and is not rewritten
        gc_sum = sha(S(f"vm/gc.{a}"))
        subprocess.run(["mv", M("vm"), M("archive")], check=True)
        points_at(f"{fmt} child folder", store, S(f"archive/c1.{a}"),
                  S(f"archive/lib/renamed.{e}"))
        check(sha(S(f"archive/gc.{a}")) == gc_sum, f"{fmt}: the grandchild was rewritten")
        check(content(S(f"archive/gc.{a}")) == ref, f"{fmt} child folder: content")
        # (libvhdi 20210425 misreads a VHDX chain of three whose top holds no data: compared
        # on the relinked child and its parent)
        libvhdi = vhdtest.libvhdi_read([S(f"archive/c1.{a}"), S(f"archive/lib/renamed.{e}")])
        check(libvhdi == content(S(f"archive/c1.{a}")), f"{fmt}: libvhdi content after the moves")
        # RENAME_EXCHANGE of the parent with another disk of the same name elsewhere
        create(M(f"spare/renamed.{e}"), fmt)
        exchange(M(f"archive/lib/renamed.{e}"), M(f"spare/renamed.{e}"))
        points_at(f"{fmt} exchange", store, S(f"archive/c1.{a}"), S(f"spare/renamed.{e}"))
        points_at(f"{fmt} exchange", store, S(f"other/c2.{a}"), S(f"spare/renamed.{e}"))
        check(content(S(f"archive/gc.{a}")) == ref, f"{fmt} exchange: content")
        # a parent created empty through the mount (too short to be a disk: indexed without
        # being read), then written through it (read on close): renames of it, to a name no
        # disk has and back (disks are known by content), relink its child
        stage = os.path.join(root, f"stage-{fmt}")
        os.makedirs(stage)
        create(os.path.join(stage, f"base.{e}"), fmt)
        fill(os.path.join(stage, f"base.{e}"), 5)
        os.makedirs(M("grown"))
        open(M(f"grown/base.{e}"), "xb").close()
        with open(M(f"grown/base.{e}"), "r+b") as f:
            f.write(open(os.path.join(stage, f"base.{e}"), "rb").read())
        child(M(f"grown/kid.{a}"), M(f"grown/base.{e}"))
        fill(M(f"grown/kid.{a}"), 6, (1 << 20,))
        gref = content(S(f"grown/kid.{a}"))
        prev = f"base.{e}"
        for name in ("base.bin", f"base.{e}"):
            os.rename(M(f"grown/{prev}"), M(f"grown/{name}"))
            points_at(f"{fmt} grown {name}", store, S(f"grown/kid.{a}"), S(f"grown/{name}"))
            prev = name
        check(content(S(f"grown/kid.{a}")) == gref, f"{fmt} grown: content")
        # files that are not disks
        os.rename(M("archive/notes.txt"), M("notes2.txt"))
        check(open(S("notes2.txt")).read() == "notes\n", f"{fmt}: a plain rename")
        check(mt.alive(), f"{fmt}: the daemon died")
    finally:
        mt.stop()
    text = open(os.path.join(root, f"daemon-{fmt}.log")).read()
    if vhdtest.failures:
        print(f"--- daemon log ({fmt})\n{text[-4000:]}")
    check(f"healed archive/c1.{a}: " in text and " moved to " in text and "exchanged" in text,
          f"{fmt}: relink lines missing:\n{text[-3000:]}")
    # heal=off: a rename relinks nothing
    mt = Mount(store, mnt, os.path.join(root, f"daemon-{fmt}-off.log"), "heal=off")
    try:
        before = sha(S(f"archive/c1.{a}"))
        os.rename(M(f"spare/renamed.{e}"), M(f"spare/off.{e}"))
        check(sha(S(f"archive/c1.{a}")) == before, f"{fmt} heal=off: a child was rewritten")
    finally:
        mt.stop()


def main():
    run_formats("mount_rename", run_format)


if __name__ == "__main__":
    main()
