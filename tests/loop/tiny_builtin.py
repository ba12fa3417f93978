"""An untrained ~40k-parameter built-in generator for loop tests: its images are noise,
which is all the round mechanics need, and it builds in milliseconds; and a run prepared
with it (:func:`prepared`)."""

from __future__ import annotations

from dataclasses import replace

import torch
from diffusers import DDIMScheduler

from utilgen.config import BuiltinDiffusionConfig, RunConfig
from utilgen.generate.builtin import BuiltinDiffusionGenerator, builtin_class_requests
from utilgen.generate.builtin.model import ClassConditionalUNet, ImageFormat, build_unet
from utilgen.generate.builtin.training import ddpm_scheduler
from utilgen.loop.run import Prepared, prepare

PER_CLASS = 3  # images per class a round of :func:`prepared` generates


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


def prepared(cfg: RunConfig) -> Prepared:
    """``cfg`` prepared with :func:`tiny_generator` and its class requests (``PER_CLASS``
    per class) in place of the configured generator, which would train."""
    base = prepare(cfg, with_generator=False)
    names = base.splits.train.class_names
    requests = builtin_class_requests(
        names, per_class=PER_CLASS, seed=cfg.seed, round_index=1, cfg=cfg.generator.builtin
    )
    return replace(
        base,
        generator=tiny_generator(names),
        requests=tuple(requests),
        base_generator=lambda: tiny_generator(names),
    )
