"""Known answers for the control arm's paired test (``feedback_effect.control_effect``).

A hand-made run directory: round 2's scores, and its control (the same requests generated
without feedback) with one sample the text filters dropped from the control and one the
round's own filters dropped. Only the four samples kept on both sides are paired.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from utilgen.config import RunConfig, resolve_config
from utilgen.report.feedback_effect import (
    CONTROL_FILE,
    feedback_effect,
    wilcoxon_greater,
    write_feedback_effect,
)


def _config() -> RunConfig:
    return resolve_config("digits-dpo", ["loop.rounds=2"])


def _run_dir(tmp_path: Path, *, control: bool = True) -> Path:
    run_dir = tmp_path / "run"
    for r in (1, 2):
        out = run_dir / "rounds" / f"{r:03d}"
        out.mkdir(parents=True)
        fidelity = {"overall": 0.5 if r == 2 else 0.4}
        (out / "metrics.json").write_text(json.dumps({"label_fidelity": fidelity}))
    # round 2 scored a..d and f ("e" was filtered out of the round itself)
    pd.DataFrame(
        {
            "id": ["a", "b", "c", "d", "f", "z"],
            "marginal": [0.9, 0.8, 0.7, 0.6, 0.1, 0.5],
            "loss": [0.1, 0.2, 0.3, 0.4, 2.0, 0.7],
            "meta_weight": [0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
        }
    ).to_parquet(run_dir / "rounds/001/scores.parquet")
    pd.DataFrame(
        {
            "id": ["a", "b", "c", "d", "f"],
            "marginal": [0.9, 0.8, 0.7, 0.6, 0.1],
            "loss": [0.1, 0.2, 0.3, 0.4, 2.0],
            "meta_weight": [0.9, 0.1, 0.9, 0.1, 0.9],
        }
    ).to_parquet(run_dir / "rounds/002/scores.parquet")
    if control:
        pd.DataFrame(
            {
                "id": ["a", "b", "c", "d", "e", "f"],
                "label": [0, 0, 1, 1, 2, 2],
                "kept": [True, True, True, True, True, False],
                "correct": [True, True, False, True, False, True],
                "marginal": [0.5, 0.85, 0.6, 0.6, 0.3, math.nan],
                "loss": [0.2, 0.1, 0.5, 0.6, 1.0, math.nan],
            }
        ).to_parquet(run_dir / "rounds/002" / CONTROL_FILE)
    return run_dir


def test_paired_differences_and_wilcoxon_known_answer(tmp_path: Path) -> None:
    effect = feedback_effect(_run_dir(tmp_path), _config())["control"]
    assert effect["round"] == 2
    assert (effect["n_generated"], effect["n_kept"], effect["n_paired"]) == (6, 5, 4)
    # fidelity of everything the control generated (dropped samples included), as rounds do
    assert effect["label_fidelity_control"] == pytest.approx(4 / 6)
    assert effect["label_fidelity_feedback"] == 0.5
    # meta_weight is fit afresh per set of samples: no paired test
    assert effect["tests"].keys() == {"marginal", "loss"}

    marginal = effect["tests"]["marginal"]
    # differences 0.4, -0.05, 0.1, 0: the zero is dropped; signed ranks +3, -1, +2 -> W = 5,
    # and 2 of the 8 equally likely sign patterns reach 5: p = 0.25
    assert marginal["mean_difference"] == pytest.approx((0.4 - 0.05 + 0.1 + 0.0) / 4)
    assert marginal["mean_control"] == pytest.approx((0.5 + 0.85 + 0.6 + 0.6) / 4)
    assert marginal["mean_feedback"] == pytest.approx((0.9 + 0.8 + 0.7 + 0.6) / 4)
    assert (marginal["share_better"], marginal["share_worse"]) == (0.5, 0.25)
    assert marginal["wilcoxon_w"] == 5.0
    assert marginal["p_one_sided"] == pytest.approx(0.25)
    assert marginal["improvement"] == "higher"

    loss = effect["tests"]["loss"]
    # lower is better: the test is on control - feedback = 0.1, -0.1, 0.2, 0.2
    assert loss["improvement"] == "lower"
    assert loss["mean_difference"] == pytest.approx((-0.1 + 0.1 - 0.2 - 0.2) / 4)
    assert (loss["share_better"], loss["share_worse"]) == (0.75, 0.25)
    expected = wilcoxon([0.1, -0.1, 0.2, 0.2], alternative="greater")
    assert loss["p_one_sided"] == pytest.approx(expected.pvalue)


def test_no_control_file_no_control_entry(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path, control=False)
    assert feedback_effect(run_dir, _config())["control"] is None
    write_feedback_effect(run_dir, _config())
    assert not (run_dir / "feedback_control.png").exists()


def test_write_feedback_effect_plots_the_paired_differences(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path)
    effect = write_feedback_effect(run_dir, _config())
    assert effect["control"]["plot"] == "feedback_control.png"
    assert (run_dir / "feedback_control.png").stat().st_size > 1000
    written = json.loads((run_dir / "feedback_effect.json").read_text())
    assert written["control"]["tests"]["marginal"]["wilcoxon_w"] == 5.0


def test_wilcoxon_without_a_non_zero_difference_is_undefined() -> None:
    assert all(math.isnan(v) for v in wilcoxon_greater(np.zeros(4)))
    w, p = wilcoxon_greater(np.array([0.0, 0.3, 0.1, 0.2]))
    assert (w, p) == (6.0, pytest.approx(1 / 8))
