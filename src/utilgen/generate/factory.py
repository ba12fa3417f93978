"""Building the configured generator and the requests of the ``static`` strategy.

Both look ``generator.kind`` up in :data:`utilgen.registry.GENERATOR_KINDS`
(:mod:`utilgen.generate.kinds`); the kind imports its backend when it is used, so that a
text run never imports diffusers and an image run never loads an LM.
"""

from __future__ import annotations

import torch

from utilgen.config import GeneratorConfig
from utilgen.data import Splits
from utilgen.generate.base import Generator
from utilgen.generate.kinds import GeneratorKind, generator_kind
from utilgen.generate.request import GenerationError, GenerationRequest


def _kind(cfg: GeneratorConfig) -> GeneratorKind:
    if cfg.kind == "none":
        raise GenerationError("generator.kind='none' does not generate; pick a generator")
    return generator_kind(cfg.kind)


def build_generator(
    cfg: GeneratorConfig,
    *,
    splits: Splits,
    device: torch.device,
    seed: int,
    progress: bool = True,
) -> Generator:
    """The generator of ``cfg.kind``, ready to generate for the classes of ``splits``.

    The built-in diffusion model is trained here (or loaded from its cache) on
    ``splits.unused_train`` and adapted to ``splits.train``; nothing else trains.
    """
    return _kind(cfg).build(cfg, splits=splits, device=device, seed=seed, progress=progress)


def static_requests(
    cfg: GeneratorConfig, *, splits: Splits, seed: int, round_index: int
) -> list[GenerationRequest]:
    """``cfg.per_class`` requests' worth of outputs per class: the ``static`` strategy
    (class prompts for images, U-DPO's k-shot prompts for texts)."""
    return _kind(cfg).static_requests(cfg, splits=splits, seed=seed, round_index=round_index)
