"""The Diffusion-DPO training loop, shared by every model family.

:func:`train_diffusion_dpo` trains what a :class:`~.adapter.DiffusionDPOAdapter` prepares
with the loss of :mod:`.loss`. Each optimiser step takes ``cfg.gradient_accumulation_steps``
batches of ``cfg.batch_size`` pairs; each pair gets one noise and one timestep, shared by
its two images. A share ``cond_dropout`` of the pair draws (0.2, the reference script's
``--proportion_empty_prompts``) is conditioned on the unconditional input (the null class,
the empty prompt) for both images and the reference: the samplers use classifier-free
guidance, which extrapolates from that branch. Gradients are clipped; AdamW at a constant
learning rate (weight decay 1e-2, the reference script's); forward passes autocast to
fp16/bf16 on CUDA only (fp16 with a gradient scaler). Every random draw (batch order, noise,
timesteps, dropped conditionings) comes from ``seed``.

It runs through ``accelerate`` (DDP under ``accelerate launch``): every process draws the
same global batch of ``N * batch_size`` pairs and trains on its own share, so the stream of
draws is the same whatever the number of processes. Logged metrics are means over the
step's batches and the processes. Process 0 alone writes files: ``log.jsonl`` and
``tensorboard/`` (:mod:`utilgen.feedback.training_log`), the trained weights (the adapter),
``result.json`` last.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utilgen.config.feedback import DiffusionDPOConfig
from utilgen.feedback.diffusion_dpo.adapter import Denoiser, DiffusionDPOAdapter
from utilgen.feedback.diffusion_dpo.data import ImagePair, check_pairs
from utilgen.feedback.diffusion_dpo.loss import diffusion_dpo_loss
from utilgen.feedback.errors import FeedbackError
from utilgen.feedback.training_log import TrainingLog, write_result
from utilgen.progress import progress_bar

log = logging.getLogger(__name__)

# The reference script's AdamW weight decay (adam_weight_decay = 1e-2).
WEIGHT_DECAY = 1e-2
# TensorBoard tags: diffusion_dpo/loss, diffusion_dpo/implicit_acc, ...
SCALAR_PREFIX = "diffusion_dpo"


@dataclass(frozen=True)
class DiffusionDPOResult:
    """What a Diffusion-DPO run did.

    Attributes:
        method: ``lora`` or ``full``.
        steps: optimiser steps taken.
        n_pairs: training pairs.
        generator_name: the generator's provenance name after training.
        path: the saved generator directory (built-in) or LoRA file (diffusers).
        history: the logged records (one per ``log_every`` steps and the last step).
        seconds: wall time of the training loop.
        lora_sha256: the saved LoRA file's SHA-256 (diffusers), else "".
    """

    method: str
    steps: int
    n_pairs: int
    generator_name: str
    path: Path
    history: tuple[dict[str, float], ...] = field(default_factory=tuple)
    seconds: float = 0.0
    lora_sha256: str = ""

    @property
    def final(self) -> dict[str, float]:
        """The last logged record ({} when nothing was logged)."""
        return dict(self.history[-1]) if self.history else {}


# 1. settings, precision and draws -----------------------------------------------------------


def _check_settings(cfg: DiffusionDPOConfig, device: torch.device) -> None:
    if cfg.mixed_precision != "no" and device.type != "cuda":
        raise FeedbackError(
            f"feedback.diffusion_dpo.mixed_precision={cfg.mixed_precision} needs a CUDA GPU, "
            f"but training runs on {device.type}; set mixed_precision=no"
        )


def _accelerator() -> Any:
    """An ``accelerate.Accelerator`` for device placement and DDP; mixed precision and
    accumulation are done here (autocast, no_sync) so that its process-wide state is never
    re-initialised with other settings by another trainer in the same process."""
    from accelerate import Accelerator

    return Accelerator()


def compute_dtype(
    cfg: DiffusionDPOConfig, weights_dtype: torch.dtype = torch.float32
) -> torch.dtype | None:
    """The autocast dtype of the forward passes: ``cfg.mixed_precision``, else the model's
    own half-precision dtype (a float16 pipeline trains its float32 LoRA under autocast, as
    ``generate.lora`` does), else None (plain float32)."""
    if cfg.mixed_precision == "fp16":
        return torch.float16
    if cfg.mixed_precision == "bf16":
        return torch.bfloat16
    return None if weights_dtype == torch.float32 else weights_dtype


def _autocast(
    dtype: torch.dtype | None, device: torch.device
) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _targets(
    scheduler: Any, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(clean, noise, timesteps)
    raise FeedbackError(
        f"Diffusion-DPO supports epsilon and v_prediction models, not prediction_type="
        f"{prediction_type!r}"
    )


def _mean_metrics(records: list[dict[str, float]], accelerator: Any) -> dict[str, float]:
    """Means over an optimiser step's batches and, under DDP, over the processes (a
    collective: every process calls it at the same steps)."""
    keys = list(records[0])
    means = torch.tensor([np.mean([r[k] for r in records]) for k in keys], dtype=torch.float32)
    if accelerator.num_processes > 1:
        means = accelerator.reduce(means.to(accelerator.device), reduction="mean").cpu()
    return dict(zip(keys, (float(v) for v in means), strict=True))


# 2. one batch -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _NoisedPairs:
    """A batch of pairs ready for the denoisers: both images of each pair noised with the
    pair's noise at the pair's timestep (rows ``[w_0 .. w_n-1, l_0 .. l_n-1]``); ``idx``
    are the pairs' indices."""

    idx: torch.Tensor
    noisy: torch.Tensor
    timesteps: torch.Tensor
    cond: torch.Tensor
    target_w: torch.Tensor
    target_l: torch.Tensor


def _noised_pairs(
    denoiser: Denoiser,
    global_idx: torch.Tensor,
    cfg: DiffusionDPOConfig,
    generator: torch.Generator,
    *,
    rank: int,
    device: torch.device,
) -> _NoisedPairs:
    """This process's share of the global batch ``global_idx``, noised (the draws, in this
    order: noise, timesteps, dropped conditionings)."""
    scheduler = denoiser.scheduler
    share = slice(rank * cfg.batch_size, (rank + 1) * cfg.batch_size)
    idx = global_idx[share]
    clean_w, clean_l = denoiser.clean(idx)
    n = len(idx)
    # One noise and one timestep per pair, shared by its two images.
    noise = torch.randn(clean_w.shape, generator=generator).to(device)
    t_max = int(scheduler.config.num_train_timesteps)
    timesteps = torch.randint(0, t_max, (n,), generator=generator).to(device)
    clean = torch.cat([clean_w, clean_l])
    noise2, t2 = noise.repeat(2, *[1] * (noise.dim() - 1)), timesteps.repeat(2)
    noisy = scheduler.add_noise(clean, noise2, t2)
    target_w, target_l = _targets(scheduler, clean, noise2, t2).chunk(2)
    cond = denoiser.cond(idx)
    if cfg.cond_dropout > 0:
        # Drawn for the global batch, like the pairs, so that the stream is the same
        # whatever the number of processes; no draw at 0.
        drop = torch.rand(len(global_idx), generator=generator)
        mask = (drop[share] < cfg.cond_dropout).to(device)
        mask = mask.view(-1, *[1] * (cond.dim() - 1))
        cond = torch.where(mask, denoiser.null(n), cond)
    cond = cond.repeat(2, *[1] * (cond.dim() - 1))
    return _NoisedPairs(idx, noisy, t2, cond, target_w, target_l)


# 3. the optimisation ------------------------------------------------------------------------


def _optimise(
    denoiser: Denoiser,
    weights: torch.Tensor,
    cfg: DiffusionDPOConfig,
    *,
    accelerator: Any,
    logger: TrainingLog,
    seed: int,
    description: str,
) -> None:
    """``cfg.steps`` AdamW steps, each over ``cfg.gradient_accumulation_steps`` batches of
    ``cfg.batch_size`` pairs (shared among the processes), forward passes autocast to
    :func:`compute_dtype`; every ``cfg.log_every`` steps and the last one go to ``logger``."""
    from utilgen.generate.builtin.training import batch_indices

    device = accelerator.device
    rank, world = accelerator.process_index, accelerator.num_processes
    dtype = compute_dtype(cfg, denoiser.weights_dtype)
    generator = torch.Generator().manual_seed(seed)
    # Every process draws the same global batch and keeps its share: one stream of
    # batches whatever the number of processes.
    batches = batch_indices(len(weights), cfg.batch_size * world, generator)
    optimiser = torch.optim.AdamW(denoiser.params, lr=cfg.learning_rate, weight_decay=WEIGHT_DECAY)
    # fp16 activations can underflow the LoRA gradients: scale the loss (bf16 needs none).
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16 and device.type == "cuda")
    accumulate = cfg.gradient_accumulation_steps
    with progress_bar(description, cfg.steps) as advance:
        for step in range(1, cfg.steps + 1):
            micro: list[dict[str, float]] = []
            for k in range(accumulate):
                batch = _noised_pairs(
                    denoiser, next(batches), cfg, generator, rank=rank, device=device
                )
                sync = k == accumulate - 1
                no_sync = contextlib.nullcontext() if sync else accelerator.no_sync(denoiser.module)
                with no_sync:
                    with _autocast(dtype, device):
                        inputs = (batch.noisy, batch.timesteps, batch.cond)
                        pred_w, pred_l = denoiser.forward(*inputs).chunk(2)
                        with torch.no_grad():
                            ref_w, ref_l = denoiser.reference(*inputs).chunk(2)
                    out = diffusion_dpo_loss(
                        pred_w,
                        pred_l,
                        ref_w,
                        ref_l,
                        batch.target_w,
                        batch.target_l,
                        beta_dpo=cfg.beta_dpo,
                        weights=weights[batch.idx].to(device),
                    )
                    accelerator.backward(scaler.scale(out.loss / accumulate))
                micro.append(out.metrics())
            scaler.unscale_(optimiser)
            grad_norm = torch.nn.utils.clip_grad_norm_(denoiser.params, cfg.max_grad_norm)
            scaler.step(optimiser)
            scaler.update()
            optimiser.zero_grad(set_to_none=True)
            if step % cfg.log_every == 0 or step == cfg.steps:
                metrics = _mean_metrics(micro, accelerator)
                metrics["grad_norm"] = float(grad_norm)
                metrics["lr"] = cfg.learning_rate
                logger.write({"step": float(step), **metrics})
                log.debug("diffusion-dpo step %d: %s", step, metrics)
            advance(1)


def _log_summary(
    description: str, steps: int, history: list[dict[str, float]], seconds: float
) -> None:
    if history:
        last = history[-1]
        log.info(
            "%s: %d steps, loss %.4f, implicit accuracy %.2f, margin %.4f, %.1f s",
            description,
            steps,
            last["loss"],
            last["implicit_acc"],
            last["rewards/margins"],
            seconds,
        )


# 4. the whole training ----------------------------------------------------------------------


def train_diffusion_dpo(
    adapter: DiffusionDPOAdapter,
    pairs: Sequence[ImagePair],
    cfg: DiffusionDPOConfig,
    *,
    out_dir: Path,
    seed: int,
) -> DiffusionDPOResult:
    """Diffusion-DPO of the model ``adapter`` stands for on ``pairs`` (module docstring).

    Writes ``log.jsonl``, ``tensorboard/``, the adapter's saved weights and ``result.json``
    last into ``out_dir`` (created here); the generator is changed in place.

    Raises:
        FeedbackError: no pairs, a pair of differently sized images, a label out of range,
            settings the adapter refuses, or mixed precision without CUDA; nothing is
            written then.
    """
    # 1. check inputs (before anything is written)
    check_pairs(pairs, adapter.num_classes)
    adapter.check(cfg)
    accelerator = _accelerator()
    _check_settings(cfg, accelerator.device)
    main = accelerator.is_main_process
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # 2. the trained model, its reference and the data
    denoiser = adapter.prepare(pairs, cfg, accelerator, seed)
    weights = torch.tensor([p.weight for p in pairs], dtype=torch.float32)

    # 3. train and save what was trained; the model goes back to its generator whatever
    # happened
    started = time.perf_counter()
    try:
        with TrainingLog(out_dir, enabled=main, scalar_prefix=SCALAR_PREFIX) as logger:
            _optimise(
                denoiser,
                weights,
                cfg,
                accelerator=accelerator,
                logger=logger,
                seed=seed,
                description=adapter.description,
            )
        seconds = time.perf_counter() - started
        _log_summary(adapter.description, cfg.steps, logger.history, seconds)
        if main:
            adapter.save_trained(out_dir)
        accelerator.wait_for_everyone()
    finally:
        adapter.release()
        accelerator.free_memory()

    # 4. the generator after training, then result.json last
    saved = adapter.finish(out_dir, pairs, cfg, seed, main=main)
    result = DiffusionDPOResult(
        method=cfg.method,
        steps=cfg.steps,
        n_pairs=len(pairs),
        generator_name=saved.generator_name,
        path=saved.path,
        history=tuple(logger.history),
        seconds=seconds,
        lora_sha256=saved.lora_sha256,
    )
    record = {
        "method": result.method,
        "steps": result.steps,
        "n_pairs": result.n_pairs,
        "generator": result.generator_name,
        "seconds": round(result.seconds, 3),
        "final": result.final,
        **saved.result_fields,
    }
    write_result(out_dir, record, enabled=main)
    accelerator.wait_for_everyone()
    return result
