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

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from utilgen.atomic import write_json_atomic
from utilgen.config.feedback import LMDPOConfig
from utilgen.feedback.dpo_loss import (
    DPOLossOutput,
    sequence_logps,
    weighted_dpo_loss,
    weighted_sft_loss,
)
from utilgen.feedback.errors import FeedbackError
from utilgen.feedback.lm_dpo_data import (
    EpochShuffle,
    TextPair,
    TokenizedPair,
    collate_pairs,
    eos_id,
    pair_loader,
    tokenize_pairs,
)
from utilgen.feedback.lm_dpo_policy import (
    REF_ADAPTER,
    TRAIN_ADAPTER,
    check_adapter_dir,
    is_peft,
    prepare_policy,
    reference_mode,
    supports_logits_to_keep,
)
from utilgen.feedback.training_log import TrainingLog, write_result
from utilgen.progress import progress_or_nothing

__all__ = [
    "REF_ADAPTER",
    "TRAIN_ADAPTER",
    "BatchLoss",
    "EpochShuffle",
    "LMDPOResult",
    "TextPair",
    "TokenizedPair",
    "batch_logps",
    "check_adapter_dir",
    "chosen_token_counts",
    "collate_pairs",
    "dpo_batch_loss",
    "dpo_train_step",
    "prepare_policy",
    "reference_logps",
    "reference_mode",
    "supports_logits_to_keep",
    "tokenize_pairs",
    "train_lm_dpo",
]

log = logging.getLogger(__name__)

# TensorBoard tags: train/loss, train/rewards/chosen, ...
SCALAR_PREFIX = "train"
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


# 1. the loss of a batch ---------------------------------------------------------------------


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


# 2. logged metrics --------------------------------------------------------------------------


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


# 3. training --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LMDPOResult:
    """What :func:`train_lm_dpo` trained.

    Attributes:
        adapter_dir: ``out_dir/adapter`` (peft adapter) or ``out_dir/model`` (full model).
        tag: ``lora:<12 hex>`` (the
            :func:`~utilgen.generate.causal_lm_loading.adapter_hash` of the saved adapter,
            the tag ``load_adapter`` gives it) or ``full:<12 hex>``.
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
    :func:`~utilgen.generate.causal_lm_loading.load_adapter` names it, or ``full:<hash>``."""
    from utilgen.generate.causal_lm_loading import adapter_hash

    if not lora:
        target = out_dir / "model"
        return target, f"full:{adapter_hash(target)}"
    target = out_dir / "adapter"
    config = json.loads((target / "adapter_config.json").read_text(encoding="utf-8"))
    kind = str(config.get("peft_type", "adapter")).lower()
    return target, f"{kind}:{adapter_hash(target)}"


def _save_and_record(
    accelerator: Any,
    prepared: Any,
    out_dir: Path,
    cfg: LMDPOConfig,
    *,
    lora: bool,
    step: int,
    history: list[dict[str, float]],
    n_pairs: int,
    started: float,
) -> LMDPOResult:
    """Save the trained adapter (or model), then write ``result.json`` last (files from the
    main process only); ``started`` is the training's ``perf_counter`` start."""
    accelerator.wait_for_everyone()
    trained = accelerator.unwrap_model(prepared)
    if lora and REF_ADAPTER in trained.peft_config:
        trained.delete_adapter(REF_ADAPTER)
    if accelerator.is_main_process:
        _save(trained, out_dir, lora)
    accelerator.wait_for_everyone()
    target, tag = _saved_tag(out_dir, lora)
    record = {
        "tag": tag,
        "weights_dir": target.name,
        "lora": lora,
        "steps": step,
        "epochs": cfg.epochs,
        "seconds": round(time.perf_counter() - started, 3),
        "pairs": n_pairs,
        "processes": accelerator.num_processes,
        "beta": cfg.beta,
        "sft_weight": cfg.sft_weight,
        "final": history[-1] if history else {},
    }
    write_result(out_dir, record, enabled=accelerator.is_main_process)
    accelerator.free_memory()
    trained.eval()
    log.info("U-DPO done: %d steps, saved %s (%s)", step, target, tag)
    return LMDPOResult(adapter_dir=target, tag=tag, steps=step, history=history, model=trained)


def _train_steps(
    accelerator: Any,
    model: Any,
    optimizer: Any,
    params: Sequence[torch.nn.Parameter],
    loader: DataLoader[TokenizedPair],
    sampler: EpochShuffle,
    cfg: LMDPOConfig,
    *,
    reference: Any,
    logits_to_keep: bool,
    out_dir: Path,
    total: int,
    description: str,
) -> tuple[int, list[dict[str, float]]]:
    """``cfg.epochs`` epochs of :func:`dpo_train_step` over ``loader``; every
    ``cfg.log_every`` optimiser steps and the last one are logged to ``out_dir`` (created
    here by the main process). Returns the optimiser steps taken and the logged records."""
    main = accelerator.is_main_process
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    pending = _Pending()
    step = 0
    logs = TrainingLog(out_dir, enabled=main, scalar_prefix=SCALAR_PREFIX, sort_keys=True)
    bar = progress_or_nothing(description, total, main)
    with logs, bar as advance:
        for epoch in range(cfg.epochs):
            sampler.set_epoch(epoch)
            for batch in loader:
                out, grad_norm = dpo_train_step(
                    accelerator,
                    model,
                    optimizer,
                    params,
                    batch,
                    beta=cfg.beta,
                    max_grad_norm=cfg.max_grad_norm,
                    sft_weight=cfg.sft_weight,
                    reference=reference,
                    logits_to_keep=logits_to_keep,
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
    return step, logs.history


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
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id(tokenizer)

    # 2. policy and reference
    accelerator = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    torch.manual_seed(seed)
    policy, reference = prepare_policy(model, cfg, adapter)
    policy.train()
    lora = is_peft(policy)
    keep = supports_logits_to_keep(policy)

    # 3. data and optimiser
    loader, sampler = pair_loader(tokens, batch_size=cfg.batch_size, seed=seed, pad_token_id=pad_id)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    prepared, optimizer, loader = accelerator.prepare(policy, optimizer, loader)
    if reference is not None:
        reference.to(accelerator.device)
    total = math.ceil(len(loader) / cfg.gradient_accumulation_steps) * cfg.epochs
    log.info(
        "U-DPO: %d pairs, %d epochs, %d optimiser steps, %s, %d processes",
        len(tokens),
        cfg.epochs,
        total,
        "LoRA" if lora else "full fine-tune",
        accelerator.num_processes,
    )

    # 4. train
    step, history = _train_steps(
        accelerator,
        prepared,
        optimizer,
        params,
        loader,
        sampler,
        cfg,
        reference=reference,
        logits_to_keep=keep,
        out_dir=out_dir,
        total=total,
        description=f"U-DPO ({len(tokens)} pairs)",
    )

    # 5. save: the adapter (or model), then result.json last
    return _save_and_record(
        accelerator,
        prepared,
        out_dir,
        cfg,
        lora=lora,
        step=step,
        history=history,
        n_pairs=len(tokens),
        started=started,
    )
