"""U-DPO: weighted DPO of a causal LM on utility-ranked text pairs (U-DPO Sec. 3.2-3.4).

:func:`train_lm_dpo` fine-tunes the generator's LM on preference pairs (a prompt, a preferred
and a dispreferred completion, a weight w = tanh(|delta r|) computed upstream by
``utilgen.feedback.pairs``) with the weighted sigmoid DPO loss of
:mod:`utilgen.feedback.dpo_loss`. Defaults are the paper's (beta 1.0, lr 2e-5, batch 2,
3 epochs; ``LMDPOConfig``).

What one step does, per batch of pairs:

1. tokens: ``format_prompt(prompt)`` (the chat template exactly as generation applies it)
   tokenised alone; each completion tokenised alone plus EOS, so training sees the token
   boundary generation produced. Prompts are cut from the left to fit ``max_length``;
2. one forward of the policy over the chosen and rejected rows together (right padded),
   scoring only completion tokens (``logits_to_keep`` skips the prompt's LM-head work
   where the model supports it);
3. the reference log-probs under ``no_grad``: with LoRA, the same peft model with its adapter
   switched off (no second copy); starting from a saved adapter, a frozen copy of that
   adapter named ``ref`` (as TRL does); full fine-tuning, a frozen deep copy;
4. weighted DPO loss, plus ``sft_weight`` times the weighted NLL of the preferred
   completions when that is set (RPO; TRL's ``loss_type=["sigmoid", "sft"]``), AdamW with
   gradient accumulation and norm clipping, constant learning rate (the paper names none;
   TRL's default would decay it linearly).

Everything runs through ``accelerate.Accelerator`` (model, optimiser and data loader are
prepared), so the same code runs on this CPU and under ``accelerate launch`` on several GPUs
(DDP: each process takes its share of every epoch's batches, gradients are averaged)::

    accelerate launch --multi_gpu --num_processes 2 SCRIPT      # SCRIPT calls train_lm_dpo

Two CPU processes over gloo need ``ACCELERATE_USE_CPU=1`` in front of the same command
(``--cpu`` alone starts a single process without MPI); ``tests/feedback/test_lm_dpo.py::
test_two_process_cpu_run`` (slow) runs it. Shuffling is seeded (``seed + epoch``) and the same
on every process; metrics are gathered from all of them; the main process writes the files.

Written to ``out_dir``: ``log.jsonl`` (one JSON record per logged optimiser step: loss,
rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps, the chosen
completions' NLL per token, mean weight, lr, grad norm), ``tensorboard/`` (the same
scalars), ``adapter/`` (peft ``save_pretrained``, safetensors; ``model/`` for a full
fine-tune) and ``result.json`` last. Bad input (no pairs, beta <= 0, a negative
sft_weight, an adapter directory that is not a peft adapter, a pair that does not fit
``max_length``) raises :class:`~utilgen.feedback.errors.FeedbackError` before anything is
written.

Departures from TRL's ``DPOTrainer`` (whose sigmoid loss this equals when all weights are 1,
pinned by a parity test): pairs carry weights; completions are tokenised apart from the
prompt (TRL tokenises prompt + completion together, which can merge tokens across the
boundary); dropout is left as the model defines it (TRL zeroes it), the reference runs in
eval mode.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from utilgen.atomic import write_json_atomic
from utilgen.config.feedback import LMDPOConfig
from utilgen.faults import fault_point
from utilgen.feedback.dpo_loss import (
    DPOLossOutput,
    sequence_logps,
    weighted_dpo_loss,
    weighted_sft_loss,
)
from utilgen.feedback.errors import FeedbackError
from utilgen.progress import progress_bar

log = logging.getLogger(__name__)

TRAIN_ADAPTER = "default"
REF_ADAPTER = "ref"
LOG_FILE = "log.jsonl"
RESULT_FILE = "result.json"
TENSORBOARD_DIR = "tensorboard"
METRIC_KEYS = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "nll/chosen",
    "weight",
)


# 1. pairs and tokens ----------------------------------------------------------------------


@dataclass(frozen=True)
class TextPair:
    """One preference pair of texts answering the same prompt.

    Attributes:
        prompt: the raw prompt (formatted by ``format_prompt`` before tokenising).
        chosen: the preferred completion x+ (plain text, no special tokens).
        rejected: the dispreferred completion x-.
        weight: the pair's loss weight (U-DPO: tanh(|r(x+) - r(x-)|); 1 when unweighted).
        chosen_id: sample id of x+, for logs and error messages.
        rejected_id: sample id of x-.
    """

    prompt: str
    chosen: str
    rejected: str
    weight: float = 1.0
    chosen_id: str = ""
    rejected_id: str = ""

    def label(self) -> str:
        """``chosen_id/rejected_id`` (or the start of the prompt) for messages."""
        if self.chosen_id or self.rejected_id:
            return f"{self.chosen_id}/{self.rejected_id}"
        return repr(self.prompt[:40])


@dataclass(frozen=True)
class TokenizedPair:
    """Token ids of a pair: the shared prompt (already cut to fit) and both completions
    (each ending with EOS); ``prompt_ids + chosen_ids`` is at most ``max_length`` long."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    weight: float


def _adds_special_tokens(format_prompt: Callable[[str], str] | None, tokenizer: Any) -> bool:
    """Whether the prompt is tokenised with the tokenizer's special tokens, as generation
    does: ``CausalLMGenerator`` adds them to raw prompts only (a chat template writes its
    own); its ``chat`` flag says which applies. Other callables: raw unless the tokenizer
    has a chat template."""
    owner = getattr(format_prompt, "__self__", None)
    chat = getattr(owner, "chat", None)
    if isinstance(chat, bool):
        return not chat
    return format_prompt is None or not getattr(tokenizer, "chat_template", None)


def _eos_id(tokenizer: Any) -> int:
    eos = tokenizer.eos_token_id
    if isinstance(eos, list | tuple):
        eos = eos[0] if eos else None
    if eos is None:
        raise FeedbackError(
            "the tokenizer has no end-of-text token, so DPO completions cannot end; use a "
            "causal LM checkpoint whose tokenizer sets eos_token"
        )
    return int(eos)


def tokenize_pairs(
    pairs: Sequence[TextPair],
    tokenizer: Any,
    *,
    max_length: int,
    format_prompt: Callable[[str], str] | None = None,
    add_special_tokens: bool | None = None,
) -> list[TokenizedPair]:
    """Token ids of every pair (see the module docstring, step 1).

    The prompt is cut from the left so that prompt + the longer completion fits
    ``max_length``; at least one prompt token must stay (it predicts the first completion
    token).

    Args:
        add_special_tokens: add the tokenizer's special tokens (BOS) to the prompt; None: as
            generation does (:func:`_adds_special_tokens`).

    Raises:
        FeedbackError: a pair whose completion leaves no room for a prompt token, a pair
            with nothing to score, a negative or non-finite weight, no EOS token.
    """
    eos = _eos_id(tokenizer)
    fmt = format_prompt or (lambda p: p)
    specials = (
        _adds_special_tokens(format_prompt, tokenizer)
        if add_special_tokens is None
        else add_special_tokens
    )
    prompt_cache: dict[str, list[int]] = {}
    out = []
    for pair in pairs:
        if not (math.isfinite(pair.weight) and pair.weight >= 0):
            raise FeedbackError(
                f"pair {pair.label()} has weight {pair.weight}; pair weights must be finite "
                "and >= 0 (tanh(|delta r|) or 1)"
            )
        if pair.prompt not in prompt_cache:
            text = fmt(pair.prompt)
            prompt_cache[pair.prompt] = list(
                tokenizer(text, add_special_tokens=specials)["input_ids"]
            )
        prompt = prompt_cache[pair.prompt]
        chosen = [*tokenizer(pair.chosen, add_special_tokens=False)["input_ids"], eos]
        rejected = [*tokenizer(pair.rejected, add_special_tokens=False)["input_ids"], eos]
        room = max_length - max(len(chosen), len(rejected))
        if prompt and room < 1:
            raise FeedbackError(
                f"pair {pair.label()}: a completion of {max(len(chosen), len(rejected))} tokens "
                f"leaves no prompt token within feedback.dpo.max_length={max_length}; raise "
                "feedback.dpo.max_length or lower generator.lm.max_new_tokens"
            )
        if not prompt and min(len(chosen), len(rejected)) < 2:
            raise FeedbackError(
                f"pair {pair.label()} has an empty prompt and an empty completion, so no "
                "completion token can be scored; drop empty texts before building pairs"
            )
        if len(prompt) > room:
            prompt = prompt[len(prompt) - room :]
        out.append(TokenizedPair(prompt, chosen, rejected, float(pair.weight)))
    return out


def collate_pairs(batch: Sequence[TokenizedPair], *, pad_token_id: int) -> dict[str, torch.Tensor]:
    """One padded batch: rows ``[chosen_0 .. chosen_B-1, rejected_0 .. rejected_B-1]``.

    Returns:
        ``input_ids``, ``attention_mask``, ``completion_mask`` (``(2B, L)``, right padded)
        and ``weights`` (``(B,)`` float32).
    """
    rows = [(p.prompt_ids, p.chosen_ids) for p in batch]
    rows += [(p.prompt_ids, p.rejected_ids) for p in batch]
    length = max(len(a) + len(b) for a, b in rows)
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    completion = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (prompt, answer) in enumerate(rows):
        n = len(prompt) + len(answer)
        input_ids[i, :n] = torch.tensor(prompt + answer)
        attention[i, :n] = 1
        completion[i, len(prompt) : n] = 1
    weights = torch.tensor([p.weight for p in batch], dtype=torch.float32)
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "completion_mask": completion,
        "weights": weights,
    }


class EpochShuffle(Sampler[int]):
    """Indices ``0..n-1`` in the order of ``randperm(n)`` seeded with ``seed + epoch``: the
    same on every process, different each epoch (call :meth:`set_epoch`)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())


# 2. policy and reference --------------------------------------------------------------------


def _is_peft(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def check_adapter_dir(adapter: str | None) -> Path | None:
    """``cfg.adapter`` as a path, checked to hold a peft adapter (None when unset).

    Raises:
        FeedbackError: the directory holds no ``adapter_config.json``.
    """
    if adapter is None:
        return None
    root = Path(adapter).expanduser()
    if not (root / "adapter_config.json").is_file():
        raise FeedbackError(
            f"feedback.dpo.adapter {adapter!r} holds no adapter_config.json; pass a directory "
            "written by a peft model's save_pretrained, or unset it to train a fresh LoRA"
        )
    return root


def prepare_policy(model: Any, cfg: LMDPOConfig, adapter: Path | None = None) -> tuple[Any, Any]:
    """The model to train and its separate reference model (None when the reference is the
    same peft model with its adapter off or switched to ``ref``).

    * ``cfg.lora`` without ``adapter``: a fresh peft LoRA (``lora_r``, ``lora_alpha``,
      ``lora_dropout``, ``lora_target_modules``) wraps ``model`` in place;
    * with ``adapter``: that adapter, trainable, plus a frozen copy ``ref`` as the reference;
    * ``cfg.lora`` false: every weight trains against a frozen deep copy.

    A peft model passed in has its adapter merged first (it is the starting policy).
    Seed torch before calling: LoRA's A matrices are drawn from the global generator.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if _is_peft(model):
        log.info("merging the adapter the LM carries into its weights before DPO")
        model = model.merge_and_unload()
    if adapter is not None:
        policy = PeftModel.from_pretrained(
            model, str(adapter), adapter_name=TRAIN_ADAPTER, is_trainable=True
        )
        policy.load_adapter(str(adapter), adapter_name=REF_ADAPTER, is_trainable=False)
        policy.set_adapter(TRAIN_ADAPTER)
        return policy, None
    if cfg.lora:
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target_modules,
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, lora), None
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    return model.requires_grad_(True), reference


def _base_model(model: Any) -> Any:
    while hasattr(model, "module"):  # DistributedDataParallel and friends
        model = model.module
    return model.get_base_model() if _is_peft(model) else model


def supports_logits_to_keep(model: Any) -> bool:
    """Whether the transformers model under ``model`` takes ``logits_to_keep``."""
    forward = type(_base_model(model)).forward
    return "logits_to_keep" in inspect.signature(forward).parameters


def batch_logps(
    model: Any, batch: dict[str, torch.Tensor], *, logits_to_keep: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs (nats) of the chosen and of the rejected rows of
    ``batch`` (as :func:`collate_pairs` builds it) under ``model``: two ``(B,)`` tensors."""
    input_ids, completion = batch["input_ids"], batch["completion_mask"]
    length = input_ids.shape[1]
    # The LM head only needs the positions from the one before the earliest completion
    # token on: the prompt is most of a U-DPO sequence (two-shot examples).
    first = int(completion.argmax(dim=1).min())
    keep = length - max(first - 1, 0)
    kwargs: dict[str, Any] = {"use_cache": False}
    if logits_to_keep:
        kwargs["logits_to_keep"] = keep
    logits = model(input_ids=input_ids, attention_mask=batch["attention_mask"], **kwargs).logits
    logps = sequence_logps(logits[:, -keep:], input_ids[:, -keep:], completion[:, -keep:])
    chosen, rejected = logps.chunk(2)
    return chosen, rejected


@contextlib.contextmanager
def reference_mode(peft_model: Any) -> Iterator[None]:
    """Inside: ``peft_model`` computes the reference (adapter ``ref`` active, or the adapter
    switched off), in eval mode; restored afterwards."""
    was_training = peft_model.training
    peft_model.eval()
    try:
        if REF_ADAPTER in peft_model.peft_config:
            peft_model.set_adapter(REF_ADAPTER)
            try:
                yield
            finally:
                # set_adapter makes the named adapter trainable and freezes the others.
                peft_model.set_adapter(TRAIN_ADAPTER)
        else:
            with peft_model.disable_adapter():
                yield
    finally:
        peft_model.train(was_training)


def reference_logps(
    policy: Any,
    reference: Any,
    batch: dict[str, torch.Tensor],
    *,
    logits_to_keep: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference log-probs (no gradient) of ``batch``: from ``reference`` when given, else
    from the peft model under ``policy`` in :func:`reference_mode`."""
    with torch.no_grad():
        if reference is not None:
            return batch_logps(reference, batch, logits_to_keep=logits_to_keep)
        peft_model = policy
        while hasattr(peft_model, "module"):
            peft_model = peft_model.module
        with reference_mode(peft_model):
            return batch_logps(peft_model, batch, logits_to_keep=logits_to_keep)


@dataclass(frozen=True)
class BatchLoss:
    """The loss of one batch and the policy log-probs it came from.

    Attributes:
        loss: what is minimised: ``dpo.loss`` plus ``sft_weight`` times ``sft`` (when set).
        dpo: the weighted DPO loss and its per-pair parts.
        sft: the weighted NLL of the chosen completions per token (None when not used).
        chosen_logps, rejected_logps: the policy's summed completion log-probs, detached.
        chosen_nll: each chosen completion's NLL per token, detached.
    """

    loss: torch.Tensor
    dpo: DPOLossOutput
    sft: torch.Tensor | None
    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    chosen_nll: torch.Tensor


def chosen_token_counts(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """How many tokens of each chosen completion :func:`batch_logps` scores (a row's first
    position predicts nothing, as in :func:`~utilgen.feedback.dpo_loss.sequence_logps`)."""
    counts = batch["completion_mask"][:, 1:].sum(dim=1)
    return counts.chunk(2)[0]


def dpo_batch_loss(
    policy: Any,
    batch: dict[str, torch.Tensor],
    *,
    beta: float,
    sft_weight: float = 0.0,
    reference: Any = None,
    logits_to_keep: bool | None = None,
) -> BatchLoss:
    """Weighted DPO loss of ``batch`` under ``policy`` against its reference (see
    :func:`reference_logps`), plus ``sft_weight`` times the weighted NLL of the chosen
    completions when it is > 0; ``logits_to_keep`` None: when the model supports it."""
    keep = supports_logits_to_keep(policy) if logits_to_keep is None else logits_to_keep
    ref_chosen, ref_rejected = reference_logps(policy, reference, batch, logits_to_keep=keep)
    chosen, rejected = batch_logps(policy, batch, logits_to_keep=keep)
    weights = batch["weights"]
    dpo = weighted_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta, weights=weights)
    tokens = chosen_token_counts(batch)
    loss, sft = dpo.loss, None
    if sft_weight > 0:
        sft = weighted_sft_loss(chosen, tokens, weights=weights)
        loss = loss + sft_weight * sft
    nll = -chosen.detach() / tokens.clamp(min=1).to(chosen)
    return BatchLoss(loss, dpo, sft, chosen.detach(), rejected.detach(), nll)


def dpo_train_step(
    accelerator: Any,
    model: Any,
    optimizer: Any,
    params: Sequence[torch.nn.Parameter],
    batch: dict[str, torch.Tensor],
    *,
    beta: float,
    max_grad_norm: float,
    sft_weight: float = 0.0,
    reference: Any = None,
    logits_to_keep: bool = True,
) -> tuple[BatchLoss, float | None]:
    """One micro-batch of training: loss, backward, and (when the accumulation is complete)
    norm clipping and the optimiser step, all through ``accelerator`` (which prepared
    ``model`` and ``optimizer``). Returns the batch loss and the gradient norm before
    clipping (None on a step that only accumulated)."""
    grad_norm = None
    with accelerator.accumulate(model):
        out = dpo_batch_loss(
            model,
            batch,
            beta=beta,
            sft_weight=sft_weight,
            reference=reference,
            logits_to_keep=logits_to_keep,
        )
        accelerator.backward(out.loss)
        if accelerator.sync_gradients:
            grad_norm = float(accelerator.clip_grad_norm_(params, max_grad_norm))
        # The prepared optimiser skips these until the accumulation is complete.
        optimizer.step()
        optimizer.zero_grad()
    return out, grad_norm


# 3. logs ------------------------------------------------------------------------------------


@dataclass
class StepLog:
    """Per-step records to ``log.jsonl`` (appended and flushed line by line) and TensorBoard;
    a no-op on processes other than the main one."""

    out_dir: Path
    enabled: bool
    history: list[dict[str, float]] = field(default_factory=list)
    writer: Any = None

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        # A fresh training run owns these: drop what an interrupted attempt left behind.
        (self.out_dir / LOG_FILE).unlink(missing_ok=True)
        shutil.rmtree(self.out_dir / TENSORBOARD_DIR, ignore_errors=True)
        self.writer = SummaryWriter(str(self.out_dir / TENSORBOARD_DIR))

    def write(self, record: dict[str, float]) -> None:
        self.history.append(record)
        if not self.enabled:
            return
        with open(self.out_dir / LOG_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
        step = int(record["step"])
        for key, value in record.items():
            if key not in ("step", "epoch"):
                self.writer.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


class _Pending:
    """Per-pair values gathered since the last record (from every process)."""

    def __init__(self) -> None:
        self.parts: dict[str, list[torch.Tensor]] = {k: [] for k in METRIC_KEYS}

    def add(self, accelerator: Any, out: BatchLoss) -> None:
        values = {
            "loss": out.dpo.losses.detach(),
            "rewards/chosen": out.dpo.chosen_rewards,
            "rewards/rejected": out.dpo.rejected_rewards,
            "rewards/accuracies": out.dpo.accuracies,
            "rewards/margins": out.dpo.margins,
            "logps/chosen": out.chosen_logps,
            "logps/rejected": out.rejected_logps,
            "nll/chosen": out.chosen_nll,
            "weight": out.dpo.weights,
        }
        for key, value in values.items():
            self.parts[key].append(accelerator.gather(value.float()).cpu())

    def __bool__(self) -> bool:
        return bool(self.parts["loss"])

    def means(self) -> dict[str, float]:
        means = {k: float(torch.cat(v).mean()) for k, v in self.parts.items()}
        self.parts = {k: [] for k in METRIC_KEYS}
        return means


# 4. training --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LMDPOResult:
    """What :func:`train_lm_dpo` trained.

    Attributes:
        adapter_dir: ``out_dir/adapter`` (peft adapter) or ``out_dir/model`` (full model).
        tag: ``lora:<12 hex>`` (the :func:`~utilgen.generate.causal_lm.adapter_hash` of the
            saved adapter, the tag ``load_adapter`` gives it) or ``full:<12 hex>``.
        steps: optimiser steps taken.
        history: the logged records (as in ``log.jsonl``).
        model: the trained model (the peft model with LoRA), in eval mode.
    """

    adapter_dir: Path
    tag: str
    steps: int
    history: list[dict[str, float]]
    model: Any


def _check_inputs(pairs: Sequence[TextPair], cfg: LMDPOConfig) -> None:
    if not pairs:
        raise FeedbackError(
            "U-DPO got no preference pairs; generate at least two samples per class (or per "
            "prompt with feedback.pairs.group_by=prompt) so that pairs can be built"
        )
    if not cfg.beta > 0:
        raise FeedbackError(f"feedback.dpo.beta must be > 0, got {cfg.beta}; set e.g. 1.0")
    if not (math.isfinite(cfg.sft_weight) and cfg.sft_weight >= 0):
        raise FeedbackError(
            f"feedback.dpo.sft_weight must be finite and >= 0, got {cfg.sft_weight}; 0 turns "
            "the NLL term off"
        )


def _save(model: Any, out_dir: Path, lora: bool) -> None:
    """Save the trained weights as safetensors: the adapter, or the whole model."""
    if lora:
        target = out_dir / "adapter"
        model.save_pretrained(
            str(target), selected_adapters=[TRAIN_ADAPTER], safe_serialization=True
        )
        # peft keeps target_modules as a set and writes it in hash-seed order; sorted, the
        # same training gives the same file, so the same adapter hash in every process.
        config_file = target / "adapter_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if isinstance(config.get("target_modules"), list):
            config["target_modules"] = sorted(config["target_modules"])
            write_json_atomic(config_file, config)
    else:
        model.save_pretrained(str(out_dir / "model"), safe_serialization=True)


def _saved_tag(out_dir: Path, lora: bool) -> tuple[Path, str]:
    """The saved directory and its tag: ``<peft type>:<hash>`` exactly as
    :func:`~utilgen.generate.causal_lm.load_adapter` names it, or ``full:<hash>``."""
    from utilgen.generate.causal_lm import adapter_hash

    if not lora:
        target = out_dir / "model"
        return target, f"full:{adapter_hash(target)}"
    target = out_dir / "adapter"
    config = json.loads((target / "adapter_config.json").read_text(encoding="utf-8"))
    kind = str(config.get("peft_type", "adapter")).lower()
    return target, f"{kind}:{adapter_hash(target)}"


def train_lm_dpo(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[TextPair],
    cfg: LMDPOConfig,
    *,
    out_dir: Path,
    seed: int,
    format_prompt: Callable[[str], str] | None = None,
    add_special_tokens: bool | None = None,
) -> LMDPOResult:
    """Fine-tune ``model`` with weighted DPO on ``pairs`` (see the module docstring).

    Args:
        model: a transformers causal LM (float weights). With ``cfg.lora`` it is wrapped in
            a peft model in place; the returned ``result.model`` is that wrapper.
        tokenizer: its tokenizer.
        pairs: the preference pairs (``TextPair``).
        cfg: ``feedback.dpo`` settings.
        out_dir: where logs, the adapter and ``result.json`` go (created here).
        seed: seeds the LoRA initialisation and the shuffling.
        format_prompt: turns a raw prompt into the model input (the generator's
            ``format_prompt``); None: the prompt as is.
        add_special_tokens: see :func:`tokenize_pairs`.

    Returns:
        :class:`LMDPOResult`.

    Raises:
        FeedbackError: bad input (see the module docstring); nothing is written then.
    """
    from accelerate import Accelerator

    # 1. check inputs: nothing is written before these pass
    started = time.perf_counter()
    pairs = list(pairs)
    _check_inputs(pairs, cfg)
    adapter = check_adapter_dir(cfg.adapter)
    tokens = tokenize_pairs(
        pairs,
        tokenizer,
        max_length=cfg.max_length,
        format_prompt=format_prompt,
        add_special_tokens=add_special_tokens,
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _eos_id(tokenizer)

    # 2. policy and reference
    accelerator = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    torch.manual_seed(seed)
    policy, reference = prepare_policy(model, cfg, adapter)
    policy.train()
    lora = _is_peft(policy)
    keep = supports_logits_to_keep(policy)

    # 3. data and optimiser
    sampler = EpochShuffle(len(tokens), seed)
    loader: DataLoader[TokenizedPair] = DataLoader(
        tokens,  # type: ignore[arg-type]  # a list is a map-style dataset
        batch_size=cfg.batch_size,
        sampler=sampler,
        collate_fn=partial(collate_pairs, pad_token_id=pad_id),
    )
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    prepared, optimizer, loader = accelerator.prepare(policy, optimizer, loader)
    if reference is not None:
        reference.to(accelerator.device)
    steps_per_epoch = math.ceil(len(loader) / cfg.gradient_accumulation_steps)
    total = steps_per_epoch * cfg.epochs
    log.info(
        "U-DPO: %d pairs, %d epochs, %d optimiser steps, %s, %d processes",
        len(tokens),
        cfg.epochs,
        total,
        "LoRA" if lora else "full fine-tune",
        accelerator.num_processes,
    )

    # 4. train
    main = accelerator.is_main_process
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    logs = StepLog(out_dir, enabled=main)
    pending = _Pending()
    step = 0
    bar = progress_bar(f"U-DPO ({len(tokens)} pairs)", total) if main else None
    try:
        with bar if bar is not None else contextlib.nullcontext(lambda n: None) as advance:
            for epoch in range(cfg.epochs):
                sampler.set_epoch(epoch)
                for batch in loader:
                    out, grad_norm = dpo_train_step(
                        accelerator,
                        prepared,
                        optimizer,
                        params,
                        batch,
                        beta=cfg.beta,
                        max_grad_norm=cfg.max_grad_norm,
                        sft_weight=cfg.sft_weight,
                        reference=reference,
                        logits_to_keep=keep,
                    )
                    pending.add(accelerator, out)
                    if not accelerator.sync_gradients:
                        continue
                    step += 1
                    advance(1)
                    if step % cfg.log_every == 0 or step == total:
                        record = {"step": float(step), "epoch": float(epoch), **pending.means()}
                        record["lr"] = float(optimizer.param_groups[0]["lr"])
                        if grad_norm is not None:
                            record["grad_norm"] = grad_norm
                        logs.write(record)
        if pending:  # a last partial accumulation that did not reach a logged step
            logs.write({"step": float(step), "epoch": float(cfg.epochs - 1), **pending.means()})
    finally:
        logs.close()

    # 5. save: the adapter (or model), then result.json last
    accelerator.wait_for_everyone()
    trained = accelerator.unwrap_model(prepared)
    if lora and REF_ADAPTER in trained.peft_config:
        trained.delete_adapter(REF_ADAPTER)
    if main:
        _save(trained, out_dir, lora)
    accelerator.wait_for_everyone()
    target, tag = _saved_tag(out_dir, lora)
    fault_point("feedback.trained")
    if main:
        write_json_atomic(
            out_dir / RESULT_FILE,
            {
                "tag": tag,
                "weights_dir": target.name,
                "lora": lora,
                "steps": step,
                "epochs": cfg.epochs,
                "seconds": round(time.perf_counter() - started, 3),
                "pairs": len(tokens),
                "processes": accelerator.num_processes,
                "beta": cfg.beta,
                "sft_weight": cfg.sft_weight,
                "final": logs.history[-1] if logs.history else {},
            },
        )
    accelerator.free_memory()
    trained.eval()
    log.info("U-DPO done: %d steps, saved %s (%s)", step, target, tag)
    return LMDPOResult(adapter_dir=target, tag=tag, steps=step, history=logs.history, model=trained)
