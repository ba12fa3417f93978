"""DDPM training of the class-conditional denoiser, and its adaptation to the task's k shots.

Training is the DDPM objective (Ho et al. 2020): noise an image to a random timestep with
the scheduler's ``add_noise`` and regress the noise, MSE. A share ``label_dropout`` of the
labels is replaced by the null class so that the one network also learns the unconditional
noise that classifier-free guidance needs (Ho & Salimans 2022).

Adaptation to the task's few real samples runs the same objective on them. With ``lora``
(the default), peft LoRA adapters on the UNet's convolutions and projections are trained
together with the class-embedding table (the analogue of GenDataAgent's LoRA plus UtilGen's
textual-inversion class tokens), then merged into the weights: the broad prior is only
nudged by a low-rank update, which keeps ten samples per class from being memorised, and
the merged UNet is again a plain ``UNet2DModel`` that round-trips through
``save_pretrained``. ``full`` fine-tunes every weight instead.

Every random draw (batches, noise, timesteps, label dropout) comes from one seeded
``torch.Generator`` on the CPU, so a seed fixes the trained weights on a CPU.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.unets.unet_2d import UNet2DModel
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from diffusers.training_utils import EMAModel
from torch import nn

from utilgen.config import BuiltinDiffusionConfig
from utilgen.generate.builtin.model import ClassConditionalUNet
from utilgen.progress import progress_or_nothing

log = logging.getLogger(__name__)

# The UNet2DModel submodules LoRA adapts: ResNet convolutions and time projections, and
# the attention projections where the UNet has attention.
LORA_TARGETS = ("conv1", "conv2", "time_emb_proj", "to_q", "to_k", "to_v", "to_out.0")


@dataclass(frozen=True)
class TrainStats:
    """What one training phase did.

    Attributes:
        phase: ``pretrain`` or ``adapt``.
        n_images: training images.
        steps: optimiser steps.
        final_loss: mean noise-prediction MSE over the last (up to) 50 steps.
        seconds: wall time.
    """

    phase: str
    n_images: int
    steps: int
    final_loss: float
    seconds: float

    def as_dict(self) -> dict[str, object]:
        return {
            "phase": self.phase,
            "n_images": self.n_images,
            "steps": self.steps,
            "final_loss": self.final_loss,
            "seconds": round(self.seconds, 3),
        }


def ddpm_scheduler(cfg: BuiltinDiffusionConfig) -> DDPMScheduler:
    """The training noise schedule: epsilon prediction, samples clipped to [-1, 1]."""
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type="epsilon",
        clip_sample=True,
    )


def batch_indices(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless batches of indices into ``n`` samples: successive random permutations, so
    every sample is seen once per epoch; batches larger than ``n`` wrap into the next one."""
    queue = torch.empty(0, dtype=torch.long)
    while True:
        while len(queue) < batch_size:
            queue = torch.cat([queue, torch.randperm(n, generator=generator)])
        yield queue[:batch_size]
        queue = queue[batch_size:]


def lr_factor(step: int, warmup: int, total: int, cosine: bool) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then cosine decay to 0 (or
    constant)."""
    if step < warmup:
        return (step + 1) / warmup
    if not cosine:
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def train_denoiser(
    model: ClassConditionalUNet,
    scheduler: DDPMScheduler,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    phase: str,
    params: Iterable[nn.Parameter],
    steps: int,
    batch_size: int,
    learning_rate: float,
    warmup_steps: int,
    cosine: bool,
    label_dropout: float,
    ema_decay: float,
    generator: torch.Generator,
    progress: bool = True,
) -> TrainStats:
    """Minimise the DDPM noise-prediction loss over ``params`` for ``steps`` steps.

    Args:
        images: float32 (n, C, H, W) in [-1, 1], on the CPU (batches move to the model).
        labels: long (n,) class indices.
        params: the parameters to train (all of the model's, or LoRA's and the table's).
        ema_decay: when > 0, the model ends with the exponential moving average of
            ``params`` instead of their last values.

    Returns:
        The phase's statistics; ``model`` is trained in place and left in eval mode.
    """
    device = next(model.parameters()).device
    trainable = [p for p in params if p.requires_grad]
    # fused: one kernel for all parameters instead of a Python loop over ~100 small tensors.
    optimiser = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: lr_factor(s, warmup_steps, steps, cosine)
    )
    ema = EMAModel(trainable, decay=ema_decay) if ema_decay > 0 else None
    batches = batch_indices(len(images), batch_size, generator)
    t_max = int(scheduler.config["num_train_timesteps"])
    losses: list[float] = []
    started = time.perf_counter()
    model.train()
    with progress_or_nothing(f"built-in diffusion: {phase}", steps, progress) as advance:
        for _ in range(steps):
            idx = next(batches)
            clean = images[idx]
            noise = torch.randn(clean.shape, generator=generator)
            timesteps = torch.randint(0, t_max, (len(idx),), generator=generator)
            drop = torch.rand(len(idx), generator=generator) < label_dropout
            cond = torch.where(drop, torch.full_like(labels[idx], model.null_label), labels[idx])
            noisy = scheduler.add_noise(clean, noise, timesteps)  # type: ignore[arg-type]
            predicted = model(noisy.to(device), timesteps.to(device), model.embed(cond.to(device)))
            loss = nn.functional.mse_loss(predicted, noise.to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            if ema is not None:
                ema.step(trainable)
            losses.append(float(loss.detach()))
            advance(1)
    if ema is not None:
        ema.copy_to(trainable)
    model.eval()
    tail = losses[-50:]
    stats = TrainStats(
        phase=phase,
        n_images=len(images),
        steps=steps,
        final_loss=sum(tail) / len(tail) if tail else float("nan"),
        seconds=time.perf_counter() - started,
    )
    log.info(
        "built-in diffusion %s: %d images, %d steps, loss %.4f, %.1f s",
        phase,
        stats.n_images,
        steps,
        stats.final_loss,
        stats.seconds,
    )
    return stats


def pretrain(
    model: ClassConditionalUNet,
    scheduler: DDPMScheduler,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: BuiltinDiffusionConfig,
    generator: torch.Generator,
    *,
    progress: bool = True,
) -> TrainStats:
    """DDPM training of every weight (warm-up, cosine decay, EMA)."""
    return train_denoiser(
        model,
        scheduler,
        images,
        labels,
        phase="pretrain",
        params=model.parameters(),
        steps=cfg.train_steps,
        batch_size=cfg.train_batch_size,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        cosine=True,
        label_dropout=cfg.label_dropout,
        ema_decay=cfg.ema_decay,
        generator=generator,
        progress=progress,
    )


def unet_lora(unet: UNet2DModel, rank: int) -> Any:
    """``unet`` with peft LoRA layers (rank ``rank``, alpha = rank) injected into its own
    modules among :data:`LORA_TARGETS`; returns the peft handle, which freezes the UNet's
    own weights and can switch the adapter off or merge it."""
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in unet.named_modules()}
    targets = [t for t in LORA_TARGETS if t.rsplit(".", 1)[-1] in present]
    return get_peft_model(unet, LoraConfig(r=rank, lora_alpha=rank, target_modules=targets))


def adapt(
    model: ClassConditionalUNet,
    scheduler: DDPMScheduler,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: BuiltinDiffusionConfig,
    generator: torch.Generator,
    *,
    progress: bool = True,
) -> TrainStats:
    """Adapt a pretrained model to the task's samples by ``cfg.adapt_method`` (lora or full).

    With lora the adapters are merged into the UNet afterwards, so ``model.unet`` stays a
    plain ``UNet2DModel``. The adapters' initial weights come from the global torch RNG,
    which the caller seeds.
    """
    if cfg.adapt_method == "none" or cfg.adapt_steps == 0:
        raise ValueError("adapt() called with adaptation switched off")
    run = functools.partial(
        train_denoiser,
        model,
        scheduler,
        images,
        labels,
        phase="adapt",
        steps=cfg.adapt_steps,
        batch_size=min(cfg.train_batch_size, len(images)),
        learning_rate=cfg.adapt_learning_rate,
        warmup_steps=min(cfg.warmup_steps, cfg.adapt_steps // 4),
        cosine=False,
        label_dropout=cfg.label_dropout,
        ema_decay=0.0,
        generator=generator,
        progress=progress,
    )
    if cfg.adapt_method == "full":
        return run(params=model.parameters())

    peft_unet = unet_lora(model.unet, cfg.lora_rank)  # freezes the UNet's own weights
    params: list[nn.Parameter] = [p for p in peft_unet.parameters() if p.requires_grad]
    params += model.class_embeddings.parameters()
    stats = run(params=params)
    merged = peft_unet.merge_and_unload()
    assert isinstance(merged, UNet2DModel)
    model.unet = merged
    model.unet.requires_grad_(True)
    return stats
