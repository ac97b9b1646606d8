#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""vhdx_corpus: every VHDX of ../shared/corpus reads as its README and manifests say.

- dissect.hypervisor fixed/dynamic (Windows 10.0.18363): type, 10 MiB, block size, creator;
  content equals `qemu-img convert`.
- DiscUtils swap (10 GiB dynamic): fields; the data qemu maps equals ours, and our block states
  say everything else reads as zeros.
- DiscUtils vhdx-log-replay (1 GiB dynamic, non-empty log): a read-only open replays in memory and
  leaves the file untouched; the content equals `qemu-img convert` after `qemu-img check -r all`
  on a copy; a writable open replays into the file and empties the log.
- hyperv-style Web01-vhdx chain: every level's ids as in manifest.json and the sha256 of its
  content through the chain.
"""
import hashlib
import json
import os
import subprocess
import tarfile
import tempfile

import vhdtest
from vhdtest import VHDHEAL, check, info, run

CORPUS = os.environ.get("VH_CORPUS") or os.path.join(os.path.dirname(__file__), "..", "..", "..",
                                                     "shared", "corpus")
MIB = 1024 * 1024


def sha_of_read(path, off=None, length=None):
    args = [VHDHEAL, "read", path] + ([str(off), str(length)] if off is not None else [])
    h = hashlib.sha256()
    with subprocess.Popen(args, stdout=subprocess.PIPE) as p:
        for chunk in iter(lambda: p.stdout.read(4 * MIB), b""):
            h.update(chunk)
    check(p.returncode == 0, f"vhdheal read {path} failed")
    return h.hexdigest()


def sha_of_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(4 * MIB), b""):
            h.update(chunk)
    return h.hexdigest()


def gunzip(src, dst):
    with open(dst, "wb") as out:
        subprocess.run(["gzip", "-dc", src], check=True, stdout=out)


def qemu_raw_sha(path, tmp):
    raw = os.path.join(tmp, "q.raw")
    run("qemu-img", "convert", "-f", "vhdx", "-O", "raw", path, raw)
    s = sha_of_file(raw)
    os.unlink(raw)
    return s


def dissect(tmp):
    for name, typ, bs in (("fixed", "fixed", 2 * MIB), ("dynamic", "dynamic", 32 * MIB)):
        path = os.path.join(tmp, f"{name}.vhdx")
        gunzip(os.path.join(CORPUS, "dissect.hypervisor", f"{name}.vhdx.gz"), path)
        d = info(path)
        check(d["type"] == typ, f"{name}: type {d['type']}")
        check(d["virtual_size"] == 10 * MIB, f"{name}: size {d['virtual_size']}")
        check(d["block_size"] == bs, f"{name}: block size {d['block_size']}")
        check(d["details"]["creator"] == "Microsoft Windows 10.0.18363.0", f"{name}: creator")
        check(not d["warnings"], f"{name}: warnings {d['warnings']}")
        check(sha_of_read(path) == qemu_raw_sha(path, tmp), f"{name}: content differs from qemu")
        print(f"ok: dissect {name}.vhdx")


def swap(tmp):
    path = os.path.join(tmp, "swap.vhdx")
    gunzip(os.path.join(CORPUS, "DiscUtils", "swap.vhdx.gz"), path)
    d = info(path)
    check(d["type"] == "dynamic" and d["virtual_size"] == 10 * 1024 * MIB, "swap: type/size")
    check(d["details"]["creator"] == "Microsoft Windows 10.0.14393.0", "swap: creator")
    det = d["details"]
    bs = d["block_size"]
    blocks = -(-d["virtual_size"] // bs)
    present = int(det.get("blocks.fully_present", 0))
    zeroish = sum(int(det.get(f"blocks.{s}", 0))
                  for s in ("not_present", "zero", "unmapped", "undefined", "unmapped_v095"))
    check(present + zeroish == blocks, f"swap: block states {det}")
    # qemu's vhdx driver reports no block status, but `convert` leaves holes where it reads
    # zeros: compare our whole content with its sparse raw image, chunk by chunk.
    raw = os.path.join(tmp, "swap.raw")
    run("qemu-img", "convert", "-f", "vhdx", "-O", "raw", path, raw)
    data = []
    with open(raw, "rb") as f:
        fd, pos, end = f.fileno(), 0, os.fstat(f.fileno()).st_size
        while pos < end:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            stop = os.lseek(fd, start, os.SEEK_HOLE)
            data.append((start, stop))
            pos = stop
        chunk, zero, off, same = 4 * MIB, bytes(4 * MIB), 0, True
        with subprocess.Popen([VHDHEAL, "read", path], stdout=subprocess.PIPE) as p:
            for ours in iter(lambda: p.stdout.read(chunk), b""):
                if any(s < off + len(ours) and off < e for s, e in data):
                    f.seek(off)
                    same = same and f.read(len(ours)) == ours
                else:
                    same = same and ours == zero[:len(ours)]
                off += len(ours)
        check(p.returncode == 0 and off == d["virtual_size"], "swap: vhdheal read failed")
        check(same, "swap: content differs from qemu-img convert")
    os.unlink(raw)
    print(f"ok: DiscUtils swap.vhdx ({len(data)} data extents in qemu's image)")


def log_replay(tmp):
    path = os.path.join(tmp, "lr.vhdx")
    gunzip(os.path.join(CORPUS, "DiscUtils", "vhdx-log-replay.vhdx.gz"), path)
    before = sha_of_file(path)
    d = info(path)
    check(d["type"] == "dynamic" and d["virtual_size"] == 1024 * MIB, "log-replay: type/size")
    check(d["details"]["log"] == "replayed in memory", f"log-replay: log {d['details']['log']}")
    check(d["details"]["log_guid"] != "00000000-0000-0000-0000-000000000000", "log-replay: guid")
    ours = sha_of_read(path)
    check(sha_of_file(path) == before, "log-replay: a read-only open changed the file")
    ref = os.path.join(tmp, "lr-qemu.vhdx")
    run("cp", path, ref)
    subprocess.run(["qemu-img", "check", "-r", "all", "-f", "vhdx", ref], capture_output=True)
    check(ours == qemu_raw_sha(ref, tmp), "log-replay: content differs from qemu after its replay")
    # a writable open (an empty write) replays into the file and empties the log
    run(VHDHEAL, "write", path, "0", "/dev/null")
    d2 = info(path)
    check(d2["details"]["log"] == "empty", "log-replay: log not emptied by a writable open")
    check(d2["details"]["log_guid"] == "00000000-0000-0000-0000-000000000000", "log-replay: guid")
    check(d2["id"] == d["id"], "log-replay: replay changed DataWriteGuid")
    check(d2["details"]["file_write_guid"] != d["details"]["file_write_guid"],
          "log-replay: replay kept FileWriteGuid")
    check(sha_of_read(path) == ours, "log-replay: content changed by the replay into the file")
    r = subprocess.run(["qemu-img", "check", "-f", "vhdx", path], capture_output=True)
    check(r.returncode == 0, f"log-replay: qemu-img check after our replay: {r.stdout}")
    print("ok: DiscUtils vhdx-log-replay.vhdx")


def web01(tmp):
    with tarfile.open(os.path.join(CORPUS, "hyperv-style", "Web01-vhdx.tar.gz")) as t:
        t.extractall(tmp)
    manifest = json.load(open(os.path.join(tmp, "manifest.json")))
    ids = {}
    for level in manifest["chain_base_first"]:
        path = os.path.join(tmp, level["file"])
        d = info(path)
        want = level["ids"]
        check(d["id"] == want["data_write_guid"], f"{level['file']}: id {d['id']}")
        check(d["details"]["data_write_guid"] == want["data_write_guid"], f"{level['file']}: dw")
        check(d["details"]["file_write_guid"] == want["file_write_guid"], f"{level['file']}: fw")
        check(d["details"]["virtual_disk_id"] == want["virtual_disk_id"], f"{level['file']}: vdid")
        check(d["type"] == level["type"], f"{level['file']}: type {d['type']}")
        check(d["block_size"] == level["block_size"], f"{level['file']}: block size")
        check(d["virtual_size"] == manifest["virtual_size"], f"{level['file']}: size")
        if level["parent_file"]:
            check(d["parent"]["id"] == ids[level["parent_file"]], f"{level['file']}: parent id")
            locs = {l["kind"]: l["path"] for l in d["parent"]["locators"]}
            check(locs.get("absolute_win32_path") ==
                  next(l["win_path"] for l in manifest["chain_base_first"]
                       if l["file"] == level["parent_file"]), f"{level['file']}: absolute path")
            check(d["parent"]["id2"] is None, f"{level['file']}: zero parent_linkage2 is no id")
        ids[level["file"]] = d["id"]
        check(sha_of_read(path) == level["sha256"], f"{level['file']}: content sha256")
    print(f"ok: hyperv-style Web01-vhdx chain ({len(ids)} files)")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        for part in (dissect, swap, log_replay, web01):
            sub = os.path.join(tmp, part.__name__)
            os.mkdir(sub)
            part(sub)
    vhdtest.finish("vhdx_corpus")


if __name__ == "__main__":
    main()
