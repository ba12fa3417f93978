"""U-DPO trainer on tiny Llamas built from config (tests/generate/tiny_lm.py).

Parity with TRL's DPOTrainer (loss and LoRA gradients, same tokens), training effects
(every LoRA weight moves, the base and the reference do not), logs, the saved adapter, the
reference of a resumed adapter, full fine-tuning, and bad input (one line, nothing written).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "generate"))
from tiny_lm import one_thread, tiny_llama

from utilgen.config.feedback import LMDPOConfig
from utilgen.feedback.errors import FeedbackError
from utilgen.feedback.lm_dpo import (
    TextPair,
    collate_pairs,
    dpo_batch_loss,
    prepare_policy,
    tokenize_pairs,
    train_lm_dpo,
)

LORA = {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
# Rewards of a policy equal to its reference, computed in two forward passes (with and
# without a graph): 0 up to float noise in sums of log-probs (~1e-5); a training step moves
# them by 1 to 10.
REWARD_NOISE = 1e-4
# Prompts end on a word and completions start with a space, so that TRL's joint tokenising
# of prompt + completion gives the same tokens as ours (each part alone).
PAIRS = [
    TextPair("the game was", " won by the team .", " a film of the year", 0.9, "c0", "r0"),
    TextPair("the market said", " growth of the economy", " sales", 0.4, "c1", "r1"),
    TextPair("the minister said", " the election will be in the year", " music", 0.7, "c2", "r2"),
    TextPair("the club had", " a new player", " the album of the year", 0.2, "c3", "r3"),
]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def _perturb_lora(model: torch.nn.Module, scale: float = 0.01, seed: int = 3) -> None:
    """Non-zero LoRA B (fresh B is 0, so the policy would equal the reference)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def _lora_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
            out[name.replace(".default", "")] = p.grad.detach().clone()
    return out


@pytest.mark.parametrize("sft_weight", [0.0, 0.6])
def test_parity_with_trl_sigmoid_dpo(tmp_path: Path, sft_weight: float) -> None:
    """All weights 1: our loss and LoRA gradients equal TRL's DPOTrainer.compute_loss, plain
    sigmoid DPO and with the NLL term (TRL's loss_type [sigmoid, sft], weights [1, a])."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
    from trl import DPOConfig, DPOTrainer

    pairs = [TextPair(p.prompt, p.chosen, p.rejected) for p in PAIRS[:3]]
    cfg = LMDPOConfig(beta=0.7, **LORA)
    model, tokenizer = tiny_llama(0)
    torch.manual_seed(0)
    ours, _ = prepare_policy(model, cfg)
    _perturb_lora(ours)

    base, _ = tiny_llama(0)
    lora = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"), beta=0.7, per_device_train_batch_size=3,
        report_to="none", use_cpu=True, max_length=None, bf16=False,
        **({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, sft_weight]}
           if sft_weight else {}),
    )
    dataset = Dataset.from_dict(
        {k: [getattr(p, k) for p in pairs] for k in ("prompt", "chosen", "rejected")}
    )
    trainer = DPOTrainer(
        model=base, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora
    )
    set_peft_model_state_dict(trainer.model, get_peft_model_state_dict(ours))
    trl_batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    batch = collate_pairs(tokenize_pairs(pairs, tokenizer, max_length=64), pad_token_id=0)
    # Same tokens, masks and row layout ([chosen..., rejected...]) as TRL's collator.
    for key in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(batch[key], trl_batch[key]), key

    trainer.model.train()
    ours.train()
    trl_loss = trainer.compute_loss(trainer.model, trl_batch)
    trl_loss.backward()
    out = dpo_batch_loss(ours, {**batch, "weights": torch.ones(3)}, beta=0.7, sft_weight=sft_weight)
    out.loss.backward()

    assert 0.05 < float(out.dpo.loss.detach()) < 5  # not saturated: the gradients carry signal
    if sft_weight:
        assert out.sft is not None and float(out.sft.detach()) > 1.0  # the NLL term is in the sum
        torch.testing.assert_close(out.loss, out.dpo.loss + sft_weight * out.sft)
    else:
        assert out.sft is None and out.loss is out.dpo.loss
    torch.testing.assert_close(out.loss.detach(), trl_loss.detach(), atol=1e-5, rtol=1e-5)
    ours_grads, trl_grads = _lora_grads(ours), _lora_grads(trainer.model)
    assert set(ours_grads) == set(trl_grads) and len(ours_grads) == 28
    for name, grad in ours_grads.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(grad, trl_grads[name], atol=1e-5, rtol=1e-5, msg=name)
    # TRL's metric agrees with ours on the rewards, too.
    margins = trainer._metrics["train"]["rewards/margins"][-1]
    assert float(out.dpo.margins.mean()) == pytest.approx(margins, abs=1e-5)


def test_batch_loss_weights_scale_pairs_and_logits_to_keep_is_exact() -> None:
    model, tokenizer = tiny_llama(0)
    torch.manual_seed(0)
    policy, _ = prepare_policy(model, LMDPOConfig(**LORA))
    _perturb_lora(policy)
    batch = collate_pairs(tokenize_pairs(PAIRS, tokenizer, max_length=64), pad_token_id=0)
    with torch.no_grad():
        weighted = dpo_batch_loss(policy, batch, beta=1.0)
        plain = dpo_batch_loss(policy, {**batch, "weights": torch.ones(4)}, beta=1.0)
        full_logits = dpo_batch_loss(policy, batch, beta=1.0, logits_to_keep=False)
    weights = torch.tensor([p.weight for p in PAIRS])
    torch.testing.assert_close(weighted.dpo.losses, plain.dpo.losses * weights)
    torch.testing.assert_close(full_logits.dpo.losses, weighted.dpo.losses)
    torch.testing.assert_close(full_logits.chosen_logps, weighted.chosen_logps)


def test_training_moves_every_lora_weight_and_nothing_else(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, tokenizer = tiny_llama(0)
    base_before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = LMDPOConfig(learning_rate=1e-2, epochs=2, batch_size=2, **LORA)
    out_dir = tmp_path / "dpo"
    result = train_lm_dpo(model, tokenizer, PAIRS, cfg, out_dir=out_dir, seed=5)

    # The LoRA weights as initialised (same seed, same model) and as trained.
    fresh, _ = tiny_llama(0)
    torch.manual_seed(5)
    init, _ = prepare_policy(fresh, cfg)
    init_lora = {n: p for n, p in init.named_parameters() if "lora_" in n}
    trained = dict(result.model.named_parameters())
    assert len(init_lora) == 28
    for name, p in init_lora.items():
        assert not torch.equal(trained[name], p), f"{name} did not change"
    # Base (= reference) weights are untouched.
    base_after = result.model.get_base_model().state_dict()
    for key, value in base_before.items():
        lora_key = key.replace(".weight", ".base_layer.weight")
        after = base_after[lora_key] if lora_key in base_after else base_after[key]
        assert torch.equal(after, value), key

    assert result.steps == 4 and not result.model.training
    lines = [json.loads(x) for x in (out_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4] and lines == result.history
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
                "rewards/margins", "weight", "lr"):
        assert all(math.isfinite(r[key]) for r in lines), key
    # Fresh LoRA: the first step's policy is the reference; afterwards chosen wins. (Policy
    # and reference log-probs come from separate forward passes, with and without a graph:
    # equal up to float noise, far below the margins of order 1 to 10 a step makes.)
    assert lines[0]["rewards/margins"] == pytest.approx(0.0, abs=REWARD_NOISE)
    assert lines[-1]["rewards/accuracies"] == 1.0 and lines[-1]["rewards/margins"] > 0
    # Each epoch sees every pair once: the mean weight over an epoch is the pairs' mean.
    mean_weight = sum(p.weight for p in PAIRS) / len(PAIRS)
    assert (lines[0]["weight"] + lines[1]["weight"]) / 2 == pytest.approx(mean_weight)
    events = list((out_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    assert len(acc.Scalars("train/rewards/accuracies")) == 4
    saved = json.loads((out_dir / "result.json").read_text())
    assert saved["tag"] == result.tag and saved["steps"] == 4
    assert saved["final"] == lines[-1]


def test_the_nll_term_raises_the_chosen_likelihood_beyond_plain_dpo(tmp_path: Path) -> None:
    """Plain DPO may satisfy its loss by pushing x- down; with sft_weight the chosen
    completions' own likelihood rises further (the reason the term exists)."""
    chosen_nll = {}
    for weight in (0.0, 1.0):
        model, tokenizer = tiny_llama(0)
        cfg = LMDPOConfig(learning_rate=1e-2, epochs=2, sft_weight=weight, **LORA)
        result = train_lm_dpo(model, tokenizer, PAIRS, cfg, out_dir=tmp_path / str(weight), seed=5)
        batch = collate_pairs(tokenize_pairs(PAIRS, tokenizer, max_length=64), pad_token_id=0)
        with torch.no_grad():
            out = dpo_batch_loss(result.model, batch, beta=1.0)
        chosen_nll[weight] = float(out.chosen_nll.mean())
        assert all("nll/chosen" in r for r in result.history)
        saved = json.loads((tmp_path / str(weight) / "result.json").read_text())
        assert saved["sft_weight"] == weight
    assert chosen_nll[1.0] < chosen_nll[0.0] - 0.1, chosen_nll


def test_adapter_reloads_with_the_same_tag_and_outputs(tmp_path: Path) -> None:
    from peft import PeftModel

    from utilgen.generate.causal_lm import CausalLMGenerator
    from utilgen.generate.causal_lm_loading import adapter_hash, load_adapter

    model, tokenizer = tiny_llama(0)
    cfg = LMDPOConfig(learning_rate=1e-2, epochs=1, **LORA)
    result = train_lm_dpo(model, tokenizer, PAIRS, cfg, out_dir=tmp_path / "a", seed=0)
    assert result.adapter_dir == tmp_path / "a" / "adapter"
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert result.tag == f"lora:{adapter_hash(result.adapter_dir)}"

    fresh, _ = tiny_llama(0)
    reloaded, tag = load_adapter(fresh, str(result.adapter_dir), merge=False)
    assert isinstance(reloaded, PeftModel) and tag == result.tag
    ids = torch.tensor([[7, 61, 14, 20, 7, 65]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, result.model(ids).logits)
    # The loop names the generator with the saved adapter's tag (as a resumed run does).
    generator = CausalLMGenerator(result.model, tokenizer, name=f"tiny+{result.tag}")
    assert generator.name.endswith(tag)
    # Same seed, same pairs: the same adapter file, so the same tag (exact: the same
    # training call on the same inputs, in this process, on one thread).
    again, _ = tiny_llama(0)
    second = train_lm_dpo(again, tokenizer, PAIRS, cfg, out_dir=tmp_path / "b", seed=0)
    assert second.tag == result.tag


def test_start_from_adapter_uses_it_as_the_reference(tmp_path: Path) -> None:
    model, tokenizer = tiny_llama(0)
    cfg = LMDPOConfig(learning_rate=1e-2, epochs=1, **LORA)
    first = train_lm_dpo(model, tokenizer, PAIRS, cfg, out_dir=tmp_path / "first", seed=0)

    fresh, _ = tiny_llama(0)
    again = cfg.model_copy(update={"adapter": str(first.adapter_dir), "learning_rate": 1e-3})
    second = train_lm_dpo(fresh, tokenizer, PAIRS, again, out_dir=tmp_path / "second", seed=1)
    # The first step's policy is the loaded adapter and so is the reference: zero rewards
    # (up to the float noise between the two forward passes).
    assert second.history[0]["rewards/chosen"] == pytest.approx(0.0, abs=REWARD_NOISE)
    assert second.history[0]["rewards/rejected"] == pytest.approx(0.0, abs=REWARD_NOISE)
    # Against the base model (adapter off) the same adapter has clearly non-zero rewards.
    batch = collate_pairs(tokenize_pairs(PAIRS, tokenizer, max_length=64), pad_token_id=0)
    with torch.no_grad():
        against_base = dpo_batch_loss(first.model, batch, beta=1.0)
    assert against_base.dpo.chosen_rewards.abs().min() > 0.1
    assert list(second.model.peft_config) == ["default"]  # the frozen "ref" copy is gone
    assert second.tag != first.tag


def test_full_fine_tune_against_a_frozen_copy(tmp_path: Path) -> None:
    model, tokenizer = tiny_llama(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = LMDPOConfig(lora=False, learning_rate=1e-3, epochs=1, batch_size=4)
    result = train_lm_dpo(model, tokenizer, PAIRS, cfg, out_dir=tmp_path / "full", seed=0)
    assert result.adapter_dir == tmp_path / "full" / "model"
    assert (result.adapter_dir / "model.safetensors").is_file()
    assert result.tag.startswith("full:") and result.steps == 1
    # One step of AdamW moves every weight that got a gradient.
    changed = [k for k, v in result.model.state_dict().items() if not torch.equal(v, before[k])]
    assert "lm_head.weight" in changed and "model.layers.0.self_attn.q_proj.weight" in changed
    # the copy was the reference (a separate forward pass: equal up to float noise)
    assert result.history[0]["rewards/margins"] == pytest.approx(0.0, abs=REWARD_NOISE)


def test_gradient_accumulation_counts_optimiser_steps(tmp_path: Path) -> None:
    model, tokenizer = tiny_llama(0)
    pairs = [*PAIRS, PAIRS[0]]  # 5 pairs, batch 2 -> 3 batches -> 2 steps per epoch
    cfg = LMDPOConfig(epochs=2, batch_size=2, gradient_accumulation_steps=2, **LORA)
    result = train_lm_dpo(model, tokenizer, pairs, cfg, out_dir=tmp_path / "acc", seed=0)
    assert result.steps == 4
    assert [r["step"] for r in result.history] == [1, 2, 3, 4]


def _assert_nothing_written(out_dir: Path, err: pytest.ExceptionInfo[FeedbackError]) -> None:
    assert "\n" not in str(err.value)
    assert not out_dir.exists()


def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    model, tokenizer = tiny_llama(0)
    out_dir = tmp_path / "dpo"
    not_adapter = tmp_path / "not_adapter"
    not_adapter.mkdir()
    (not_adapter / "model.safetensors").write_bytes(b"")

    with pytest.raises(FeedbackError, match=r"adapter_config\.json") as err:
        cfg = LMDPOConfig(adapter=str(not_adapter))
        train_lm_dpo(model, tokenizer, PAIRS, cfg, out_dir=out_dir, seed=0)
    _assert_nothing_written(out_dir, err)
    with pytest.raises(FeedbackError, match="no preference pairs") as err:
        train_lm_dpo(model, tokenizer, [], LMDPOConfig(), out_dir=out_dir, seed=0)
    _assert_nothing_written(out_dir, err)
    with pytest.raises(FeedbackError, match="beta") as err:
        cfg = LMDPOConfig.model_construct(**{**LMDPOConfig().model_dump(), "beta": 0.0})
        train_lm_dpo(model, tokenizer, PAIRS, cfg, out_dir=out_dir, seed=0)
    _assert_nothing_written(out_dir, err)
    for sft in (-1.0, float("nan")):
        with pytest.raises(FeedbackError, match="sft_weight") as err:
            cfg = LMDPOConfig.model_construct(**{**LMDPOConfig().model_dump(), "sft_weight": sft})
            train_lm_dpo(model, tokenizer, PAIRS, cfg, out_dir=out_dir, seed=0)
        _assert_nothing_written(out_dir, err)
    long = TextPair("the game was", " the" * 20, " a", 1.0, "c9", "r9")
    with pytest.raises(FeedbackError, match=r"c9/r9.*max_length=16") as err:
        train_lm_dpo(model, tokenizer, [long], LMDPOConfig(max_length=16), out_dir=out_dir, seed=0)
    _assert_nothing_written(out_dir, err)
    with pytest.raises(FeedbackError, match="weight") as err:
        bad = TextPair("the game was", " a", " the", float("nan"))
        train_lm_dpo(model, tokenizer, [bad], LMDPOConfig(), out_dir=out_dir, seed=0)
    _assert_nothing_written(out_dir, err)
    # Nothing above touched the model: it is still a plain transformers model.
    assert type(model).__name__ == "LlamaForCausalLM"


def test_long_prompts_are_cut_from_the_left() -> None:
    _, tokenizer = tiny_llama(0)
    pair = TextPair("the game was won by the team", " a", " the film", 1.0)
    (tokens,) = tokenize_pairs([pair], tokenizer, max_length=6)
    assert len(tokens.prompt_ids) + len(tokens.rejected_ids) == 6
    full = tokenizer("the game was won by the team", add_special_tokens=False)["input_ids"]
    assert tokens.prompt_ids == full[-3:]
    assert tokens.chosen_ids[-1] == tokens.rejected_ids[-1] == tokenizer.eos_token_id


_LAUNCHED = """
import json, sys
sys.path.insert(0, {generate!r})
import torch
torch.set_num_threads(1)
from tiny_lm import tiny_llama
from utilgen.config.feedback import LMDPOConfig
from utilgen.feedback.lm_dpo import TextPair, train_lm_dpo
from pathlib import Path
prompts = ("the game", "the club", "a match", "the party")
pairs = [TextPair(p, " the team", " a film", 0.5) for p in prompts]
model, tok = tiny_llama(0)
cfg = LMDPOConfig(epochs=1, batch_size=1, learning_rate=1e-2, lora_r=4, lora_alpha=8)
res = train_lm_dpo(model, tok, pairs, cfg, out_dir=Path({out!r}), seed=0)
from utilgen.generate.causal_lm_loading import adapter_state_hash
# The in-memory LoRA weights: equal on both processes when DDP averaged the gradients.
print("RESULT", res.tag, res.steps, adapter_state_hash(res.model))
"""


@pytest.mark.slow
def test_two_process_cpu_run(tmp_path: Path) -> None:
    """``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2`` (torchrun,
    gloo on CPU): 4 pairs, batch 1 per process, so 2 optimiser steps; both processes end
    with the same weights and report the same saved adapter."""
    script = tmp_path / "launched.py"
    out_dir = tmp_path / "dpo"
    generate = str(Path(__file__).resolve().parents[1] / "generate")
    script.write_text(_LAUNCHED.format(generate=generate, out=str(out_dir)))
    launcher = Path(sys.executable).with_name("accelerate")
    # Without ACCELERATE_USE_CPU, accelerate on a machine without GPUs would run each
    # torchrun process on its own (DistributedType.NO); `--cpu` alone starts one process.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"}
    proc = subprocess.run(
        [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", str(script)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [line.split() for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert len(results) == 2 and results[0] == results[1]
    assert results[0][2] == "2"
    saved = json.loads((out_dir / "result.json").read_text())
    assert saved["processes"] == 2 and saved["tag"] == results[0][1]


@pytest.mark.slow
def test_smollm2_round_trip(tmp_path: Path) -> None:
    """The bundled SmolLM2 through the generator: DPO on its own texts with its chat
    template (prompt tokens exactly as generation encodes them), the adapter's tag, and the
    merged model still generates."""
    from utilgen.config import CausalLMConfig
    from utilgen.generate.causal_lm import CausalLMGenerator
    from utilgen.generate.causal_lm_loading import adapter_hash

    gen = CausalLMGenerator.from_config(
        CausalLMConfig(max_new_tokens=12), device=torch.device("cpu"), batch_size=4, seed=0
    )
    assert isinstance(gen, CausalLMGenerator) and gen.chat
    prompt = "Write one sentence about football."
    texts = [c.text for c in gen.complete([prompt] * 4, [0, 1, 2, 3])]
    pairs = [TextPair(prompt, texts[0], texts[1], 0.8, "a", "b"),
             TextPair(prompt, texts[2], texts[3], 0.3, "c", "d")]
    (tokens, _) = tokenize_pairs(pairs, gen.tokenizer, max_length=1024,
                                 format_prompt=gen.format_prompt)
    encoded = gen._encode([gen.format_prompt(prompt)])["input_ids"][0].tolist()
    assert tokens.prompt_ids == encoded

    cfg = LMDPOConfig(epochs=1, batch_size=2, learning_rate=1e-4, lora_r=4, lora_alpha=8)
    result = train_lm_dpo(gen.model, gen.tokenizer, pairs, cfg, out_dir=tmp_path / "dpo",
                          seed=0, format_prompt=gen.format_prompt)
    # policy and reference: separate forward passes of a 135M model, equal up to float noise
    assert result.steps == 1
    assert result.history[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-3)
    # load_adapter's tag (its full reload is checked on the tiny model above).
    assert result.tag == f"lora:{adapter_hash(result.adapter_dir)}"
    merged = result.model.merge_and_unload().eval()
    after = CausalLMGenerator(merged, gen.tokenizer, name=f"{gen.name}+{result.tag}")
    assert after.name.endswith(result.tag)
    assert len(after.complete([prompt], [0])[0].text) > 0
