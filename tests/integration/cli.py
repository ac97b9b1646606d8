#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""cli - the vhdheal command line as documented: every subcommand takes exactly the options its
synopses name (vhdheal --help, the man page, the README); check and repair parse all of theirs
in one run; `undo --list` prints one line per repair even for a name holding a newline; and
`check --json` names a file whose name is not UTF-8 so that the path finds the file again
(each invalid byte as the lone surrogate \\udcXX: doc/json-check.md)."""
import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vhdtest as t  # noqa: E402
from vhdtest import check  # noqa: E402

SRC = os.environ.get("VH_SRCDIR") or os.path.join(os.path.dirname(__file__), "..", "..")
COMMANDS = ["info", "check", "repair", "reconnect", "create", "write", "read", "undo"]


def run(*args):
    """vhdheal with str or bytes arguments; stdout and stderr as bytes."""
    return subprocess.run([t.VHDHEAL, *args], capture_output=True)


def ok(*args):
    p = run(*args)
    if p.returncode != 0:
        raise RuntimeError(f"vhdheal {args}: rc {p.returncode}: {p.stderr.decode(errors='replace')}")
    return p


def options_in(text):
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*|-[a-z])\b", text))


def help_options(cmd):
    """The options the subcommand's parser knows (its --help): one set of names (a short name
    and its long one) per option, --help itself left out."""
    out = ok(cmd, "--help").stdout.decode()
    out = out.split("Application Options:", 1)[1] if "Application Options:" in out else ""
    return [options_in(line.split("  ")[1]) for line in out.splitlines()
            if re.match(r"\s+-", line)]


def synopsis_options(lines):
    """Per subcommand, the options of synopsis lines "vhdheal CMD ..." (an indented line that
    names no command continues the one above); a `#` starts a comment."""
    per, cmd = {}, None
    for line in lines:
        m = re.match(r"\s*vhdheal (\w+)(.*)", line)
        if m:
            cmd, rest = m.group(1), m.group(2)
        elif cmd and re.match(r"\s+\[?-", line):
            rest = line
        else:
            cmd = None
            continue
        per.setdefault(cmd, set()).update(options_in(rest.split("#", 1)[0]))
    return per


def usage_options():
    """Per subcommand, the options `vhdheal --help` names."""
    p = run("--help")
    return synopsis_options((p.stdout + p.stderr).decode().splitlines())


def man_options():
    """Per subcommand, the options of its SYNOPSIS lines in vhdheal.1."""
    with open(os.path.join(SRC, "chain", "cli", "vhdheal.1")) as f:
        man = f.read()
    synopsis = man.split(".SH SYNOPSIS", 1)[1].split(".SH", 1)[0].replace("\\-", "-")
    per = {}
    for part in synopsis.split(".br"):
        m = re.search(r"\.B vhdheal (\w+)", part)
        if m:
            per.setdefault(m.group(1), set()).update(options_in(part.replace(m.group(0), "", 1)))
    return per


def readme_options():
    """Per subcommand, the options of the README's synopsis block (## vhdheal)."""
    with open(os.path.join(SRC, "README.md")) as f:
        readme = f.read()
    return synopsis_options(readme.split("## vhdheal\n", 1)[1].split("```", 2)[1].splitlines())


def documented_options():
    """Each option of the parser is named in each synopsis (by one of its names), and each name
    there is an option of the parser."""
    usage, man, readme = usage_options(), man_options(), readme_options()
    for cmd in COMMANDS:
        parsed = help_options(cmd)
        known = set().union(*parsed)
        for where, doc in (("vhdheal --help", usage), ("vhdheal.1", man), ("README", readme)):
            got = doc.get(cmd, set())
            missing = [sorted(names) for names in parsed if not names & got]
            check(not missing, f"{cmd}: {where} does not name {missing}")
            check(got <= known, f"{cmd}: {where} names {sorted(got - known)}, unknown to it")


def make_chain(store, rel_base, rel_child):
    """A VHD base with one child beside it (paths may be bytes); returns their full paths."""
    base, kid = os.path.join(store, rel_base), os.path.join(store, rel_child)
    os.makedirs(os.path.dirname(base), exist_ok=True)
    ok("create", "--format", "vhd", "--size", "8M", base)
    ok("create", "--parent", base, kid)
    return base, kid


def check_and_repair_options(d):
    store = os.path.join(d, "opts")
    make_chain(store, "vm/base.vhd", "vm/kid.avhd")
    p = run("check", "--json", "--store", store, "--winroot", "D:\\VMs", "--maxdepth", "5", store)
    check(p.returncode == 0, f"check with every option: rc {p.returncode} {p.stderr!r}")
    if p.returncode == 0:
        doc = json.loads(p.stdout)
        check(doc["winroot"] == "D:\\VMs" and doc["summary"]["links"] == 1, f"check: {doc}")
    p = run("check", "--maxdepth", "1", store)
    check(p.returncode == 1 and b"too-deep" in p.stdout, f"check --maxdepth 1: {p.stdout!r}")
    p = run("repair", "--dry-run", "--json", "--store", store, "--winroot", "D:\\VMs",
            "--maxdepth", "5", store)
    check(p.returncode == 0 and json.loads(p.stdout)["dry_run"] is True,
          f"repair with every option: rc {p.returncode} {p.stderr!r}")
    p = run("repair", "-n", store)
    check(p.returncode == 0, f"repair -n: rc {p.returncode} {p.stderr!r}")
    p = run("check", "--dry-run", store)
    check(p.returncode == 2 and b"Unknown option" in p.stderr,
          f"check --dry-run is repair's option: rc {p.returncode} {p.stderr!r}")


def undo_list_newline(d):
    store = os.path.join(d, "nl")
    os.makedirs(os.path.join(store, ".vhdheal"))
    base, kid = make_chain(store, "vm/base.vhd", "vm/two\nlines.avhd")
    os.makedirs(os.path.join(store, "archive"))
    os.rename(base, os.path.join(store, "archive", "base.vhd"))
    p = run("repair", store)
    check(p.returncode == 0, f"repair of the child named with a newline: rc {p.returncode} "
          f"{p.stderr!r}")
    out = ok("undo", "--list", "--store", store).stdout.decode()
    lines = out.splitlines()
    check(len(lines) == 1, f"undo --list: one repair, one line: {out!r}")
    check("vm/two\\nlines.avhd" in out, f"undo --list escapes the newline: {out!r}")
    rid = lines[0].split()[0] if lines else "none"
    p = run("undo", "--store", store, rid)
    check(p.returncode == 0, f"undo {rid} of the listed id: rc {p.returncode} {p.stderr!r}")


def json_non_utf8(d):
    # a child renamed to a name that is not UTF-8, its parent moved to another such name
    store = os.path.join(d, "bytes").encode()
    base, kid = make_chain(store, b"vm/base.vhd", b"vm/kid.avhd")
    os.rename(kid, os.path.join(store, b"vm", b"caf\xe9-\xff\xfe.avhd"))
    archive = os.path.join(store, b"archive", b"old\xe9.vhd")
    os.makedirs(os.path.dirname(archive))
    os.rename(base, archive)
    p = run("check", "--json", store)
    check(p.returncode == 1, f"check: one broken link: rc {p.returncode} {p.stderr!r}")
    doc = json.loads(p.stdout)  # must parse as it is: the escapes are plain ASCII
    check(all(b < 0x80 for b in p.stdout), "check --json: the document is ASCII here")
    link = doc["links"][0] if doc["links"] else {}
    child, target = link.get("child", ""), link.get("heal_target") or ""
    check(os.fsencode(child) == b"vm/caf\xe9-\xff\xfe.avhd", f"child back as bytes: {child!r}")
    check(os.fsencode(target) == b"archive/old\xe9.vhd", f"heal_target back as bytes: {target!r}")
    for rel in (child, target):
        check(os.path.isfile(os.path.join(store, os.fsencode(rel))), f"{rel!r} finds the file")
    check("\ufffd" not in json.dumps(doc, ensure_ascii=False), "no U+FFFD anywhere")
    # a valid UTF-8 name is written as it is
    ustore = os.path.join(d, "utf8")
    make_chain(ustore, "vm/café.vhd", "vm/café-1.avhd")
    doc = json.loads(ok("check", "--json", ustore).stdout)
    check(doc["links"][0]["parent"] == "vm/café.vhd", f"UTF-8 name: {doc['links'][0]}")


def main():
    with tempfile.TemporaryDirectory(prefix="vh_cli_") as d:
        documented_options()
        check_and_repair_options(d)
        undo_list_newline(d)
        json_non_utf8(d)
    t.finish("cli")


if __name__ == "__main__":
    main()
