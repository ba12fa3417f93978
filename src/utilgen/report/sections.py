"""The report's sections, each built from the run directories alone.

A section shows its figure or table only where the runs hold the data, and otherwise says
``not available: <why>``; nothing is estimated or filled in. Per-run figures (utility
histograms, DPO curves, t-SNE, samples) show the lowest seed of each (dataset, strategy)
(:func:`~utilgen.report.runs.representatives`); the comparison, per-class bars, accuracy
curves and the cost table use every run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from utilgen.report.comparison_stats import mean_ci95
from utilgen.report.document import (
    Block,
    Figure,
    Heading,
    Image,
    NotAvailable,
    Section,
    Table,
    Text,
)
from utilgen.report.efficiency_curves import compare_to_static, ratio_text
from utilgen.report.feedback_effect import control_effect, mann_whitney_greater, round_scores
from utilgen.report.figures import (
    accuracy_vs_samples_figure,
    before_after_figure,
    dpo_curve_figure,
    mean_per_class,
    per_class_figure,
    png_bytes,
    reward_accuracy_key,
    strategy_colours,
    tsne_figure,
    utility_histogram_figure,
    utility_histograms,
)
from utilgen.report.runs import (
    BASELINE_STRATEGIES,
    MissingData,
    ReportRun,
    by_dataset,
    representatives,
    strategy_order,
)

log = logging.getLogger(__name__)

METRIC_TITLES = {"accuracy": "top-1", "worst_class_ratio": "worst-class ratio"}
# Written by the DPO trainers (utilgen.feedback.lm_dpo and .diffusion_dpo) under the
# round's feedback directory (RUN/rounds/NNN/adapters/dpo), one JSON record per logged
# optimiser step.
MARGIN_SCORE = "margin"


def _figure(fig: Any, caption: str) -> Figure:
    # The alternative text is the caption's subject; the caption itself is printed beneath.
    return Figure(Image(png_bytes(fig), caption.split(":")[0]), caption)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _p(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _colours(runs: Sequence[ReportRun]) -> dict[str, Any]:
    strategies = sorted({r.strategy for r in runs}, key=strategy_order)
    return strategy_colours(strategies)


def _per_run(
    runs: Sequence[ReportRun], build: Callable[[ReportRun], list[Block]], missing_all: str
) -> list[Block]:
    """``build`` for each representative run under a heading; runs that lack the data are
    listed as not available, and when none has it one line says so."""
    blocks: list[Block] = []
    reasons: list[str] = []
    for run in representatives(runs):
        try:
            built = build(run)
        except MissingData as why:
            reasons.append(f"{run.label}: {why}")
            continue
        blocks += [Heading(run.label), *built]
    if not blocks:
        return [NotAvailable(f"{missing_all} ({'; '.join(reasons)})")]
    return blocks + [NotAvailable(r) for r in reasons]


# -- 1. comparison --------------------------------------------------------------------------


def _stat_cell(stat: Mapping[str, Any]) -> str:
    ci = stat.get("ci95")
    mean = float(stat["mean"])
    if not ci:
        return f"{mean:.4f} (one seed: no CI)"
    return f"{mean:.4f} ± {(ci[1] - ci[0]) / 2:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"


def comparison_table(comparison: Mapping[str, Any]) -> Table:
    """Per (dataset, strategy): seeds, synthetic samples, mean ± 95% CI half-width [CI] of
    each metric, and the paired t-test p against each baseline."""
    metrics, baselines = comparison["metrics"], comparison["baselines"]
    header = ["dataset", "strategy", "seeds", "synthetic samples"]
    header += [f"{METRIC_TITLES.get(m, m)} mean ± 95% CI" for m in metrics]
    header += [f"p vs {b} ({METRIC_TITLES.get(m, m)})" for b in baselines for m in metrics]
    rows = []
    groups = sorted(
        comparison["groups"], key=lambda g: (g["dataset"], strategy_order(g["strategy"]))
    )
    for group in groups:
        cells = [group["dataset"], group["strategy"], str(group["n"])]
        cells.append(f"{float(group['synthetic_samples']):g}")
        cells += [_stat_cell(group[m]) for m in metrics]
        for baseline in baselines:
            for metric in metrics:
                test = (group.get("vs") or {}).get(baseline, {}).get(metric)
                cells.append(_p(None if test is None else test.get("p")))
        rows.append(tuple(cells))
    return Table(tuple(header), tuple(rows))


def paired_difference(
    group: Mapping[str, Any], baseline: Mapping[str, Any], metric: str
) -> tuple[float, tuple[float, float] | None, int]:
    """Mean and 95% t interval of ``metric(group) - metric(baseline)`` over the seeds both
    ran, and how many seeds that is (the paired test's pairing)."""
    mine = dict(zip(group["seeds"], group[metric]["values"], strict=True))
    theirs = dict(zip(baseline["seeds"], baseline[metric]["values"], strict=True))
    diffs = [float(mine[s]) - float(theirs[s]) for s in sorted(set(mine) & set(theirs))]
    if not diffs:
        return float("nan"), None, 0
    mean, ci = mean_ci95(diffs)
    return mean, ci, len(diffs)


def verdicts(comparison: Mapping[str, Any], metric: str = "accuracy") -> list[str]:
    """Per dataset, one sentence: does the best utility-guided strategy (highest mean
    ``metric``) beat ``static``, by how much, with the paired difference's 95% CI and p?"""
    out = []
    datasets = sorted({g["dataset"] for g in comparison["groups"]})
    for dataset in datasets:
        groups = {g["strategy"]: g for g in comparison["groups"] if g["dataset"] == dataset}
        guided = [g for s, g in groups.items() if s not in BASELINE_STRATEGIES]
        if not guided:
            out.append(f"{dataset}: no utility-guided strategy among the runs.")
            continue
        best = max(guided, key=lambda g: float(g[metric]["mean"]))
        static = groups.get("static")
        name = METRIC_TITLES.get(metric, metric)
        if static is None:
            out.append(
                f"{dataset}: best utility-guided strategy {best['strategy']} "
                f"({name} {float(best[metric]['mean']):.4f}); no static runs to compare with."
            )
            continue
        diff, ci, n = paired_difference(best, static, metric)
        test = (best.get("vs") or {}).get("static", {}).get(metric) or {}
        if n == 0:
            out.append(
                f"{dataset}: {best['strategy']} and static share no seed; no paired comparison."
            )
            continue
        if diff > 0:
            outcome = f"beats static by {diff:+.4f}"
        elif diff < 0:
            outcome = f"does not beat static: its {name} is {-diff:.4f} lower"
        else:
            outcome = f"does not beat static: equal {name}"
        ci_text = (
            f"95% CI of the paired difference [{ci[0]:+.4f}, {ci[1]:+.4f}]"
            if ci
            else "one seed: no CI"
        )
        noise = " (the interval includes 0)" if ci and ci[0] <= 0 <= ci[1] else ""
        out.append(
            f"{dataset}: the best utility-guided strategy, {best['strategy']} "
            f"({name} {float(best[metric]['mean']):.4f} vs static "
            f"{float(static[metric]['mean']):.4f}), {outcome}; {ci_text}{noise}, "
            f"paired t-test p = {_p(test.get('p'))}, {n} seed(s)."
        )
    return out


def comparison_section(comparison: Mapping[str, Any]) -> Section:
    """1. the multi-seed comparison table and the verdict against ``static``."""
    anchor, title = "comparison", "1. Comparison of strategies"
    if not comparison.get("groups"):
        return Section(anchor, title, [NotAvailable("no run to compare")])
    blocks: list[Block] = [
        Text(
            "Mean over seeds with the two-sided 95% Student t interval; p: two-sided paired "
            "t-test over the seeds both strategies ran (– where it is undefined: one seed, "
            "or equal differences)."
        ),
        comparison_table(comparison),
        *(Text(v) for v in verdicts(comparison)),
    ]
    return Section(anchor, title, blocks)


# -- 2. per-class accuracy ------------------------------------------------------------------


def per_class_section(runs: Sequence[ReportRun]) -> Section:
    """2. per-class test accuracy bars per dataset, strategies side by side."""
    anchor, title = "per-class", "2. Per-class accuracy"
    blocks: list[Block] = []
    colours = _colours(runs)
    for dataset, group in by_dataset(runs).items():
        means = mean_per_class([r.summary for r in group if r.summary.get("per_class_accuracy")])
        if not means:
            blocks.append(NotAvailable(f"{dataset}: no summary holds per_class_accuracy"))
            continue
        seeds = {s: sum(r.strategy == s for r in group) for s in means}
        caption = (
            f"{dataset}: test accuracy per class, mean over seeds ("
            + ", ".join(f"{s}: {n}" for s, n in seeds.items())
            + ")"
        )
        blocks.append(_figure(per_class_figure(means, colours, dataset), caption))
    return Section(anchor, title, blocks)


# -- 3. accuracy vs synthetic samples -------------------------------------------------------


def round_points(runs: Sequence[ReportRun]) -> pd.DataFrame:
    """One row per finished round of each run: strategy, run, round, n_synthetic (the
    synthetic samples it trained on), accuracy (test)."""
    rows = [
        {
            "strategy": run.strategy,
            "run": str(run.run_dir),
            "round": r,
            "n_synthetic": int(m.get("n_train_synthetic", 0)),
            "accuracy": float(m["test"]["accuracy"]),
        }
        for run in runs
        for r, m in sorted(run.round_metrics.items())
        if (m.get("test") or {}).get("accuracy") is not None
    ]
    return pd.DataFrame(rows, columns=["strategy", "run", "round", "n_synthetic", "accuracy"])


def read_efficiency(run: ReportRun) -> dict[str, Any] | None:
    """``RUN/efficiency.json`` (None when the run has none)."""
    path = run.layout.efficiency
    if not path.is_file():
        return None
    curve: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return curve


def efficiency_points(curves: Sequence[tuple[ReportRun, Mapping[str, Any]]]) -> pd.DataFrame:
    """The efficiency curves' points in :func:`round_points`' columns."""
    rows = [
        {
            "strategy": run.strategy,
            "run": str(run.run_dir),
            "round": -1,
            "n_synthetic": float(p["n_synthetic"]),
            "accuracy": float(p["accuracy"]),
        }
        for run, curve in curves
        for p in curve.get("points", [])
    ]
    return pd.DataFrame(rows, columns=["strategy", "run", "round", "n_synthetic", "accuracy"])


def efficiency_ratio_table(curves: Sequence[Mapping[str, Any]]) -> Table | None:
    """Synthetic samples static and each other strategy need to reach static's final
    accuracy (seed-mean curves), from :func:`utilgen.report.efficiency_curves.compare_to_static`;
    None when no dataset has both a static and another curve."""
    rows = compare_to_static(curves)
    if not rows:
        return None
    header = (
        "dataset",
        "strategy",
        "target top-1 (static's final)",
        "static needs",
        "strategy needs",
        "ratio (strategy / static)",
        "runs (strategy / static)",
    )
    cells = tuple(
        (
            r["dataset"],
            r["strategy"],
            _fmt(r["target_accuracy"]),
            _fmt(r["static_samples"], 1),
            "never" if r["other_samples"] is None else _fmt(r["other_samples"], 1),
            ratio_text(r),
            f"{r['n_runs']} / {r['n_static_runs']}",
        )
        for r in rows
    )
    return Table(header, cells)


def accuracy_curve_section(runs: Sequence[ReportRun]) -> Section:
    """3. test accuracy against synthetic samples: every round of every run, the runs'
    efficiency curves, and the samples needed to reach static's final accuracy."""
    anchor, title = "accuracy-vs-samples", "3. Accuracy vs number of synthetic samples"
    blocks: list[Block] = []
    colours = _colours(runs)
    all_curves: list[Mapping[str, Any]] = []
    for dataset, group in by_dataset(runs).items():
        points = round_points(group)
        curves = [(r, c) for r in group if (c := read_efficiency(r)) is not None]
        all_curves += [{"dataset": r.dataset, "strategy": r.strategy, **c} for r, c in curves]
        if points.empty and not curves:
            blocks.append(NotAvailable(f"{dataset}: no round recorded test accuracy"))
            continue
        fig = accuracy_vs_samples_figure(points, efficiency_points(curves), colours, dataset)
        caption = (
            f"{dataset}: test accuracy of each round's task model against the synthetic samples "
            f"it trained on (round 0: real data only); {len(curves)} efficiency curve(s)"
        )
        blocks.append(_figure(fig, caption))
    if not all_curves:
        blocks.append(
            NotAvailable(
                "efficiency curves and the samples-to-reach-static ratio: no run holds "
                "efficiency.json"
            )
        )
        return Section(anchor, title, blocks)
    table = efficiency_ratio_table(all_curves)
    if table is None:
        blocks.append(
            NotAvailable(
                "samples-to-reach-static ratio: no dataset has efficiency curves of static "
                "and of another strategy"
            )
        )
    else:
        blocks += [
            Text(
                "Synthetic samples each strategy's seed-mean efficiency curve needs to reach "
                "static's final top-1 (linear interpolation between points; below 1 the "
                "strategy needs fewer samples than static; never: the curve does not reach it; "
                "undefined: static needs no synthetic sample to reach it, real data alone "
                "do)."
            ),
            table,
        ]
    return Section(anchor, title, blocks)


# -- 4. utility histograms ------------------------------------------------------------------


def _run_round_scores(run: ReportRun) -> dict[int, pd.DataFrame]:
    rounds = max(run.round_metrics, default=0)
    frames = round_scores(run.run_dir, rounds)
    if not frames:
        raise MissingData("no round scored its samples (valuation.scores is empty)")
    return frames


def utility_blocks(run: ReportRun) -> list[Block]:
    """Histograms of every score the run's rounds recorded, one row per round."""
    frames = _run_round_scores(run)
    n = ", ".join(f"round {r}: {len(f)}" for r, f in frames.items())
    fig = utility_histogram_figure(utility_histograms(frames), run.label)
    return [_figure(fig, f"{run.label}: utility scores of the kept samples ({n})")]


def utility_section(runs: Sequence[ReportRun]) -> Section:
    """4. histograms of every utility score, one row per round."""
    return Section(
        "utility",
        "4. Utility distributions per round",
        _per_run(runs, utility_blocks, "no run scored its samples"),
    )


# -- 5. margins before and after DPO --------------------------------------------------------


def margin_blocks(run: ReportRun) -> list[Block]:
    """The first and last round's margin (or, when margin was not scored, the score that
    ranked the DPO pairs) as histograms, with the one-sided Mann-Whitney test."""
    if "dpo" not in run.feedback_components:
        raise MissingData("no DPO feedback (feedback.components holds no dpo)")
    frames = _run_round_scores(run)
    first, last = min(frames), max(frames)
    if first == last:
        raise MissingData(f"only round {first} was scored; DPO acts between two rounds")
    pair_score = str(((run.config.get("feedback") or {}).get("pairs") or {}).get("score", ""))
    score = MARGIN_SCORE if MARGIN_SCORE in frames[first] else pair_score
    if score not in frames[first] or score not in frames[last]:
        raise MissingData(f"neither margin nor the pair score {pair_score!r} was scored")
    before = frames[first][score].to_numpy(dtype=np.float64)
    after = frames[last][score].to_numpy(dtype=np.float64)
    _, p = mann_whitney_greater(after, before)
    note = "" if score == MARGIN_SCORE else f" (margin was not scored; {score} ranked the pairs)"
    caption = (
        f"{run.label}: {score} of round {first} (before DPO) and round {last} (after "
        f"{last - first} DPO update(s)){note}; one-sided Mann-Whitney p (after > before) = "
        f"{_p(p)}"
    )
    fig = before_after_figure(before, after, score, (first, last), run.label)
    return [_figure(fig, caption), *control_blocks(run, frames)]


def control_blocks(run: ReportRun, frames: dict[int, pd.DataFrame]) -> list[Block]:
    """With ``feedback.control``: the last round against the same requests generated before
    DPO, per absolute score (paired by request and noise; one-sided Wilcoxon signed-rank)."""
    effect = control_effect(run.run_dir, max(frames), frames)
    if effect is None or not effect["tests"]:
        return []
    rows = tuple(
        (
            name,
            _fmt(t["mean_control"]),
            _fmt(t["mean_feedback"]),
            f"{t['mean_difference']:+.4f}",
            f"{t['share_better']:.2f} / {t['share_worse']:.2f}",
            _p(t["p_one_sided"]),
        )
        for name, t in effect["tests"].items()
    )
    header = (
        "score",
        "before DPO (control)",
        "after DPO",
        "mean paired difference",
        "share better / worse",
        "Wilcoxon p (after better)",
    )
    fidelity = effect["label_fidelity_feedback"]
    text = (
        f"{run.label}: round {effect['round']}'s {effect['n_paired']} samples against the "
        f"same requests and noise generated by the generator before DPO (feedback.control); "
        f"label fidelity {_fmt(effect['label_fidelity_control'], 3)} before, "
        f"{_fmt(fidelity, 3)} after."
    )
    return [Text(text), Table(header, rows)]


def margin_section(runs: Sequence[ReportRun]) -> Section:
    """5. margin distributions before and after DPO."""
    return Section(
        "margins",
        "5. Margin distributions before and after DPO",
        _per_run(runs, margin_blocks, "no run fed DPO back between scored rounds"),
    )


# -- 6. DPO reward accuracy -----------------------------------------------------------------


def dpo_logs(run: ReportRun) -> dict[int, pd.DataFrame]:
    """Round -> the DPO log that round's feedback wrote (rounds without one left out)."""
    out = {}
    for r in sorted(run.round_metrics):
        path = run.layout.round(r).dpo_log
        if path.is_file() and path.stat().st_size:
            out[r] = pd.read_json(path, lines=True)
    return out


def dpo_blocks(run: ReportRun) -> list[Block]:
    """The run's DPO training curves (implicit reward accuracy and margin against step)."""
    logs = dpo_logs(run)
    if not logs:
        raise MissingData("no DPO training log (rounds/NNN/adapters/dpo/log.jsonl)")
    if all(reward_accuracy_key(list(f.columns)) is None for f in logs.values()):
        raise MissingData("its DPO logs hold no reward accuracy")
    steps = ", ".join(f"after round {r}: {int(f['step'].max())} steps" for r, f in logs.items())
    fig = dpo_curve_figure(logs, run.label)
    return [_figure(fig, f"{run.label}: DPO training ({steps})")]


def dpo_section(runs: Sequence[ReportRun]) -> Section:
    """6. DPO implicit reward accuracy and margin curves."""
    return Section(
        "dpo", "6. DPO reward accuracy", _per_run(runs, dpo_blocks, "no run trained DPO feedback")
    )


# -- 7. t-SNE -------------------------------------------------------------------------------


def tsne_blocks(run: ReportRun) -> list[Block]:
    """t-SNE of real and kept synthetic samples under the run's final task model."""
    from utilgen.report.embedding import embed_run

    embedded = embed_run(run)
    n_syn = int(embedded.synthetic.sum())
    n_real = len(embedded.synthetic) - n_syn
    fig = tsne_figure(
        embedded.coords, embedded.labels, embedded.synthetic, embedded.class_names, run.label
    )
    caption = (
        f"{run.label}: t-SNE of {n_real} real (dots) and {n_syn} kept synthetic (crosses) "
        f"samples, features of {embedded.checkpoint.parent.parent.name}/"
        f"{embedded.checkpoint.name}"
    )
    return [_figure(fig, caption)]


def tsne_section(runs: Sequence[ReportRun]) -> Section:
    """7. t-SNE of real vs synthetic embeddings."""
    return Section(
        "tsne",
        "7. t-SNE of real and synthetic samples",
        _per_run(runs, tsne_blocks, "no run kept a synthetic sample"),
    )


# -- 8. samples -----------------------------------------------------------------------------


def samples_section(runs: Sequence[ReportRun]) -> Section:
    """8. sample grids (images) and tables (texts) with provenance and scores."""
    from utilgen.report.samples import sample_blocks

    return Section(
        "samples",
        "8. Generated samples",
        _per_run(runs, sample_blocks, "no run generated a sample"),
    )


# -- 9. cost --------------------------------------------------------------------------------


def dpo_seconds(run: ReportRun, round_index: int) -> str:
    """The round's DPO training time from its ``result.json`` ('' without feedback,
    'not recorded' when the trainer did not record it)."""
    path = run.layout.round(round_index).dpo_result
    if not path.is_file():
        return ""
    seconds = json.loads(path.read_text(encoding="utf-8")).get("seconds")
    return "not recorded" if seconds is None else f"{float(seconds):.1f}"


def cost_table(runs: Sequence[ReportRun]) -> Table:
    """One row per round of every run: samples generated and trained on, every
    ``*seconds`` the round's metrics recorded (a column each), and DPO seconds."""
    second_keys = sorted(
        {k for run in runs for m in run.round_metrics.values() for k in m if k.endswith("seconds")}
    )
    header = ("run", "stage", "generated", "synthetic trained on", *second_keys, "DPO seconds")
    rows = []
    for run in sorted(runs, key=lambda r: (r.dataset, strategy_order(r.strategy), r.seed)):
        for r, metrics in sorted(run.round_metrics.items()):
            stage = "stage 1: real data only" if r == 0 else f"round {r}"
            seconds = [
                "" if metrics.get(k) is None else f"{float(metrics[k]):.1f}" for k in second_keys
            ]
            rows.append(
                (
                    run.label,
                    stage,
                    str(metrics.get("n_generated", 0)),
                    str(metrics.get("n_train_synthetic", 0)),
                    *seconds,
                    dpo_seconds(run, r),
                )
            )
    return Table(header, tuple(rows))


def cost_section(runs: Sequence[ReportRun]) -> Section:
    """9. time and samples per stage."""
    anchor, title = "cost", "9. Cost: time and samples per stage"
    if not any(run.round_metrics for run in runs):
        return Section(anchor, title, [NotAvailable("no run recorded round metrics")])
    blocks: list[Block] = [
        Text(
            "Seconds as each round's metrics.json records them (wall clock of that step); "
            "DPO seconds from the feedback's result.json, trained after the round and used "
            "by the next."
        ),
        cost_table(runs),
    ]
    return Section(anchor, title, blocks)
