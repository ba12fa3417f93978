"""The round engine: synthetic-to-real ratio, accumulation, budgets, plateau, offline mode.

Stopping rules and the ratio cap get known-answer tests on hand-made numbers; the loop
tests drive real runs with the replay generator (held-out real digits, so every sample is
known) on a 5-shot digits split.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from replay import replay_prepared

from utilgen.config import RunConfig, resolve_config
from utilgen.config.loop import BudgetConfig, PlateauConfig
from utilgen.errors import ConfigError
from utilgen.loop.run import Prepared, prepare, run
from utilgen.loop.stopping import (
    Cost,
    budget_exceeded,
    check_first_round_budget,
    plateaued,
    round_cost,
    spent,
)
from utilgen.loop.training_set import TRAINING_SET, ratio_caps, read_training_set
from utilgen.pool import PoolStore, export_pool

pytestmark = pytest.mark.usefixtures("quiet_one_thread")

PER_CLASS = 3
BASE = [
    "task.epochs=2",
    "data.k_shot=5",
    "generator.kind=builtin-diffusion",
    f"generator.per_class={PER_CLASS}",
    "strategy=static",
]


def _config(*overrides: str, rounds: int = 1) -> RunConfig:
    return resolve_config("digits-real-only", [*BASE, f"loop.rounds={rounds}", *overrides])


def _prepared(config: RunConfig) -> Prepared:
    return replay_prepared(config, PER_CLASS)


def _run(config: RunConfig, run_dir: Path) -> dict:
    run(config, run_dir, prepared=_prepared(config))
    return json.loads((run_dir / "summary.json").read_text())


# -- stopping rules and ratio caps: known answers ----------------------------------------


def test_plateau_fires_only_after_patience_rounds_without_improvement() -> None:
    rule = PlateauConfig(patience=2, min_delta=0.01)
    assert not plateaued(rule, [0.5, 0.6])  # fewer rounds than patience + 1
    assert not plateaued(rule, [0.5, 0.6, 0.7])  # still improving
    assert plateaued(rule, [0.5, 0.7, 0.705, 0.71])  # +0.01 is not more than min_delta
    assert not plateaued(rule, [0.5, 0.7, 0.6, 0.72])
    assert not plateaued(PlateauConfig(), [0.9, 0.1, 0.1, 0.1])  # switched off


def test_budget_names_the_limit_the_next_round_would_overrun() -> None:
    budget = BudgetConfig(synthetic_samples=100, generator_calls=500, wall_seconds=60)
    done = Cost(60, 300, 30.0)
    assert budget_exceeded(budget, done, Cost(40, 200, 0)) is None  # exactly fits
    assert budget_exceeded(budget, done, Cost(41, 0, 0)) == "budget:synthetic_samples"
    assert budget_exceeded(budget, done, Cost(0, 201, 0)) == "budget:generator_calls"
    assert budget_exceeded(budget, Cost(0, 0, 60.0), Cost()) == "budget:wall_seconds"
    assert budget_exceeded(BudgetConfig(), Cost(10**9, 10**9, 1e9), Cost(1, 1, 1)) is None


def test_spent_adds_samples_calls_and_seconds_of_finished_stages() -> None:
    metrics = [
        {"train_seconds": 2.0},  # stage 1 (no seconds key in older runs)
        {"n_generated": 30, "generator_calls": 330, "seconds": 5.5},
        {"n_generated": 30, "generator_calls": 30, "seconds": 4.0},
    ]
    assert spent(metrics) == Cost(60, 360, 11.5)


def test_round_cost_counts_optimisation_passes_from_round_two() -> None:
    config = _config(
        "feedback.components=[prompt_ascent,noise_opt]",
        "feedback.prompt_ascent.steps=4",
        "feedback.noise_opt.steps=2",
        rounds=2,
    )
    assert round_cost(config, 1, 30, 10) == Cost(30, 30)
    # 10 requests x (4 ascent steps + 2 noise steps + 1 inversion) on top of 30 samples
    assert round_cost(config, 2, 30, 10) == Cost(30, 30 + 10 * 7)


def test_first_round_budget_is_checked_before_anything_runs() -> None:
    check_first_round_budget(BudgetConfig(synthetic_samples=30), Cost(30, 30))
    with pytest.raises(ConfigError, match="exhausted before round 1, which makes 30"):
        check_first_round_budget(BudgetConfig(synthetic_samples=29), Cost(30, 30))
    with pytest.raises(ConfigError, match="generator_calls=10 is exhausted"):
        check_first_round_budget(BudgetConfig(generator_calls=10), Cost(5, 11))


def test_ratio_caps_round_half_up_per_class() -> None:
    config = _config("loop.synthetic_ratio=0.5")
    real = prepare(config, with_generator=False).splits.train  # 5 per class
    assert ratio_caps(config, real) == dict.fromkeys(range(10), 3)
    assert ratio_caps(_config(), real) is None
    with pytest.raises(ConfigError, match="rounds to 0 synthetic samples"):
        ratio_caps(_config("loop.synthetic_ratio=0.05"), real)


# -- the loop ------------------------------------------------------------------------------


def test_ratio_caps_the_synthetic_samples_trained_on(tmp_path: Path) -> None:
    # 5 real per class x 0.25 -> round(1.25) = 1 synthetic per class of the 3 generated
    summary = _run(_config("loop.synthetic_ratio=0.25"), tmp_path / "run")
    assert summary["n_train_synthetic"] == 10
    table = read_training_set(tmp_path / "run/rounds/001")
    assert table.groupby("label").size().to_dict() == dict.fromkeys(range(10), 1)
    metrics = json.loads((tmp_path / "run/rounds/001/metrics.json").read_text())
    assert metrics["n_over_ratio"] == 20 and metrics["n_generated"] == 30
    # Without selection weights every sample weighs 1: pool order decides the one kept.
    frame = PoolStore(tmp_path / "run").manifest()
    synthetic = frame[frame["source"] == "synthetic"]
    first = synthetic.groupby("label")["id"].first().sort_index().tolist()
    assert table.sort_values("label")["id"].tolist() == first


def test_ratio_prefers_the_highest_selection_weight(tmp_path: Path) -> None:
    config = _config(
        "loop.synthetic_ratio=0.25",
        "valuation.scores=[marginal]",
        "valuation.selection=[{rule: weight, score: marginal}]",
    )
    _run(config, tmp_path / "run")
    table = read_training_set(tmp_path / "run/rounds/001")
    frame = PoolStore(tmp_path / "run").manifest()
    weights = frame[frame["source"] == "synthetic"].set_index("id")["utility_r001_weight"]
    labels = frame.set_index("id")["label"]
    best = weights.groupby(labels[weights.index]).max()
    assert weights[table["id"]].tolist() == best[table["label"]].tolist()


def test_accumulate_trains_on_every_rounds_kept_samples(tmp_path: Path) -> None:
    summary = _run(_config("loop.accumulate=true", rounds=2), tmp_path / "run")
    assert summary["n_train_synthetic"] == 2 * 10 * PER_CLASS
    table = read_training_set(tmp_path / "run/rounds/002")
    assert table["round"].value_counts().to_dict() == {1: 30, 2: 30}
    one = read_training_set(tmp_path / "run/rounds/001")
    assert set(one["round"]) == {1}
    # by id: round 2 trained on every kept synthetic sample of rounds 1 and 2, round 1 on its own
    with PoolStore.open(tmp_path / "run") as store:
        manifest = store.manifest()
    kept = manifest[(manifest["source"] == "synthetic") & manifest["kept"]]
    assert set(table["id"]) == set(kept["id"])
    assert set(one["id"]) == set(kept[kept["round"] == 1]["id"])


def test_samples_budget_stops_after_the_last_round_it_pays_for(tmp_path: Path) -> None:
    summary = _run(_config("loop.budget.synthetic_samples=45", rounds=3), tmp_path / "run")
    assert summary["stop"]["reason"] == "budget:synthetic_samples"
    assert summary["stop"]["rounds_run"] == 1 and summary["stop"]["synthetic_samples"] == 30
    assert summary["rounds"] == 2  # stage 1 + round 1
    assert not (tmp_path / "run/rounds/002").exists()


def test_plateau_stops_when_validation_accuracy_cannot_rise_enough(tmp_path: Path) -> None:
    # No accuracy can rise by more than 1.0: the rule fires after the first round.
    summary = _run(
        _config("loop.plateau.patience=1", "loop.plateau.min_delta=1.0", rounds=3),
        tmp_path / "run",
    )
    assert summary["stop"] == {
        "reason": "plateau",
        "rounds_run": 1,
        "synthetic_samples": 30,
        "generator_calls": 30,
        "best_val_round": summary["stop"]["best_val_round"],
    }
    assert summary["stop"]["best_val_round"] in (0, 1)
    assert (tmp_path / "run/rounds/001/metrics.json").exists()
    assert not (tmp_path / "run/rounds/002").exists()


# -- offline mode --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished static run: the pre-generated pool offline runs value."""
    run_dir = tmp_path_factory.mktemp("offline") / "source"
    config = _config()
    run(config, run_dir, prepared=_prepared(config))
    return run_dir


def _offline(path: Path, *overrides: str) -> RunConfig:
    return resolve_config(
        "digits-real-only",
        [
            "task.epochs=2",
            "data.k_shot=5",
            "loop.rounds=1",
            "loop.mode=offline",
            f"loop.offline_pool={path}",
            "strategy=offline",
            *overrides,
        ],
    )


def test_offline_mode_values_and_trains_on_a_run_pool_without_generating(
    tmp_path: Path, generated: Path
) -> None:
    config = _offline(generated, "valuation.scores=[marginal]")
    run(config, tmp_path / "run")
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["n_train_synthetic"] == 30 and summary["stop"]["generator_calls"] == 0
    ours = PoolStore(tmp_path / "run").manifest().query("source == 'synthetic'")
    theirs = PoolStore(generated).manifest().query("source == 'synthetic'")
    # Same samples and provenance; round 1 of this run.
    columns = ["id", "blob", "label", "prompt", "seed", "generator"]
    assert (
        ours.sort_values("id")[columns]
        .reset_index(drop=True)
        .equals(theirs.sort_values("id")[columns].reset_index(drop=True))
    )
    assert set(ours["round"]) == {1}
    assert all("offline_from" in json.loads(d) for d in ours["details"])
    assert (tmp_path / "run/rounds/001/scores.parquet").exists()
    assert (tmp_path / "run/rounds/001" / TRAINING_SET).exists()


def test_offline_mode_reads_an_image_folder(tmp_path: Path, generated: Path) -> None:
    folder = tmp_path / "folder"
    export_pool(generated, folder, "imagefolder", source="synthetic")
    run(_offline(folder), tmp_path / "run")
    ours = PoolStore(tmp_path / "run").manifest().query("source == 'synthetic'")
    theirs = PoolStore(generated).manifest().query("source == 'synthetic'")
    assert sorted(ours["blob"]) == sorted(theirs["blob"])
    assert ours["id"].str.startswith("offline/").all()
    by_blob = theirs.set_index("blob")["label"]
    assert (ours.set_index("blob")["label"] == by_blob[ours["blob"]]).all()


def _offline_args(pool: Path, out: Path) -> list[str]:
    sets = ["loop.mode=offline", "loop.rounds=1", f"loop.offline_pool={pool}"]
    return ["run", "digits-real-only", *(a for s in sets for a in ("--set", s)), "--out", str(out)]


def test_offline_config_errors(cli_error, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    line = cli_error(["run", "digits-real-only", "--set", "loop.mode=offline", "--out", str(out)])
    assert "needs loop.offline_pool" in line
    assert "not found" in cli_error(_offline_args(tmp_path / "nope", out))
    bad = tmp_path / "bad"
    for name in ("3", "not-a-digit"):
        (bad / name).mkdir(parents=True)
        Image.new("L", (8, 8)).save(bad / name / "x.png")
    line = cli_error(_offline_args(bad, out))
    assert "not-a-digit" in line and "real data does not" in line
    assert not out.exists()


def test_bad_engine_input_exits_2_and_writes_nothing(cli_error, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    line = cli_error(["run", "digits-static", "--set", "loop.synthetic_ratio=0", "--out", str(out)])
    assert "synthetic_ratio" in line
    line = cli_error(
        ["run", "digits-static", "--set", "loop.synthetic_ratio=-1", "--out", str(out)]
    )
    assert "synthetic_ratio" in line
    line = cli_error(
        ["run", "digits-static", "--set", "loop.budget.synthetic_samples=5", "--out", str(out)]
    )
    assert "exhausted before round 1" in line
    assert not out.exists()


def test_max_rounds_is_the_default_stop_and_costs_are_recorded(generated: Path) -> None:
    summary = json.loads((generated / "summary.json").read_text())
    assert summary["stop"]["reason"] == "max_rounds"
    metrics = json.loads((generated / "rounds/001/metrics.json").read_text())
    assert metrics["generator_calls"] == 30 and metrics["seconds"] > 0


def test_training_set_file_lists_exactly_the_trained_synthetic_ids(generated: Path) -> None:
    table = pd.read_parquet(generated / "rounds/001" / TRAINING_SET)
    frame = PoolStore(generated).manifest()
    kept = frame[(frame["source"] == "synthetic") & frame["kept"]]
    assert sorted(table["id"]) == sorted(kept["id"]) and (table["weight"] == 1.0).all()
