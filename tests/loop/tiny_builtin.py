"""An untrained ~40k-parameter built-in generator for loop tests: its images are noise,
which is all the round mechanics need, and it builds in milliseconds."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from utilgen.config import BuiltinDiffusionConfig
from utilgen.generate.builtin import BuiltinDiffusionGenerator
from utilgen.generate.builtin.model import ClassConditionalUNet, ImageFormat, build_unet
from utilgen.generate.builtin.training import ddpm_scheduler


def tiny_generator(class_names: tuple[str, ...]) -> BuiltinDiffusionGenerator:
    """8x8 grey digits, 3 DDIM steps, guidance 1.5, seeded weights."""
    cfg = BuiltinDiffusionConfig(block_out_channels=[8, 16], norm_num_groups=4, steps=3)
    torch.manual_seed(0)
    model = ClassConditionalUNet(build_unet(cfg, 1, 8), len(class_names))
    scheduler = DDIMScheduler.from_config(ddpm_scheduler(cfg).config)
    return BuiltinDiffusionGenerator(
        model, scheduler, class_names=class_names,
        image_format=ImageFormat(height=8, width=8, channels=1, size=8),
        guidance_scale=1.5, steps=3, batch_size=8,
    )
