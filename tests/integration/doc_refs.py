#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""doc_refs - the repository explains itself: every doc/NAME.md that code, tests, scripts, man
pages or the README name exists; every section they cite is there (`doc/formats.md §2.5` a
heading 2.5 or the 5th item of §2's list, `doc/design.md "Journal"` a heading "Journal"); and
nothing points at notes outside the repository (DESIGN.md, FORMATS.md, STYLE.md, ../shared
except its test corpus)."""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vhdtest as t  # noqa: E402
from vhdtest import check  # noqa: E402

SRC = os.path.realpath(os.environ.get("VH_SRCDIR") or
                       os.path.join(os.path.dirname(__file__), "..", ".."))
SKIP_DIRS = {".git", "doc", "subprojects"}
TEXT = (".c", ".h", ".py", ".sh", ".md", ".1", ".8", ".build", ".txt")


def sources():
    """The repository's text files outside doc/ and build folders: (relative path, text)."""
    for top, dirs, names in os.walk(SRC):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith("build")
                   and not os.path.exists(os.path.join(top, d, "meson-private"))]
        for n in names:
            p = os.path.join(top, n)
            rel = os.path.relpath(p, SRC)
            if rel == "tests/integration/doc_refs.py":  # names what it looks for
                continue
            if n.endswith(TEXT) or rel.startswith(("scripts/", ".ci/")):
                with open(p, encoding="utf-8", errors="replace") as f:
                    yield rel, f.read().replace("\\-", "-")  # man pages escape hyphens


def headings(doc):
    """Section names and numbers of a doc: "Journal", "2.5", "4a", and "4.15" for the 15th
    item of a numbered list under heading 4."""
    found, current = set(), None
    for line in doc.splitlines():
        m = re.match(r"#+\s+(?:(\d+[a-z]?(?:\.\d+)*)\.?\s+)?(.*?)\s*$", line)
        if m:
            current = m.group(1)
            if m.group(1):
                found.add(m.group(1))
            found.add(m.group(2))
            continue
        m = re.match(r"(\d+)\.\s", line)
        if m and current:
            found.add(f"{current}.{m.group(1)}")
    return found


def main():
    docs = {}
    folder = os.path.join(SRC, "doc")
    for n in os.listdir(folder) if check(os.path.isdir(folder), "doc/ is missing") else []:
        with open(os.path.join(SRC, "doc", n), encoding="utf-8") as f:
            docs[n] = headings(f.read())
    cited = 0
    for rel, text in sources():
        for m in re.finditer(r"\b(DESIGN\.md|FORMATS\.md|STYLE\.md|\.\./shared(?!/corpus)\S*)",
                             text):
            check(False, f"{rel}: points at {m.group(1)}, outside the repository (use doc/)")
        for m in re.finditer(r"doc/([\w-]+\.md)((?:'s)? (?:§([0-9][0-9a-z.]*[0-9a-z])|"
                             r"\"([^\"]+)\"))?", text):
            name, section = m.group(1), m.group(3) or m.group(4)
            cited += 1
            if not check(name in docs, f"{rel}: doc/{name} does not exist"):
                continue
            if section:
                check(section in docs[name], f"{rel}: doc/{name} has no section {section!r}")
    check(cited > 50, f"only {cited} citations of doc/ found: is the source tree there?")
    print(f"{cited} citations of doc/ checked in {SRC}")
    t.finish("doc_refs")


if __name__ == "__main__":
    main()
