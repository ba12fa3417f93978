"""Two rounds with U-DPO feedback through the run engine, on a tiny Llama from config.

Round 1's texts (word salad from a random two-layer Llama, which is all the mechanics need)
are scored by the stage-1 BBC classifier; within each 2-shot prompt the text of the highest
margin is paired with a middle one, weighted by the gap in composite utility (the preset's
U-DPO scheme); DPO trains every weight (the preset's setting) or a LoRA adapter that is
merged into the generator before round 2. The tests check that round 2's provenance names
the trained weights, and that a run interrupted after the feedback restores what was saved
instead of training.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "generate"))
from tiny_lm import tiny_llama

from utilgen.config import RunConfig, resolve_config
from utilgen.generate.causal_lm import CausalLMGenerator
from utilgen.generate.causal_lm_sampling import SamplingSettings
from utilgen.generate.factory import static_requests
from utilgen.loop import generation_round
from utilgen.loop.run import Prepared, prepare, run
from utilgen.pool import PoolStore

PER_CLASS = 10  # two prompts of five texts per class


pytestmark = pytest.mark.usefixtures("quiet_one_thread")


def config(*sets: str) -> RunConfig:
    return resolve_config(
        "bbc-news-udpo",
        [
            "task.epochs=5", "data.k_shot=4", "data.max_per_class=30",
            f"generator.per_class={PER_CLASS}",
            "generator.lm.max_new_tokens=8", "generator.text_filters.min_words=0",
            "generator.text_filters.drop_exact_duplicates=false",
            "generator.text_filters.copy_ngram=0",
            "valuation.scores=[similarity, margin, composite]", "feedback.dpo.epochs=1", *sets,
        ],
    )


def prepared(cfg: RunConfig) -> Prepared:
    base = prepare(cfg, with_generator=False)

    def generator() -> CausalLMGenerator:
        model, tokenizer = tiny_llama()
        return CausalLMGenerator(
            model, tokenizer, batch_size=10, sampling=SamplingSettings(max_new_tokens=8),
            cleaning=cfg.generator.text_filters,
        )

    requests = static_requests(cfg.generator, splits=base.splits, seed=cfg.seed, round_index=1)
    return replace(
        base, generator=generator(), requests=tuple(requests), base_generator=generator
    )


def synthetic_generators(run_dir: Path) -> dict[int, set[str]]:
    frame = PoolStore(run_dir).manifest()
    synthetic = frame[frame["source"] == "synthetic"]
    return {int(r): set(g["generator"]) for r, g in synthetic.groupby("round")}


def test_udpo_feedback_between_two_rounds(tmp_path: Path) -> None:
    run_dir = tmp_path / "udpo"
    first = prepared(config("feedback.control=true"))
    assert first.generator is not None
    base_name = first.generator.name
    run(first.config, run_dir, prepared=first)
    pairs = pd.read_parquet(run_dir / "rounds/001/pairs.parquet")
    manifest = PoolStore(run_dir).manifest().set_index("id")
    # both texts of a pair answer the same prompt (U-DPO pairs within a prompt)
    assert (manifest.loc[pairs["chosen_id"], "prompt"].to_numpy() == pairs["prompt"]).all()
    assert (manifest.loc[pairs["rejected_id"], "prompt"].to_numpy() == pairs["prompt"]).all()
    # the preset's U-DPO pairs: ranked by margin, weighted by tanh(|delta composite|)
    scores = pd.read_parquet(run_dir / "rounds/001/scores.parquet").set_index("id")
    chosen, rejected = scores.loc[pairs["chosen_id"]], scores.loc[pairs["rejected_id"]]
    assert (pairs["chosen_utility"].to_numpy() == chosen["margin"].to_numpy()).all()
    assert (pairs["rejected_utility"].to_numpy() == rejected["margin"].to_numpy()).all()
    composite_gap = chosen["composite"].to_numpy() - rejected["composite"].to_numpy()
    assert pairs["weight_gap"].to_numpy() == pytest.approx(composite_gap)
    assert pairs["weight"].to_numpy() == pytest.approx(np.tanh(np.abs(composite_gap)))
    result = json.loads((run_dir / "rounds/001/adapters/dpo/result.json").read_text())
    # the preset fine-tunes every weight (U-DPO's setting); the LoRA path is tested below
    assert result["tag"].startswith("full:") and not result["lora"]
    assert synthetic_generators(run_dir) == {1: {base_name}, 2: {f"{base_name}+{result['tag']}"}}
    log = (run_dir / "rounds/001/adapters/dpo/log.jsonl").read_text().splitlines()
    assert log and "rewards/accuracies" in json.loads(log[-1])

    # The control arm: round 2's prompts and seeds once more from the base LM, filtered and
    # scored as the round was, kept out of the pool and paired with round 2 by id.
    control = pd.read_parquet(run_dir / "rounds/002/control.parquet")
    round2 = manifest[(manifest["source"] == "synthetic") & (manifest["round"] == 2)]
    assert sorted(control["id"]) == sorted(round2.index)
    assert control["margin"].notna().tolist() == control["kept"].tolist()
    treated = pd.read_parquet(run_dir / "rounds/002/scores.parquet")
    effect = json.loads((run_dir / "feedback_effect.json").read_text())["control"]
    assert effect["n_paired"] == len(set(treated["id"]) & set(control[control["kept"]]["id"]))
    assert effect["n_paired"] > 0 and effect["tests"].keys() == {"margin", "similarity"}


@pytest.mark.parametrize("lora", [True, False])
def test_interrupted_after_feedback_restores_the_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lora: bool
) -> None:
    run_dir = tmp_path / f"resumed-{lora}"
    cfg = config(f"feedback.dpo.lora={str(lora).lower()}")
    real_generate = generation_round.generate_into_pool

    def crash_in_round_two(generator, requests, store, round_index):  # type: ignore[no-untyped-def]
        if round_index == 2:
            raise RuntimeError("simulated crash")
        return real_generate(generator, requests, store, round_index)

    monkeypatch.setattr(generation_round, "generate_into_pool", crash_in_round_two)
    first = prepared(cfg)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg, run_dir, prepared=first)
    assert first.generator is not None
    trained = {k: v.clone() for k, v in first.generator.model.state_dict().items()}  # type: ignore[attr-defined]
    monkeypatch.setattr(generation_round, "generate_into_pool", real_generate)

    from utilgen.feedback import lm_dpo

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("feedback trained again on resume")

    monkeypatch.setattr(lm_dpo, "train_lm_dpo", no_training)
    second = prepared(cfg)
    assert second.generator is not None
    base_name = second.generator.name
    run(cfg, run_dir, prepared=second)
    result = json.loads((run_dir / "rounds/001/adapters/dpo/result.json").read_text())
    assert synthetic_generators(run_dir)[2] == {f"{base_name}+{result['tag']}"}
    # the restored generator has the weights the interrupted run had trained
    restored = second.generator.model.state_dict()  # type: ignore[attr-defined]
    assert restored.keys() == trained.keys()
    for name, tensor in trained.items():
        assert (restored[name] - tensor).abs().max() < 1e-6, name
