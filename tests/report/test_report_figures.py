"""The report's figures on synthetic frames: the plotted numbers are read back from the axes
and compared with answers worked out by hand."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from utilgen.report.figures import (
    DPI,
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


def test_mean_per_class_averages_seeds_and_the_bars_show_it() -> None:
    summaries = [
        {"strategy": "static", "per_class_accuracy": {"a": 0.5, "b": 1.0}},
        {"strategy": "static", "per_class_accuracy": {"a": 1.0, "b": 0.0}},
        {"strategy": "utilgen", "per_class_accuracy": {"a": 0.25, "b": 0.75}},
    ]
    means = mean_per_class(summaries)
    assert means == {"static": {"a": 0.75, "b": 0.5}, "utilgen": {"a": 0.25, "b": 0.75}}
    fig = per_class_figure(means, strategy_colours(list(means)), "digits")
    heights = [p.get_height() for p in fig.axes[0].patches]
    # bars are drawn strategy by strategy, class by class
    assert heights == pytest.approx([0.75, 0.5, 0.25, 0.75])


def test_utility_histograms_share_bins_across_rounds() -> None:
    frames = {
        1: pd.DataFrame({"id": ["x", "y", "z", "n"], "marginal": [0.0, 0.5, 1.0, np.nan]}),
        2: pd.DataFrame({"id": ["u", "v"], "marginal": [1.0, 1.0], "vog": [3.0, 3.0]}),
    }
    hists = {h.score: h for h in utility_histograms(frames, bins=2)}
    marginal = hists["marginal"]
    assert marginal.edges.tolist() == [0.0, 0.5, 1.0]
    # numpy's last bin is closed: 0.5 and 1.0 both fall in [0.5, 1.0]; the NaN is left out
    assert marginal.counts[1].tolist() == [1, 2]
    assert marginal.counts[2].tolist() == [0, 2]
    # a constant score still gets a valid bin range, and only the round that has it
    assert hists["vog"].edges.tolist() == [3.0, 3.5, 4.0]
    assert set(hists["vog"].counts) == {2}
    fig = utility_histogram_figure(list(hists.values()), "run")
    by_title = {ax.get_title(): [p.get_height() for p in ax.patches] for ax in fig.axes}
    assert by_title["marginal, round 1"] == [1, 2]
    assert by_title["marginal, round 2"] == [0, 2]
    assert by_title["vog, round 1"] == []  # round 1 never scored vog: an empty panel
    assert by_title["vog, round 2"] == [2, 0]


def test_before_after_figure_counts_every_sample_once() -> None:
    before = np.array([-0.2, -0.1, 0.0, 0.1])
    after = np.array([0.0, 0.2, 0.3])
    fig = before_after_figure(before, after, "margin", (1, 3), "dpo")
    ax = fig.axes[0]
    total = sum(p.get_height() for p in ax.patches)
    assert total == len(before) + len(after)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["round 1 (n 4, mean -0.050)", "round 3 (n 3, mean 0.167)"]
    means = sorted(line.get_xdata()[0] for line in ax.lines)
    assert means == pytest.approx([-0.05, 0.5 / 3])


def test_dpo_curves_plot_either_trainers_accuracy_key() -> None:
    assert reward_accuracy_key(["loss", "rewards/accuracies"]) == "rewards/accuracies"
    assert reward_accuracy_key(["loss", "implicit_acc"]) == "implicit_acc"
    assert reward_accuracy_key(["loss"]) is None
    lm = pd.DataFrame(
        {"step": [1, 2, 3], "rewards/accuracies": [0.5, 0.75, 1.0], "rewards/margins": [0, 1, 2]}
    )
    diffusion = pd.DataFrame({"step": [5, 10], "implicit_acc": [0.25, 0.5]})
    fig = dpo_curve_figure({1: lm, 2: diffusion}, "run")
    acc_ax, margin_ax = fig.axes
    assert [line.get_ydata().tolist() for line in acc_ax.lines] == [[0.5, 0.75, 1.0], [0.25, 0.5]]
    assert [line.get_xdata().tolist() for line in acc_ax.lines] == [[1, 2, 3], [5, 10]]
    # the Diffusion-DPO log without margins draws no margin line
    assert [line.get_ydata().tolist() for line in margin_ax.lines] == [[0, 1, 2]]


def test_accuracy_vs_samples_draws_each_run_and_each_curve() -> None:
    points = pd.DataFrame(
        {
            "strategy": ["static", "static", "utilgen", "utilgen", "utilgen"],
            "run": ["s0", "s0", "u0", "u0", "u0"],
            "n_synthetic": [0, 40, 0, 40, 80],
            "accuracy": [0.5, 0.6, 0.5, 0.65, 0.7],
        }
    )
    curves = pd.DataFrame(
        {
            "strategy": ["static"] * 4,
            "run": ["s0", "s0", "s1", "s1"],
            "n_synthetic": [20, 0, 0, 20],
            "accuracy": [0.55, 0.5, 0.4, 0.45],
        }
    )
    fig = accuracy_vs_samples_figure(points, curves, strategy_colours(["static", "utilgen"]), "d")
    lines = fig.axes[0].lines
    assert [line.get_xdata().tolist() for line in lines] == [
        [0, 40], [0, 40, 80], [0, 20], [0, 20]
    ]  # fmt: skip
    assert lines[2].get_ydata().tolist() == [0.5, 0.55]  # sorted by samples
    # one legend entry per strategy and kind, however many seeds
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["static (rounds)", "utilgen (rounds)", "static (efficiency curve)"]


def test_tsne_figure_marks_real_and_synthetic_per_class() -> None:
    coords = np.arange(12, dtype=np.float64).reshape(6, 2)
    labels = np.array([0, 0, 1, 1, 1, 0])
    synthetic = np.array([False, True, False, True, True, True])
    fig = tsne_figure(coords, labels, synthetic, ["zero", "one"], "run")
    ax = fig.axes[0]
    counts = {c.get_label(): len(c.get_offsets()) for c in ax.collections}
    assert counts == {
        "zero (real)": 1,
        "zero (synthetic)": 2,
        "one (real)": 1,
        "one (synthetic)": 2,
    }


def test_png_bytes_renders_the_figure_at_its_size() -> None:
    fig = per_class_figure({"static": {"a": 0.5}}, {}, "t")
    image = Image.open(io.BytesIO(png_bytes(fig)))
    width, height = fig.get_size_inches() * DPI
    assert image.format == "PNG" and image.size == (round(width), round(height))
