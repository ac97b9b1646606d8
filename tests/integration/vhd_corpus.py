#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""vhd_corpus.py - every VHD of ../shared/corpus reads as its README and manifests say: type,
size, identifier (equal to vhdiinfo's), content (equal to qemu-img's for fixed and dynamic
disks; sha256 per manifest for the Hyper-V-style chain); the dfvfs pair with stale checksums
opens read-only with warnings, is refused for writing, and its ids link up."""
import bz2
import gzip
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vhdtest as t  # noqa: E402

MIB = 1 << 20
GIB = 1 << 30


def unpack(src, d):
    name = os.path.basename(src)
    opener = gzip.open if name.endswith(".gz") else bz2.open
    out = os.path.join(d, name.rsplit(".", 1)[0])
    with opener(src, "rb") as fi, open(out, "wb") as fo:
        shutil.copyfileobj(fi, fo)
    return out


def check_basic(path, kind, size, creator=None):
    me = t.info(path)
    f = t.vhdiinfo(path)
    name = os.path.basename(path)
    t.check(me["format"] == "vhd" and me["type"] == kind, f"{name}: {me['format']} {me['type']}")
    t.check(me["virtual_size"] == size, f"{name}: size {me['virtual_size']} != {size}")
    t.check(t.vhdi_media_size(f) == size, f"{name}: vhdiinfo size {f.get('Media size')}")
    t.check(f.get("Identifier") == me["id"], f"{name}: id {me['id']} != {f.get('Identifier')}")
    if creator:
        t.check(me["details"]["creator application"] == creator,
                f"{name}: creator {me['details']['creator application']!r}")
    return me


def windows_pair(d):
    c = os.path.join(t.CORPUS, "dissect.hypervisor")
    for name, kind in [("fixed.vhd.gz", "fixed"), ("dynamic.vhd.gz", "dynamic")]:
        p = unpack(os.path.join(c, name), d)
        me = check_basic(p, kind, 10 * MIB, "win ")
        t.check(me["warnings"] == [], f"{name}: warnings {me['warnings']}")
        ours = t.read_all(p)
        t.check(ours == t.qemu_raw(p, p + ".raw"), f"{name}: content differs from qemu-img's")
        if kind == "dynamic":
            t.check(ours == t.libvhdi_read([p]), f"{name}: content differs from libvhdi's")
            t.check(me["details"]["allocated blocks"] == "3", f"{name}: allocated blocks")


def qemu_iotests(d):
    c = os.path.join(t.CORPUS, "qemu-iotests")
    for name, creator in [("hyperv2012r2-dynamic.vhd.bz2", "win "),
                          ("virtualpc-dynamic.vhd.bz2", "vpc ")]:
        p = unpack(os.path.join(c, name), d)
        me = check_basic(p, "dynamic", 136365211648, creator)  # 127 GiB (footer size)
        t.check(me["details"]["allocated blocks"] == "0", f"{name}: BAT not empty")
        t.check(me["details"]["geometry"] == "65278/16/255", f"{name}: geometry")
        # empty BAT: a few reads anywhere are zeros
        for off in (0, 64 * GIB + 12345, 136365211648 - 4096):
            data = t.vhdheal("read", p, off, 4096).stdout
            t.check(data == bytes(4096), f"{name}: non-zero data at {off}")


def dfvfs(d):
    c = os.path.join(t.CORPUS, "dfvfs")
    ext2 = unpack(os.path.join(c, "ext2.vhd.gz"), d)
    me = check_basic(ext2, "dynamic", 4212736, "qemu")
    t.check(me["warnings"] == [], f"ext2.vhd: warnings {me['warnings']}")
    ours = t.read_all(ext2)
    t.check(ours[1024 + 56:1024 + 58] == b"\x53\xef", "ext2.vhd: no ext2 superblock magic")
    t.check(ours == t.qemu_raw(ext2, ext2 + ".raw"), "ext2.vhd: content differs from qemu-img's")
    parent = unpack(os.path.join(c, "image.vhd.gz"), d)
    child = unpack(os.path.join(c, "image-differential.vhd.gz"), d)
    pm = check_basic(parent, "dynamic", 104448)
    cm = check_basic(child, "differencing", 104448)
    t.check(pm["id"] == "d49c5c80-350a-4a89-898a-5ad6d10f6578", f"image.vhd: id {pm['id']}")
    t.check(cm["parent"]["id"] == pm["id"], "image-differential.vhd: parent id != image.vhd id")
    names = [(l["kind"], l["path"]) for l in cm["parent"]["locators"]]
    t.check(names == [("parent_unicode_name", "image.vhd")], f"locators {names}")
    for name, m in [("image.vhd", pm), ("image-differential.vhd", cm)]:
        t.check(any("checksum" in w for w in m["warnings"]), f"{name}: no checksum warning")
        t.check("BAD" in m["details"]["footer checksum"], f"{name}: footer checksum not BAD")
    t.check("BAD" in cm["details"]["header checksum"], "child: header checksum not BAD")
    t.check("ok" in pm["details"]["header checksum"], "parent: header checksum not ok")
    # the chain reads (the child holds sectors of its own); writing is refused, file unchanged
    before = hashlib.sha256(open(child, "rb").read()).hexdigest()
    chain = t.read_all(child)
    t.check(len(chain) == 104448, "dfvfs chain: short read")
    r = t.vhdheal("write", child, 0, input=b"x" * 512, ok=False)
    t.check(r.returncode != 0 and b"checksum" in r.stderr, f"dfvfs write: {r.returncode}")
    t.check(hashlib.sha256(open(child, "rb").read()).hexdigest() == before, "dfvfs: file changed")


def hyperv_chain(d):
    with tarfile.open(os.path.join(t.CORPUS, "hyperv-style", "Web01-vhd.tar.gz")) as tf:
        tf.extractall(d)  # our own corpus; Debian 12's Python has no filter=
    with open(os.path.join(d, "manifest.json")) as f:
        manifest = json.load(f)
    size = manifest["virtual_size"]
    prev_id = None
    for level in manifest["chain_base_first"]:
        p = os.path.join(d, level["file"])
        me = check_basic(p, level["type"], size, "win ")
        t.check(me["id"] == level["ids"]["unique_id"], f"{level['file']}: id {me['id']}")
        t.check(me["block_size"] == level["block_size"], f"{level['file']}: block size")
        t.check(me["warnings"] == [], f"{level['file']}: warnings {me['warnings']}")
        digest = hashlib.sha256(t.read_all(p)).hexdigest()
        t.check(digest == level["sha256"], f"{level['file']}: sha256 {digest}")
        if level["parent_file"]:
            t.check(me["parent"]["id"] == prev_id, f"{level['file']}: parent id")
            parent_name = os.path.basename(level["parent_file"])
            locs = {l["kind"]: l["path"] for l in me["parent"]["locators"]}
            win_parent = manifest["windows_folder"] + "\\" + parent_name
            t.check(locs.get("W2ru") == ".\\" + parent_name, f"{level['file']}: W2ru {locs}")
            t.check(locs.get("W2ku") == win_parent, f"{level['file']}: W2ku {locs}")
            t.check(locs.get("parent_unicode_name") == win_parent, f"{level['file']}: name")
        prev_id = me["id"]


def main():
    if not t.CORPUS or not os.path.isdir(t.CORPUS):
        print("VH_CORPUS is not set or missing")
        sys.exit(1)
    with tempfile.TemporaryDirectory(prefix="vhd_corpus_") as d:
        windows_pair(d)
        qemu_iotests(d)
        dfvfs(d)
        hyperv_chain(d)
    t.finish("vhd_corpus")


if __name__ == "__main__":
    main()
