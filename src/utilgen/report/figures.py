"""The report's matplotlib figures, each built from plain frames and arrays.

Every function returns a :class:`matplotlib.figure.Figure` made through the object API (no
pyplot: no global figure registry to leak and no backend to switch), so tests can read the
plotted numbers back from the axes; :func:`png_bytes` renders one for embedding. The data
helpers next to them (:func:`mean_per_class`, :func:`utility_histograms`,
:func:`reward_accuracy_key`) are what the figures plot and what the tests pin.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

DPI = 100
HIST_BINS = 20
# Accuracy keys of the two DPO trainers' log.jsonl: U-DPO (TRL's name), Diffusion-DPO.
REWARD_ACCURACY_KEYS = ("rewards/accuracies", "implicit_acc")
REWARD_MARGIN_KEY = "rewards/margins"
MARKERS = "osD^vP*X<>"


def png_bytes(fig: Figure) -> bytes:
    """``fig`` rendered as PNG at :data:`DPI`."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def strategy_colours(strategies: Sequence[str]) -> dict[str, Any]:
    """One tab10/tab20 colour per strategy, in the order given (stable across figures)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(strategies) <= 10 else "tab20"]
    return {s: cmap(i % cmap.N) for i, s in enumerate(strategies)}


# -- per-class accuracy ---------------------------------------------------------------------


def mean_per_class(summaries: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Strategy -> class -> mean over the summaries (seeds) of ``per_class_accuracy``.

    A class missing from some seed's summary is averaged over the seeds that have it.
    """
    sums: dict[str, dict[str, list[float]]] = {}
    for summary in summaries:
        per_class = summary.get("per_class_accuracy") or {}
        target = sums.setdefault(str(summary["strategy"]), {})
        for name, value in per_class.items():
            target.setdefault(str(name), []).append(float(value))
    return {
        strategy: {name: float(np.mean(v)) for name, v in classes.items()}
        for strategy, classes in sums.items()
    }


def per_class_figure(
    means: Mapping[str, Mapping[str, float]], colours: Mapping[str, Any], title: str
) -> Figure:
    """Grouped bars: one group per class, one bar per strategy (``means``: strategy ->
    class -> accuracy, in the order to draw)."""
    strategies = list(means)
    classes = list(dict.fromkeys(c for m in means.values() for c in m))
    width = 0.8 / max(len(strategies), 1)
    fig = Figure(
        figsize=(max(6.0, 0.6 * len(classes) * max(1, len(strategies)) / 2), 3.6),
        layout="constrained",
    )
    ax = fig.add_subplot()
    x = np.arange(len(classes))
    for i, strategy in enumerate(strategies):
        heights = [means[strategy].get(c, np.nan) for c in classes]
        ax.bar(
            x + (i - (len(strategies) - 1) / 2) * width,
            heights,
            width,
            label=strategy,
            color=colours.get(strategy),
        )
    ax.set_xticks(x, classes, rotation=30 if max(map(len, classes), default=0) > 4 else 0)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy (mean over seeds)")
    ax.set_title(title)
    ax.legend(fontsize=8, ncols=min(len(strategies), 4))
    return fig


# -- accuracy vs synthetic samples ----------------------------------------------------------


def accuracy_vs_samples_figure(
    points: pd.DataFrame, curves: pd.DataFrame, colours: Mapping[str, Any], title: str
) -> Figure:
    """Test accuracy against the number of synthetic training samples.

    ``points`` (columns strategy, run, n_synthetic, accuracy): one marker per round of each
    run, the rounds of a run joined by a thin line. ``curves`` (same columns): efficiency
    curves, drawn as thicker dashed lines. Each strategy is labelled once per kind.
    """
    fig = Figure(figsize=(8.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    # Every strategy shares stage 1 with the others of its seed, so round-0 points coincide:
    # distinct hollow markers keep all of them visible.
    marker = {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(colours)}
    labelled: set[str] = set()
    _plot_runs(
        ax,
        points,
        "rounds",
        colours,
        labelled,
        lambda strategy: {
            "marker": marker.get(strategy, "o"),
            "markerfacecolor": "none",
            "markersize": 8,
            "linewidth": 0.8,
            "alpha": 0.8,
        },
    )
    _plot_runs(
        ax,
        curves,
        "efficiency curve",
        colours,
        labelled,
        lambda strategy: {"linestyle": "--", "linewidth": 2.0},
    )
    ax.set_xlabel("synthetic training samples")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def _plot_runs(
    ax: Any,
    frame: pd.DataFrame,
    kind: str,
    colours: Mapping[str, Any],
    labelled: set[str],
    style: Callable[[str], dict[str, Any]],
) -> None:
    """One line of accuracy over ``n_synthetic`` per (strategy, run) of ``frame``, styled by
    ``style(strategy)``; a strategy's first line of this ``kind`` carries the legend label
    (``labelled``: the labels already used, updated)."""
    for (strategy, _), rows in frame.groupby(["strategy", "run"], sort=False):
        rows = rows.sort_values("n_synthetic")
        label = f"{strategy} ({kind})"
        ax.plot(
            rows["n_synthetic"],
            rows["accuracy"],
            color=colours.get(strategy),
            label=None if label in labelled else label,
            **style(strategy),
        )
        labelled.add(label)


# -- utility histograms ---------------------------------------------------------------------


@dataclass(frozen=True)
class Histograms:
    """One score's histograms over rounds, on shared bin ``edges``: round -> counts."""

    score: str
    edges: np.ndarray
    counts: dict[int, np.ndarray]


def utility_histograms(
    frames: Mapping[int, pd.DataFrame], bins: int = HIST_BINS
) -> list[Histograms]:
    """Histograms of every score column (all but ``id``) of ``frames`` (round -> scores),
    one set of bins per score spanning all rounds, so that rounds compare bar by bar.
    Non-finite scores are left out."""
    names = list(dict.fromkeys(c for f in frames.values() for c in f.columns if c != "id"))
    out = []
    for name in names:
        values = {
            r: v[np.isfinite(v)]
            for r, f in frames.items()
            if name in f
            for v in [f[name].to_numpy(dtype=np.float64)]
        }
        finite = [v for v in values.values() if len(v)]
        lo = min((float(v.min()) for v in finite), default=0.0)
        hi = max((float(v.max()) for v in finite), default=1.0)
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
        counts = {r: np.histogram(v, bins=edges)[0] for r, v in values.items()}
        out.append(Histograms(name, edges, counts))
    return out


def utility_histogram_figure(histograms: Sequence[Histograms], title: str) -> Figure:
    """A grid: one row per round, one column per score, bars from :func:`utility_histograms`."""
    rounds = sorted({r for h in histograms for r in h.counts})
    fig = Figure(figsize=(3.0 * len(histograms), 1.9 * len(rounds) + 0.6), layout="constrained")
    axes = fig.subplots(len(rounds), len(histograms), squeeze=False)
    for col, hist in enumerate(histograms):
        widths = np.diff(hist.edges)
        for row, r in enumerate(rounds):
            ax = axes[row][col]
            counts = hist.counts.get(r)
            if counts is not None:
                ax.bar(hist.edges[:-1], counts, widths, align="edge", color="tab:blue")
            ax.set_title(f"{hist.score}, round {r}", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def before_after_figure(
    before: np.ndarray, after: np.ndarray, score: str, rounds: tuple[int, int], title: str
) -> Figure:
    """Two overlaid histograms of ``score`` on shared bins: round ``rounds[0]`` (before
    feedback) and round ``rounds[1]`` (after), each with its mean as a vertical line."""
    both = np.concatenate([before, after])
    lo, hi = (float(both.min()), float(both.max())) if len(both) else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, HIST_BINS + 1)
    fig = Figure(figsize=(6.0, 3.4), layout="constrained")
    ax = fig.add_subplot()
    for values, r, colour in ((before, rounds[0], "tab:grey"), (after, rounds[1], "tab:orange")):
        if not len(values):
            continue
        ax.hist(
            values,
            bins=edges.tolist(),
            alpha=0.55,
            color=colour,
            label=f"round {r} (n {len(values)}, mean {values.mean():.3f})",
        )
        ax.axvline(float(values.mean()), color=colour, linestyle="--")
    ax.set_xlabel(score)
    ax.set_ylabel("samples")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return fig


# -- DPO training curves --------------------------------------------------------------------


def reward_accuracy_key(columns: Sequence[str]) -> str | None:
    """The implicit reward accuracy's column in a DPO log (the trainers name it
    differently), or None when the log has none."""
    return next((k for k in REWARD_ACCURACY_KEYS if k in columns), None)


def dpo_curve_figure(logs: Mapping[int, pd.DataFrame], title: str) -> Figure:
    """Implicit reward accuracy (left) and reward margin (right) against the optimiser step,
    one line per feedback round (``logs``: round -> the round's ``log.jsonl`` rows)."""
    fig = Figure(figsize=(9.0, 3.2), layout="constrained")
    acc_ax, margin_ax = fig.subplots(1, 2)
    for r, frame in logs.items():
        key = reward_accuracy_key(list(frame.columns))
        if key is not None:
            acc_ax.plot(frame["step"], frame[key], marker=".", label=f"after round {r}")
        if REWARD_MARGIN_KEY in frame:
            margin_ax.plot(
                frame["step"], frame[REWARD_MARGIN_KEY], marker=".", label=f"after round {r}"
            )
    acc_ax.set_ylim(-0.05, 1.05)
    acc_ax.set_title("implicit reward accuracy", fontsize=9)
    margin_ax.set_title("reward margin (chosen - rejected)", fontsize=9)
    for ax in (acc_ax, margin_ax):
        ax.set_xlabel("optimiser step")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig


# -- t-SNE ----------------------------------------------------------------------------------


def tsne_figure(
    coords: np.ndarray,
    labels: np.ndarray,
    synthetic: np.ndarray,
    class_names: Sequence[str],
    title: str,
) -> Figure:
    """2-d points coloured by class; real samples as dots, synthetic ones as crosses."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(class_names) <= 10 else "tab20"]
    fig = Figure(figsize=(6.4, 5.0), layout="constrained")
    ax = fig.add_subplot()
    for index, name in enumerate(class_names):
        colour = cmap(index % cmap.N)
        for is_synthetic, marker, kind in ((False, "o", "real"), (True, "x", "synthetic")):
            mask = (labels == index) & (synthetic == is_synthetic)
            if mask.any():
                ax.scatter(
                    coords[mask, 0],
                    coords[mask, 1],
                    s=14,
                    marker=marker,
                    color=colour,
                    alpha=0.75,
                    label=f"{name} ({kind})",
                )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, ncols=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig
