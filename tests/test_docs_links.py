"""Every link and repository path in README.md and docs/*.md exists inside the repository.

A user's clone has only what the repository holds, so the docs must not send readers to
files beside it (``shared/...``, ``../...``, ``/work/...``). Two kinds of reference are
checked:

* markdown links ``[text](target)`` and ``[label]: target``, resolved from the file that holds
  them; web addresses and ``#anchors`` are skipped;
* paths written in the text (backticked, plain or in code blocks) whose first folder is a
  top-level folder of the repository (``src/``, ``docs/``, ``tests/``, ``benchmarks/``,
  ``configs/``) or ``shared/``, read from the repository root; a ``*`` is a glob that must
  match something. Run-directory examples (``RUN/rounds/...``, ``DIR/<dataset>/...``) and
  users' own paths (``/models/sd``, ``~/.cache/utilgen``) start elsewhere and are not read.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# First folders of the paths the docs cite; shared/ lives beside the repository, not in it.
REPO_FOLDERS = ("src", "docs", "tests", "benchmarks", "configs")
OUTSIDE_FOLDERS = ("shared",)

_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
_INLINE_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
# A run of path characters holding at least one slash.
_PATH_TOKEN = re.compile(r"[\w.~*/<>{}+-]*/[\w.~*/<>{}+-]*")


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _inside(path: Path) -> bool:
    try:
        path.resolve().relative_to(ROOT)
    except ValueError:
        return False
    return True


def _exists(path: Path) -> bool:
    if "*" in path.name or any("*" in part for part in path.parts):
        rel = path.relative_to(ROOT) if path.is_absolute() else path
        return any(ROOT.glob(rel.as_posix()))
    return path.exists()


def link_problems(doc: Path, text: str) -> list[str]:
    """Markdown link targets of ``doc`` that are missing or lie outside the repository."""
    problems = []
    targets = _INLINE_LINK.findall(text) + _REFERENCE_LINK.findall(text)
    for target in targets:
        if _URL.match(target) or target.startswith(("#", "mailto:")):
            continue
        path_part = target.split("#", 1)[0]
        if not path_part:
            continue
        if path_part.startswith(("/", "~")):
            problems.append(f"{_relative(doc)}: link {target!r} is an absolute path")
            continue
        resolved = (doc.parent / path_part).resolve()
        if not _inside(resolved):
            problems.append(f"{_relative(doc)}: link {target!r} points outside the repository")
        elif not resolved.exists():
            problems.append(f"{_relative(doc)}: link {target!r} does not exist")
    return problems


def path_problems(doc: Path, text: str) -> list[str]:
    """Repository paths written in ``doc`` that are missing or lie outside the repository."""
    problems = []
    # Link targets are read from their own file's folder by link_problems, not from here.
    prose = _REFERENCE_LINK.sub("", _INLINE_LINK.sub("]()", _URL.sub(" ", text)))
    for token in _PATH_TOKEN.findall(prose):
        token = token.rstrip(".,:;")
        parts = [p for p in token.split("/") if p not in ("", ".")]
        if not parts:
            continue
        where = f"{_relative(doc)}: {token!r}"
        if token.startswith(("/", "~")):
            # A user's own path (/models/sd, ~/.cache/utilgen) is fine; one that walks into
            # a copy of the repository or of shared/ is not.
            if any(p in REPO_FOLDERS + OUTSIDE_FOLDERS for p in parts):
                problems.append(f"{where} is an absolute path; write it from the repository root")
            continue
        if parts[0] == "..":
            if any(p in REPO_FOLDERS + OUTSIDE_FOLDERS for p in parts) or token.endswith(".md"):
                problems.append(f"{where} points outside the repository")
            continue
        if parts[0] in OUTSIDE_FOLDERS:
            problems.append(f"{where} is outside the repository (a clone has no {parts[0]}/)")
            continue
        if parts[0] not in REPO_FOLDERS or any(c in token for c in "<>{}") or "..." in token:
            continue  # not a repository path, or a pattern with placeholders
        path = ROOT.joinpath(*parts)
        if not _inside(path):
            problems.append(f"{where} points outside the repository")
        elif not _exists(path):
            problems.append(f"{where} does not exist in the repository")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=_relative)
def test_links_and_paths_stay_inside_the_repository(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    problems = link_problems(doc, text) + path_problems(doc, text)
    assert not problems, "\n".join(problems)


def test_the_checker_finds_what_it_must() -> None:
    """The checks themselves can fail: each kind of bad reference is reported."""
    doc = ROOT / "docs" / "example.md"
    bad = (
        "See `shared/DESIGN.md`, [design](../../shared/DESIGN.md), [abs](/work/x.md),\n"
        "src/utilgen/no_such_module.py, /work/main/docs/x.md and [gone](missing.md).\n"
    )
    problems = link_problems(doc, bad) + path_problems(doc, bad)
    text = "\n".join(problems)
    for needle in (
        "'shared/DESIGN.md' is outside",
        "'../../shared/DESIGN.md' points outside",
        "'/work/x.md' is an absolute path",
        "no_such_module.py' does not exist",
        "'/work/main/docs/x.md' is an absolute path",
        "'missing.md' does not exist",
    ):
        assert needle in text, text
    good = (
        "[readme](../README.md), [web](https://example.org/a/b), [here](#top), "
        "`tests/test_docs_links.py`, benchmarks/*.py, `RUN/rounds/000/metrics.json`, "
        "`DIR/<dataset>/<strategy>/`, ~/.cache/utilgen, /models/stable-diffusion-v1-5, "
        "`configs/<name>.yaml`, `src/utilgen/...`"
    )
    assert link_problems(doc, good) + path_problems(doc, good) == []
