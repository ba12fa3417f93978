"""The demo: its plan (datasets x strategies x seeds), layout and what it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from utilgen.commands.demo import (
    DEMO_DATASETS,
    SEEDS,
    STRATEGIES,
    demo_config,
    demo_plan,
    run_dir_of,
)


def test_plan_covers_every_dataset_strategy_and_seed() -> None:
    for fast, seeds in ((False, tuple(range(SEEDS))), (True, (0,))):
        plan = demo_plan(fast)
        assert {(e.dataset, e.strategy) for e in plan} == {
            (d, s) for d in DEMO_DATASETS for s in STRATEGIES[d]
        }
        assert all(e.seeds == seeds for e in plan)
    for dataset in DEMO_DATASETS:
        assert {"real-only", "static"} < set(STRATEGIES[dataset])


def test_strategies_of_a_dataset_share_split_task_and_seed() -> None:
    for fast in (False, True):
        for entry in demo_plan(fast):
            for seed in entry.seeds:
                cfg = demo_config(entry, seed)
                real = demo_config(
                    next(
                        e
                        for e in demo_plan(fast)
                        if e.dataset == entry.dataset and e.strategy == "real-only"
                    ),
                    seed,
                )
                assert cfg.seed == seed and cfg.strategy == entry.strategy
                assert cfg.data == real.data and cfg.task == real.task
                assert cfg.data.k_shot is not None  # k-shot settings
                assert (cfg.generator.kind == "none") == (entry.strategy == "real-only")


def test_seed_folders_only_with_several_seeds(tmp_path: Path) -> None:
    full = demo_plan(fast=False)[0]
    fast = demo_plan(fast=True)[0]
    assert run_dir_of(tmp_path, full, 2) == tmp_path / full.dataset / full.strategy / "seed-2"
    assert run_dir_of(tmp_path, fast, 0) == tmp_path / fast.dataset / fast.strategy


@pytest.mark.slow
def test_fast_demo_end_to_end(tmp_path: Path) -> None:
    from utilgen.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["demo", "--fast", "--quiet", "--out", str(tmp_path)])
    assert exc.value.code == 0
    comparison = json.loads((tmp_path / "comparison.json").read_text())
    groups = {(g["dataset"], g["strategy"]): g for g in comparison["groups"]}
    assert set(groups) == {(d, s) for d in DEMO_DATASETS for s in STRATEGIES[d]}
    for (dataset, strategy), group in groups.items():
        assert group["n"] == 1
        assert {"mean", "ci95"} <= set(group["accuracy"]) and "worst_class_ratio" in group
        assert (group["synthetic_samples"] > 0) == (strategy != "real-only")
        summary = json.loads((tmp_path / dataset / strategy / "summary.json").read_text())
        assert summary["accuracy"] == group["accuracy"]["mean"]  # exact: the mean of one value
    rows = comparison["sample_efficiency"]
    assert {r["dataset"] for r in rows} == set(DEMO_DATASETS)
    html = (tmp_path / "report.html").read_text()
    assert "<img" in html and (tmp_path / "report.md").exists()


def test_each_seeds_generator_is_one_job_the_digits_runs_wait_for(tmp_path: Path) -> None:
    from utilgen.commands.demo import _planned
    from utilgen.commands.parallel import run_jobs_for

    plan = demo_plan(fast=False)
    configs = [(e, s, demo_config(e, s)) for e in plan for s in e.seeds]
    jobs = {j.key: j for j in run_jobs_for(_planned(tmp_path, configs), report=False)}
    generators = [k for k in jobs if k.startswith("generator:")]
    assert len(generators) == SEEDS  # one per seed, shared by every digits strategy
    for entry, seed, _ in configs:
        job = jobs[f"run:{run_dir_of(tmp_path, entry, seed)}"]
        uses_builtin = entry.dataset == "digits" and entry.strategy != "real-only"
        assert len(job.after) == int(uses_builtin)
        if uses_builtin:
            # the same seed's generator: its job trains with that seed's config
            assert jobs[job.after[0]].args[0].seed == seed
    # a finished run needs no generator: a resumed demo does not retrain it
    for entry, seed, _ in configs:
        if entry.dataset == "digits" and seed == 0:
            run_dir = run_dir_of(tmp_path, entry, seed)
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "summary.json").write_text("{}")
    again = run_jobs_for(_planned(tmp_path, configs), report=False)
    resumed = [j.key for j in again if j.key.startswith("generator:")]
    assert len(resumed) == SEEDS - 1
