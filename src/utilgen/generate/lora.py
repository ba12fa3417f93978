"""LoRA adaptation of a Stable Diffusion U-Net to the task's real images (GenDataAgent §2.1).

GenDataAgent adapts SD v1.5 to the target data with LoRA "with the same hyperparameters as
Real-Fake", whose recipe is diffusers' ``train_text_to_image_lora``: LoRA (rank 4, alpha =
rank, Gaussian init) on the attention projections ``to_q/to_k/to_v/to_out.0``; each step
encodes real images with the VAE, adds noise at uniform random timesteps, and regresses the
scheduler's target (the noise ε, or the velocity v for v-prediction models) with an MSE
weighted by Min-SNR-γ (Hang et al. 2023, γ = 5); AdamW at a constant 1e-4, batch 8,
100 epochs, gradient norm clipped to 1, random horizontal flips. The prompts are the class
prompts of :mod:`utilgen.generate.prompts`, with each image's own caption when known.

The adapter is saved in diffusers' LoRA format (``save_lora_weights`` →
``pytorch_lora_weights.safetensors``) and loaded at generation with ``load_lora_weights``;
the file's SHA-256 goes into every sample's provenance.

Departure: only SD 1.x/2.x U-Nets (one text encoder) are trained here; an SDXL adapter
trained elsewhere still loads through ``generator.diffusers.lora.path``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from utilgen.config.diffusion import DiffusersConfig, DiffusersLoraConfig
from utilgen.data.labelled import LabelledData
from utilgen.generate.prompts import CaptionTable, class_prompt, class_texts
from utilgen.generate.request import GenerationError
from utilgen.progress import progress_bar

logger = logging.getLogger(__name__)

TRAIN_ADAPTER = "utilgen-train"


# 1. the loss ------------------------------------------------------------------------------


def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) of each timestep (float32, shape of
    ``timesteps``)."""
    a = alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)[timesteps]
    return a / (1.0 - a)


def min_snr_weights(snr_t: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023) for an MSE on the model's own target.

    The paper weights the x0-loss by min(SNR, γ); rewritten for an ε target that is
    min(SNR, γ) / SNR, and for a v target min(SNR, γ) / (SNR + 1).
    """
    clipped = torch.minimum(snr_t, torch.full_like(snr_t, gamma))
    if prediction_type == "epsilon":
        return clipped / snr_t
    if prediction_type == "v_prediction":
        return clipped / (snr_t + 1.0)
    if prediction_type == "sample":
        return clipped
    raise GenerationError(f"unknown scheduler prediction_type {prediction_type!r}")


def diffusion_loss(
    unet: Any,
    noise_scheduler: Any,
    latents: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    *,
    generator: torch.Generator,
    snr_gamma: float | None,
) -> torch.Tensor:
    """The denoising loss of one batch: noise ``latents`` at uniform random timesteps and
    regress the scheduler's target (ε, v or x0); a scalar, Min-SNR weighted when
    ``snr_gamma`` is set."""
    n = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    noise = noise.to(device=latents.device, dtype=latents.dtype)
    timesteps = torch.randint(
        0, int(noise_scheduler.config.num_train_timesteps), (n,), generator=generator
    ).to(latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = latents
    pred = unet(noisy, timesteps, encoder_hidden_states, return_dict=False)[0]
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma is None:
        return per_sample.mean()
    weights = min_snr_weights(
        snr(noise_scheduler.alphas_cumprod, timesteps), snr_gamma, prediction_type
    )
    return (per_sample * weights).mean()


# 2. data ----------------------------------------------------------------------------------


def image_tensor(images: Sequence[Any], size: int) -> torch.Tensor:
    """uint8 (H, W, C) images -> float32 (N, 3, size, size) in [-1, 1]: RGB, resized on the
    short side and centre-cropped (bicubic), as the diffusers training scripts do."""
    out = []
    for image in images:
        pil = Image.fromarray(np.asarray(image).squeeze()).convert("RGB")
        scale = size / min(pil.size)
        w, h = max(size, round(pil.width * scale)), max(size, round(pil.height * scale))
        pil = pil.resize((w, h), Image.Resampling.BICUBIC)
        left, top = (w - size) // 2, (h - size) // 2
        pil = pil.crop((left, top, left + size, top + size))
        out.append(torch.from_numpy(np.asarray(pil, dtype=np.float32)).permute(2, 0, 1))
    return torch.stack(out) / 127.5 - 1.0


def random_flip(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image flipped left-right with probability 1/2."""
    flip = torch.rand(batch.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], batch.flip(-1), batch)


def training_prompts(
    data: LabelledData, cfg: DiffusersConfig, captions: CaptionTable | None = None
) -> list[str]:
    """The class prompt of every real image, with that image's own caption when
    ``captions`` ties one to its id (GenDataAgent conditions training and generation alike)."""
    texts = class_texts(data.class_names, cfg)
    prompts = []
    for sample_id, label in zip(data.ids, data.labels, strict=True):
        caption = captions.for_sample(sample_id) if captions is not None else ""
        prompts.append(class_prompt(texts[data.class_names[int(label)]], caption, cfg))
    return prompts


def batch_order(n: int, batch_size: int, steps: int, generator: torch.Generator) -> list[list[int]]:
    """``steps`` batches of indices into ``n`` items: shuffled epochs, the last batch of an
    epoch possibly short (no item seen twice per epoch)."""
    batches: list[list[int]] = []
    while len(batches) < steps:
        perm = torch.randperm(n, generator=generator).tolist()
        batches += [perm[i : i + batch_size] for i in range(0, n, batch_size)]
    return batches[:steps]


def planned_steps(n_images: int, settings: DiffusersLoraConfig) -> int:
    """Training steps: ``max_steps`` if set, else ``epochs`` × batches per epoch."""
    per_epoch = math.ceil(n_images / settings.batch_size)
    return settings.max_steps or settings.epochs * per_epoch


def require_sd(pipeline: Any) -> None:
    """Raise a one-line :class:`GenerationError` unless ``pipeline`` is a Stable Diffusion
    1.x/2.x pipeline (one text encoder), the only kind adapters are trained for here."""
    if getattr(pipeline, "text_encoder_2", None) is not None:
        raise GenerationError(
            f"training adapters supports Stable Diffusion 1.x/2.x (one text encoder), not "
            f"{type(pipeline).__name__}; train elsewhere and set generator.diffusers.lora.path"
        )


# 3. training, saving ----------------------------------------------------------------------


@dataclass(frozen=True)
class LoraTraining:
    """What :func:`train_lora` did.

    Attributes:
        steps: optimiser steps taken.
        losses: the (weighted) training loss of each step.
        path: the saved adapter file, when one was saved.
        sha256: that file's SHA-256 (64 hex), or "".
    """

    steps: int
    losses: tuple[float, ...]
    path: Path | None = None
    sha256: str = ""


def add_lora(
    unet: Any, settings: DiffusersLoraConfig, *, seed: int, adapter_name: str = TRAIN_ADAPTER
) -> list[torch.nn.Parameter]:
    """Add a trainable LoRA adapter to ``unet`` (everything else frozen); returns its
    parameters, upcast to float32 so that fp16 U-Nets still train stably. The Gaussian
    initialisation of the A matrices is drawn under ``seed``."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha if settings.alpha is not None else settings.rank,
        init_lora_weights="gaussian",
        target_modules=list(settings.target_modules),
    )
    # peft draws the initial weights from torch's global generator: seed it, then restore it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(config, adapter_name=adapter_name)
    params = [p for n, p in unet.named_parameters() if "lora_" in n and adapter_name in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return params


def train_lora(
    pipeline: Any,
    data: LabelledData,
    settings: DiffusersLoraConfig,
    *,
    prompts: Sequence[str],
    seed: int,
    image_size: int,
    progress: bool = True,
    adapter_name: str = TRAIN_ADAPTER,
) -> LoraTraining:
    """Add a LoRA adapter ``adapter_name`` to ``pipeline.unet`` and train it on ``data``'s
    images with ``prompts`` (one per image); the adapter stays in the U-Net.

    Randomness (batch order, flips, noise, timesteps, VAE sampling) comes from one CPU
    generator seeded with ``seed``: the same inputs give the same adapter on CPU.
    """
    # 1. check inputs
    require_sd(pipeline)
    if data.modality != "image" or len(data) == 0:
        raise GenerationError("LoRA adaptation needs at least one real image")
    if len(prompts) != len(data):
        raise GenerationError(f"{len(prompts)} prompts for {len(data)} images")
    from diffusers import DDPMScheduler

    unet, vae = pipeline.unet, pipeline.vae
    device, dtype = unet.device, unet.dtype
    generator = torch.Generator("cpu").manual_seed(seed)
    # 2. frozen parts: VAE and text encoder; prompts are encoded once
    vae.requires_grad_(False)
    pipeline.text_encoder.requires_grad_(False)
    with torch.no_grad():
        embeds, _ = pipeline.encode_prompt(list(prompts), device, 1, False)
    pixels = image_tensor(data.items, image_size)
    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    # 3. the adapter and its optimiser
    params = add_lora(unet, settings, seed=seed, adapter_name=adapter_name)
    optimizer = torch.optim.AdamW(
        params, lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    steps = planned_steps(len(data), settings)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    # 4. the training loop
    losses = []
    unet.train()
    with progress_bar("LoRA adaptation", steps if progress else 0) as advance:
        for indices in batch_order(len(data), settings.batch_size, steps, generator):
            batch = pixels[indices]
            if settings.random_flip:
                batch = random_flip(batch, generator)
            with torch.no_grad():
                posterior = vae.encode(batch.to(device=device, dtype=dtype)).latent_dist
                latents = posterior.sample(generator=generator)
                latents = latents * vae.config.scaling_factor
            with autocast:
                loss = diffusion_loss(
                    unet,
                    noise_scheduler,
                    latents,
                    embeds[indices],
                    generator=generator,
                    snr_gamma=settings.snr_gamma,
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            optimizer.step()
            losses.append(float(loss.detach()))
            advance(1)
    unet.eval()
    unet.requires_grad_(False)
    logger.info("LoRA adaptation: %d steps, loss %.4f -> %.4f", steps, losses[0], losses[-1])
    return LoraTraining(steps=steps, losses=tuple(losses))


def save_lora(pipeline: Any, directory: str | Path, adapter_name: str = TRAIN_ADAPTER) -> Path:
    """Save adapter ``adapter_name`` of ``pipeline.unet`` in diffusers' LoRA format; returns
    the ``pytorch_lora_weights.safetensors`` file."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(pipeline.unet, adapter_name=adapter_name)
    layers = convert_state_dict_to_diffusers(
        {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    )
    directory = Path(directory)
    type(pipeline).save_lora_weights(directory, unet_lora_layers=layers, safe_serialization=True)
    return directory / "pytorch_lora_weights.safetensors"


def adapt_to_task(
    generator: Any,
    data: LabelledData,
    cfg: DiffusersConfig,
    *,
    out_dir: str | Path,
    seed: int,
    captions: CaptionTable | None = None,
    progress: bool = True,
) -> LoraTraining:
    """Train a LoRA adapter for ``generator`` (a ``DiffusersGenerator``) on the task's real
    images, save it under ``out_dir`` and load the saved file into the generator, so that
    generation uses exactly the file whose hash the samples record."""
    pipeline = generator.pipeline
    generator.unload_lora()
    trained = train_lora(
        pipeline,
        data,
        cfg.lora,
        prompts=training_prompts(data, cfg, captions),
        seed=seed,
        image_size=generator.image_size,
        progress=progress,
    )
    path = save_lora(pipeline, out_dir)
    pipeline.unet.delete_adapters(TRAIN_ADAPTER)
    sha = generator.load_lora(path, scale=cfg.lora.scale)
    return LoraTraining(steps=trained.steps, losses=trained.losses, path=path, sha256=sha)
