#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""mount_concurrency - several processes at once on one mount (heal=auto): readers and writers
of plain files, copies of disk files, an engine writing into a disk file through the mount, and,
at the same time, heals set off by setfattr on some broken children and by opens of others.
Afterwards every content check passes, every broken child is healed (checked on STORE), the
daemon is alive and unmounts cleanly."""
import os
import subprocess
import sys
import tempfile
import traceback
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vhcraft  # noqa: E402
import vhdtest  # noqa: E402
from mounttest import (Mount, check, child, content, create, expected, ext, fill,  # noqa
                       parent_id_on_disk, require_fuse, setx, sha)

N_BROKEN = 4  # per format; half healed by setfattr, half by an open


def plain_rw(mnt, k):
    """Writes and reads back a plain file 30 times; returns a list of problems."""
    bad = []
    path = os.path.join(mnt, f"plain/w{k}.bin")
    for i in range(30):
        data = os.urandom(4096 * (1 + (i % 7)))
        with open(path, "wb") as f:
            f.write(data)
        with open(path, "rb") as f:
            if f.read() != data:
                bad.append(f"{path}: round {i} read other bytes")
    return bad


def plain_read(mnt, k, want):
    bad = []
    for _ in range(40):
        if sha(os.path.join(mnt, f"plain/r{k}.bin")) != want:
            bad.append(f"r{k}: content differs")
    return bad


def copy_disk(mnt, src, dst, want):
    subprocess.run(["cp", os.path.join(mnt, src), os.path.join(mnt, dst)], check=True)
    return [] if sha(os.path.join(mnt, dst)) == want else [f"copy {dst} differs"]


def engine_write(mnt, disk, seed):
    """vhdheal writes 4 KiB units into a disk file through the mount."""
    for i in range(8):
        data = bytes((seed + i + j) & 0xFF for j in range(4096))
        vhdtest.vhdheal("write", os.path.join(mnt, disk), str(i * 65536), input=data)
    return []


def heal_by_xattr(mnt, childrel, parentrel):
    err = setx(os.path.join(mnt, childrel), "user.vhd.parent", os.path.join(mnt, parentrel))
    return [] if err == 0 else [f"setfattr {childrel}: errno {err}"]


def heal_by_open(mnt, childrel):
    with open(os.path.join(mnt, childrel), "rb") as f:
        f.read()
    return []


def main():
    require_fuse()
    with tempfile.TemporaryDirectory(prefix="vh-mount-conc-") as root:
        store, mnt = os.path.join(root, "store"), os.path.join(root, "mnt")
        os.makedirs(os.path.join(store, "plain"))
        os.makedirs(mnt)
        reads = {}
        for k in range(3):
            data = os.urandom(300000 + k)
            with open(os.path.join(store, f"plain/r{k}.bin"), "wb") as f:
                f.write(data)
            reads[k] = sha(os.path.join(store, f"plain/r{k}.bin"))
        broken = []  # (child rel, parent rel now, reference content, how)
        for fmt in ("vhd", "vhdx"):
            e, a = ext(fmt), ext(fmt, True)
            for k in range(N_BROKEN):
                b, c = f"{fmt}{k}/base.{e}", f"{fmt}{k}/child.{a}"
                create(os.path.join(store, b), fmt, "4M")
                fill(os.path.join(store, b), k + 1, (0,))
                child(os.path.join(store, c), os.path.join(store, b))
                fill(os.path.join(store, c), k + 11, (1 << 20,))
                ref = expected(4 << 20, [(k + 1, (0,)), (k + 11, (1 << 20,))])
                moved = f"moved/{fmt}{k}/base.{e}"
                os.makedirs(os.path.dirname(os.path.join(store, moved)))
                os.rename(os.path.join(store, b), os.path.join(store, moved))
                broken.append((c, moved, ref, "xattr" if k % 2 else "open"))
            create(os.path.join(store, f"w/base.{e}"), fmt, "4M")
            child(os.path.join(store, f"w/child.{a}"), os.path.join(store, f"w/base.{e}"))
        src_sum = sha(os.path.join(store, "w/base.vhdx"))
        mt = Mount(store, mnt, os.path.join(root, "daemon.log"))
        try:
            with ProcessPoolExecutor(max_workers=8) as ex:
                futs = [ex.submit(plain_rw, mnt, k) for k in range(2)]
                futs += [ex.submit(plain_read, mnt, k, reads[k]) for k in range(3)]
                futs += [ex.submit(copy_disk, mnt, "w/base.vhdx", f"w/copy{k}.vhdx", src_sum)
                         for k in range(2)]
                futs += [ex.submit(engine_write, mnt, "w/child.avhd", 7)]
                for c, p, _, how in broken:
                    futs.append(ex.submit(heal_by_xattr, mnt, c, p) if how == "xattr"
                                else ex.submit(heal_by_open, mnt, c))
                for f in futs:
                    for problem in f.result(timeout=120):
                        check(False, problem)
            check(mt.alive(), "the daemon died")
            for c, p, ref, how in broken:
                cp = os.path.join(store, c)
                check(parent_id_on_disk(cp) == vhcraft.disk_id(os.path.join(store, p)),
                      f"{c} ({how}): not healed")
                check(content(cp) == ref, f"{c} ({how}): content differs after the heal")
            got = content(os.path.join(store, "w/child.avhd"))
            for i in range(8):
                want = bytes((7 + i + j) & 0xFF for j in range(4096))
                check(got[i * 65536:i * 65536 + 4096] == want, f"engine write {i} through the mount")
            check(not [x for x in os.listdir(os.path.join(store, "w")) if x.endswith(".tmp")],
                  "stray files")
        except Exception as ex:
            traceback.print_exc()
            check(False, repr(ex))
        finally:
            mt.stop()
    vhdtest.finish("mount_concurrency")


if __name__ == "__main__":
    main()
