#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""mount_perms - who may set a repair off, through a real mount with allow_other, as a user the
test creates (useradd; removed after): a user who cannot write a child gets EACCES from a write
of user.vhd.parent, and opening it (heal=auto) reads but does not rewrite it (the status says
why); once the child is the user's, the same write succeeds, and so does a heal on the user's
open. Needs root (skipped otherwise, unless CI is set)."""
import os
import pwd
import subprocess
import sys
import tempfile
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vhcraft  # noqa: E402
import vhdtest  # noqa: E402
from mounttest import (Mount, check, child, create, errno, ext, format_paths, getx,  # noqa: E402
                       parent_id_on_disk, require_fuse, require_root, sha)

USER = "vhtest%d" % os.getpid()


def as_user(*args):
    """Runs a command as the test user; returns (rc, stdout, stderr)."""
    p = subprocess.run(["setpriv", "--reuid", USER, "--regid", USER, "--init-groups", *args],
                       capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def run_format(root, fmt, uid, gid):
    e, a = ext(fmt), ext(fmt, True)
    store, mnt, S, M = format_paths(root, fmt)
    create(S(f"vm/base.{e}"), fmt)
    for name in ("root", "mine", "opened"):
        child(S(f"vm/{name}.{a}"), S(f"vm/base.{e}"))
    os.makedirs(S("lib"))
    os.rename(S(f"vm/base.{e}"), S(f"lib/base.{e}"))
    for dirpath, dirs, files in os.walk(store):
        os.chmod(dirpath, 0o755)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o644)
    want = vhcraft.disk_id(S(f"lib/base.{e}"))
    mt = Mount(store, mnt, os.path.join(root, f"daemon-{fmt}.log"), "allow_other")
    try:
        # a child the user cannot write: EACCES; its open reads but does not rewrite it
        before = sha(S(f"vm/root.{a}"))
        rc, _, err = as_user("setfattr", "-n", "user.vhd.parent", "-v", f"../lib/base.{e}",
                             M(f"vm/root.{a}"))
        check(rc != 0 and "Permission denied" in err, f"{fmt}: setfattr as user: {rc} {err}")
        rc, out, err = as_user("sh", "-c", f"cat '{M(f'vm/root.{a}')}' | wc -c")
        check(rc == 0 and int(out) == os.path.getsize(S(f"vm/root.{a}")),
              f"{fmt}: the user's read of a child it cannot write: {rc} {out} {err}")
        check(sha(S(f"vm/root.{a}")) == before, f"{fmt}: the user's open rewrote root's child")
        st, _ = getx(M(f"vm/root.{a}"), "user.vhd.status")
        check(st is not None and f"not healed: vm/root.{a}: user {uid} may not write it" in st,
              f"{fmt}: status {st}")
        # the user's own child: the write succeeds
        os.chown(S(f"vm/mine.{a}"), uid, gid)
        rc, _, err = as_user("setfattr", "-n", "user.vhd.parent", "-v", f"../lib/base.{e}",
                             M(f"vm/mine.{a}"))
        check(rc == 0, f"{fmt}: setfattr on the user's own child: {err}")
        check(parent_id_on_disk(S(f"vm/mine.{a}")) == want, f"{fmt}: the user's write")
        # group-writable for the user: the user's open heals it
        os.chown(S(f"vm/opened.{a}"), 0, gid)
        os.chmod(S(f"vm/opened.{a}"), 0o664)
        rc, _, err = as_user("sh", "-c", f"cat '{M(f'vm/opened.{a}')}' >/dev/null")
        check(rc == 0, f"{fmt}: the user's open: {err}")
        check(parent_id_on_disk(S(f"vm/opened.{a}")) == want, f"{fmt}: the user's open healed")
        st, _ = getx(M(f"vm/opened.{a}"), "user.vhd.status")
        check(st is not None and st.startswith("healed "), f"{fmt}: status {st}")
        # root (the daemon's peer) still may
        check(subprocess.run(["setfattr", "-n", "user.vhd.parent", "-v", f"../lib/base.{e}",
                              M(f"vm/root.{a}")]).returncode == 0, f"{fmt}: root's write")
    finally:
        mt.stop()


def main():
    require_fuse()
    require_root("mount_perms")
    subprocess.run(["useradd", "--no-create-home", "--user-group", USER], check=True)
    try:
        uid, gid = pwd.getpwnam(USER).pw_uid, pwd.getpwnam(USER).pw_gid
        with tempfile.TemporaryDirectory(prefix="vh-mount-perms-") as root:
            os.chmod(root, 0o755)
            os.makedirs(os.path.join(root, "mnt"))
            for fmt in ("vhd", "vhdx"):
                try:
                    run_format(root, fmt, uid, gid)
                except Exception as ex:
                    traceback.print_exc()
                    check(False, f"{fmt}: {ex!r}")
    finally:
        subprocess.run(["userdel", USER], check=False)
        subprocess.run(["groupdel", USER], check=False, stderr=subprocess.DEVNULL)
    vhdtest.finish("mount_perms")


if __name__ == "__main__":
    main()
