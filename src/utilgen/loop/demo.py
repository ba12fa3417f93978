"""``utilgen demo``: every strategy that applies, on the bundled datasets, over 3 seeds.

Layout: ``DIR/<dataset>/<strategy>/seed-<n>/`` are run directories (``--fast``: one seed,
``DIR/<dataset>/<strategy>/``). Per dataset the demo runs ``real-only`` (k real samples per
class: what synthetic data has to beat), ``static`` (plus one round of samples from class
prompts) and each utility-guided strategy that applies to it (digits: GenDataAgent,
UtilGen and U-DPO with Diffusion-DPO; BBC News: U-DPO), each from its shipped preset with
the demo's smaller budgets. It then measures sample efficiency (accuracy against number of
synthetic samples, :mod:`utilgen.loop.efficiency`) of ``static`` and of the best
utility-guided strategy per dataset, and writes ``DIR/comparison.json`` (per dataset and
strategy: seeds, mean and 95% CI of ``accuracy`` and ``worst_class_ratio``, synthetic
samples used, paired t-tests, and the sample-efficiency rows) and ``DIR/report.html`` /
``report.md``. Every run resumes, so re-running the command after a crash finishes the
rest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utilgen.config import RunConfig, load_config, preset_path
from utilgen.loop.efficiency import efficiency_curve
from utilgen.loop.run import RunResult, run
from utilgen.report.compare import BASELINES, compare_summaries, write_comparison
from utilgen.report.efficiency import compare_to_static
from utilgen.report.html import build_report

log = logging.getLogger(__name__)

DEMO_DATASETS = ("digits", "bbc-news")
STRATEGIES: dict[str, tuple[str, ...]] = {
    "digits": ("real-only", "static", "gendataagent", "utilgen", "udpo"),
    "bbc-news": ("real-only", "static", "udpo"),
}
SEEDS = 3
FAST_SEEDS = 1
# Sample-efficiency fractions: few points keep the demo inside its time budget.
EFFICIENCY_FRACTIONS = (0.0, 0.25, 0.5, 1.0)

# The demo's budgets, smaller than the presets' (which follow the papers); every run of a
# dataset shares them so strategies compare at equal cost per round.
DEMO: dict[str, tuple[str, ...]] = {
    "digits": (),
    # Encoding every article with MiniLM dominates on CPU: fewer, shorter articles.
    "bbc-news": ("data.max_per_class=120", "task.max_length=128"),
}
FAST: dict[str, tuple[str, ...]] = {
    "digits": (),
    "bbc-news": (),
}
# Per strategy, on top of the dataset's (e.g. fewer DPO steps); applied to every seed.
STRATEGY: dict[tuple[str, str], tuple[str, ...]] = {}


@dataclass(frozen=True)
class DemoEntry:
    """One strategy of the demo on one dataset, run once per seed."""

    dataset: str
    strategy: str
    preset: str
    overrides: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class DemoResult:
    """The demo's runs, its comparison (as written to ``comparison.json``) and report."""

    runs: list[RunResult]
    comparison: dict[str, Any]
    report: Path
    efficiency: list[dict[str, Any]] = field(default_factory=list)


def demo_plan(fast: bool) -> list[DemoEntry]:
    """The demo's entries; ``fast`` runs one seed with the smaller --fast budgets."""
    seeds = tuple(range(FAST_SEEDS if fast else SEEDS))
    plan = []
    for dataset in DEMO_DATASETS:
        sizing = DEMO[dataset] + (FAST[dataset] if fast else ())
        for strategy in STRATEGIES[dataset]:
            extra = STRATEGY.get((dataset, strategy), ())
            plan.append(
                DemoEntry(dataset, strategy, f"{dataset}-{strategy}", sizing + extra, seeds)
            )
    return plan


def demo_config(entry: DemoEntry, seed: int = 0) -> RunConfig:
    """The resolved config of one demo run."""
    return load_config(
        preset_path(entry.preset),
        [
            *entry.overrides,
            f"seed={seed}",
            f"strategy={entry.strategy}",
            f"name={entry.dataset}-{entry.strategy}",
        ],
    )


def run_dir_of(out: Path, entry: DemoEntry, seed: int) -> Path:
    """``out/<dataset>/<strategy>[/seed-<n>]``: seed folders only with several seeds."""
    base = out / entry.dataset / entry.strategy
    return base / f"seed-{seed}" if len(entry.seeds) > 1 else base


def _best_guided(comparison: dict[str, Any], dataset: str) -> str | None:
    """The utility-guided strategy with the highest mean top-1 on ``dataset``."""
    guided = [
        g
        for g in comparison["groups"]
        if g["dataset"] == dataset and g["strategy"] not in BASELINES
    ]
    if not guided:
        return None
    return str(max(guided, key=lambda g: g["accuracy"]["mean"])["strategy"])


def _efficiency(
    out: Path, plan: Sequence[DemoEntry], comparison: dict[str, Any]
) -> list[dict[str, Any]]:
    """Efficiency curves of static and the best utility-guided strategy per dataset, then
    the ratio of samples each needs to reach static's final accuracy."""
    curves = []
    for entry in plan:
        best = _best_guided(comparison, entry.dataset)
        if entry.strategy not in ("static", best):
            continue
        for seed in entry.seeds:
            log.info("demo: sample efficiency of %s / %s seed %d", entry.dataset, entry.strategy,
                     seed)
            curves.append(efficiency_curve(run_dir_of(out, entry, seed), EFFICIENCY_FRACTIONS))
    return compare_to_static(curves)


def run_demo(out: str | Path = "utilgen-demo", fast: bool = False) -> DemoResult:
    """Run every demo entry over its seeds into ``out``, then compare, measure sample
    efficiency and write ``out/comparison.json`` and ``out/report.html``."""
    out = Path(out)
    plan = demo_plan(fast)
    configs = [(entry, seed, demo_config(entry, seed)) for entry in plan for seed in entry.seeds]
    results = []
    for entry, seed, config in configs:
        log.info("demo: %s / %s, seed %d", entry.dataset, entry.strategy, seed)
        results.append(run(config, run_dir_of(out, entry, seed)))
    comparison = compare_summaries([r.summary for r in results])
    efficiency = _efficiency(out, plan, comparison)
    comparison["sample_efficiency"] = efficiency
    write_comparison(out, comparison)
    html, _ = build_report([r.run_dir for r in results], out, comparison)
    return DemoResult(results, comparison, html, efficiency)
