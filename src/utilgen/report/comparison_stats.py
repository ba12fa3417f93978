"""Multi-seed comparison of strategies: mean, 95% confidence interval, paired t-tests.

Each strategy's runs differ only in their seed, so the seed pairs runs across strategies:
the paired t-test of strategy A against a baseline B uses the per-seed differences
``metric(A, s) - metric(B, s)`` over the seeds both ran (scipy's ``ttest_rel``, two-sided).
A mean's interval is Student's t interval, mean +- t(0.975, n - 1) * sd / sqrt(n) with the
sample standard deviation (ddof 1); one seed has no interval.

``comparison.json`` (written by :func:`write_comparison`)::

    {"metrics": ["accuracy", "worst_class_ratio"], "baselines": ["static", "real-only"],
     "groups": [{"dataset": ..., "strategy": ..., "n": 3, "seeds": [0, 1, 2],
                 "synthetic_samples": ..., "accuracy": {"mean": ..., "ci95": [lo, hi],
                 "values": [...]}, ..., "vs": {"static": {"accuracy": {"mean_difference": ...,
                 "t": ..., "p": ..., "n_pairs": 3}, ...}}}]}
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scipy import stats

from utilgen.atomic import write_json_atomic, write_text_atomic

METRICS = ("accuracy", "worst_class_ratio")
BASELINES = ("static", "real-only")


def mean_ci95(values: Sequence[float]) -> tuple[float, tuple[float, float] | None]:
    """The mean of ``values`` and its two-sided 95% Student t interval (None for n < 2)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return mean, (mean - half, mean + half)


def paired_test(
    values: Mapping[int, float], baseline: Mapping[int, float]
) -> dict[str, float | int | None]:
    """Paired two-sided t-test over the seeds both mappings (seed -> metric) hold.

    Returns mean_difference (values - baseline), t, p and n_pairs; t and p are None with
    fewer than 2 pairs, or when every difference is equal (the test is undefined).
    """
    seeds = sorted(set(values) & set(baseline))
    diffs = [values[s] - baseline[s] for s in seeds]
    out: dict[str, float | int | None] = {
        "mean_difference": sum(diffs) / len(diffs) if diffs else None,
        "t": None,
        "p": None,
        "n_pairs": len(seeds),
    }
    if len(seeds) >= 2 and len(set(diffs)) > 1:
        result = stats.ttest_rel([values[s] for s in seeds], [baseline[s] for s in seeds])
        out["t"], out["p"] = float(result.statistic), float(result.pvalue)
    return out


def compare_summaries(
    summaries: Sequence[Mapping[str, Any]],
    *,
    metrics: Sequence[str] = METRICS,
    baselines: Sequence[str] = BASELINES,
) -> dict[str, Any]:
    """Group run summaries by (dataset, strategy) and compare the groups (module docstring).

    Raises:
        ValueError: two summaries of one group share a seed (the pairing would be ambiguous).
    """
    groups: dict[tuple[str, str], dict[int, Mapping[str, Any]]] = defaultdict(dict)
    for summary in summaries:
        key = (str(summary["dataset"]), str(summary["strategy"]))
        seed = int(summary["seed"])
        if seed in groups[key]:
            raise ValueError(f"two runs of {key[1]} on {key[0]} have seed {seed}")
        groups[key][seed] = summary
    rows = []
    for (dataset, strategy), by_seed in sorted(groups.items()):
        seeds = sorted(by_seed)
        row: dict[str, Any] = {
            "dataset": dataset,
            "strategy": strategy,
            "n": len(seeds),
            "seeds": seeds,
            "synthetic_samples": sum(int(by_seed[s]["n_train_synthetic"]) for s in seeds)
            / len(seeds),
        }
        for metric in metrics:
            values = [float(by_seed[s][metric]) for s in seeds]
            mean, ci = mean_ci95(values)
            row[metric] = {"mean": mean, "ci95": list(ci) if ci else None, "values": values}
        row["vs"] = {}
        for baseline in baselines:
            other = groups.get((dataset, baseline))
            if baseline == strategy or other is None:
                continue
            row["vs"][baseline] = {
                metric: paired_test(
                    {s: float(by_seed[s][metric]) for s in seeds},
                    {s: float(r[metric]) for s, r in other.items()},
                )
                for metric in metrics
            }
        rows.append(row)
    return {"metrics": list(metrics), "baselines": list(baselines), "groups": rows}


def _cell(stat: Mapping[str, Any]) -> str:
    ci = stat["ci95"]
    return f"{stat['mean']:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


def comparison_markdown(comparison: Mapping[str, Any]) -> str:
    """A Markdown table: one row per (dataset, strategy), mean [95% CI] per metric, and the
    paired t-test p-value against each baseline."""
    metrics, baselines = comparison["metrics"], comparison["baselines"]
    head = ["dataset", "strategy", "seeds", "synthetic", *metrics]
    head += [f"p vs {b} ({m})" for b in baselines for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in comparison["groups"]:
        cells = [row["dataset"], row["strategy"], str(row["n"]), f"{row['synthetic_samples']:g}"]
        cells += [_cell(row[m]) for m in metrics]
        for baseline in baselines:
            for metric in metrics:
                test = row["vs"].get(baseline, {}).get(metric)
                p = None if test is None else test["p"]
                cells.append("" if p is None else f"{p:.3g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_comparison(out: Path, comparison: Mapping[str, Any]) -> tuple[Path, Path]:
    """``out/comparison.json`` and ``out/comparison.md``, atomically; returns both paths."""
    json_path = write_json_atomic(out / "comparison.json", dict(comparison))
    md_path = out / "comparison.md"
    write_text_atomic(md_path, comparison_markdown(comparison))
    return json_path, md_path
