"""Building the configured generator and the requests of the ``static`` strategy.

Backends are imported here, lazily, so that a text run never imports diffusers and an image
run never loads an LM.
"""

from __future__ import annotations

import torch

from utilgen.config import GeneratorConfig
from utilgen.data import Splits
from utilgen.generate.base import Generator
from utilgen.generate.request import GenerationError, GenerationRequest


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
    if cfg.kind == "builtin-diffusion":
        from utilgen.generate.builtin import prepare_builtin_generator

        return prepare_builtin_generator(
            cfg.builtin,
            task_train=splits.train,
            broad=splits.unused_train,
            device=device,
            seed=seed,
            batch_size=cfg.batch_size,
            progress=progress,
        )
    if cfg.kind == "diffusers":
        from utilgen.generate.diffusers_backend import prepare_diffusers_generator

        # Loads the pipeline, then trains (or loads from cache) what the config asks for on
        # the real images: textual-inversion tokens and the LoRA adapter.
        return prepare_diffusers_generator(
            cfg.diffusers,
            task_train=splits.train,
            device=device,
            batch_size=cfg.batch_size,
            seed=seed,
            progress=progress,
        )
    if cfg.kind == "causal-lm":
        from utilgen.generate.causal_lm import CausalLMGenerator

        return CausalLMGenerator.from_config(
            cfg.lm,
            device=device,
            batch_size=cfg.batch_size,
            seed=seed,
            cleaning=cfg.text_filters,
        )
    raise GenerationError(f"generator.kind={cfg.kind!r} does not generate; pick a generator")


def static_requests(
    cfg: GeneratorConfig, *, splits: Splits, seed: int, round_index: int
) -> list[GenerationRequest]:
    """``cfg.per_class`` requests' worth of outputs per class: the ``static`` strategy
    (class prompts for images, U-DPO's k-shot prompts for texts)."""
    class_names = splits.train.class_names
    if cfg.kind == "builtin-diffusion":
        from utilgen.generate.builtin import builtin_class_requests

        return builtin_class_requests(
            class_names,
            per_class=cfg.per_class,
            seed=seed,
            round_index=round_index,
            cfg=cfg.builtin,
        )
    if cfg.kind == "diffusers":
        from utilgen.generate.prompts import class_prompt_requests

        return class_prompt_requests(
            class_names,
            per_class=cfg.per_class,
            seed=seed,
            round_index=round_index,
            cfg=cfg.diffusers,
            real=splits.train,
        )
    if cfg.kind == "causal-lm":
        from utilgen.generate.fewshot import fewshot_requests

        return fewshot_requests(
            splits.train,
            per_class=cfg.per_class,
            seed=seed,
            round_index=round_index,
            cfg=cfg.text_prompt,
        )
    raise GenerationError(f"generator.kind={cfg.kind!r} does not generate; pick a generator")
