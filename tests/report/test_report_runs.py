"""Finding the runs a report covers: run directories, comparison and demo layouts, bad paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_runs import fake_run

from utilgen.errors import UtilgenError
from utilgen.report.comparison_stats import compare_summaries
from utilgen.report.html import build_report
from utilgen.report.runs import collect_runs, expand_paths, read_run, representatives


def test_read_run_reads_every_round(tmp_path: Path) -> None:
    run = read_run(fake_run(tmp_path / "run", "static", 0))
    assert run.label == "static (digits, seed 0)"
    assert sorted(run.round_metrics) == [0, 1]
    assert run.config == {} and run.feedback_components == []


def test_comparison_directory_expands_to_its_runs_and_comparison(tmp_path: Path) -> None:
    cmp = tmp_path / "cmp"
    runs = [fake_run(cmp / name / f"seed-{s}", name, s) for name in ("static", "a") for s in (0, 1)]
    comparison = compare_summaries([json.loads((r / "summary.json").read_text()) for r in runs])
    (cmp / "comparison.json").write_text(json.dumps(comparison))
    inputs = collect_runs([cmp])
    assert [r.run_dir for r in inputs.runs] == sorted(runs)
    assert inputs.comparison == comparison
    # with anything else beside it, the comparison is recomputed over everything given
    other = fake_run(tmp_path / "extra", "real-only", 0)
    assert collect_runs([cmp, other]).comparison is None


def test_demo_layout_and_duplicates(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    flat = fake_run(demo / "digits" / "real-only", "real-only", 0)
    seeded = fake_run(demo / "digits" / "static" / "seed-1", "static", 1)
    run_dirs, comparisons = expand_paths([demo, flat, demo / "digits" / ".." / "digits"])
    assert run_dirs == [flat, seeded] and comparisons == []


def test_lowest_seed_represents_each_strategy(tmp_path: Path) -> None:
    runs = [read_run(fake_run(tmp_path / f"s{s}", "static", s)) for s in (2, 0, 1)]
    runs.append(read_run(fake_run(tmp_path / "r", "real-only", 3)))
    assert [(r.strategy, r.seed) for r in representatives(runs)] == [
        ("real-only", 3),
        ("static", 0),
    ]


def test_bad_paths_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(UtilgenError, match="absent not found; pass a run directory"):
        collect_runs([tmp_path / "absent"])
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(UtilgenError, match="holds no finished run"):
        collect_runs([tmp_path / "empty"])
    unfinished = tmp_path / "unfinished"
    (unfinished / "rounds").mkdir(parents=True)
    (unfinished / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(UtilgenError, match="holds no finished run"):
        collect_runs([unfinished])
    first = fake_run(tmp_path / "x", "static", 0)
    second = fake_run(tmp_path / "y", "static", 0)
    with pytest.raises(UtilgenError, match="are both seed 0 of static on digits"):
        collect_runs([first, second])


def test_a_comparison_of_another_layout_is_recomputed_or_refused(tmp_path: Path) -> None:
    cmp = tmp_path / "cmp"
    run = fake_run(cmp / "static" / "seed-0", "static", 0)
    (cmp / "comparison.json").write_text(json.dumps({"rows": []}))
    assert collect_runs([cmp]).comparison is None  # recomputed from the runs
    good = compare_summaries([json.loads((run / "summary.json").read_text())])
    del good["groups"][0]["accuracy"]["values"]
    out = tmp_path / "report"
    with pytest.raises(UtilgenError, match=r"a group has no 'accuracy\.values'"):
        build_report([run], out, comparison=good)
    assert not out.exists()
