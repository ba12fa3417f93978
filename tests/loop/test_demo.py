"""The demo: layout DIR/<dataset>/<strategy>/ and the results it promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from utilgen.loop.demo import DEMO_DATASETS, demo_config, demo_plan


def test_plan_covers_every_dataset_and_strategy() -> None:
    for fast in (False, True):
        plan = demo_plan(fast)
        assert {(e.dataset, e.strategy) for e in plan} == {
            (d, s) for d in DEMO_DATASETS for s in ("real-only", "static", "real-only-full")
        }


def test_static_runs_share_the_real_only_split_and_generate() -> None:
    for fast in (False, True):
        configs = {(e.dataset, e.strategy): demo_config(e) for e in demo_plan(fast)}
        for dataset in DEMO_DATASETS:
            static, real = configs[dataset, "static"], configs[dataset, "real-only"]
            assert static.data == real.data and static.seed == real.seed
            assert static.task == real.task
            assert static.generator.kind != "none" and static.loop.rounds == 1
            assert real.generator.kind == "none"


def test_full_strategy_uses_all_real_data_and_k_shot_does_not() -> None:
    for entry in demo_plan(fast=False):
        cfg = demo_config(entry)
        assert cfg.strategy == entry.strategy
        assert (cfg.data.k_shot is None) == (entry.strategy == "real-only-full")


@pytest.mark.slow
def test_fast_demo_end_to_end(tmp_path: Path) -> None:
    from utilgen.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["demo", "--fast", "--quiet", "--out", str(tmp_path)])
    assert exc.value.code == 0
    for dataset in DEMO_DATASETS:
        summary = json.loads((tmp_path / dataset / "real-only" / "summary.json").read_text())
        assert {"accuracy", "worst_class_ratio"} <= set(summary)
        full = json.loads((tmp_path / dataset / "real-only-full" / "summary.json").read_text())
        assert full["accuracy"] >= 0.95, (dataset, full["accuracy"])
        static = json.loads((tmp_path / dataset / "static" / "summary.json").read_text())
        assert static["n_train_synthetic"] > 0 and static["label_fidelity"] is not None
    assert (tmp_path / "results.md").read_text().count("\n") == 2 + 3 * len(DEMO_DATASETS)
