"""Diffusion-DPO of the built-in class-conditional UNet (``BuiltinDiffusionGenerator``).

With ``cfg.method == "lora"`` peft LoRA adapters (rank = alpha = ``cfg.lora_rank``) on the
UNet's convolutions and projections are trained against the adapter-disabled UNet and merged
afterwards; the class-embedding table stays frozen (it is shared with the reference). With
``full`` every weight, the table included, is trained against a frozen copy. Images are
conditioned on their label's class embedding, the dropped ones on the null class.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from utilgen.config.feedback import DiffusionDPOConfig
from utilgen.feedback.diffusion_dpo.adapter import Denoiser, Saved
from utilgen.feedback.diffusion_dpo.data import ImagePair
from utilgen.feedback.diffusion_dpo.loop import DiffusionDPOResult, train_diffusion_dpo

GENERATOR_DIR = "generator"


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """peft draws initial LoRA weights from torch's global generator: seed it for the
    block and restore it afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class BuiltinAdapter:
    """The built-in generator's side of Diffusion-DPO (module docstring); trains
    ``generator.model`` in place."""

    description = "Diffusion-DPO (built-in)"

    def __init__(self, generator: Any) -> None:
        self.generator = generator
        self.num_classes: int | None = len(generator.class_names)
        self._home = generator.device
        self._peft_unet: Any = None

    def check(self, cfg: DiffusionDPOConfig) -> None:
        """Both methods (``lora``, ``full``) train this model: nothing to refuse."""

    def prepare(
        self, pairs: Sequence[ImagePair], cfg: DiffusionDPOConfig, accelerator: Any, seed: int
    ) -> Denoiser:
        from diffusers import DDPMScheduler

        from utilgen.generate.builtin.pixels import to_model_space
        from utilgen.generate.builtin.training import unet_lora

        generator = self.generator
        model = generator.model
        # Model-space images and labels stay on the CPU; batches move to the device.
        fmt = generator.image_format
        chosen = to_model_space([np.asarray(p.chosen) for p in pairs], fmt)
        rejected = to_model_space([np.asarray(p.rejected) for p in pairs], fmt)
        labels = torch.tensor([p.label for p in pairs], dtype=torch.long)
        scheduler = DDPMScheduler.from_config(generator.scheduler.config)

        # The trained model and its reference.
        model.requires_grad_(False)
        frozen: nn.Module | None = None
        if cfg.method == "lora":
            # The LoRA layers go into model.unet's own modules, so calling model runs them;
            # the peft handle switches them off and merges them.
            with seeded_init(seed):
                self._peft_unet = unet_lora(model.unet, cfg.lora_rank)
            params = [p for p in model.parameters() if p.requires_grad]
        else:
            frozen = copy.deepcopy(model).eval().requires_grad_(False)
            model.requires_grad_(True)
            params = list(model.parameters())
        model.train()
        prepared = accelerator.prepare(model)
        device = accelerator.device
        if frozen is not None:
            frozen.to(device)
        peft_unet = self._peft_unet

        def reference(noisy: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
            if frozen is not None:
                return frozen(noisy, t, embeds)
            with peft_unet.disable_adapter():
                return model(noisy, t, embeds)

        def cond(idx: torch.Tensor) -> torch.Tensor:
            # The table is frozen under LoRA and trained under full: look up through the model.
            return model.embed(labels[idx].to(device))

        return Denoiser(
            forward=lambda x, t, c: prepared(x, t, c),
            reference=reference,
            params=params,
            module=prepared,
            scheduler=scheduler,
            clean=lambda idx: (chosen[idx].to(device), rejected[idx].to(device)),
            cond=cond,
            null=lambda n: model.embed(torch.full((n,), model.null_label, device=device)),
        )

    def save_trained(self, out_dir: Path) -> None:
        """Nothing yet: the whole generator is saved once the adapter is merged."""

    def release(self) -> None:
        """Merge the adapter: the UNet is a plain UNet2DModel again, on the generator's
        device, in eval mode."""
        from diffusers.models.unets.unet_2d import UNet2DModel

        model = self.generator.model
        if self._peft_unet is not None:
            merged = self._peft_unet.merge_and_unload()
            assert isinstance(merged, UNet2DModel)
            model.unet = merged
            self._peft_unet = None
        model.requires_grad_(True)
        model.to(self._home).eval()

    def finish(
        self,
        out_dir: Path,
        pairs: Sequence[ImagePair],
        cfg: DiffusionDPOConfig,
        seed: int,
        *,
        main: bool,
    ) -> Saved:
        """The new provenance name (the weights' fingerprint), the training recorded in
        ``generator.training``, and the whole generator saved to ``out_dir/generator``."""
        from utilgen.generate.builtin.generator import weights_fingerprint

        generator = self.generator
        generator.name = f"builtin-diffusion:{weights_fingerprint(generator.model)}"
        record = {
            "method": cfg.method,
            "steps": cfg.steps,
            "n_pairs": len(pairs),
            "beta_dpo": cfg.beta_dpo,
            "seed": seed,
        }
        generator.training = {
            **generator.training,
            "diffusion_dpo": [*generator.training.get("diffusion_dpo", []), record],
        }
        path = Path(out_dir) / GENERATOR_DIR
        if main:
            generator.save_pretrained(path)
        return Saved(
            path=path,
            generator_name=generator.name,
            result_fields={"kind": "builtin-diffusion", "generator_dir": GENERATOR_DIR},
        )


def train_builtin_diffusion_dpo(
    generator: Any,
    pairs: Sequence[ImagePair],
    cfg: DiffusionDPOConfig,
    *,
    out_dir: Path,
    seed: int,
) -> DiffusionDPOResult:
    """Diffusion-DPO of a ``BuiltinDiffusionGenerator``'s denoiser on ``pairs``, in place
    (:class:`BuiltinAdapter` in :func:`~.loop.train_diffusion_dpo`).

    Afterwards the generator's weights, and so its ``name`` (weights fingerprint), have
    changed; the whole generator is saved to ``out_dir/generator`` and ``result.json`` is
    written last.

    Raises:
        FeedbackError: no pairs, a pair of differently sized images, a label out of range,
            or mixed precision without CUDA; nothing is written then.
    """
    return train_diffusion_dpo(BuiltinAdapter(generator), pairs, cfg, out_dir=out_dir, seed=seed)
