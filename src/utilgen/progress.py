"""Progress bars for long work, silenced by ``--quiet``.

Bars go to stderr so that tables and JSON on stdout stay clean for pipes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_state = {"quiet": False}
_console = Console(stderr=True)


def set_quiet(quiet: bool) -> None:
    """Turn every progress bar off (``--quiet``) or back on."""
    _state["quiet"] = quiet


def is_quiet() -> bool:
    return _state["quiet"]


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A transient bar; yields ``advance(n)``. A no-op when quiet."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=_console,
        transient=True,
        # A bar redrawn into a log file is noise: bars only on an interactive terminal.
        disable=_state["quiet"] or not _console.is_terminal,
    )
    with progress:
        task = progress.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            progress.advance(task, n)

        yield advance


def _no_advance(n: int = 1) -> None:
    """The ``advance`` of work shown without a bar."""


def progress_or_nothing(
    description: str, total: int | None, progress: bool
) -> AbstractContextManager[Callable[[int], None]]:
    """:func:`progress_bar` when ``progress`` is on, else a context yielding a no-op
    ``advance``."""
    if progress:
        return progress_bar(description, total)
    return nullcontext(_no_advance)
