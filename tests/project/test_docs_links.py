"""Every link in the README and docs/ resolves inside the repository: a clone is enough to read
the rules the engine follows. Relative links must name a file that exists; an anchor
(`file.md#section`, or `#section` on the same page) must name a heading of that page, slugged the
way GitHub slugs headings."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.pages import FENCE, anchors, slug

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def links(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text()))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_anchor_resolves_inside_the_repository(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):          # http:, https:, mailto: are not ours to check
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_page_repeats_a_heading(page):
    """A repeated heading is a section written twice, or an empty one left behind; its link
    would go to the first."""
    headings = [line.strip() for line in FENCE.sub("", page.read_text()).splitlines()
                if re.match(r"#{1,6}\s", line)]
    assert len(headings) == len(set(headings)), sorted(
        h for h in set(headings) if headings.count(h) > 1)


def test_no_page_points_outside_the_repository_in_plain_text():
    """`../shared/...` in prose is a link a clone cannot follow, even when not written as one."""
    offenders = [p.relative_to(ROOT).as_posix() for p in PAGES if "../shared" in p.read_text()]
    assert not offenders


def test_the_anchor_slug_follows_github():
    assert slug("The mark price") == "the-mark-price"
    assert slug("`too_many_orders` and *amend*") == "too_many_orders-and-amend"
    assert slug("Accounts and money: A/B") == "accounts-and-money-ab"


def test_every_engine_bug_marked_in_the_tests_is_named_in_the_limits_page():
    """A test marked xfail(strict=True) for an engine bug is a known gap: docs/limits.md says so."""
    page = (ROOT / "docs" / "limits.md").read_text()
    marked = re.compile(r"@pytest\.mark\.xfail\(strict=True, reason=\(?\s*\"engine bug"
                        r".*?\ndef (test_\w+)", re.S)          # the next function is the one
    names = [n for f in sorted((ROOT / "tests").rglob("test_*.py"))
             for n in marked.findall(f.read_text())]
    assert not [n for n in names if n not in page]   # none is open today
