"""The README and the pages under docs/: every relative link leads to an existing file (and, with
``#anchor``, to a heading of that file, named as GitHub names it), and the README stays short."""
from __future__ import annotations

import pathlib
import re
import urllib.parse

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README_MAX_LINES = 260

_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"(?<!!)\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def pages() -> list[pathlib.Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` outside fenced code blocks, inline code spans blanked out."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, re.sub(r"`[^`]*`", lambda m: " " * len(m.group(0)), line)))
    return out


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, markup and punctuation dropped (letters,
    digits, ``_``, ``-`` and spaces kept), each space a ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = text.lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in "_- ")
    return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    """The anchors of a Markdown file's headings; repeated headings get ``-1``, ``-2``... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else _HEADING.match(line)
        if match:
            slug = github_slug(match.group(2))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def broken_links(path: pathlib.Path, root: pathlib.Path = ROOT) -> list[str]:
    """``file:line: target: why`` for each relative link of ``path`` that leads nowhere (paths
    shown relative to ``root``)."""
    problems = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for target in _LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                continue
            file_part, _, fragment = target.partition("#")
            dest = (path.parent / urllib.parse.unquote(file_part)).resolve() if file_part else path
            where = f"{path.relative_to(root)}:{number}: {target}"
            if not dest.exists():
                problems.append(f"{where}: {dest.relative_to(root) if dest.is_relative_to(root) else dest} "
                                "does not exist")
            elif fragment and dest.suffix == ".md" and urllib.parse.unquote(fragment) not in anchors(dest):
                problems.append(f"{where}: no heading with anchor #{fragment} in {dest.relative_to(root)}")
    return problems


def test_github_slug_matches_githubs_anchors():
    # Anchors as github.com renders them for these headings.
    assert github_slug("Fine-tuning encoders: `mode=trainable` and `mode=lora`") == \
        "fine-tuning-encoders-modetrainable-and-modelora"
    assert github_slug("MELD, text only (frozen all-MiniLM-L6-v2)") == "meld-text-only-frozen-all-minilm-l6-v2"
    assert github_slug("Sweeps: the suite's experiment files") == "sweeps-the-suites-experiment-files"


def test_broken_links_are_found(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A part\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md) [ok](other.md#a-part) [ok](#here) `[code](missing.md)`\n"
                    "# Here\n[bad](missing.md) [bad](other.md#nowhere) [web](https://example.org/x)\n"
                    "```\n[in a block](missing.md)\n```\n")
    problems = broken_links(page, root=tmp_path)
    assert len(problems) == 2, problems
    assert "page.md:3: missing.md" in problems[0]
    assert "#nowhere" in problems[1]


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_somewhere(page):
    assert broken_links(page) == []


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines; move detail into docs/ (at most {README_MAX_LINES})")


def test_docs_pages_exist_and_are_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    docs = sorted((ROOT / "docs").glob("*.md"))
    assert docs, "docs/ has no pages"
    unlinked = [p.name for p in docs if f"(docs/{p.name}" not in readme]
    assert unlinked == [], f"docs pages the README does not link to: {unlinked}"
