#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""mount_parents - a disk that other disks use as parent is not written (issue 14.5), VHD and
VHDX: `vhdheal write` into it exits 2 naming the children and leaves it unchanged, `--force`
writes; through the mount, opening it for writing (r+b, w, truncate) fails with EBUSY and a log
line names the children, a read-only open works, a disk without children opens for writing, and
with -o allow_parent_writes the parent opens for writing."""
import errno
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mounttest import (Mount, check, child, content, create, ext, fill,  # noqa: E402
                       format_paths, pattern, run_formats, sha, vhdheal)


def errno_of(fn):
    """0 when fn() succeeds, else the errno it raised."""
    try:
        fn()
        return 0
    except OSError as e:
        return e.errno


def open_close(path, mode):
    with open(path, mode):
        pass


def run_format(root, fmt):
    e, a = ext(fmt), ext(fmt, True)
    store, mnt, S, M = format_paths(root, fmt)
    create(S(f"lib/base.{e}"), fmt)
    fill(S(f"lib/base.{e}"), 1)
    child(S(f"vm1/c1.{a}"), S(f"lib/base.{e}"))
    child(S(f"vm2/c2.{a}"), S(f"lib/base.{e}"))
    fill(S(f"vm1/c1.{a}"), 2, (1 << 20,), store=S(""))
    os.makedirs(S(".vhdheal"), exist_ok=True)  # the store: children in sibling folders count
    base_sha = sha(S(f"lib/base.{e}"))
    ref = content(S(f"vm1/c1.{a}"))

    # the CLI: refused, exit 2, the children named; nothing written
    p = vhdheal("write", S(f"lib/base.{e}"), "0", input=pattern(9), ok=False)
    msg = p.stderr.decode(errors="replace")
    check(p.returncode == 2, f"{fmt}: vhdheal write into a parent exited {p.returncode}, want 2")
    check(f"vm1/c1.{a}" in msg and f"vm2/c2.{a}" in msg and "--force" in msg,
          f"{fmt}: the refusal does not name the children and --force: {msg!r}")
    check(sha(S(f"lib/base.{e}")) == base_sha, f"{fmt}: a refused write changed the parent")
    check(content(S(f"vm1/c1.{a}")) == ref, f"{fmt}: a refused write changed the child's content")
    # a disk without children is written as before
    p = vhdheal("write", S(f"vm1/c1.{a}"), str(2 << 20), input=pattern(3), ok=False)
    check(p.returncode == 0, f"{fmt}: write into a leaf refused: {p.stderr!r}")
    ref = content(S(f"vm1/c1.{a}"))

    mt = Mount(store, mnt, os.path.join(root, f"daemon-{fmt}.log"))
    try:
        base = M(f"lib/base.{e}")
        check(errno_of(lambda: open_close(base, "r+b")) == errno.EBUSY,
              f"{fmt}: open(parent, r+b) through the mount did not fail with EBUSY")
        check(errno_of(lambda: os.close(os.open(base, os.O_WRONLY))) == errno.EBUSY,
              f"{fmt}: open(parent, O_WRONLY) did not fail with EBUSY")
        check(errno_of(lambda: open_close(base, "wb")) == errno.EBUSY,
              f"{fmt}: open(parent, wb) did not fail with EBUSY")
        size = os.stat(base).st_size
        check(errno_of(lambda: os.truncate(base, size + 4096)) == errno.EBUSY,
              f"{fmt}: truncate(parent) did not fail with EBUSY")
        # O_RDONLY|O_TRUNC truncates too (the kernel passes O_TRUNC to the open), with or
        # without O_CREAT
        check(errno_of(lambda: os.close(os.open(base, os.O_RDONLY | os.O_TRUNC))) == errno.EBUSY,
              f"{fmt}: open(parent, O_RDONLY|O_TRUNC) did not fail with EBUSY")
        check(errno_of(lambda: os.close(os.open(base, os.O_RDONLY | os.O_CREAT | os.O_TRUNC)))
              == errno.EBUSY, f"{fmt}: open(parent, O_RDONLY|O_CREAT|O_TRUNC) did not fail")
        # a rename over the parent (a copy with its identity and other bytes) replaces its bytes
        # under the children's link (an exchange moves it, and relink on rename follows it:
        # mount_rename)
        shutil.copyfile(S(f"lib/base.{e}"), S(f"lib/other.{e}"))
        check(errno_of(lambda: os.rename(M(f"lib/other.{e}"), base)) == errno.EBUSY,
              f"{fmt}: rename over the parent did not fail with EBUSY")
        os.unlink(M(f"lib/other.{e}"))
        check(errno_of(lambda: open_close(base, "rb")) == 0, f"{fmt}: read-only open failed")
        with open(base, "rb") as f:
            check(len(f.read(4096)) == 4096, f"{fmt}: read of the parent failed")
        check(errno_of(lambda: open_close(M(f"vm2/c2.{a}"), "r+b")) == 0,
              f"{fmt}: a disk without children could not be opened for writing")
        log = mt.text()
        check(any(f"lib/base.{e}" in l and f"vm1/c1.{a}" in l and f"vm2/c2.{a}" in l
                  for l in log.splitlines()), f"{fmt}: no log line names the children")
    finally:
        mt.stop()
    check(sha(S(f"lib/base.{e}")) == base_sha, f"{fmt}: the parent changed through the mount")
    check(content(S(f"vm1/c1.{a}")) == ref, f"{fmt}: the child's content changed")
    check("ok" in vhdheal("check", store, ok=False).stdout.decode(), f"{fmt}: check")

    mt = Mount(store, mnt, os.path.join(root, f"daemon-{fmt}-allow.log"), "allow_parent_writes")
    try:
        check(errno_of(lambda: open_close(M(f"lib/base.{e}"), "r+b")) == 0,
              f"{fmt}: allow_parent_writes: open for writing failed")
    finally:
        mt.stop()

    p = vhdheal("write", "--force", S(f"lib/base.{e}"), "0", input=pattern(9), ok=False)
    check(p.returncode == 0, f"{fmt}: write --force exited {p.returncode}: {p.stderr!r}")
    check(sha(S(f"lib/base.{e}")) != base_sha, f"{fmt}: write --force did not write")


def main():
    run_formats("mount_parents", run_format)


if __name__ == "__main__":
    main()
