"""Round 001 of the static strategy, driven by a generator that replays held-out real images.

The replay generator is a real ``Generator`` (it goes through ``make_sample`` and the pool
like any backend) whose outputs are known: for a request of class c it returns one of the
training-split digits of class c that the k-shot set left out. That makes label fidelity
predictable and lets the tests check resume after a crash sample by sample.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from replay import ReplayGenerator
from scipy.stats import mannwhitneyu

from utilgen.config import RunConfig, resolve_config
from utilgen.generate.builtin import builtin_class_requests
from utilgen.loop import generation_round
from utilgen.loop.run import Prepared, build_model, prepare, run
from utilgen.pool import PoolStore
from utilgen.task import load_checkpoint

PER_CLASS = 3


def _config() -> RunConfig:
    return resolve_config(
        "digits-real-only",
        [
            "task.epochs=3", "data.k_shot=5", "generator.kind=builtin-diffusion",
            f"generator.per_class={PER_CLASS}", "loop.rounds=1", "strategy=static",
        ],
    )


def _prepared(generator: ReplayGenerator | None = None) -> Prepared:
    config = _config()
    base = prepare(config, with_generator=False)
    assert base.splits.unused_train is not None
    requests = builtin_class_requests(
        base.splits.train.class_names, per_class=PER_CLASS, seed=config.seed, round_index=1,
        cfg=config.generator.builtin,
    )
    gen = generator or ReplayGenerator(base.splits.unused_train)
    return replace(base, generator=gen, requests=tuple(requests))


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "static"
    prepared = _prepared()
    run(prepared.config, run_dir, prepared=prepared)
    return run_dir


def test_round_one_trains_on_real_plus_synthetic_and_reports_fidelity(finished: Path) -> None:
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["rounds"] == 2
    assert summary["n_train_real"] == 50
    assert summary["n_train_synthetic"] == 10 * PER_CLASS
    assert summary["generator"] == "replay-test"
    # Label fidelity is the stage-1 classifier's accuracy on the generated (here: replayed
    # real) images, recomputed from its last checkpoint.
    judge = build_model(_config(), _prepared().splits)
    load_checkpoint(judge, sorted((finished / "rounds/000/checkpoints").glob("*.safetensors"))[-1])
    generated = PoolStore(finished).load_labelled(source="synthetic")
    expected = (judge.predict_proba(generated.items).argmax(1) == generated.labels).mean()
    assert summary["label_fidelity"] == pytest.approx(expected)
    assert set(summary["label_fidelity_per_class"]) == {str(c) for c in range(10)}
    metrics = json.loads((finished / "rounds/001/metrics.json").read_text())
    assert metrics["n_generated"] == 10 * PER_CLASS
    assert len(list((finished / "rounds/001/checkpoints").glob("epoch-*.safetensors"))) == 3
    assert "Label fidelity" in (finished / "report.md").read_text()


def test_synthetic_rows_carry_request_provenance(finished: Path) -> None:
    frame = PoolStore(finished).manifest()
    synthetic = frame[frame["source"] == "synthetic"]
    assert len(synthetic) == 10 * PER_CLASS
    assert set(synthetic["round"]) == {1}
    assert set(synthetic["split"]) == {""}
    details = json.loads(synthetic["details"].iloc[0])
    assert details["request"]["class_name"] == synthetic["class_name"].iloc[0]
    assert synthetic["id"].str.startswith("synthetic/r001/").all()


def test_crash_mid_generation_resumes_to_the_same_pool(
    tmp_path: Path, finished: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generation_round, "APPEND_EVERY", 4)
    run_dir = tmp_path / "crashed"
    crashing = _prepared(ReplayGenerator(_prepared().splits.unused_train, fail_after=7))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(crashing.config, run_dir, prepared=crashing)
    resumed_generator = ReplayGenerator(crashing.splits.unused_train)
    run(crashing.config, run_dir, prepared=_prepared(resumed_generator))
    # Whole batches already stored were not generated again.
    assert resumed_generator.generated < 10 * PER_CLASS
    # Exact: the replayed blobs are real images' bytes (no arithmetic), and both runs train
    # the same model on the same samples in this process on the same threads, so their
    # metrics agree bit for bit.
    ours = PoolStore(run_dir).manifest().sort_values("id")[["id", "blob", "kept"]]
    reference = PoolStore(finished).manifest().sort_values("id")[["id", "blob", "kept"]]
    assert ours.reset_index(drop=True).equals(reference.reset_index(drop=True))
    assert json.loads((run_dir / "summary.json").read_text()) == json.loads(
        (finished / "summary.json").read_text()
    )


def test_valuation_scores_and_selection_shape_the_training_set(tmp_path: Path) -> None:
    base = _prepared()
    config = base.config.model_copy(deep=True)
    config.valuation = type(config.valuation).model_validate(
        {
            "scores": ["marginal", "vog"],
            "selection": [{"rule": "drop_lowest", "score": "marginal", "fraction": 0.5}],
        }
    )
    prepared = replace(base, config=config)
    run_dir = tmp_path / "valued"
    summary = run(config, run_dir, prepared=prepared).summary.to_dict()
    frame = PoolStore(run_dir).manifest()
    synthetic = frame[frame["source"] == "synthetic"]
    assert synthetic["utility_r001_marginal"].notna().all()
    assert synthetic["utility_r001_vog"].notna().all()
    assert (run_dir / "rounds/001/scores.parquet").is_file()
    # drop_lowest 0.5 drops at least the lowest-marginal sample of every class.
    dropped = synthetic[~synthetic["kept"]]
    assert len(dropped) > 0 and (dropped["reason"] != "").all()
    assert summary["n_train_synthetic"] == int(synthetic["kept"].sum())
    kept_marginal = synthetic[synthetic["kept"]]["utility_r001_marginal"]
    for label, group in synthetic.groupby("label"):
        low = group.sort_values("utility_r001_marginal")["kept"].iloc[0]
        assert not low, f"class {label}: the lowest-marginal sample was kept"
    assert kept_marginal.min() >= dropped["utility_r001_marginal"].min()


def test_two_rounds_compare_their_utility_in_feedback_effect(tmp_path: Path) -> None:
    base = _prepared()
    config = base.config.model_copy(deep=True)
    config.loop.rounds = 2
    config.valuation = type(config.valuation).model_validate({"scores": ["marginal", "margin"]})
    prepared = replace(base, config=config)
    run_dir = tmp_path / "two"
    summary = run(config, run_dir, prepared=prepared).summary.to_dict()
    frame = PoolStore(run_dir).manifest()
    synthetic = frame[frame["source"] == "synthetic"]
    # round 2 draws its own requests: new ids and seeds, the same number per class
    by_round = synthetic.groupby("round")
    assert sorted(by_round.groups) == [1, 2]
    assert by_round.size().tolist() == [PER_CLASS * 10, PER_CLASS * 10]
    assert set(synthetic[synthetic["round"] == 1]["seed"]).isdisjoint(
        set(synthetic[synthetic["round"] == 2]["seed"])
    )
    effect = json.loads((run_dir / "feedback_effect.json").read_text())
    assert summary["feedback_effect"]["tests"].keys() == {"marginal", "margin"}
    assert [r["round"] for r in effect["rounds"]] == [1, 2]
    scores1 = pd.read_parquet(run_dir / "rounds/001/scores.parquet")
    scores2 = pd.read_parquet(run_dir / "rounds/002/scores.parquet")
    test = effect["tests"]["marginal"]
    assert test["mean_first"] == pytest.approx(scores1["marginal"].mean())
    assert test["mean_last"] == pytest.approx(scores2["marginal"].mean())
    expected = mannwhitneyu(scores2["marginal"], scores1["marginal"], alternative="greater")
    assert test["p_one_sided"] == pytest.approx(expected.pvalue)
    assert (run_dir / "feedback_effect.png").stat().st_size > 1000
    assert summary["rounds"] == 3  # stage 1 and two generation rounds


def test_vog_reads_the_stage1_checkpoints_of_the_configured_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stage 1 trains 3 epochs and saves each; fractions 0.3 and 0.6 of the run are epochs
    1 and 2 (0.9 and 1.8 rounded half up), so VoG reads those two, not the last ones."""
    from utilgen.value import vog as vog_module

    loaded: list[Path] = []
    real_load = vog_module.load_checkpoint

    def spy(model: object, path: str | Path) -> None:
        loaded.append(Path(path))
        real_load(model, path)  # type: ignore[arg-type]

    monkeypatch.setattr(vog_module, "load_checkpoint", spy)
    base = _prepared()
    config = base.config.model_copy(deep=True)
    config.valuation = type(config.valuation).model_validate(
        {"scores": ["vog"], "vog_checkpoints": {"fractions": [0.3, 0.6]}}
    )
    run_dir = tmp_path / "vog"
    run(config, run_dir, prepared=replace(base, config=config))
    stage1 = run_dir / "rounds/000/checkpoints"
    assert loaded and set(loaded) == {stage1 / f"epoch-00{e}.safetensors" for e in (1, 2)}
    assert (stage1 / "epoch-003.safetensors").is_file()  # there, and left out
    scores = pd.read_parquet(run_dir / "rounds/001/scores.parquet")
    assert scores["vog"].notna().all() and len(scores) == 10 * PER_CLASS
