"""Every relative link in README.md and docs/*.md names a file that exists, and every #anchor a heading there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.S | re.M)


def _prose(text: str) -> str:
    """The page without its fenced code blocks (a link in an example is not a link)."""
    return _FENCE.sub("", text)


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to hyphens, and
    ``-1``, ``-2`` ... appended to repeats."""
    anchors: set[str] = set()
    for line in _prose(text).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).replace("`", "").lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in anchors:
            n += 1
            candidate = f"{slug}-{n}"
        anchors.add(candidate)
    return anchors


def relative_links(text: str) -> list[str]:
    return [target for target in _LINK.findall(_prose(text)) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def broken_links(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in relative_links(text):
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved.read_text(encoding="utf-8")):
            broken.append(f"{target}: no heading with this anchor")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO_ROOT)))
def test_relative_links_resolve(page):
    assert broken_links(page) == []


def test_the_checker_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## `llara init`\n\n## Results\n\n## Results\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#llara-init) [ok](other.md#results-1) ![ok](other.md) [web](https://example.org/x.md)\n"
        "[self](#a-heading)\n\n## A heading\n\n```\n[in code](missing.md)\n```\n"
        "[gone](missing.md) [bad anchor](other.md#nothing)\n"
    )
    assert broken_links(page) == ["missing.md: no such file", "other.md#nothing: no heading with this anchor"]
