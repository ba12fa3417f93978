"""Diffusion-DPO of a diffusers Stable Diffusion 1.x/2.x pipeline (``DiffusersGenerator``).

A peft LoRA adapter (rank = alpha = ``cfg.lora_rank``, Gaussian init, on the attention
projections ``to_q/to_k/to_v/to_out.0``, as the reference script) is trained on the U-Net;
the reference is the U-Net with the adapter switched off. Images are VAE-encoded once
(posterior mean, times the VAE's scaling factor) and each pair is conditioned on its
prompt's text-encoder embedding, the dropped ones on the empty prompt's. The adapter is
saved in diffusers' LoRA format to ``out_dir/lora/pytorch_lora_weights.safetensors`` and
loaded into the generator, whose ``name`` then carries the file's hash.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utilgen.config.feedback import DiffusionDPOConfig
from utilgen.feedback.diffusion_dpo.adapter import Denoiser, Saved
from utilgen.feedback.diffusion_dpo.data import ImagePair
from utilgen.feedback.diffusion_dpo.loop import DiffusionDPOResult, train_diffusion_dpo
from utilgen.feedback.errors import FeedbackError

DPO_ADAPTER = "utilgen-dpo"
LORA_DIR = "lora"
LORA_FILE = "pytorch_lora_weights.safetensors"


def encode_pairs(
    pipeline: Any, pairs: Sequence[ImagePair], *, size: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The frozen inputs, computed once on the pipeline's device and kept on the CPU
    (float32): the chosen and rejected latents, each pair's prompt index, the embeddings of
    the (sorted, distinct) prompts and the empty prompt's embedding."""
    from utilgen.generate.lora import image_tensor

    vae = pipeline.vae
    with torch.no_grad():
        latents = []
        for images in (
            [np.asarray(p.chosen.convert("RGB")) for p in pairs],
            [np.asarray(p.rejected.convert("RGB")) for p in pairs],
        ):
            pixels = image_tensor(images, size).to(device=vae.device, dtype=vae.dtype)
            encoded = [
                vae.encode(pixels[i : i + batch_size]).latent_dist.mean
                for i in range(0, len(pixels), batch_size)
            ]
            latents.append((torch.cat(encoded) * vae.config.scaling_factor).float().cpu())
        prompts = sorted({p.prompt for p in pairs})
        embeds, _ = pipeline.encode_prompt(prompts, vae.device, 1, False)
        # The empty prompt's embedding: the unconditional input of classifier-free guidance.
        empty, _ = pipeline.encode_prompt([""], vae.device, 1, False)
    prompt_index = torch.tensor([prompts.index(p.prompt) for p in pairs])
    return latents[0], latents[1], prompt_index, embeds.float().cpu(), empty.float().cpu()


class StableDiffusionAdapter:
    """A ``DiffusersGenerator``'s side of Diffusion-DPO (module docstring); trains a LoRA on
    ``generator.pipeline.unet`` and loads the saved file into the generator."""

    description = "Diffusion-DPO (diffusers)"
    num_classes: int | None = None

    def __init__(self, generator: Any) -> None:
        self.generator = generator
        self.pipeline = generator.pipeline
        unet = self.pipeline.unet
        self._home, self._dtype = unet.device, unet.dtype

    def check(self, cfg: DiffusionDPOConfig) -> None:
        from utilgen.generate.lora import require_sd

        if cfg.method != "lora":
            raise FeedbackError(
                "Diffusion-DPO of a diffusers pipeline trains a LoRA adapter; set "
                "feedback.diffusion_dpo.method=lora (full fine-tuning is for the built-in "
                "generator)"
            )
        if self.generator.lora_sha256 is not None:
            raise FeedbackError(
                "the diffusers generator already has a LoRA adapter loaded, and Diffusion-DPO "
                "trains its own against the plain U-Net; unset generator.diffusers.lora.path/"
                "train or fold that adapter into the model first"
            )
        require_sd(self.pipeline)

    def prepare(
        self, pairs: Sequence[ImagePair], cfg: DiffusionDPOConfig, accelerator: Any, seed: int
    ) -> Denoiser:
        from diffusers import DDPMScheduler

        from utilgen.config.diffusion import DiffusersLoraConfig
        from utilgen.generate.lora import add_lora

        pipeline = self.pipeline
        unet = pipeline.unet
        dtype = self._dtype
        pipeline.vae.requires_grad_(False)
        pipeline.text_encoder.requires_grad_(False)
        chosen, rejected, prompt_index, embeds, empty = encode_pairs(
            pipeline, pairs, size=self.generator.image_size, batch_size=cfg.batch_size
        )
        scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)

        # The adapter (the reference is the U-Net with it switched off).
        settings = DiffusersLoraConfig(rank=cfg.lora_rank, alpha=cfg.lora_rank)
        params = add_lora(unet, settings, seed=seed, adapter_name=DPO_ADAPTER)
        unet.train()
        prepared = accelerator.prepare(unet)
        device = accelerator.device

        def forward(noisy: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
            return prepared(noisy.to(dtype), t, states.to(dtype), return_dict=False)[0]

        def reference(noisy: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
            unet.disable_adapters()
            try:
                return unet(noisy.to(dtype), t, states.to(dtype), return_dict=False)[0]
            finally:
                unet.enable_adapters()

        return Denoiser(
            forward=forward,
            reference=reference,
            params=params,
            module=prepared,
            scheduler=scheduler,
            clean=lambda idx: (chosen[idx].to(device), rejected[idx].to(device)),
            cond=lambda idx: embeds[prompt_index[idx]].to(device),
            null=lambda n: empty.expand(n, *empty.shape[1:]).to(device),
            weights_dtype=dtype,
        )

    def save_trained(self, out_dir: Path) -> None:
        """The adapter, in diffusers' LoRA format, to ``out_dir/lora``."""
        from utilgen.generate.lora import save_lora

        save_lora(self.pipeline, Path(out_dir) / LORA_DIR, adapter_name=DPO_ADAPTER)

    def release(self) -> None:
        """Remove the trained adapter: the U-Net is plain and frozen again, where it was."""
        unet = self.pipeline.unet
        unet.eval()
        unet.to(self._home)
        unet.delete_adapters(DPO_ADAPTER)
        unet.requires_grad_(False)

    def finish(
        self,
        out_dir: Path,
        pairs: Sequence[ImagePair],
        cfg: DiffusionDPOConfig,
        seed: int,
        *,
        main: bool,
    ) -> Saved:
        """Load the saved file into the generator, so that generation uses exactly the file
        whose hash the samples record."""
        sha = self.generator.load_lora(Path(out_dir) / LORA_DIR)
        return Saved(
            path=Path(out_dir) / LORA_DIR / LORA_FILE,
            generator_name=self.generator.name,
            result_fields={
                "kind": "diffusers",
                "lora_file": f"{LORA_DIR}/{LORA_FILE}",
                "lora_sha256": sha,
            },
            lora_sha256=sha,
        )


def train_diffusers_dpo(
    generator: Any,
    pairs: Sequence[ImagePair],
    cfg: DiffusionDPOConfig,
    *,
    out_dir: Path,
    seed: int,
) -> DiffusionDPOResult:
    """Diffusion-DPO of a ``DiffusersGenerator``'s U-Net (Stable Diffusion 1.x/2.x) on
    ``pairs`` as a LoRA adapter (:class:`StableDiffusionAdapter` in
    :func:`~.loop.train_diffusion_dpo`); ``result.json`` (with ``lora_file``) comes last.

    Raises:
        FeedbackError: no pairs, differently sized images in a pair, a negative label,
            ``method=full`` (a full SD U-Net is not saved as a loadable adapter), a LoRA
            already loaded in the generator, or mixed precision without CUDA; nothing is
            written then.
    """
    return train_diffusion_dpo(
        StableDiffusionAdapter(generator), pairs, cfg, out_dir=out_dir, seed=seed
    )
