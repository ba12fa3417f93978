"""U-DPO step time: utilgen's trainer vs TRL's plain DPOTrainer on the same model and batch.

Both sides train the same randomly initialised Llama built from config (about 12 M
parameters, word-level tokenizer over made-up words) with the same peft LoRA (r 16, alpha
32, all linear layers, adapter weights copied from ours to TRL's) on the same batch of
pairs (prompt + completions of U-DPO-like lengths, tokenised identically: checked). One
step = the policy and the reference forward, backward, norm clipping and the AdamW step:

* utilgen: :func:`utilgen.feedback.lm_dpo.dpo_train_step` (the loop body of
  ``train_lm_dpo``) on an ``accelerate``-prepared model and optimiser;
* TRL: ``DPOTrainer.training_step`` (its ``compute_loss`` with the fused LM head and the
  adapter switched off for the reference), then clipping, ``optimizer.step``, the scheduler
  and ``zero_grad`` as ``Trainer``'s inner loop does them.

Warm-up, then ``--rounds`` rounds in ABBA order; medians of the per-step wall clock.
``dpo_step_ratio`` = TRL median / utilgen median (target >= 0.9).

Memory, with and without LoRA (full fine-tune against a frozen copy), for utilgen only and
for TRL, each side run cold in a fresh process (``--memory-run``): the peak RSS increase over
the process once the model is built (sampled every millisecond from ``/proc/self/statm``, so
it includes activations, logits and allocator slack), and the exact bytes of the training
state: parameters, gradients (during a step), AdamW state and the reference copy.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from utilgen.config.feedback import LMDPOConfig
from utilgen.feedback.lm_dpo import (
    TextPair,
    collate_pairs,
    dpo_train_step,
    prepare_policy,
    supports_logits_to_keep,
    tokenize_pairs,
)

VOCAB = 16_000
TARGET = 0.9


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over ``w0 .. w{VOCAB-5}`` plus four specials."""
    words = ["<pad>", "<unk>", "<s>", "</s>", *(f"w{i}" for i in range(VOCAB - 4))]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )


def build_model(seed: int = 0) -> LlamaForCausalLM:
    """A 6-layer Llama, hidden 256 (about 12.5 M parameters), random weights."""
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def build_pairs(n: int, prompt_len: int, chosen_len: int, rejected_len: int) -> list[TextPair]:
    """Pairs of made-up words; a leading space on completions keeps TRL's joint tokenising
    equal to ours."""
    g = torch.Generator().manual_seed(1)

    def words(k: int) -> str:
        return " ".join(f"w{int(i)}" for i in torch.randint(4, VOCAB - 4, (k,), generator=g))

    return [
        TextPair(words(prompt_len), " " + words(chosen_len), " " + words(rejected_len), 1.0)
        for _ in range(n)
    ]


def cfg_for(lora: bool) -> LMDPOConfig:
    return LMDPOConfig(lora=lora, learning_rate=1e-5, batch_size=2)


def state_bytes(model: Any, optimizer: Any, reference: Any) -> dict[str, int]:
    """Bytes of parameters, gradients, optimiser state and reference copy."""

    def size(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()

    params = list(model.parameters())
    opt = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
    return {
        "params": sum(size(p) for p in params),
        "trainable": sum(size(p) for p in params if p.requires_grad),
        # Gradients exist during a step only (zero_grad sets them to None): one per
        # trainable parameter.
        "grads": sum(size(p) for p in params if p.requires_grad),
        "optimizer": sum(
            size(v) for s in opt.state.values() for v in s.values() if torch.is_tensor(v)
        ),
        "reference": sum(size(p) for p in reference.parameters()) if reference is not None else 0,
    }


class Utilgen:
    """utilgen's step on an accelerate-prepared model and optimiser."""

    def __init__(
        self,
        lora: bool,
        batch: dict[str, torch.Tensor],
        *,
        logits_to_keep: bool = True,
        model: LlamaForCausalLM | None = None,
    ) -> None:
        from accelerate import Accelerator

        self.cfg = cfg_for(lora)
        self.accelerator = Accelerator()
        torch.manual_seed(0)
        model = build_model() if model is None else model
        policy, self.reference = prepare_policy(model, self.cfg)
        policy.train()
        self.params = [p for p in policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(self.params, lr=self.cfg.learning_rate)
        self.model, self.optimizer = self.accelerator.prepare(policy, optimizer)
        self.keep = logits_to_keep and supports_logits_to_keep(self.model)
        self.batch = batch

    def step(self) -> float:
        out, _ = dpo_train_step(
            self.accelerator,
            self.model,
            self.optimizer,
            self.params,
            self.batch,
            beta=self.cfg.beta,
            max_grad_norm=self.cfg.max_grad_norm,
            reference=self.reference,
            logits_to_keep=self.keep,
        )
        return float(out.dpo.loss.detach())

    def state(self) -> dict[str, int]:
        return state_bytes(self.model, self.optimizer, self.reference)


class TRL:
    """TRL's DPOTrainer step, driven as Trainer's inner loop drives it."""

    def __init__(
        self,
        lora: bool,
        pairs: list[TextPair],
        tokenizer: Any,
        lora_state: Any,
        model: LlamaForCausalLM | None = None,
    ) -> None:
        from datasets import Dataset
        from peft import LoraConfig, set_peft_model_state_dict
        from trl import DPOConfig, DPOTrainer

        cfg = cfg_for(lora)
        args = DPOConfig(
            output_dir=tempfile.mkdtemp(prefix="trl-dpo-"),
            beta=cfg.beta,
            learning_rate=cfg.learning_rate,
            per_device_train_batch_size=len(pairs),
            max_grad_norm=cfg.max_grad_norm,
            report_to="none",
            use_cpu=True,
            bf16=False,
            max_length=None,
            save_strategy="no",
            logging_strategy="no",
        )
        dataset = Dataset.from_dict(
            {k: [getattr(p, k) for p in pairs] for k in ("prompt", "chosen", "rejected")}
        )
        model = build_model() if model is None else model
        peft_config = ref_model = None
        if lora:
            peft_config = LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=cfg.lora_target_modules,
                task_type="CAUSAL_LM",
            )
        else:
            # A model built from config has no path TRL could reload its reference from.
            ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        self.trainer = DPOTrainer(
            model=model,
            ref_model=ref_model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        if lora_state is not None:
            set_peft_model_state_dict(self.trainer.model, lora_state)
        self.trainer.create_optimizer_and_scheduler(num_training_steps=10_000)
        # Trainer.train sets this per accumulation window; one micro-batch per step here.
        self.trainer.current_gradient_accumulation_steps = 1
        self.trainer.model.train()
        self.batch = self.trainer.data_collator(
            [self.trainer.train_dataset[i] for i in range(len(pairs))]
        )
        self.max_grad_norm = cfg.max_grad_norm

    def step(self) -> float:
        t = self.trainer
        loss = t.training_step(t.model, self.batch)
        t.accelerator.clip_grad_norm_(t.model.parameters(), self.max_grad_norm)
        t.optimizer.step()
        t.lr_scheduler.step()
        t.model.zero_grad()
        return float(loss)

    def state(self) -> dict[str, int]:
        return state_bytes(self.trainer.model, self.trainer.optimizer, self.trainer.ref_model)


def timed(step: Any) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def setup(args: argparse.Namespace) -> tuple[list[TextPair], Any, dict[str, torch.Tensor]]:
    tokenizer = build_tokenizer()
    pairs = build_pairs(args.pairs, args.prompt_len, args.chosen_len, args.rejected_len)
    tokens = tokenize_pairs(pairs, tokenizer, max_length=1024)
    return pairs, tokenizer, collate_pairs(tokens, pad_token_id=tokenizer.pad_token_id)


def rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples the RSS every millisecond on a thread; ``peak`` is the highest seen."""

    def __init__(self) -> None:
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.001)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def memory_run(args: argparse.Namespace) -> None:
    """One side, cold, in this process: print a JSON line of RSS and state bytes.

    Two baselines: the RSS once the model exists (the weights count once on both sides;
    then the peak covers setting up the trainer and 3 steps), and the RSS once the trainer
    is set up (then the peak covers the steps alone).
    """
    side, mode = args.memory_run.split(":")
    lora = mode == "lora"
    pairs, tokenizer, batch = setup(args)
    # Import both sides' libraries before the baseline: only training counts.
    import accelerate  # noqa: F401
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import trl  # noqa: F401

    model = build_model()
    base = rss_bytes()
    with PeakRSS() as setup_peak:
        runner: Utilgen | TRL = (
            Utilgen(lora, batch, model=model)
            if side == "utilgen"
            else TRL(lora, pairs, tokenizer, None, model=model)
        )
    ready = rss_bytes()
    with PeakRSS() as step_peak:
        for _ in range(3):
            runner.step()
    row = {
        # Above the process with the model built: trainer setup and three steps.
        "peak_rss_mib": (max(setup_peak.peak, step_peak.peak) - base) / 2**20,
        # Above the process with the trainer set up: what the steps themselves add
        # (activations, logits, gradients, AdamW state on the first step).
        "step_rss_mib": (step_peak.peak - ready) / 2**20,
        **runner.state(),
    }
    print(json.dumps(row))


def memory_table(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    out = {}
    for name in ("utilgen:lora", "trl:lora", "utilgen:full", "trl:full"):
        cmd = [sys.executable, __file__, "--memory-run", name, "--threads", str(args.threads)]
        for key in ("pairs", "prompt_len", "chosen_len", "rejected_len"):
            cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="ABBA rounds (4 steps each)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=2, help="pairs per step (U-DPO: 2)")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--chosen-len", type=int, default=64)
    parser.add_argument("--rejected-len", type=int, default=48)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory runs")
    parser.add_argument("--memory-run", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_run:
        memory_run(args)
        return 0

    # 1. the same batch on both sides
    pairs, tokenizer, batch = setup(args)
    ours = Utilgen(True, batch)
    from peft import get_peft_model_state_dict

    trl = TRL(
        True, pairs, tokenizer, get_peft_model_state_dict(ours.accelerator.unwrap_model(ours.model))
    )
    for key in ("input_ids", "attention_mask", "completion_mask"):
        if not torch.equal(batch[key], trl.batch[key]):
            raise SystemExit(f"the two sides got different {key}")
    n_params = sum(p.numel() for p in ours.model.parameters())
    print(
        f"model: Llama {n_params / 1e6:.1f} M parameters (LoRA r=16), {args.pairs} pairs, "
        f"sequence {batch['input_ids'].shape[1]} tokens, threads {args.threads}"
    )

    # 2. the same weights and batch give the same losses on both sides, step after step
    losses = [(ours.step(), trl.step()) for _ in range(2)]
    print(
        "first steps' losses (utilgen, trl): " + ", ".join(f"({a:.6f}, {b:.6f})" for a, b in losses)
    )
    # Without logits_to_keep (every position through the LM head, as TRL's CPU path does):
    # how much of the difference that saving makes.
    plain = Utilgen(True, batch, logits_to_keep=False)
    plain.step()

    # 3. interleaved timing: each round runs the sides in order and then in reverse (ABBA)
    sides = {"utilgen": ours.step, "trl": trl.step, "utilgen_all_logits": plain.step}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.rounds):
        order = list(sides.items())
        if r % 2:
            order.reverse()
        for name, step in [*order, *reversed(order)]:
            times[name].append(timed(step))
        print(
            f"round {r}: "
            + ", ".join(
                f"{name} {statistics.median(t[-2:]):.3f} s/step" for name, t in times.items()
            )
        )
    ours_s = statistics.median(times["utilgen"])
    trl_s = statistics.median(times["trl"])
    plain_s = statistics.median(times["utilgen_all_logits"])
    ratio = trl_s / ours_s
    print(f"trl / utilgen_all_logits (no logits_to_keep) = {trl_s / plain_s:.3f}")
    del ours, trl, plain

    # 4. memory, each side cold in its own process
    pairs_line = ""
    if not args.no_memory:
        table = memory_table(args)
        for name, row in table.items():
            state_mib = (row["params"] + row["grads"] + row["optimizer"] + row["reference"]) / 2**20
            print(
                f"memory {name}: peak RSS +{row['peak_rss_mib']:.0f} MiB over the built model, "
                f"+{row['step_rss_mib']:.0f} MiB over the set-up trainer; state {state_mib:.1f} "
                f"MiB = params {row['params'] / 2**20:.1f} + grads {row['grads'] / 2**20:.2f} "
                f"+ AdamW {row['optimizer'] / 2**20:.2f} + reference "
                f"{row['reference'] / 2**20:.1f}"
            )
        pairs_line = (
            " ".join(
                f"peak_rss_{name.replace(':', '_')}_mib={row['peak_rss_mib']:.0f}"
                for name, row in table.items()
            )
            + " "
        )

    ok = ratio >= TARGET
    print(
        f"utilgen_step_s={ours_s:.4f} trl_step_s={trl_s:.4f} "
        f"utilgen_all_logits_step_s={plain_s:.4f} {pairs_line}"
        f"target={TARGET} met={'yes' if ok else 'no'} dpo_step_ratio={ratio:.3f}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
