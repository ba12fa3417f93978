"""What a report reads: run directories, found directly or inside comparison directories.

``utilgen report`` takes run directories (they hold ``summary.json``) and directories that
hold many runs: ``utilgen compare``'s (``comparison.json`` beside ``<name>/seed-<n>/``) and
the demo's (``<dataset>/<strategy>/[seed-<n>/]``). :func:`collect_runs` expands them, reads
every run once and refuses, before anything is written, a path that is neither, or two
different runs that claim the same dataset, strategy and seed (the paired tests would not
know which to use).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from utilgen.errors import UtilgenError
from utilgen.pool.layout import RoundLayout, RunLayout
from utilgen.report import load_summary

log = logging.getLogger(__name__)

COMPARISON_FILE = "comparison.json"
BASELINE_STRATEGIES = ("real-only", "static", "real-only-full")
"""Strategies that use no utility: the rest are utility-guided."""
MAX_SEARCH_DEPTH = 3  # DIR/<dataset>/<strategy>/seed-<n>/ is the deepest layout written


class MissingData(Exception):
    """A run lacks what a figure or table needs; the message says what, and the report
    shows it in the figure's place."""


@dataclass(frozen=True)
class ReportRun:
    """One finished run: its summary, resolved config and every round's metrics."""

    run_dir: Path
    summary: dict[str, Any]
    config: dict[str, Any]
    round_metrics: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def dataset(self) -> str:
        return str(self.summary.get("dataset", ""))

    @property
    def strategy(self) -> str:
        return str(self.summary.get("strategy", ""))

    @property
    def seed(self) -> int:
        return int(self.summary.get("seed", 0))

    @property
    def label(self) -> str:
        """``strategy (dataset, seed n)``: how figures and tables name the run."""
        return f"{self.strategy} ({self.dataset}, seed {self.seed})"

    @property
    def feedback_components(self) -> list[str]:
        return list((self.config.get("feedback") or {}).get("components") or [])

    @property
    def layout(self) -> RunLayout:
        """The run directory's paths."""
        return RunLayout(self.run_dir)


@dataclass(frozen=True)
class ReportInputs:
    """The runs to report on and, when the arguments were one comparison directory, the
    comparison it holds (None: compute it from the runs)."""

    runs: list[ReportRun]
    comparison: dict[str, Any] | None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UtilgenError(
            f"{path} is corrupt; delete it and re-run the command that wrote it"
        ) from None
    if not isinstance(value, dict):
        raise UtilgenError(f"{path} does not hold a JSON object; re-run the command that wrote it")
    return value


def _round_metrics(run_dir: Path) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for index, directory in RunLayout(run_dir).round_dirs():
        path = RoundLayout(directory).metrics
        if path.is_file():
            out[index] = _read_json(path)
    return out


def read_run(run_dir: str | Path) -> ReportRun:
    """A finished run directory, read; a one-line error if it is not one."""
    run_dir = Path(run_dir)
    summary = load_summary(run_dir).summary
    config_path = RunLayout(run_dir).config
    config: dict[str, Any] = {}
    if config_path.is_file():
        loaded = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        config = loaded if isinstance(loaded, dict) else {}
    return ReportRun(run_dir, summary, config, _round_metrics(run_dir))


def find_run_dirs(root: Path, depth: int = MAX_SEARCH_DEPTH) -> Iterator[Path]:
    """Run directories under ``root`` (not ``root`` itself), sorted, at most ``depth``
    levels down; a run's own sub-directories are not searched."""
    if depth < 1:
        return
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if RunLayout(child).summary.is_file():
            yield child
        else:
            yield from find_run_dirs(child, depth - 1)


GROUP_KEYS = ("dataset", "strategy", "n", "seeds", "synthetic_samples", "vs")
STAT_KEYS = ("mean", "ci95", "values")


def comparison_problem(comparison: Mapping[str, Any]) -> str | None:
    """What keeps ``comparison`` from being read as
    :func:`~utilgen.report.comparison_stats.compare_summaries` writes it, or None when nothing
    does."""
    missing = [k for k in ("metrics", "baselines", "groups") if k not in comparison]
    if missing:
        return f"it has no {missing[0]!r}"
    for group in comparison["groups"]:
        keys = [*GROUP_KEYS, *comparison["metrics"]]
        absent = [k for k in keys if k not in group]
        absent += [
            f"{m}.{k}"
            for m in comparison["metrics"]
            if m in group
            for k in STAT_KEYS
            if k not in group[m]
        ]
        if absent:
            return f"a group has no {absent[0]!r}"
    return None


def _usable_comparison(path: Path) -> dict[str, Any] | None:
    """The comparison at ``path`` when it has compare_summaries' layout, else None."""
    comparison = _read_json(path)
    problem = comparison_problem(comparison)
    if problem is None:
        return comparison
    log.warning("%s is not as utilgen compare writes it (%s); recomputing it", path, problem)
    return None


def expand_paths(paths: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """(run directories, comparison files) named by ``paths``, in order, duplicates dropped.

    Raises:
        UtilgenError: a path does not exist, or is neither a run directory nor a directory
            holding runs.
    """
    runs: list[Path] = []
    comparisons: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise UtilgenError(
                f"{path} not found; pass a run directory (with summary.json) or a "
                "directory written by `utilgen compare` or `utilgen demo`"
            )
        if RunLayout(path).summary.is_file():
            found = [path]
        else:
            found = list(find_run_dirs(path))
            if not found:
                raise UtilgenError(
                    f"{path} holds no finished run (no summary.json in it or up to "
                    f"{MAX_SEARCH_DEPTH} levels below); pass the --out of `utilgen run`, "
                    "`utilgen compare` or `utilgen demo`"
                )
            if (path / COMPARISON_FILE).is_file():
                comparisons.append(path / COMPARISON_FILE)
        for run_dir in found:
            if run_dir.resolve() not in {r.resolve() for r in runs}:
                runs.append(run_dir)
    return runs, comparisons


def check_unique(runs: Sequence[ReportRun]) -> None:
    seen: dict[tuple[str, str, int], Path] = {}
    for run in runs:
        key = (run.dataset, run.strategy, run.seed)
        if key in seen:
            raise UtilgenError(
                f"{seen[key]} and {run.run_dir} are both seed {run.seed} of {run.strategy} on "
                f"{run.dataset}; pass only one of them"
            )
        seen[key] = run.run_dir


def collect_runs(paths: Sequence[str | Path]) -> ReportInputs:
    """Read every run ``paths`` name (module docstring); the comparison is kept only when
    ``paths`` is a single directory holding ``comparison.json``."""
    run_dirs, comparison_files = expand_paths(paths)
    runs = [read_run(d) for d in run_dirs]
    check_unique(runs)
    comparison = None
    if len(paths) == 1 and len(comparison_files) == 1:
        comparison = _usable_comparison(comparison_files[0])
    return ReportInputs(runs, comparison)


def strategy_order(strategy: str) -> tuple[int, str]:
    """Sort key: the baselines first, in :data:`BASELINE_STRATEGIES` order, then the rest."""
    if strategy in BASELINE_STRATEGIES:
        return BASELINE_STRATEGIES.index(strategy), ""
    return len(BASELINE_STRATEGIES), strategy


def representatives(runs: Sequence[ReportRun]) -> list[ReportRun]:
    """The lowest-seed run of each (dataset, strategy): per-run figures show one seed each,
    so that the report stays readable and fast with many seeds."""
    best: dict[tuple[str, str], ReportRun] = {}
    for run in runs:
        key = (run.dataset, run.strategy)
        if key not in best or run.seed < best[key].seed:
            best[key] = run
    return [best[k] for k in sorted(best, key=lambda k: (k[0], strategy_order(k[1])))]


def by_dataset(runs: Sequence[ReportRun]) -> dict[str, list[ReportRun]]:
    """Runs grouped by dataset (sorted), each group in strategy order then seed."""
    out: dict[str, list[ReportRun]] = {}
    for run in sorted(runs, key=lambda r: (r.dataset, strategy_order(r.strategy), r.seed)):
        out.setdefault(run.dataset, []).append(run)
    return out
