"""Did feedback make the generator's samples more useful? Rounds compared in a run directory.

Every round's samples are scored by the same stage-1 classifier, so the score distributions
of round 1 (before any feedback) and of the last round (after it) compare directly. For
each score (``rounds/NNN/scores.parquet``) :func:`feedback_effect` reports per round the
count, mean and median, and the one-sided Mann-Whitney U test that the last round's scores
are stochastically greater than round 1's; label fidelity per round comes from the rounds'
``metrics.json``. :func:`write_feedback_effect` writes ``RUN/feedback_effect.json`` and
``RUN/feedback_effect.png`` (one histogram panel per score, rounds overlaid).

Scores that are fit afresh on each round's samples (``meta_weight``: a weight net trained on
that round; ``vog``, ``composite``: normalised per class within the round) are relative
within a round; their comparison across rounds is reported but only the absolute scores
(``marginal``, ``margin``, ``entropy``, ``loss``, ``similarity``) measure a shift.

Rounds draw their own prompts and seeds, so the round tests mix feedback's effect with the
difference between two draws of requests. A run with ``feedback.control`` also holds the
last round's requests generated without model-level feedback (``rounds/NNN/control.parquet``,
written by :mod:`utilgen.loop.control`); :func:`control_effect` pairs each of the round's
samples with its control by id (same request, same noise) and tests the paired differences
with the one-sided Wilcoxon signed-rank test, plotted in ``RUN/feedback_control.png``.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu, wilcoxon

from utilgen.atomic import write_bytes_atomic, write_json_atomic
from utilgen.config import RunConfig
from utilgen.pool.layout import CONTROL_FILE as CONTROL_FILE  # kept for its importers
from utilgen.pool.layout import RoundLayout, RunLayout

ABSOLUTE_SCORES = ("marginal", "margin", "entropy", "loss", "similarity")
LOWER_IS_BETTER = ("entropy", "loss")


def _rounds(run_dir: Path, rounds: int) -> list[tuple[int, RoundLayout]]:
    layout = RunLayout(run_dir)
    return [(r, layout.round(r)) for r in range(1, rounds + 1)]


def _scores(files: RoundLayout) -> pd.DataFrame | None:
    return pd.read_parquet(files.scores) if files.scores.exists() else None


def mann_whitney_greater(after: np.ndarray, before: np.ndarray) -> tuple[float, float]:
    """(U statistic, one-sided p) for "``after`` is stochastically greater than ``before``";
    (nan, nan) when either side has no sample."""
    if not len(after) or not len(before):
        return math.nan, math.nan
    result = mannwhitneyu(after, before, alternative="greater")
    return float(result.statistic), float(result.pvalue)


def wilcoxon_greater(differences: np.ndarray) -> tuple[float, float]:
    """(W statistic, one-sided p) for "the paired ``differences`` are centred above 0"
    (Wilcoxon signed-rank, zero differences dropped); (nan, nan) when none is non-zero."""
    if not np.any(differences != 0):
        return math.nan, math.nan
    result = wilcoxon(differences, alternative="greater")
    return float(result.statistic), float(result.pvalue)


def round_scores(run_dir: Path, rounds: int) -> dict[int, pd.DataFrame]:
    """Round -> its ``scores.parquet`` (rounds that scored nothing are left out)."""
    return {r: f for r, p in _rounds(run_dir, rounds) if (f := _scores(p)) is not None}


def feedback_effect(
    run_dir: str | Path, config: RunConfig, frames: dict[int, pd.DataFrame] | None = None
) -> dict[str, Any]:
    """Per-round score statistics, label fidelity and the first-vs-last round tests
    (``frames``: the rounds' scores, read from the run directory when None)."""
    run_dir = Path(run_dir)
    if frames is None:
        frames = round_scores(run_dir, config.loop.rounds)
    per_round: list[dict[str, Any]] = []
    for r, files in _rounds(run_dir, config.loop.rounds):
        metrics_file = files.metrics
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        entry: dict[str, Any] = {
            "round": r,
            "generator": metrics.get("generator", ""),
            "label_fidelity": (metrics.get("label_fidelity") or {}).get("overall"),
            "test_accuracy": (metrics.get("test") or {}).get("accuracy"),
        }
        frame = frames.get(r)
        if frame is not None:
            entry["n_scored"] = len(frame)
            for name in frame.columns:
                if name == "id":
                    continue
                values = frame[name].to_numpy(dtype=np.float64)
                entry[f"{name}_mean"] = float(values.mean()) if len(values) else math.nan
                entry[f"{name}_median"] = float(np.median(values)) if len(values) else math.nan
        per_round.append(entry)
    first, last = 1, config.loop.rounds
    tests: dict[str, dict[str, Any]] = {}
    if first in frames and last in frames:
        for name in frames[first].columns:
            if name == "id" or name not in frames[last].columns:
                continue
            before = frames[first][name].to_numpy(dtype=np.float64)
            after = frames[last][name].to_numpy(dtype=np.float64)
            if name in LOWER_IS_BETTER:  # test for an improvement: lower entropy / loss
                before, after = -before, -after
            u, p = mann_whitney_greater(after, before)
            tests[name] = {
                "first_round": first,
                "last_round": last,
                "mean_first": float(frames[first][name].mean()),
                "mean_last": float(frames[last][name].mean()),
                "improvement": "lower" if name in LOWER_IS_BETTER else "higher",
                "mann_whitney_u": u,
                "p_one_sided": p,
                "absolute": name in ABSOLUTE_SCORES,
            }
    fidelity = [e["label_fidelity"] for e in per_round]
    control = control_effect(run_dir, config.loop.rounds, frames)
    return {
        "rounds": per_round,
        "tests": tests,
        "label_fidelity_first": fidelity[0] if fidelity else None,
        "label_fidelity_last": fidelity[-1] if fidelity else None,
        "feedback": list(config.feedback.components),
        # Which scores ranked and weighed the preference pairs; None when no pairs were built.
        "pair_score": (
            config.feedback.pairs.score if "dpo" in config.feedback.components else None
        ),
        "pair_weight_score": (
            (config.feedback.pairs.weight_score or config.feedback.pairs.score)
            if "dpo" in config.feedback.components
            else None
        ),
        "control": control,
    }


def read_control(run_dir: Path, rounds: int) -> tuple[int, pd.DataFrame] | None:
    """(round, its ``control.parquet``) for the last round that has one (the loop may stop
    before loop.rounds); None without a control."""
    for r, files in reversed(_rounds(run_dir, rounds)):
        if files.control.exists():
            return r, pd.read_parquet(files.control)
    return None


def paired_differences(
    frames: dict[int, pd.DataFrame], round_index: int, control: pd.DataFrame
) -> pd.DataFrame | None:
    """Each of round ``round_index``'s scored samples next to its kept control (joined by
    id; score columns suffixed ``_feedback`` and ``_control``); None if it scored nothing."""
    if round_index not in frames:
        return None
    return frames[round_index].merge(
        control[control["kept"]], on="id", suffixes=("_feedback", "_control"), validate="1:1"
    )


def control_effect(
    run_dir: Path, rounds: int, frames: dict[int, pd.DataFrame]
) -> dict[str, Any] | None:
    """The last round against its control (same requests, generator before dpo feedback):
    label fidelity of both, and per absolute score the paired mean difference, the shares
    of pairs that got better and worse, and the one-sided Wilcoxon signed-rank test that
    feedback raised the score (lowered it for entropy and loss). None without a control."""
    found = read_control(run_dir, rounds)
    if found is None:
        return None
    r, control = found
    joined = paired_differences(frames, r, control)
    metrics_file = RunLayout(run_dir).round(r).metrics
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    tests: dict[str, dict[str, Any]] = {}
    for name in [c for c in control.columns if c in ABSOLUTE_SCORES]:
        if joined is None or f"{name}_feedback" not in joined:
            continue
        after = joined[f"{name}_feedback"].to_numpy(dtype=np.float64)
        before = joined[f"{name}_control"].to_numpy(dtype=np.float64)
        better = before - after if name in LOWER_IS_BETTER else after - before
        w, p = wilcoxon_greater(better)
        tests[name] = {
            "mean_control": float(before.mean()) if len(before) else math.nan,
            "mean_feedback": float(after.mean()) if len(after) else math.nan,
            "mean_difference": float((after - before).mean()) if len(after) else math.nan,
            "share_better": float((better > 0).mean()) if len(better) else math.nan,
            "share_worse": float((better < 0).mean()) if len(better) else math.nan,
            "improvement": "lower" if name in LOWER_IS_BETTER else "higher",
            "wilcoxon_w": w,
            "p_one_sided": p,
        }
    return {
        "round": r,
        "n_generated": len(control),
        "n_kept": int(control["kept"].sum()),
        "n_paired": 0 if joined is None else len(joined),
        "label_fidelity_control": float(control["correct"].mean()) if len(control) else None,
        "label_fidelity_feedback": (metrics.get("label_fidelity") or {}).get("overall"),
        "tests": tests,
    }


def _save_figure(fig: Any, path: Path) -> Path:
    """``fig`` as a PNG at ``path`` (atomically), then closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def plot_feedback_effect(frames: dict[int, pd.DataFrame], path: Path) -> Path | None:
    """Histograms of every score of ``frames`` (round -> scores), rounds overlaid, written
    to ``path``; None when no round was scored."""
    if not frames:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c for c in next(iter(frames.values())).columns if c != "id"]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        values = [f[name].to_numpy(dtype=np.float64) for f in frames.values() if name in f]
        lo = min(float(v.min()) for v in values if len(v))
        hi = max(float(v.max()) for v in values if len(v))
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 21)
        for r, frame in frames.items():
            if name in frame:
                v = frame[name].to_numpy(dtype=np.float64)
                ax.hist(v, bins=bins, alpha=0.5, label=f"round {r} (mean {v.mean():.3f})")
        ax.set_title(name)
        ax.legend(fontsize=7)
    return _save_figure(fig, path)


def plot_control(joined: pd.DataFrame, tests: dict[str, dict[str, Any]], path: Path) -> Path | None:
    """Histograms of the paired differences (feedback minus control) of every score that
    :func:`control_effect` tested (``tests``, its p in the title), from ``joined``
    (:func:`paired_differences`), written to ``path``; None when nothing was tested."""
    if not tests or joined.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tests), figsize=(4 * len(tests), 3.2), squeeze=False)
    for ax, (name, test) in zip(axes[0], tests.items(), strict=True):
        diff = (joined[f"{name}_feedback"] - joined[f"{name}_control"]).to_numpy(np.float64)
        ax.hist(diff, bins=31, color="tab:blue", alpha=0.7)
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_title(
            f"{name}: feedback - control, mean {diff.mean():+.4f}, "
            f"Wilcoxon p {test['p_one_sided']:.2g}",
            fontsize=9,
        )
        ax.set_xlabel("paired difference, same request and noise", fontsize=8)
    return _save_figure(fig, path)


def write_feedback_effect(run_dir: str | Path, config: RunConfig) -> dict[str, Any]:
    """Write ``feedback_effect.json``, ``feedback_effect.png`` and, for a run with a
    control, ``feedback_control.png``; returns the JSON's content."""
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    frames = round_scores(run_dir, config.loop.rounds)
    effect = feedback_effect(run_dir, config, frames)
    plot = plot_feedback_effect(frames, layout.feedback_effect_plot)
    effect["plot"] = plot.name if plot is not None else None
    control = effect["control"]
    found = read_control(run_dir, config.loop.rounds)
    if control is not None and found is not None:
        joined = paired_differences(frames, *found)
        control_plot = (
            None
            if joined is None
            else plot_control(joined, control["tests"], layout.feedback_control_plot)
        )
        control["plot"] = control_plot.name if control_plot is not None else None
    write_json_atomic(layout.feedback_effect, effect)
    return effect
