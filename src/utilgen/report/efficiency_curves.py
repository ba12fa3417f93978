"""Sample efficiency: how many synthetic samples a strategy needs to reach an accuracy.

A curve is a list of points ``{"fraction", "n_synthetic", "accuracy", "worst_class_ratio"}``
as :func:`utilgen.commands.efficiency.efficiency_curve` writes them to ``RUN/efficiency.json``:
test accuracy of a task model retrained on the real training set plus a class-stratified
``fraction`` of the synthetic samples the run's final round trained on. The comparison the
acceptance asks for is :func:`efficiency_ratio`: the synthetic samples ``static`` needs to
reach its own final accuracy (the fraction-1.0 point) against what another strategy needs
to reach the same accuracy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from rich.table import Table

from utilgen.errors import UtilgenError

Point = Mapping[str, Any]

# Accuracies are ratios of counts and their means over seeds; the same numbers averaged in
# the same order compare equal, so this only absorbs float noise in the last bits.
TOLERANCE = 1e-12
STATIC = "static"
DEFAULT_FRACTIONS = (0.0, 0.125, 0.25, 0.5, 1.0)


def check_fractions(fractions: Iterable[float]) -> tuple[float, ...]:
    """``fractions`` sorted and without duplicates.

    Raises:
        UtilgenError: none given, one outside [0, 1], or 1 missing (the curve's end point:
            the run's own training set, which the comparison with static needs).
    """
    values = sorted({float(f) for f in fractions})
    if not values:
        raise UtilgenError("no fraction given; pass e.g. --fractions 0,0.25,0.5,1")
    bad = [f for f in values if not 0.0 <= f <= 1.0]
    if bad:
        raise UtilgenError(
            f"fraction {bad[0]:g} is outside [0, 1]; fractions are shares of the run's "
            "synthetic samples, e.g. --fractions 0,0.25,0.5,1"
        )
    if values[-1] != 1.0:
        raise UtilgenError(
            "fractions must include 1 (the run's full synthetic set, whose accuracy the "
            "comparison with static needs); e.g. --fractions 0,0.25,0.5,1"
        )
    return tuple(values)


def samples_to_reach(points: Sequence[Point], target: float) -> float | None:
    """Synthetic samples needed to reach test accuracy ``target`` on the curve ``points``.

    Points are ordered by ``n_synthetic``; the answer is the first point at or above
    ``target``, linearly interpolated between it and the point before it (0 extra samples
    when the first point already reaches it). Returns None when no point reaches ``target``.
    """
    ordered = sorted(points, key=lambda p: (float(p["n_synthetic"]), float(p["fraction"])))
    previous: Point | None = None
    for point in ordered:
        n, accuracy = float(point["n_synthetic"]), float(point["accuracy"])
        if accuracy >= target - TOLERANCE:
            if previous is None:
                return n
            n0, a0 = float(previous["n_synthetic"]), float(previous["accuracy"])
            # a0 < target <= accuracy here, so the slope is positive.
            return n0 + (target - a0) / (accuracy - a0) * (n - n0)
        previous = point
    return None


def final_accuracy(points: Sequence[Point]) -> float:
    """Accuracy of the fraction-1.0 point (every synthetic sample the run trained on).

    Raises:
        UtilgenError: the curve has no fraction-1.0 point.
    """
    for point in points:
        if float(point["fraction"]) == 1.0:
            return float(point["accuracy"])
    raise UtilgenError(
        "the curve has no fraction 1.0 point (the run's full synthetic set); "
        "recompute it with 1 among --fractions"
    )


def efficiency_ratio(
    static_points: Sequence[Point], other_points: Sequence[Point]
) -> dict[str, Any]:
    """Samples each curve needs to reach ``static``'s final (fraction 1.0) accuracy.

    Returns ``target_accuracy``, ``static_samples``, ``other_samples`` (None: never reached)
    and ``ratio`` = other / static: below 1 the other strategy reaches static's accuracy with
    fewer synthetic samples. ``ratio`` is None when either count is None, or when ``static``
    needs 0 samples (real data alone already reach its final accuracy).
    """
    target = final_accuracy(static_points)
    static_n = samples_to_reach(static_points, target)
    other_n = samples_to_reach(other_points, target)
    ratio = None
    if static_n is not None and other_n is not None and static_n > 0:
        ratio = other_n / static_n
    return {
        "target_accuracy": target,
        "static_samples": static_n,
        "other_samples": other_n,
        "ratio": ratio,
    }


def mean_curve(curves: Sequence[Sequence[Point]]) -> list[dict[str, Any]]:
    """The point-wise mean of curves with the same fractions (e.g. one per seed).

    Returns one point per fraction, ascending, with the mean ``n_synthetic``, ``accuracy``
    and ``worst_class_ratio`` and ``n_runs`` (how many curves were averaged).

    Raises:
        UtilgenError: no curve, or curves over different fractions.
    """
    if not curves:
        raise UtilgenError("no curve to average; pass at least one run's efficiency points")
    fractions = [sorted(float(p["fraction"]) for p in curve) for curve in curves]
    if any(f != fractions[0] for f in fractions):
        raise UtilgenError(
            f"curves over different fractions ({fractions[0]} vs another); "
            "compute every run's curve with the same --fractions"
        )
    by_fraction: dict[float, list[Point]] = defaultdict(list)
    for curve in curves:
        for point in curve:
            by_fraction[float(point["fraction"])].append(point)
    return [
        {
            "fraction": fraction,
            "n_synthetic": float(np.mean([p["n_synthetic"] for p in group])),
            "accuracy": float(np.mean([p["accuracy"] for p in group])),
            "worst_class_ratio": float(np.mean([p["worst_class_ratio"] for p in group])),
            "n_runs": len(group),
        }
        for fraction, group in sorted(by_fraction.items())
    ]


def compare_to_static(curves: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset and non-static strategy, :func:`efficiency_ratio` of the seed-mean curves
    against the dataset's ``static`` seed-mean curve.

    ``curves`` are ``efficiency.json`` contents (``dataset``, ``strategy``, ``points``).
    Returns one row per (dataset, strategy) that has a ``static`` curve to compare with, each
    the ratio's fields plus ``dataset``, ``strategy`` and ``n_runs`` of both sides.
    """
    groups: dict[tuple[str, str], list[Sequence[Point]]] = defaultdict(list)
    for curve in curves:
        groups[(str(curve["dataset"]), str(curve["strategy"]))].append(curve["points"])
    rows = []
    for (dataset, strategy), members in sorted(groups.items()):
        static = groups.get((dataset, STATIC))
        if strategy == STATIC or static is None:
            continue
        ratio = efficiency_ratio(mean_curve(static), mean_curve(members))
        rows.append(
            {
                "dataset": dataset,
                "strategy": strategy,
                "n_runs": len(members),
                "n_static_runs": len(static),
                **ratio,
            }
        )
    return rows


def _cell(value: float | None, digits: int = 4) -> str:
    return "never" if value is None else f"{value:.{digits}f}"


def curve_table(curve: Mapping[str, Any]) -> Table:
    """One run's curve for the terminal."""
    table = Table(
        title=f"sample efficiency: {curve['strategy']} on {curve['dataset']}, "
        f"seed {curve['seed']} ({curve['run']})"
    )
    for name in ("fraction", "synthetic", "top-1", "worst/best class"):
        table.add_column(name, justify="right")
    for p in curve["points"]:
        table.add_row(
            f"{p['fraction']:g}",
            str(p["n_synthetic"]),
            _cell(p["accuracy"]),
            _cell(p["worst_class_ratio"]),
        )
    return table


def ratio_text(row: Mapping[str, Any]) -> str:
    """A :func:`compare_to_static` row's ratio for people: the number, ``never`` (the
    strategy's curve does not reach the target) or ``undefined`` (static needs no synthetic
    sample to reach its own final accuracy, so there is nothing to divide by)."""
    if row["ratio"] is not None:
        return f"{row['ratio']:.3f}"
    if row["other_samples"] is None:
        return "never"
    return "undefined"


def ratio_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """:func:`compare_to_static` rows for the terminal."""
    table = Table(title="synthetic samples needed to reach static's final top-1")
    for name in ("dataset", "strategy", "target top-1", "static", "strategy needs", "ratio"):
        table.add_column(name, justify="left" if name in ("dataset", "strategy") else "right")
    for r in rows:
        table.add_row(
            r["dataset"],
            r["strategy"],
            _cell(r["target_accuracy"]),
            _cell(r["static_samples"], 1),
            _cell(r["other_samples"], 1),
            ratio_text(r),
        )
    return table
