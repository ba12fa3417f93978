"""Section builders on hand-made inputs: the numbers in the tables and sentences are the
ones worked out here, and missing data is said to be missing."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from fake_runs import fake_run
from PIL import Image as PILImage
from scipy import stats

from utilgen.pool import PoolStore, Sample, encode_text, utility_column
from utilgen.report.comparison_stats import compare_summaries
from utilgen.report.document import NotAvailable, Table, Text
from utilgen.report.runs import MissingData, read_run
from utilgen.report.samples import decision_text, sample_blocks, spread_pick, thumbnail
from utilgen.report.sections import (
    accuracy_curve_section,
    comparison_table,
    cost_table,
    margin_blocks,
    verdicts,
)


def _summary(strategy: str, seed: int, acc: float) -> dict[str, object]:
    return {
        "dataset": "digits", "strategy": strategy, "seed": seed, "accuracy": acc,
        "worst_class_ratio": 0.5, "n_train_synthetic": 0 if strategy == "real-only" else 40,
    }  # fmt: skip


STATIC = [0.80, 0.82, 0.78]
GUIDED = [0.84, 0.83, 0.85]


def _comparison() -> dict[str, object]:
    summaries = [_summary("static", s, a) for s, a in enumerate(STATIC)]
    summaries += [_summary("utilgen", s, a) for s, a in enumerate(GUIDED)]
    summaries += [_summary("real-only", s, 0.7) for s in range(3)]
    return compare_summaries(summaries)


def test_comparison_table_holds_the_means_intervals_and_p_values() -> None:
    table = comparison_table(_comparison())
    rows = {row[1]: dict(zip(table.header, row, strict=True)) for row in table.rows}
    assert [row[1] for row in table.rows] == ["real-only", "static", "utilgen"]
    half = stats.t.ppf(0.975, 2) * stats.tstd(GUIDED) / math.sqrt(3)
    assert rows["utilgen"]["top-1 mean ± 95% CI"] == (
        f"0.8400 ± {half:.4f} [{0.84 - half:.4f}, {0.84 + half:.4f}]"
    )
    p = stats.ttest_rel(GUIDED, STATIC).pvalue
    assert rows["utilgen"]["p vs static (top-1)"] == f"{p:.3g}"
    assert rows["static"]["p vs static (top-1)"] == "–"  # no test against itself
    assert rows["utilgen"]["seeds"] == "3" and rows["utilgen"]["synthetic samples"] == "40"


def test_verdict_states_the_paired_difference_with_its_interval() -> None:
    (sentence,) = verdicts(_comparison())
    diffs = [g - s for g, s in zip(GUIDED, STATIC, strict=True)]
    mean = sum(diffs) / 3
    half = stats.t.ppf(0.975, 2) * stats.tstd(diffs) / math.sqrt(3)
    assert "utilgen" in sentence and "beats static by +0.0400" in sentence
    assert f"[{mean - half:+.4f}, {mean + half:+.4f}]" in sentence
    worse = compare_summaries(
        [_summary("static", s, a) for s, a in enumerate(STATIC)]
        + [_summary("utilgen", s, a - 0.1) for s, a in enumerate(STATIC)]
    )
    (sentence,) = verdicts(worse)
    assert "does not beat static: its top-1 is 0.1000 lower" in sentence


def _with_efficiency(run_dir: Path, points: list[tuple[float, int, float]]) -> Path:
    curve = {
        "points": [
            {"fraction": f, "n_synthetic": n, "accuracy": a, "worst_class_ratio": 0.5}
            for f, n, a in points
        ]
    }
    (run_dir / "efficiency.json").write_text(json.dumps(curve))
    return run_dir


def test_accuracy_section_reports_the_samples_needed_to_reach_static(tmp_path: Path) -> None:
    static = _with_efficiency(
        fake_run(tmp_path / "s", "static", 0), [(0.0, 0, 0.5), (0.5, 50, 0.6), (1.0, 100, 0.7)]
    )
    guided = _with_efficiency(
        fake_run(tmp_path / "u", "utilgen", 0), [(0.0, 0, 0.5), (0.5, 50, 0.7), (1.0, 100, 0.8)]
    )
    section = accuracy_curve_section([read_run(static), read_run(guided)])
    (table,) = [b for b in section.blocks if isinstance(b, Table)]
    (row,) = table.rows
    # static needs all 100 samples to reach its 0.7; utilgen reaches 0.7 at 50
    assert row[:6] == ("digits", "utilgen", "0.7000", "100.0", "50.0", "0.500")
    lone = accuracy_curve_section([read_run(fake_run(tmp_path / "r", "real-only", 0))])
    assert [b.reason for b in lone.blocks if isinstance(b, NotAvailable)] == [
        "efficiency curves and the samples-to-reach-static ratio: no run holds efficiency.json"
    ]


def test_cost_table_has_a_row_per_round_and_the_dpo_seconds(tmp_path: Path) -> None:
    run_dir = fake_run(tmp_path / "run", "dpo", 0)
    dpo = run_dir / "rounds" / "001" / "adapters" / "dpo"
    dpo.mkdir(parents=True)
    (dpo / "result.json").write_text(json.dumps({"seconds": 12.34}))
    table = cost_table([read_run(run_dir)])
    assert table.header == (
        "run", "stage", "generated", "synthetic trained on", "train_seconds", "DPO seconds"
    )  # fmt: skip
    assert table.rows == (
        ("dpo (digits, seed 0)", "stage 1: real data only", "0", "0", "1.5", ""),
        ("dpo (digits, seed 0)", "round 1", "0", "0", "1.5", "12.3"),
    )


def test_margins_need_dpo_and_two_scored_rounds(tmp_path: Path) -> None:
    run = read_run(fake_run(tmp_path / "run", "static", 0))
    with pytest.raises(MissingData, match="no DPO feedback"):
        margin_blocks(run)


def test_spread_pick_takes_rounds_and_decisions_in_turn() -> None:
    frame = pd.DataFrame(
        {
            "id": [f"s{i}" for i in range(6)],
            "label": [0, 0, 0, 0, 0, 1],
            "round": [1, 1, 1, 2, 2, 1],
            "kept": [True, True, False, True, True, True],
        }
    )
    picked = spread_pick(frame, per_class=3)
    # class 0: first of (round 1, dropped), (round 1, kept), (round 2, kept); class 1: its one
    assert picked["id"].tolist() == ["s2", "s0", "s3", "s5"]


def test_text_samples_table_keeps_text_scores_and_provenance(tmp_path: Path) -> None:
    run_dir = fake_run(tmp_path / "run", "udpo", 0)
    texts = ["<b>Stocks</b> rose\n\nsharply", "x" * 400]
    samples = [
        Sample(
            id=f"syn-{i}",
            modality="text",
            label=0,
            class_name="business",
            payload=encode_text(text),
            source="synthetic",
            round=1,
            generator="smollm2",
            prompt="Write a business article.",
            kept=i == 0,
            reason="" if i == 0 else "copied",
        )
        for i, text in enumerate(texts)
    ]
    with PoolStore.open(run_dir, writable=True) as store:
        store.append(samples)
        store.set_column(utility_column(1, "margin"), {"syn-0": 0.25, "syn-1": -0.5})
    blocks = sample_blocks(read_run(run_dir))
    assert isinstance(blocks[0], Text) and blocks[0].text.startswith("2 of the run's 2")
    table = blocks[1]
    assert isinstance(table, Table)
    rows = {row[0][:5]: row for row in table.rows}
    # white space folded; the markup stays text (the renderers escape it)
    assert rows["<b>St"][0] == "<b>Stocks</b> rose sharply"
    assert rows["<b>St"][1:5] == ("business", "1", "margin 0.25", "kept")
    assert rows["xxxxx"][0] == "x" * 299 + "…"
    assert rows["xxxxx"][3:5] == ("margin -0.5", "dropped: copied")
    assert rows["xxxxx"][5] == "smollm2; prompt: Write a business article."
    assert decision_text({"kept": False, "reason": ""}) == "dropped: no reason recorded"


def test_thumbnail_enlarges_small_and_shrinks_large_images() -> None:
    def png(size: tuple[int, int]) -> bytes:
        out = io.BytesIO()
        PILImage.new("L", size).save(out, format="PNG")
        return out.getvalue()

    assert PILImage.open(io.BytesIO(thumbnail(png((8, 8))))).size == (96, 96)
    assert PILImage.open(io.BytesIO(thumbnail(png((512, 256))))).size == (96, 48)
