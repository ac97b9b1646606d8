#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""mount_relink_scale - relink on rename at scale (issue 14.6), VHD and VHDX: a folder holding
100 children of one base is moved one level deeper through the mount, so every child's relative
locator breaks; right after the mv, every child's locator on STORE (vhdheal info --json) leads to
the base, each child has exactly one committed repair in the journal (`undo --list`), `check`
calls the store healthy and a few children read their true content. No timing is asserted here
(scripts/bench relink measures it)."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mounttest import (Mount, check, content, create, ext, fill, format_paths,  # noqa: E402
                       locators, run_formats, vhdheal)

N = 100


def run_format(root, fmt):
    e = ext(fmt)
    store, mnt, S, M = format_paths(root, fmt)
    create(S(f"lib/base.{e}"), fmt)
    fill(S(f"lib/base.{e}"), 1)
    os.makedirs(S("vms"))
    os.makedirs(S("deep"))
    for k in range(N):
        vhdheal("create", "--parent", S(f"lib/base.{e}"), S(f"vms/c{k}.{e}"))
    for k in (0, N // 2, N - 1):
        fill(S(f"vms/c{k}.{e}"), 10 + k, (1 << 20,), store=S(""))
    refs = {k: content(S(f"vms/c{k}.{e}"), store) for k in (0, N // 2, N - 1)}

    mt = Mount(store, mnt, os.path.join(root, f"daemon-{fmt}.log"))
    try:
        subprocess.run(["mv", M("vms"), M("deep/")], check=True)
        want = os.path.relpath(S(f"lib/base.{e}"), S("deep/vms")).replace("/", "\\")
        wrong = []
        for k in range(N):
            locs = locators(S(f"deep/vms/c{k}.{e}"))
            rel = locs.get("relative_path") or locs.get("W2ru")
            if rel not in (want, ".\\" + want):
                wrong.append((k, rel))
        check(not wrong, f"{fmt}: {len(wrong)} of {N} children not relinked, e.g. {wrong[:3]} "
                         f"(want {want})")
        check(mt.alive(), f"{fmt}: the daemon died")
    finally:
        mt.stop()
    listing = vhdheal("undo", "--store", store, "--list").stdout.decode().splitlines()
    for k in range(N):
        mine = [l for l in listing if f" deep/vms/c{k}.{e}:" in l]
        if not check(len(mine) == 1 and " done " in mine[0],
                     f"{fmt}: c{k}: journal records {mine}"):
            break
    p = vhdheal("check", store, ok=False)
    check(p.returncode == 0, f"{fmt}: check after the relink exited {p.returncode}: "
                             f"{p.stdout.decode(errors='replace')[-500:]}")
    for k, ref in refs.items():
        check(content(S(f"deep/vms/c{k}.{e}"), store) == ref, f"{fmt}: c{k}: content changed")


def main():
    run_formats("mount_relink_scale", run_format)


if __name__ == "__main__":
    main()
