"""Shared by the fuzz tests (issue 11, item 4): running a property at two sizes, scratch
folders per case, and listings of what a case wrote.

Every fuzz test runs its property through :func:`fuzz`, parametrised by :data:`SIZES`: a
small, derandomised run in the default suite (the same cases on every machine, so CI is
reproducible) and a larger sweep under ``-m slow``. Each run prints how many cases it
tried and how they ended, the numbers behind the "fuzz cases run per input kind" table
(``pytest -s tests/reliability/test_fuzz_*.py``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from utilgen.errors import UtilgenError

SIZES = [
    pytest.param(1, id="fast"),
    pytest.param(20, id="sweep", marks=pytest.mark.slow),
]
"""Multipliers of a test's default case count: 1 in the default suite, 20 in the sweep."""


def fuzz(
    name: str,
    strategy: st.SearchStrategy[Any],
    check: Callable[[Any], str],
    examples: int,
    explicit: Sequence[Any] = (),
) -> Counter[str]:
    """Run ``check`` on ``examples`` cases drawn from ``strategy`` (after the ``explicit``
    ones, which are always run first) and return how many ended in each outcome.

    ``check`` returns the outcome's name (``"ok"``, or the error class) and raises when the
    case breaks the contract. The search is derandomised and keeps no example database, so
    a run depends on nothing but the code.
    """
    outcomes: Counter[str] = Counter()
    for case in explicit:
        outcomes[check(case)] += 1

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(case: Any) -> None:
        outcomes[check(case)] += 1

    run()
    total = sum(outcomes.values())
    print(f"\nfuzz {name}: {total} cases, " + ", ".join(f"{k} {v}" for k, v in outcomes.items()))
    return outcomes


def outcome(call: Callable[[], Any], allowed: type[UtilgenError] = UtilgenError) -> str:
    """Run ``call``: ``"ok"`` if it returns, the class name of an ``allowed`` error, which
    must be one line naming the problem; any other exception propagates and fails the case."""
    try:
        call()
    except allowed as err:
        message = str(err)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        assert len(message) < 2000, f"{len(message)} characters: {message[:200]}..."
        return type(err).__name__
    return "ok"


@contextmanager
def scratch(parent: Path) -> Iterator[Path]:
    """A fresh folder under ``parent`` for one case, deleted afterwards: hundreds of cases
    share one pytest ``tmp_path``."""
    folder = Path(tempfile.mkdtemp(dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def utilgen(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """``utilgen --quiet ARGS`` in this process: ``"exit 0"``, or ``"exit 2"`` after checking
    the contract for bad input (exactly one ``utilgen: error:`` line, no traceback); any
    other exit code or exception fails the case."""
    from utilgen.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--quiet", *args])
    code, err = exit_info.value.code or 0, capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err, err
    if code:
        lines = [line for line in err.splitlines() if "error" in line.lower()]
        assert len(lines) == 1 and lines[0].startswith("utilgen: error: "), err
    return f"exit {code}"


def listing(root: Path) -> dict[str, int]:
    """Every file and folder under ``root`` (relative path -> size, -1 for folders)."""
    return {
        str(p.relative_to(root)): (-1 if p.is_dir() else p.stat().st_size) for p in root.rglob("*")
    }


def changes(before: dict[str, int], after: dict[str, int]) -> set[str]:
    """Paths added, removed or resized between two listings."""
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
