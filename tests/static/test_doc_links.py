"""Every relative link in README.md and docs/*.md reaches a file, and its #anchor a heading
(test process): moving a section between docs must not leave links behind."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def anchors(doc: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    text = FENCE.sub("", doc.read_text())
    return {
        re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in text.splitlines()
        if line.startswith("#")
    }


def broken(doc: Path) -> list[str]:
    out = []
    for match in LINK.finditer(FENCE.sub("", doc.read_text())):
        link = match[1]
        if re.match(r"[a-z]+:", link):
            continue
        path, _, anchor = link.partition("#")
        target = (doc.parent / path) if path else doc
        if not target.exists():
            out.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            out.append(f"{link}: no such heading")
    return out


def test_every_relative_link_resolves() -> None:
    problems = {doc.name: broken(doc) for doc in DOCS}
    assert {k: v for k, v in problems.items() if v} == {}


def test_the_check_can_fail(tmp_path: Path) -> None:
    doc = tmp_path / "a.md"
    doc.write_text("# Title here\n\n[x](#title-here) [y](#gone) [z](b.md) [w](https://e.org)\n")
    assert broken(doc) == ["#gone: no such heading", "b.md: no such file"]
