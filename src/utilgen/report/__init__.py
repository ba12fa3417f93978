"""Reports over run directories: a results table per run and across runs.

``summary.json`` of each run is the single source; tables are rendered as Markdown (for
``report.md`` and pasting into papers and issues) and as a rich table for the terminal.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from utilgen.atomic import write_text_atomic
from utilgen.errors import UtilgenError

COLUMNS: tuple[tuple[str, str], ...] = (
    ("dataset", "dataset"),
    ("strategy", "strategy"),
    ("seed", "seed"),
    ("n_train_real", "real"),
    ("n_train_synthetic", "synthetic"),
    ("label_fidelity", "label fidelity"),
    ("accuracy", "top-1"),
    ("worst_class_ratio", "worst/best class"),
    ("macro_f1", "macro-F1"),
    ("ece", "ECE"),
    ("train_val_gap", "train-val gap"),
)


@dataclass(frozen=True)
class RunSummary:
    """A run directory and its parsed ``summary.json``."""

    run_dir: Path
    summary: dict[str, Any]


def load_summary(run_dir: str | Path) -> RunSummary:
    """Read ``RUN/summary.json``; a one-line error if the run has not finished."""
    # here, not at the top: the CLI imports this module, and the pool package loads pyarrow
    from utilgen.pool.layout import RunLayout

    run_dir = Path(run_dir)
    path = RunLayout(run_dir).summary
    if not run_dir.is_dir():
        raise UtilgenError(f"run directory {run_dir} not found; pass the --out of a finished run")
    if not path.is_file():
        raise UtilgenError(
            f"{path} not found: the run has not finished; "
            "re-run its `utilgen run` command to resume it"
        )
    try:
        return RunSummary(run_dir, json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UtilgenError(
            f"{path} is corrupt; delete it and re-run the run's command to rewrite it"
        ) from None


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def table_rows(runs: Sequence[RunSummary]) -> list[list[str]]:
    """One row of formatted cells per run, in :data:`COLUMNS` order."""
    return [[_cell(r.summary.get(key)) for key, _ in COLUMNS] for r in runs]


def to_markdown(runs: Sequence[RunSummary]) -> str:
    """The results table as GitHub Markdown."""
    header = [title for _, title in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(runs)]
    return "\n".join(lines) + "\n"


def to_rich_table(runs: Sequence[RunSummary], title: str = "utilgen results") -> Table:
    """The results table for the terminal."""
    table = Table(title=title)
    for key, name in COLUMNS:
        numeric = key not in ("dataset", "strategy")
        table.add_column(name, justify="right" if numeric else "left")
    for row in table_rows(runs):
        table.add_row(*row)
    return table


def fidelity_rich_table(run: RunSummary) -> Table | None:
    """Per-class label fidelity of a run's generated samples (None if it generated none)."""
    per_class: dict[str, float | None] = run.summary.get("label_fidelity_per_class") or {}
    if not per_class:
        return None
    s = run.summary
    table = Table(title=f"label fidelity: {s.get('name')} ({s.get('generator')})")
    table.add_column("class")
    table.add_column("label fidelity", justify="right")
    for name, value in per_class.items():
        table.add_row(name, _cell(value))
    table.add_row("overall", _cell(run.summary.get("label_fidelity")))
    return table


def _per_class_markdown(summary: dict[str, Any]) -> str:
    per_class: dict[str, float] = summary.get("per_class_accuracy", {})
    lines = ["| class | accuracy |", "|---|---|"]
    lines += [f"| {name} | {acc:.4f} |" for name, acc in per_class.items()]
    return "\n".join(lines) + "\n"


def _fidelity_markdown(summary: dict[str, Any]) -> str:
    per_class: dict[str, float | None] = summary.get("label_fidelity_per_class") or {}
    if not per_class:
        return ""
    lines = [
        "\n## Label fidelity of generated samples (stage-1 real-data classifier)\n",
        "| class | label fidelity |",
        "|---|---|",
    ]
    lines += [f"| {name} | {_cell(value)} |" for name, value in per_class.items()]
    return "\n".join(lines) + "\n"


def write_run_report(run_dir: str | Path) -> Path:
    """Write ``RUN/report.md`` from the run's summary; returns its path."""
    from utilgen.pool.layout import RunLayout

    run = load_summary(run_dir)
    s = run.summary
    text = (
        f"# utilgen run: {s.get('name')} ({s.get('strategy')} on {s.get('dataset')}, "
        f"seed {s.get('seed')})\n\n"
        + to_markdown([run])
        + "\n## Per-class test accuracy\n\n"
        + _per_class_markdown(s)
        + _fidelity_markdown(s)
    )
    return write_text_atomic(RunLayout(run_dir).report_md, text)
