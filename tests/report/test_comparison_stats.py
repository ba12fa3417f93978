"""Multi-seed comparison: known-answer intervals and paired tests, grouping, and the
``utilgen compare`` command end to end on two tiny real-only configs."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from scipy import stats

from utilgen.cli import main
from utilgen.report.comparison_stats import compare_summaries, mean_ci95, paired_test


def test_mean_ci95_known_answer() -> None:
    # n = 4, mean 2.5, sd = sqrt(5/3); t(0.975, 3) = 3.182446305...
    mean, ci = mean_ci95([1.0, 2.0, 3.0, 4.0])
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2
    assert mean == 2.5
    assert ci is not None
    assert ci[0] == pytest.approx(2.5 - half, abs=1e-12)
    assert ci[1] == pytest.approx(2.5 + half, abs=1e-12)
    assert mean_ci95([0.7]) == (0.7, None)


def test_paired_test_pairs_by_seed() -> None:
    a = {0: 0.90, 1: 0.80, 2: 0.85, 7: 0.99}  # seed 7 has no partner
    b = {2: 0.83, 0: 0.86, 1: 0.79, 5: 0.10}  # nor has seed 5
    out = paired_test(a, b)
    expected = stats.ttest_rel([0.90, 0.80, 0.85], [0.86, 0.79, 0.83])
    assert out["n_pairs"] == 3
    assert out["mean_difference"] == pytest.approx((0.04 + 0.01 + 0.02) / 3)
    assert out["t"] == pytest.approx(float(expected.statistic))
    assert out["p"] == pytest.approx(float(expected.pvalue))
    # Unpaired the same numbers would test something else: the pairing matters.
    unpaired = stats.ttest_ind([0.90, 0.80, 0.85], [0.86, 0.79, 0.83])
    assert out["p"] != pytest.approx(float(unpaired.pvalue))
    single = paired_test({0: 0.9}, {0: 0.8})
    assert single["t"] is None and single["p"] is None and single["n_pairs"] == 1


def _summary(strategy: str, seed: int, acc: float, dataset: str = "digits") -> dict[str, object]:
    return {
        "dataset": dataset, "strategy": strategy, "seed": seed, "accuracy": acc,
        "worst_class_ratio": acc / 2, "n_train_synthetic": 0 if strategy == "real-only" else 100,
    }


def test_groups_by_dataset_and_strategy_and_tests_against_the_baselines() -> None:
    summaries = [_summary("real-only", s, 0.80 + 0.01 * s) for s in range(3)]
    summaries += [_summary("static", s, 0.85 + 0.02 * s) for s in range(3)]
    summaries += [_summary("utilgen", s, 0.86 + 0.03 * s) for s in range(3)]
    summaries += [_summary("static", 0, 0.5, dataset="bbc-news")]
    comparison = compare_summaries(summaries)
    rows = {(r["dataset"], r["strategy"]): r for r in comparison["groups"]}
    assert set(rows) == {
        ("digits", "real-only"), ("digits", "static"), ("digits", "utilgen"),
        ("bbc-news", "static"),
    }
    util = rows[("digits", "utilgen")]
    assert util["n"] == 3 and util["synthetic_samples"] == 100
    assert util["accuracy"]["mean"] == pytest.approx(0.89)
    assert set(util["vs"]) == {"static", "real-only"}
    expected = stats.ttest_rel([0.86, 0.89, 0.92], [0.85, 0.87, 0.89])
    assert util["vs"]["static"]["accuracy"]["p"] == pytest.approx(float(expected.pvalue))
    assert "static" not in rows[("digits", "static")]["vs"]
    # bbc-news has no real-only run: nothing to test against
    assert rows[("bbc-news", "static")]["vs"] == {}
    with pytest.raises(ValueError, match="seed 0"):
        compare_summaries([_summary("static", 0, 0.5), _summary("static", 0, 0.6)])


def test_compare_command_runs_every_seed_and_writes_the_table(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    sets = ["task.epochs=1", "data.k_shot=3", "data.max_per_class=20"]
    args = ["compare", "digits-real-only", "digits-real-only", "--seeds", "2", "--out", str(out)]
    with pytest.raises(SystemExit) as exc:  # two configs with one name would share runs
        main([*args, *[x for s in sets for x in ("--set", s)]])
    assert exc.value.code == 2
    assert not out.exists()

    args = ["compare", "digits-real-only", "--seeds", "2", "--out", str(out)]
    with pytest.raises(SystemExit) as done:
        main([*args, *[x for s in sets for x in ("--set", s)]])
    assert done.value.code == 0
    comparison = json.loads((out / "comparison.json").read_text())
    (row,) = comparison["groups"]
    assert row["strategy"] == "real-only" and row["seeds"] == [0, 1]
    runs = [out / "digits-real-only" / f"seed-{s}" / "summary.json" for s in (0, 1)]
    summaries = [json.loads(path.read_text()) for path in runs]
    assert [s["seed"] for s in summaries] == [0, 1]
    assert row["accuracy"]["values"] == [s["accuracy"] for s in summaries]
    assert "real-only" in (out / "comparison.md").read_text()


def test_seeds_below_one_is_a_one_line_error(
    tmp_path: Path, cli_error: Callable[[list[str]], str]
) -> None:
    line = cli_error(["compare", "digits-real-only", "--seeds", "0", "--out", str(tmp_path / "c")])
    assert "--seeds" in line
    assert not (tmp_path / "c").exists()


def test_jobs_run_in_worker_processes_with_the_same_results(tmp_path: Path) -> None:
    sets = ["task.epochs=1", "data.k_shot=3", "data.max_per_class=20"]
    summaries = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs-{jobs}"
        args = ["compare", "digits-real-only", "--seeds", "2", "--out", str(out)]
        args += ["--jobs", str(jobs), *[x for s in sets for x in ("--set", s)]]
        with pytest.raises(SystemExit) as done:
            main(["--quiet", *args])
        assert done.value.code == 0
        comparison = json.loads((out / "comparison.json").read_text())
        summaries[jobs] = comparison["groups"][0]["accuracy"]["values"]
        # every run wrote its own report in its worker
        run_dirs = [out / "digits-real-only" / f"seed-{s}" for s in (0, 1)]
        assert all((run_dir / "report.html").exists() for run_dir in run_dirs)
    assert summaries[1] == summaries[2]
