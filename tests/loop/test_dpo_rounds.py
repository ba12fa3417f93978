"""Two rounds with model-level feedback (component ``dpo``) through the run engine.

A tiny untrained built-in generator stands in for the real one (its images are noise, which
is all the mechanics need): round 1 generates and is scored, preference pairs are built
from the scores, Diffusion-DPO fine-tunes the denoiser, round 2 generates with it. The tests
check the run-directory contract (pairs, adapter, result last), provenance (round 2 names
the fine-tuned generator) and that a run interrupted after the feedback resumes with the
saved generator instead of training again.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny_builtin import tiny_generator

from utilgen.config import RunConfig, resolve_config
from utilgen.generate.builtin import builtin_class_requests
from utilgen.generate.factory import static_requests
from utilgen.loop import generation_round
from utilgen.loop.generation_round import stage1_judge
from utilgen.loop.run import Prepared, build_model, prepare, run
from utilgen.pool import PoolStore
from utilgen.pool.payload import decode_image

PER_CLASS = 4


pytestmark = pytest.mark.usefixtures("quiet_one_thread")


def config(*sets: str) -> RunConfig:
    return resolve_config(
        "digits-dpo",
        [
            "task.epochs=2", "data.k_shot=5", "data.max_per_class=40",
            f"generator.per_class={PER_CLASS}",
            "valuation.scores=[marginal,margin]", "valuation.selection=[]",
            "feedback.pairs.score=marginal", "feedback.pairs.ratio=0.5",
            "feedback.diffusion_dpo.steps=3", "feedback.diffusion_dpo.batch_size=4",
            "feedback.control=false", *sets,
        ],
    )


def prepared(*sets: str) -> Prepared:
    cfg = config(*sets)
    base = prepare(cfg, with_generator=False)
    names = base.splits.train.class_names
    requests = builtin_class_requests(
        names, per_class=PER_CLASS, seed=cfg.seed, round_index=1, cfg=cfg.generator.builtin
    )
    return replace(
        base,
        generator=tiny_generator(names),
        requests=tuple(requests),
        base_generator=lambda: tiny_generator(names),
    )


def test_dpo_feedback_between_two_rounds(tmp_path: Path) -> None:
    run_dir = tmp_path / "dpo"
    first = prepared()
    assert first.generator is not None
    name_before = first.generator.name
    summary = run(first.config, run_dir, prepared=first).summary.to_dict()
    pairs = pd.read_parquet(run_dir / "rounds/001/pairs.parquet")
    # 10 classes x 4 samples, ratio 0.5, top-bottom: 2 pairs per class (ties dropped)
    assert 0 < len(pairs) <= 20
    assert (pairs["chosen_utility"] > pairs["rejected_utility"]).all()
    result = json.loads((run_dir / "rounds/001/adapters/dpo/result.json").read_text())
    frame = PoolStore(run_dir).manifest()
    synthetic = frame[frame["source"] == "synthetic"]
    round1 = set(synthetic[synthetic["round"] == 1]["generator"])
    round2 = set(synthetic[synthetic["round"] == 2]["generator"])
    assert round1 == {name_before}
    assert round2 == {result["generator"]} and round2 != round1
    assert summary["feedback_effect"]["tests"].keys() == {"marginal", "margin"}
    assert (run_dir / "feedback_effect.png").is_file()


def test_interrupted_after_feedback_resumes_with_the_saved_generator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "resumed"
    real_generate = generation_round.generate_into_pool

    def crash_in_round_two(generator, requests, store, round_index):  # type: ignore[no-untyped-def]
        if round_index == 2:
            raise RuntimeError("simulated crash")
        return real_generate(generator, requests, store, round_index)

    monkeypatch.setattr(generation_round, "generate_into_pool", crash_in_round_two)
    first = prepared()
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(first.config, run_dir, prepared=first)
    saved = json.loads((run_dir / "rounds/001/adapters/dpo/result.json").read_text())
    monkeypatch.setattr(generation_round, "generate_into_pool", real_generate)

    # A fresh process: a fresh (untrained) generator; the feedback must not train again.
    from utilgen.feedback import diffusion_dpo

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("feedback trained again on resume")

    monkeypatch.setattr(diffusion_dpo, "train_builtin_diffusion_dpo", no_training)
    second = prepared()
    run(second.config, run_dir, prepared=second)
    frame = PoolStore(run_dir).manifest()
    round2 = frame[(frame["source"] == "synthetic") & (frame["round"] == 2)]
    assert len(round2) == PER_CLASS * 10
    assert set(round2["generator"]) == {saved["generator"]}


def test_control_arm_regenerates_the_last_round_without_the_feedback(tmp_path: Path) -> None:
    run_dir = tmp_path / "control"
    first = prepared("feedback.control=true")
    summary = run(first.config, run_dir, prepared=first).summary.to_dict()
    control = pd.read_parquet(run_dir / "rounds/002/control.parquet")
    frame = PoolStore(run_dir).manifest()
    round2 = frame[(frame["source"] == "synthetic") & (frame["round"] == 2)]
    # one control per round-2 sample, made from the same request (same id) ...
    assert sorted(control["id"]) == sorted(round2["id"])
    # ... and kept out of the pool: it holds rounds 1 and 2 only
    assert len(frame[frame["source"] == "synthetic"]) == 2 * PER_CLASS * 10

    # The control is what the generator before feedback makes of round 2's requests.
    cfg = first.config
    judge, _ = stage1_judge(build_model(cfg, first.splits), run_dir / "rounds/000/checkpoints")
    requests = static_requests(cfg.generator, splits=first.splits, seed=cfg.seed, round_index=2)
    names = first.splits.train.class_names
    base = sorted(tiny_generator(names).generate(requests, round_index=2), key=lambda s: s.id)
    labels = np.array([s.label for s in base])
    probs = judge.predict_proba([decode_image(s.payload) for s in base])
    by_id = control.set_index("id").loc[[s.id for s in base]]
    np.testing.assert_allclose(by_id["marginal"], probs[np.arange(len(labels)), labels], atol=1e-6)
    # Where the two likeliest classes are clearly apart, float noise between the run's
    # scoring and this one cannot move the argmax: there "correct" must match exactly.
    top2 = np.sort(probs, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(by_id["correct"][clear], (probs.argmax(1) == labels)[clear])
    # ... and not what the fine-tuned one made of them
    treated = pd.read_parquet(run_dir / "rounds/002/scores.parquet").set_index("id")
    assert not np.allclose(treated.loc[by_id.index, "marginal"], by_id["marginal"])

    effect = summary["feedback_effect"]["control"]
    assert effect["round"] == 2 and effect["n_paired"] == PER_CLASS * 10
    assert effect["tests"].keys() == {"marginal", "margin"}
    test = effect["tests"]["marginal"]
    diff = treated.loc[by_id.index, "marginal"].to_numpy() - by_id["marginal"].to_numpy()
    assert test["mean_difference"] == pytest.approx(diff.mean())
    assert 0.0 <= test["p_one_sided"] <= 1.0
    assert effect["plot"] == "feedback_control.png"
    assert (run_dir / "feedback_control.png").is_file()


def test_control_arm_is_generated_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "control-once"
    first = prepared("feedback.control=true")
    run(first.config, run_dir, prepared=first)
    written = (run_dir / "rounds/002/control.parquet").read_bytes()

    def no_base() -> None:
        raise AssertionError("the control was generated again")

    again = replace(prepared("feedback.control=true"), base_generator=no_base)
    (run_dir / "summary.json").unlink()  # as if killed before the summary
    run(again.config, run_dir, prepared=again)
    assert (run_dir / "rounds/002/control.parquet").read_bytes() == written
