"""``utilgen efficiency RUN...``: curves of two finished tiny runs and the samples each needs
to reach static's accuracy, and bad input (exit 2, one line, nothing written)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import TINY_BUILTIN, sets, utilgen

RUN_SETS = [
    "task.epochs=2",
    "data.k_shot=5",
    "data.max_per_class=40",
    "generator.per_class=3",
    *TINY_BUILTIN,
]


@pytest.mark.usefixtures("quiet_one_thread")
def test_curves_and_ratio_for_static_and_a_guided_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("UTILGEN_CACHE_DIR", str(tmp_path / "cache"))
    static, guided = tmp_path / "static", tmp_path / "gda"
    assert utilgen("run", "digits-static", "--out", str(static), *sets(RUN_SETS)) == 0
    # 2 epochs hold 2 VoG checkpoints (epochs 1 and 2), not the preset's 3
    guided_sets = [
        *RUN_SETS, "loop.rounds=2", "feedback.hard_samples.k=2", "valuation.vog_checkpoints=2"
    ]
    assert utilgen("run", "digits-gendataagent", "--out", str(guided), *sets(guided_sets)) == 0
    capsys.readouterr()

    assert utilgen("efficiency", str(static), str(guided), "--fractions", "1,0,0.5") == 0
    out = capsys.readouterr().out
    curves = [json.loads((run / "efficiency.json").read_text()) for run in (static, guided)]
    assert [c["strategy"] for c in curves] == ["static", "gendataagent"]
    for curve, run in zip(curves, (static, guided), strict=True):
        assert [p["fraction"] for p in curve["points"]] == [0.0, 0.5, 1.0]
        summary = json.loads((run / "summary.json").read_text())
        # exact: the run's own last training again, in this process on one thread
        assert curve["points"][-1]["accuracy"] == summary["accuracy"]
    # static keeps all 30; gendataagent's last round trains on every round's samples kept
    # after its VoG filter (loop.accumulate), as many as its metrics record
    assert curves[0]["points"][-1]["n_synthetic"] == 30
    last = json.loads((guided / "rounds/002/metrics.json").read_text())
    assert curves[1]["points"][-1]["n_synthetic"] == last["n_train_synthetic"]
    assert curves[1]["round"] == 2
    assert "sample efficiency: static on digits" in out
    assert "sample efficiency: gendataagent on digits" in out
    assert "reach static's final top-1" in out


def test_unfinished_run_is_refused_and_nothing_written(
    tmp_path: Path, cli_error: Callable[[list[str]], str]
) -> None:
    run = tmp_path / "unfinished"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    line = cli_error(["efficiency", str(run)])
    assert "summary.json not found" in line and "resume" in line
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]
    assert "not found" in cli_error(["efficiency", str(tmp_path / "missing")])
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ("0,1.5", "fraction 1.5 is outside [0, 1]"),
        ("-0.25,1", "fraction -0.25 is outside [0, 1]"),
        ("0,0.5", "must include 1"),
        ("half,1", "not a comma-separated list of numbers"),
    ],
)
def test_bad_fractions_are_refused_before_the_run_is_read(
    tmp_path: Path, cli_error: Callable[[list[str]], str], fractions: str, message: str
) -> None:
    line = cli_error(["efficiency", str(tmp_path / "any"), "--fractions", fractions])
    assert message in line
    assert not (tmp_path / "any").exists()
