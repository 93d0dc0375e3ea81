"""Every relative link in the README and docs/ resolves: to a file or folder of the repository, and to a heading
or an `<a id>` of the page it names. Links to the web and to mail are not checked (no network here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# [text](target) and ![alt](target); the target ends at whitespace or ")" (an optional "title" may follow).
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def links(text: str) -> list[str]:
    """Link targets outside fenced code blocks and inline code."""
    prose = re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))
    return LINK.findall(prose)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    found, seen = set(ANCHOR.findall(text)), {}
    for heading in HEADING.findall(text):
        base = slug(heading)
        n = seen.get(base, 0)
        found.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return found


def broken(page: Path, root: Path = REPO) -> list[str]:
    problems = []
    for target in links(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(root)}: {target}"
        if not resolved.exists():
            problems.append(f"{where} (no such file)")
        elif root not in resolved.parents and resolved != root:
            problems.append(f"{where} (outside the repository)")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            problems.append(f"{where} (no heading #{fragment})")
    return problems


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken(page) == []


def test_the_checker_finds_broken_links_and_skips_code(tmp_path: Path) -> None:
    """The checker itself, on a small tree: a missing file, a missing heading and a path outside the tree are
    reported; links in code are not links."""
    (tmp_path / "docs" / "results").mkdir(parents=True)
    (tmp_path / "README.md").write_text("# Top\n")
    (tmp_path / "docs" / "results" / "pareto.png").write_bytes(b"")
    page = tmp_path / "docs" / "probe.md"
    page.write_text(
        "# A `title`, here\n\n[ok](#a-title-here) [gone](no/such.md) [bad](../README.md#nowhere)\n"
        "[top](../README.md#top) ![img](results/pareto.png) [out](../../)\n\n```\n[x](missing.md)\n```\n"
        "`[y](missing.md)` [web](https://example.org/x)\n"
    )
    assert broken(page, tmp_path) == [
        "docs/probe.md: no/such.md (no such file)",
        "docs/probe.md: ../README.md#nowhere (no heading #nowhere)",
        "docs/probe.md: ../../ (outside the repository)",
    ]


def test_slugs_follow_github() -> None:
    assert slug("6. The tests") == "6-the-tests"
    assert (
        slug("The `cpu` teacher: epochs, precision, and the single pass")
        == "the-cpu-teacher-epochs-precision-and-the-single-pass"
    )
    assert slug("Measured: Ray on one 2-core machine") == "measured-ray-on-one-2-core-machine"
