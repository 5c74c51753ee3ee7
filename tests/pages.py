"""What the tests of the pages share: GitHub's heading anchors of a page, the configuration
reference's defaults, and the pages `perpdex ... --help` names. No tests here."""
from __future__ import annotations

import re
from pathlib import Path

import msgspec

from tests.harness import ROOT, perpdex

FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to -."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


def documented_defaults(title: str, section_struct) -> None:
    """Every key of `section_struct` has a row in the section `title` of config.md, with its
    default."""
    page = (ROOT / "docs" / "config.md").read_text()
    section = page.split(f"## `{title}`")[1].split("\n## ")[0]
    for name, value in msgspec.structs.asdict(section_struct()).items():
        row = re.search(rf"^\| `{name}` \|[^|]*\| `([^`]*)` \|", section, re.M)
        assert row and row.group(1) == msgspec.json.encode(value).decode(), name


def help_points_at_documentation_that_exists(args):
    """`perpdex ARGS --help` names pages, and each page (and anchor) it names exists."""
    r = perpdex(*args, "--help", cwd=ROOT)
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())        # argparse wraps lines
    pages = re.findall(r"\b((?:docs/)?[\w-]+\.md)(?:#([\w-]+))?", text)
    assert pages, f"`perpdex {' '.join(args)} --help` names no documentation"
    for page, anchor in pages:
        where = f"(named by `perpdex {' '.join(args)} --help`)"
        assert (ROOT / page).is_file(), f"{page} {where}"
        assert not anchor or anchor in anchors(ROOT / page), f"{page}#{anchor} {where}"
