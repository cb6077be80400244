"""The documentation: the command reference matches the parsers, relative links resolve, and the user docs say
what the software does rather than point at the issue tracker or at commits.

User docs are README.md, CONTRIBUTING.md, CHANGELOG.md and docs/*.md; docs/commands.md is generated from the
parsers (tools/command_reference.py), so only its links are checked. Every check reads the files as they are, so it
holds for whatever README.md the repository has.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.conftest import REPO

GENERATED = {"docs/commands.md"}

#: A GitHub-style issue or pull-request reference: "#10", "(#11)"; not an HTML entity ("&#123;") or a word's tail.
ISSUE_REF = re.compile(r"(?<![\w&])#\d+\b")
#: A commit-hash-looking token (7-40 hex digits, at least one a digit) next to the word "commit(s)".
_HASH = r"(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{7,40}"
COMMIT_REF = re.compile(rf"\bcommits?\b[\s`'\"(:#]*\b({_HASH})\b|\b({_HASH})\b[\s`'\")]*\bcommits?\b", re.IGNORECASE)
#: Inline links and images, [text](target "title"), and reference definitions, [label]: target.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]"  # [text] or ![alt], one level of nested [...]
                         r"\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")  # (target "title")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")


def doc_files(*, generated: bool) -> list[Path]:
    """README.md, CONTRIBUTING.md, CHANGELOG.md and docs/*.md that exist (with or without generated ones)."""
    files = [REPO / name for name in ("README.md", "CONTRIBUTING.md", "CHANGELOG.md")]
    files += sorted((REPO / "docs").glob("*.md"))
    return [f for f in files if f.is_file() and (generated or rel(f) not in GENERATED)]


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line outside fenced code blocks."""
    out, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None:
            if m:
                fence = m.group(1)
                continue
            out.append((number, line))
        elif m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not line.strip()[len(m.group(1)):]:
            fence = None
    return out


def link_targets(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every Markdown link and image outside code."""
    found = []
    for number, line in prose_lines(text):
        line = INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line)
        targets = [m.group(1) for m in INLINE_LINK.finditer(line)]
        ref = REFERENCE_LINK.match(line)
        if ref:
            targets.append(ref.group(1))
        found += [(number, t[1:-1] if t.startswith("<") else t) for t in targets]
    return found


def broken_links(path: Path) -> list[str]:
    """'file:line: target' for every relative link whose file does not exist (anchors and schemes skipped)."""
    problems = []
    for number, target in link_targets(path.read_text(encoding="utf-8")):
        if SCHEME.match(target) or target.startswith("#"):
            continue  # http(s), mailto, ...; or an anchor in this file
        local = unquote(target.split("#", 1)[0].split("?", 1)[0])
        resolved = REPO / local.lstrip("/") if local.startswith("/") else path.parent / local
        if not resolved.exists():
            problems.append(f"{rel(path)}:{number}: link to {target!r}, but {shown(resolved)} does not exist")
    return problems


def shown(path: Path) -> str:
    """A resolved link target as a path from the repository root where it is inside it."""
    normal = Path(os.path.normpath(path))
    try:
        return normal.relative_to(REPO).as_posix()
    except ValueError:
        return str(normal)


def tracker_references(path: Path) -> list[str]:
    """'file:line: ...' for every issue reference outside code blocks and every commit hash next to 'commit'."""
    text = path.read_text(encoding="utf-8")
    problems = []
    for number, line in prose_lines(text):
        for m in ISSUE_REF.finditer(line):
            problems.append(f"{rel(path)}:{number}: issue reference {m.group(0)!r} in {around(line, m)!r}")
    for number, line in enumerate(text.splitlines(), 1):
        for m in COMMIT_REF.finditer(line):
            problems.append(f"{rel(path)}:{number}: commit hash {m.group(1) or m.group(2)!r} in {around(line, m)!r}")
    return problems


def around(line: str, m: re.Match[str], width: int = 50) -> str:
    """The match with up to `width` characters of its line on either side."""
    start, end = max(0, m.start() - width), min(len(line), m.end() + width)
    return ("..." if start else "") + line[start:end].strip() + ("..." if end < len(line) else "")


HOW = ("say what the software does and what was measured (docs/benchmarks.md), without issue numbers or "
       "commit hashes")


def test_command_reference_matches_the_parsers() -> None:
    result = subprocess.run([sys.executable, "tools/command_reference.py", "--check"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (
        f"docs/commands.md does not match the command line's parsers (exit {result.returncode}): "
        f"{result.stderr.strip() or result.stdout.strip()}; run python tools/command_reference.py")


@pytest.mark.parametrize("path", doc_files(generated=True), ids=rel)
def test_relative_links_point_to_files_that_exist(path: Path) -> None:
    problems = broken_links(path)
    assert not problems, "broken relative links:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", [p for p in doc_files(generated=False) if rel(p) != "README.md"], ids=rel)
def test_user_docs_hold_no_issue_numbers_or_commit_hashes(path: Path) -> None:
    problems = tracker_references(path)
    assert not problems, f"{rel(path)} should {HOW}:\n" + "\n".join(problems)


def test_readme_holds_no_issue_numbers_or_commit_hashes() -> None:
    """The same check on README.md, whatever README.md the repository holds."""
    readme = REPO / "README.md"
    assert readme.is_file(), "README.md is missing"
    problems = tracker_references(readme)
    assert not problems, f"README.md should {HOW}:\n" + "\n".join(problems)


def test_every_user_doc_is_checked() -> None:
    names = {rel(p) for p in doc_files(generated=False)}
    assert {"README.md", "CONTRIBUTING.md", "CHANGELOG.md"} <= names, f"user docs found: {sorted(names)}"
    assert any(n.startswith("docs/") for n in names), f"no docs/*.md found beside {sorted(names)}"


SAMPLE = """\
# Title

See [method](docs/method.md#the-idea), ![a picture](docs/images/none.png), [web](https://example.org/page#top),
[mail](mailto:a@b.c), [here](#title) and `[not a link](nowhere.md)`.
Fixed in #10 (see (#11)); &#123; is an entity, C#5 a word, commit 3ef439f and 835328e0 commit are hashes,
"commit the changes" and a bare 3ef439f are not.
[ref]: docs/missing.md

```text
#12 in a code block, and [a link](in-code.md)
```
"""


def test_checks_find_what_they_should(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scanners on a sample: they report each kind of problem, with its line, and nothing else."""
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "method.md").write_text("# Method\n")
    sample = tmp_path / "SAMPLE.md"
    sample.write_text(SAMPLE)

    links = broken_links(sample)
    assert [p.split(": ")[0] for p in links] == ["SAMPLE.md:3", "SAMPLE.md:7"], links
    assert "docs/images/none.png" in links[0] and "docs/missing.md" in links[1], links

    refs = tracker_references(sample)
    assert [p.split(": ", 1)[1].split(" in ")[0] for p in refs] == [
        "issue reference '#10'", "issue reference '#11'", "commit hash '3ef439f'", "commit hash '835328e0'"], refs
    assert all(p.startswith("SAMPLE.md:5: ") for p in refs), refs
