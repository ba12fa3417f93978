"""``utilgen demo``: every strategy that applies, on the bundled datasets, over 3 seeds.

Layout: ``DIR/<dataset>/<strategy>/seed-<n>/`` are run directories (``--fast``: one seed,
``DIR/<dataset>/<strategy>/``). Per dataset the demo runs ``real-only`` (k real samples per
class: what synthetic data has to beat), ``static`` (plus one round of samples from class
prompts) and each utility-guided strategy that applies to it (digits: GenDataAgent,
UtilGen and U-DPO with Diffusion-DPO; BBC News: U-DPO), each from its shipped preset with
the demo's smaller budgets. It then measures sample efficiency (accuracy against number of
synthetic samples, :mod:`utilgen.commands.efficiency`) of ``static`` and of the best
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

from utilgen.commands.efficiency import efficiency_curve
from utilgen.commands.parallel import PlannedRun, WorkerPool, run_jobs_for, run_key
from utilgen.commands.schedule import Job, results_in_order
from utilgen.config import RunConfig, load_config, preset_path
from utilgen.loop.results import Summary
from utilgen.loop.run import RunResult
from utilgen.report.comparison_stats import BASELINES, compare_summaries, write_comparison
from utilgen.report.efficiency_curves import compare_to_static
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

# The demo's budgets, smaller than the presets' (which follow the papers) so that the
# whole demo fits in 30 minutes on 2 CPU cores (--fast: 8). Every strategy of a dataset
# shares the split, the task model and its training; the feedback strategies keep their
# papers' structure (utility-ranked selection of a third of what they generate, rounds,
# DPO) with fewer samples and optimiser steps.
DEMO: dict[str, tuple[str, ...]] = {
    # Pretraining the built-in generator is the costliest step of a digits seed: batch 32
    # instead of 64 halves it for a label fidelity of 0.95 instead of 0.97
    # (benchmarks/RESULTS.md, builtin_fidelity.py).
    "digits": ("generator.builtin.train_batch_size=32",),
    # Encoding every article with MiniLM dominates on CPU: fewer, shorter articles.
    "bbc-news": ("data.max_per_class=120", "task.max_length=128"),
}
FAST: dict[str, tuple[str, ...]] = {"digits": (), "bbc-news": ()}


def _digits_feedback(score: str) -> tuple[str, ...]:
    """Generate 20 per class, train on the 10 with the highest ``score`` (as many as static
    trains on), 100 DPO steps."""
    return (
        "generator.per_class=20",
        f"valuation.selection=[{{rule: top_k, score: {score}, k: 10}}]",
        "feedback.diffusion_dpo.steps=100",
    )


_BBC_TEXT = ("generator.lm.max_new_tokens=64",)
# Per strategy, on top of the dataset's; applied to every seed.
STRATEGY: dict[tuple[str, str], tuple[str, ...]] = {
    ("digits", "utilgen"): (
        *_digits_feedback("meta_weight"),
        # 2 Adam steps on 40 requests at once (8 at once is 3x slower on CPU), prompt
        # gradients through the last 5 of 25 denoising steps (the noise's need all), one
        # fixed-point refinement per inversion step: the instance level still costs more
        # than the rest of the run
        "feedback.prompt_ascent.steps=2",
        "feedback.prompt_ascent.batch_size=40",
        "feedback.prompt_ascent.backprop_steps=5",
        "feedback.noise_opt.steps=2",
        "feedback.noise_opt.batch_size=40",
        "feedback.noise_opt.inversion_fixed_point=1",
    ),
    ("digits", "udpo"): _digits_feedback("composite"),
    # SmolLM2 writes a 64-token article in 3-5 s on one core: 4 per class per round.
    ("bbc-news", "static"): (*_BBC_TEXT, "generator.per_class=4"),
    # A LoRA adapter, not the preset's full fine-tune: a few pairs of 4 texts a class show
    # the mechanics, and the fine-tuned model would add 0.5 GB to every seed's run directory.
    ("bbc-news", "udpo"): (
        *_BBC_TEXT,
        "generator.per_class=4",
        "feedback.dpo.epochs=1",
        "feedback.dpo.lora=true",
        "feedback.dpo.learning_rate=5e-5",
    ),
}
# --fast: one seed and fewer rounds / samples still.
FAST_STRATEGY: dict[tuple[str, str], tuple[str, ...]] = {
    ("digits", "gendataagent"): ("loop.rounds=2",),
}


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
            if fast:
                extra += FAST_STRATEGY.get((dataset, strategy), ())
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
    out: Path, plan: Sequence[DemoEntry], comparison: dict[str, Any], pool: WorkerPool
) -> list[dict[str, Any]]:
    """Efficiency curves of static and the best utility-guided strategy per dataset, then
    the ratio of samples each needs to reach static's final accuracy."""
    jobs = []
    for entry in plan:
        best = _best_guided(comparison, entry.dataset)
        if entry.strategy not in ("static", best):
            continue
        for seed in entry.seeds:
            log.info(
                "demo: sample efficiency of %s / %s seed %d", entry.dataset, entry.strategy, seed
            )
            run_dir = run_dir_of(out, entry, seed)
            jobs.append(
                Job(
                    f"efficiency:{run_dir}",
                    efficiency_curve,
                    (run_dir, EFFICIENCY_FRACTIONS),
                    cost=_EFFICIENCY_COST,
                )
            )
    return compare_to_static(results_in_order(jobs, pool.run(jobs)))


# Seconds one run takes on one CPU thread (fast demo, measured): what orders the runs
# when several share the CPU; only the ratios matter.
_COST: dict[tuple[str, str], float] = {
    ("digits", "real-only"): 10,
    ("digits", "static"): 25,
    ("digits", "gendataagent"): 50,
    ("digits", "udpo"): 60,
    ("digits", "utilgen"): 200,
    ("bbc-news", "real-only"): 15,
    ("bbc-news", "static"): 105,
    ("bbc-news", "udpo"): 225,
}
_DEFAULT_COST = 60.0
_EFFICIENCY_COST = 15.0


def _planned(out: Path, configs: Sequence[tuple[DemoEntry, int, RunConfig]]) -> list[PlannedRun]:
    return [
        PlannedRun(
            config,
            run_dir_of(out, entry, seed),
            _COST.get((entry.dataset, entry.strategy), _DEFAULT_COST),
        )
        for entry, seed, config in configs
    ]


def run_demo(out: str | Path = "utilgen-demo", fast: bool = False, jobs: int = 1) -> DemoResult:
    """Run every demo entry over its seeds into ``out`` (``jobs`` runs at a time, critical
    chains first: :mod:`utilgen.commands.schedule`), then compare, measure sample efficiency
    and write ``out/comparison.json`` and ``out/report.html``."""
    out = Path(out)
    plan = demo_plan(fast)
    configs = [(entry, seed, demo_config(entry, seed)) for entry in plan for seed in entry.seeds]
    planned = _planned(out, configs)
    # The demo reports over all its runs at the end, not run by run.
    with WorkerPool(jobs) as pool:
        results_by_key = pool.run(run_jobs_for(planned, report=False))
        results = [
            RunResult(p.run_dir, Summary.from_dict(results_by_key[run_key(p.run_dir)]))
            for p in planned
        ]
        comparison = compare_summaries([r.summary.to_dict() for r in results])
        efficiency = _efficiency(out, plan, comparison, pool)
    comparison["sample_efficiency"] = efficiency
    write_comparison(out, comparison)
    html, _ = build_report([r.run_dir for r in results], out, comparison)
    return DemoResult(results, comparison, html, efficiency)
