#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""merge.py - `vhdheal merge` (Merge-VHD): chains of depth 1 and 3, VHD and VHDX (512 and
4096-byte sectors; dynamic bases, and fixed bases in two cases), random unaligned writes at every
level. After the merge the ancestor (or the relinked top) reads exactly what the top read before
(the test's own reference buffer and `vhdheal read` before), qemu-img check finds no error in a
VHDX ancestor, vhdiinfo and libvhdi read it, the merged files are gone and `vhdheal check` is
clean. A merge is refused, naming them, while the ancestor has other children (unless --force),
or a disk it would remove has children of its own; --dry-run changes no file. `kill -9` of the
merge of a 256 MiB chain (VHD and VHDX, dynamic and fixed base) at moments spread over it:
before the resume every disk reads its old or new content (the ancestor, killed in the copy,
sector by sector, and the new one up to the recorded offset), then `merge --resume` (or
`repair`): content right, qemu-img check clean."""
import glob
import hashlib
import mmap
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import vhdtest as t

MIB = 1024 * 1024


def sha(b):
    return hashlib.sha256(b).hexdigest()


def file_hashes(d):
    out = {}
    for root, _, names in os.walk(d):
        for n in names:
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                out[p] = sha(f.read())
    return out


def random_writes(path, ref, rng, count=5, most=3 * MIB):
    for _ in range(count):
        off = rng.randrange(0, len(ref) - 1)
        n = rng.randrange(1, min(len(ref) - off, most) + 1)
        data = rng.randbytes(n)
        ref[off:off + n] = data
        if n < MIB:
            t.vhdheal("write", path, off, input=data)
            continue
        src = path + ".in"  # a large input from a file (a pipe from Python is slow)
        with open(src, "wb") as f:
            f.write(data)
        t.vhdheal("write", path, off, src)
        os.unlink(src)


def chain(d, fmt, depth, rng, size, lss=512, base_type="dynamic", count=5, most=3 * MIB):
    """base <- c1 <- ... <- c<depth>, each written: the paths (base first) and the references
    (the content each disk reads, base first)."""
    sfx = "" if fmt == "vhd" else "x"
    base = os.path.join(d, f"base.vhd{sfx}")
    args = ["create", "--format", fmt, "--type", base_type, "--size", size, base]
    if fmt == "vhdx":
        args[1:1] = ["--logical-sector-size", lss]
    t.vhdheal(*args)
    ref = bytearray(size)
    random_writes(base, ref, rng, count, most)
    paths, refs = [base], [bytes(ref)]
    for k in range(1, depth + 1):
        child = os.path.join(d, f"c{k}.avhd{sfx}")
        t.vhdheal("create", "--parent", paths[-1], child)
        random_writes(child, ref, rng, count, most)
        paths.append(child)
        refs.append(bytes(ref))
    return paths, refs


def check_ancestor(anc, want, name, lss, dynamic_base):
    fmt = t.info(anc)["format"]
    if fmt == "vhdx" and lss == 512:  # qemu's vhdx driver supports 512-byte sectors only
        r = subprocess.run(["qemu-img", "check", "-f", "vhdx", anc], capture_output=True)
        t.check(r.returncode == 0, f"{name}: qemu-img check: {r.stdout.decode()}")
    t.vhdiinfo(anc)  # raises when vhdiinfo refuses the file
    if t.info(anc)["parent"] is None and (fmt == "vhdx" or dynamic_base):
        t.check(sha(t.libvhdi_read([anc])) == want, f"{name}: libvhdi reads other content")


def merge_cases(d, rng):
    size = 24 * MIB
    cases = [  # format, depth, lss, base type, merged disk index, --into index (None: parent)
        ("vhd", 1, 512, "dynamic", 1, None),
        ("vhd", 3, 512, "dynamic", 2, 0),  # c2 and c1 into base; c3 relinked
        ("vhd", 3, 512, "fixed", 3, None),  # the top into its parent
        ("vhdx", 1, 512, "dynamic", 1, None),
        ("vhdx", 3, 512, "dynamic", 2, 0),
        ("vhdx", 3, 512, "dynamic", 1, None),  # c1 into base; c2 relinked
        ("vhdx", 1, 4096, "dynamic", 1, None),
        ("vhdx", 3, 4096, "dynamic", 3, 1),  # c3 and c2 into c1 (a differencing ancestor)
        ("vhdx", 3, 512, "fixed", 2, 0),
    ]
    for i, (fmt, depth, lss, btype, m, into) in enumerate(cases):
        name = f"case {i} {fmt} depth {depth} lss {lss} {btype}: merge c{m} into " + (
            "base" if into == 0 else f"c{into}" if into else "its parent")
        sub = os.path.join(d, f"case{i}")
        os.mkdir(sub)
        paths, refs = chain(sub, fmt, depth, rng, size, lss, btype)
        top = paths[-1]
        before = sha(t.read_all(top))
        t.check(before == sha(refs[-1]), f"{name}: vhdheal read differs from the reference")
        args = ["merge", paths[m]] + (["--into", paths[into]] if into is not None else [])
        r = t.vhdheal(*args, ok=False)
        if not t.check(r.returncode == 0, f"{name}: merge failed: {r.stderr.decode()}"):
            continue
        anc = paths[into if into is not None else m - 1]
        merged = paths[(into if into is not None else m - 1) + 1:m + 1]
        for p in merged:
            t.check(not os.path.exists(p), f"{name}: {p} was not removed")
        # the ancestor reads what the merged disk read; the top (relinked) reads what it did
        t.check(sha(t.read_all(anc)) == sha(refs[m]), f"{name}: the ancestor reads other content")
        if top not in merged:
            t.check(sha(t.read_all(top)) == before, f"{name}: the top reads other content")
        check_ancestor(anc, sha(refs[m]), name, lss, btype == "dynamic")
        r = t.vhdheal("check", sub, ok=False)
        t.check(r.returncode == 0, f"{name}: check after the merge: {r.stdout.decode()}")
        t.check(not glob.glob(os.path.join(sub, ".vhdheal", "merge-*")),
                f"{name}: a merge plan was left behind")
        plan_modes = [os.stat(p).st_mode & 0o777 for p in glob.glob(os.path.join(sub, ".vhdheal"))]
        t.check(all(m == 0o700 for m in plan_modes), f"{name}: .vhdheal mode {plan_modes}")


def refusals(d, rng):
    size = 8 * MIB
    for fmt in ("vhd", "vhdx"):
        sub = os.path.join(d, f"refuse-{fmt}")
        os.mkdir(sub)
        paths, refs = chain(sub, fmt, 2, rng, size, count=2, most=MIB)
        base, c1, c2 = paths
        sib = os.path.join(sub, "sibling." + os.path.basename(c1).split(".")[1])
        t.vhdheal("create", "--parent", base, sib)
        t.vhdheal("write", sib, 4097, input=b"sibling")
        other = os.path.join(sub, "other." + os.path.basename(c1).split(".")[1])
        t.vhdheal("create", "--parent", c1, other)
        before = file_hashes(sub)
        # --dry-run writes nothing (and creates no .vhdheal/)
        r = t.vhdheal("merge", "--dry-run", "--force", c1)
        t.check(b"would copy" in r.stdout and b"would remove" in r.stdout,
                f"{fmt}: dry run says {r.stdout!r}")
        t.check(file_hashes(sub) == before, f"{fmt}: --dry-run changed a file")
        t.check(not os.path.exists(os.path.join(sub, ".vhdheal")),
                f"{fmt}: --dry-run made .vhdheal")
        # the ancestor base has another child (sibling): refused, named
        r = t.vhdheal("merge", c1, ok=False)
        t.check(r.returncode == 2 and b"sibling" in r.stderr, f"{fmt}: refusal {r.stderr!r}")
        # c1 would be removed but has another child (other): refused even with --force
        r = t.vhdheal("merge", "--force", c2, "--into", base, ok=False)
        t.check(r.returncode == 2 and b"other" in r.stderr, f"{fmt}: intermediate {r.stderr!r}")
        after = {p: h for p, h in file_hashes(sub).items() if "/.vhdheal/" not in p}
        t.check(after == before, f"{fmt}: a refused merge changed a file")
        # not an ancestor
        r = t.vhdheal("merge", c1, "--into", c2, ok=False)
        t.check(r.returncode == 2 and b"not an ancestor" in r.stderr, f"{fmt}: {r.stderr!r}")
        # a base disk has nothing to merge
        r = t.vhdheal("merge", base, ok=False)
        t.check(r.returncode == 2, f"{fmt}: merging a base disk: {r.stderr!r}")
        # --force merges c1 into base although sibling uses base; c2 and other are relinked
        os.unlink(other)
        t.vhdheal("merge", "--force", c1)
        t.check(not os.path.exists(c1), f"{fmt}: c1 not removed")
        t.check(sha(t.read_all(c2)) == sha(refs[2]), f"{fmt}: c2 reads other content after --force")


def bad_plans(d):
    """A plan that is not one (garbage, a path out of the store, a symlink) is refused, named."""
    sub = os.path.join(d, "badplan")
    meta = os.path.join(sub, ".vhdheal")
    os.makedirs(meta)
    good = ("vhdheal-merge/1\nid\t1-a\nsize\t1048576\nphase\tcopy\ncopied\t0\n"
            "ancestor\tbase.vhdx\t1\t2\tvhdx\t00000000-0000-0000-0000-000000000001\t0\n"
            "member\tc1.avhdx\t1\t3\tvhdx\t00000000-0000-0000-0000-000000000002\t0\nend\n")
    bad = [b"\x00\xff garbage", good.replace("c1.avhdx", "../c1.avhdx").encode(),
           good.replace("end\n", "").encode(), good.replace("size\t1048576", "size\t-1").encode(),
           good.replace("\t0\nend", "\t7\nend").encode(),
           good.replace("id\t1-a", "id\t2-b").encode()]
    for k, text in enumerate(bad):
        with open(os.path.join(meta, "merge-1-a"), "wb") as f:
            f.write(text)
        r = t.vhdheal("merge", "--resume", "--store", sub, ok=False)
        t.check(r.returncode == 2 and b"merge-1-a" in r.stderr, f"bad plan {k}: {r.stderr!r}")
    os.unlink(os.path.join(meta, "merge-1-a"))
    os.symlink("/etc/passwd", os.path.join(meta, "merge-1-a"))
    r = t.vhdheal("merge", "--resume", "--store", sub, ok=False)
    t.check(r.returncode == 2 and b"merge-1-a" in r.stderr, f"symlinked plan: {r.stderr!r}")


def crafted_phases(d, tmpl, timing, names, fmt, ref):
    """Crash points a kill rarely hits, set up exactly: the copy done and nothing relinked; the
    child relinked but not recorded; relinked and recorded, the removal not begun. The ancestor
    is the one a finished merge left (timing), the rest the template's."""
    cases = [("relink", False, False), ("relink", True, False), ("remove", True, True)]
    for i, (phase, relinked, recorded) in enumerate(cases):
        sub = os.path.join(d, f"phase-{fmt}-{i}")
        os.makedirs(os.path.join(sub, ".vhdheal"))
        for k, src in enumerate((timing, tmpl, timing if relinked else tmpl)):
            subprocess.run(["cp", "--sparse=always", os.path.join(src, names[k]), sub],
                           check=True)  # keeps the holes

        def line(tag, name, done=0):
            p = os.path.join(sub, name)
            st = os.stat(p)
            return f"{tag}\t{name}\t{st.st_dev}\t{st.st_ino}\t{fmt}\t{t.info(p)['id']}\t{done}\n"
        size = os.path.getsize(ref[0])
        plan = (f"vhdheal-merge/1\nid\t9-{i}\nsize\t{size}\nphase\t{phase}\ncopied\t{size}\n" +
                line("ancestor", names[0]) + line("member", names[1]) +
                line("child", names[2], int(recorded)) + "end\n")
        with open(os.path.join(sub, ".vhdheal", f"merge-9-{i}"), "w") as f:
            f.write(plan)
        r = t.vhdheal("merge", "--resume", "--store", sub, ok=False)
        name = f"{fmt} {phase} (relinked {relinked}, recorded {recorded})"
        t.check(r.returncode == 0, f"{name}: resume: {r.stderr.decode()}")
        t.check(not os.path.exists(os.path.join(sub, names[1])), f"{name}: c1 not removed")
        t.check(reads(os.path.join(sub, names[2]), ref[2])[0],
                f"{name}: the top reads other content")
        t.check(reads(os.path.join(sub, names[0]), ref[1])[0],
                f"{name}: the ancestor reads other content")
        r = t.vhdheal("check", sub, ok=False)
        t.check(r.returncode == 0, f"{name}: check after the resume: {r.stdout.decode()}")
        shutil.rmtree(sub)


def reads(path, ref, ok=True):
    """Whether the disk at path reads the content in the file `ref` (`vhdheal read -o` beside
    it, then cmp: a 256 MiB pipe into Python is several times slower). For ok=False, a read
    that fails gives (None, the result) instead of raising; else (bool, the result)."""
    out = path + ".read"
    r = t.vhdheal("read", "-o", out, path, ok=ok)
    same = None
    if r.returncode == 0:
        same = subprocess.run(["cmp", "-s", out, ref]).returncode == 0
    if os.path.exists(out):
        os.unlink(out)
    return same, r


def plan_state(sub):
    """(phase, copied) of the one plan a killed merge left, or (None, 0)."""
    # a kill while the plan was saved leaves merge-ID.tmp beside it (removed by --resume)
    plans = [p for p in glob.glob(os.path.join(sub, ".vhdheal", "merge-*"))
             if not p.endswith(".tmp")]
    if not plans:
        return None, 0
    fields = dict(ln.split("\t", 1) for ln in open(plans[0]).read().splitlines() if "\t" in ln)
    return fields["phase"], int(fields["copied"])


def old_or_new(path, old, new, copied):
    """Whether the ancestor at path, a merge killed in its copy, reads sector by sector either
    its old content (file `old`) or its new one (file `new`), and the new one up to the offset
    the plan recorded."""
    out = path + ".read"
    t.vhdheal("read", "-o", out, path)
    with open(out, "rb") as g, open(old, "rb") as o, open(new, "rb") as n:
        got, old, new = (mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) for f in (g, o, n))
    os.unlink(out)
    if got[:copied] != new[:copied] or len(got) != len(old):
        return False
    step = 64 * 1024
    for off in range(copied - copied % step, len(got), step):
        g = got[off:off + step]
        if g != old[off:off + step] and g != new[off:off + step]:
            for s in range(off, off + len(g), 512):
                if got[s:s + 512] not in (old[s:s + 512], new[s:s + 512]):
                    return False
    return True


def read_before_resume(path, ref, fmt, name):
    """A disk a killed merge left in place reads the content in file `ref`; a VHDX one whose
    chain reaches the ancestor the copy began to write may instead be refused for that
    ancestor's new identity (DataWriteGuid) until the resume relinks it: never other content."""
    same, r = reads(path, ref, ok=False)
    if r.returncode == 0:
        t.check(same, f"{name}: {os.path.basename(path)} reads other content before the resume")
    else:
        t.check(fmt == "vhdx" and b"id-mismatch" in r.stderr,
                f"{name}: {os.path.basename(path)} cannot be read before the resume: "
                f"{r.stderr.decode()}")


def kill_rounds(d, rng, rounds, fmt, base_type):
    """kill -9 of a merge of a 256 MiB chain (base <- c1 <- c2, c1 into base) at random moments;
    before the resume every disk reads its old or new content; resume; content right."""
    size = 256 * MIB
    tmpl = os.path.join(d, f"kill-template-{fmt}-{base_type}")
    os.mkdir(tmpl)
    paths, refs = chain(tmpl, fmt, 2, rng, size, base_type=base_type, count=8, most=32 * MIB)
    names = [os.path.basename(p) for p in paths]
    ref = []  # the references as files, for cmp
    for k, content in enumerate(refs):
        ref.append(os.path.join(d, f"ref{k}"))
        with open(ref[-1], "wb") as f:
            f.write(content)
    # how long an uninterrupted merge takes, to spread the kills over it
    timing = os.path.join(d, f"kill-timing-{fmt}")
    subprocess.run(["cp", "-r", "--sparse=always", tmpl, timing], check=True)
    start = time.monotonic()
    t.vhdheal("merge", os.path.join(timing, names[1]))
    took = time.monotonic() - start
    t.check(reads(os.path.join(timing, names[2]), ref[2])[0], "uninterrupted merge")
    if base_type == "dynamic":  # the phases do not depend on the base's type
        crafted_phases(d, tmpl, timing, names, fmt, ref)
    shutil.rmtree(timing)
    killed = interrupted = 0
    k = -1
    while k + 1 < rounds or (not interrupted and k + 1 < rounds + 6):  # more if none hit
        k += 1
        name = f"{fmt} {base_type} round {k}"
        sub = os.path.join(d, f"kill-{fmt}-{k}")
        subprocess.run(["cp", "-r", "--sparse=always", tmpl, sub], check=True)
        # the kills spread over the merge past its start-up, each at a random point of its share
        delay = took * (0.15 + 0.8 * ((k % rounds) + rng.uniform(0.05, 0.95)) / rounds)
        p = subprocess.Popen([t.VHDHEAL, "merge", os.path.join(sub, names[1])],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(delay)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            killed += 1
        p.wait()
        phase, copied = plan_state(sub)
        started = phase is not None or not os.path.exists(os.path.join(sub, names[1]))
        interrupted += phase is not None
        print(f"{name}: kill after {delay:.3f}s of {took:.3f}s: "
              f"{phase or ('finished' if started else 'not started')} {copied}")
        # the machine's load changes how long a merge takes: aim the next kills again
        if phase is None and started:
            took = min(took, delay) * 0.7
        elif not started:
            took *= 1.5
        # before the resume: each disk reads its old or its new content
        base = os.path.join(sub, names[0])
        base_old = reads(base, ref[0])[0]
        t.check(base_old or reads(base, ref[1])[0] or
                phase == "copy" and old_or_new(base, ref[0], ref[1], copied),
                f"{name}: the ancestor reads neither its old nor its new content")
        if os.path.exists(os.path.join(sub, names[1])):
            read_before_resume(os.path.join(sub, names[1]), ref[1], fmt, name)
        read_before_resume(os.path.join(sub, names[2]), ref[2], fmt, name)
        if k % 2 == 0:
            r = t.vhdheal("merge", "--resume", "--store", sub, ok=False)
        else:
            r = t.vhdheal("repair", "--json", sub, ok=False)  # repair finishes a merge first
            t.check(r.stdout.startswith(b"{"), f"{name}: repair --json: {r.stdout!r}")
        t.check(r.returncode == 0, f"{name}: resume: {r.stderr.decode()}")
        t.check(not glob.glob(os.path.join(sub, ".vhdheal", "merge-*")),
                f"{name}: a plan is left after the resume")
        if not started:  # killed before its plan was written: nothing changed, nothing to do
            t.check(base_old, f"{name}: a merge killed before it began changed the base")
            shutil.rmtree(sub)
            continue
        t.check(not os.path.exists(os.path.join(sub, names[1])), f"{name}: c1 not removed")
        t.check(reads(os.path.join(sub, names[2]), ref[2])[0],
                f"{name}: the top reads other content after the resume")
        t.check(reads(base, ref[1])[0],
                f"{name}: the ancestor reads other content after the resume")
        if fmt == "vhdx":
            r = subprocess.run(["qemu-img", "check", "-f", "vhdx", os.path.join(sub, names[0])],
                               capture_output=True)
            t.check(r.returncode == 0, f"{name}: qemu-img check: {r.stdout.decode()}")
        shutil.rmtree(sub)
    shutil.rmtree(tmpl)
    for f in ref:
        os.unlink(f)
    t.check(killed > 0 and interrupted > 0,
            f"{fmt} {base_type}: no round interrupted a merge (a merge takes {took:.3f}s)")


def main():
    rng = random.Random(int(os.environ.get("VH_SEED", "12")))
    with tempfile.TemporaryDirectory() as d:
        merge_cases(d, rng)
        refusals(d, rng)
        bad_plans(d)
        rounds = int(os.environ.get("VH_KILL_ROUNDS", "2"))
        for fmt in ("vhdx", "vhd"):
            for base_type in ("dynamic", "fixed"):
                kill_rounds(d, rng, rounds, fmt, base_type)
    t.finish("merge")


if __name__ == "__main__":
    sys.exit(main())
