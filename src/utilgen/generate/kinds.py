"""Generator kinds: what a ``generator.kind`` name stands for.

A :class:`GeneratorKind` says which modality its generator makes, builds the generator and
makes the ``static`` strategy's requests for it. The built-in kinds are below; they are
registered by name in :data:`utilgen.registry.GENERATOR_KINDS`, where a user registers a
kind of their own (``GENERATOR_KINDS.register("my-kind", MyKind())``). Backends are
imported inside the methods, so that a text run never imports diffusers and an image run
never loads an LM, and so that the config's checks can read a kind's ``modality`` without
importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from utilgen.config import GeneratorConfig
    from utilgen.data import Splits
    from utilgen.generate.base import Generator
    from utilgen.generate.request import GenerationRequest


@runtime_checkable
class GeneratorKind(Protocol):
    """One ``generator.kind``: its modality, its generator and its static requests."""

    modality: Literal["image", "text"]

    def build(
        self,
        cfg: GeneratorConfig,
        *,
        splits: Splits,
        device: torch.device,
        seed: int,
        progress: bool = True,
    ) -> Generator:
        """The generator, ready to generate for the classes of ``splits`` (anything it
        trains, it trains here, from ``splits.train`` or ``splits.unused_train``)."""
        ...

    def static_requests(
        self, cfg: GeneratorConfig, *, splits: Splits, seed: int, round_index: int
    ) -> list[GenerationRequest]:
        """``cfg.per_class`` outputs per class for round ``round_index``: the ``static``
        strategy's requests, and what instance-level feedback starts from (the image kinds
        make them img2img around random real samples with ``cfg.real_init.enabled``)."""
        ...


def _real_init_requests(
    cfg: GeneratorConfig, *, splits: Splits, seed: int, round_index: int
) -> list[GenerationRequest]:
    """``generator.real_init``'s static requests: img2img around random real training
    samples (:func:`utilgen.generate.img2img.real_init_requests`)."""
    from utilgen.generate.img2img import real_init_requests

    return real_init_requests(cfg, splits.train, seed=seed, round_index=round_index)


class BuiltinDiffusionKind:
    """``builtin-diffusion``: the offline class-conditional UNet2DModel, trained here (or
    read from its cache) on ``splits.unused_train`` and adapted to ``splits.train``."""

    modality: Literal["image", "text"] = "image"

    def build(
        self,
        cfg: GeneratorConfig,
        *,
        splits: Splits,
        device: torch.device,
        seed: int,
        progress: bool = True,
    ) -> Generator:
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

    def static_requests(
        self, cfg: GeneratorConfig, *, splits: Splits, seed: int, round_index: int
    ) -> list[GenerationRequest]:
        from utilgen.generate.builtin import builtin_class_requests

        if cfg.real_init.enabled:
            return _real_init_requests(cfg, splits=splits, seed=seed, round_index=round_index)
        return builtin_class_requests(
            splits.train.class_names,
            per_class=cfg.per_class,
            seed=seed,
            round_index=round_index,
            cfg=cfg.builtin,
        )


class DiffusersKind:
    """``diffusers``: any diffusers text-to-image pipeline, with the textual-inversion
    tokens and LoRA adapter the config asks for trained (or read from cache) on the real
    images."""

    modality: Literal["image", "text"] = "image"

    def build(
        self,
        cfg: GeneratorConfig,
        *,
        splits: Splits,
        device: torch.device,
        seed: int,
        progress: bool = True,
    ) -> Generator:
        from utilgen.generate.diffusers_prepare import prepare_diffusers_generator

        return prepare_diffusers_generator(
            cfg.diffusers,
            task_train=splits.train,
            device=device,
            batch_size=cfg.batch_size,
            seed=seed,
            progress=progress,
        )

    def static_requests(
        self, cfg: GeneratorConfig, *, splits: Splits, seed: int, round_index: int
    ) -> list[GenerationRequest]:
        from utilgen.generate.prompts import class_prompt_requests

        if cfg.real_init.enabled:
            return _real_init_requests(cfg, splits=splits, seed=seed, round_index=round_index)
        return class_prompt_requests(
            splits.train.class_names,
            per_class=cfg.per_class,
            seed=seed,
            round_index=round_index,
            cfg=cfg.diffusers,
            real=splits.train,
        )


class CausalLMKind:
    """``causal-lm``: a transformers causal LM (or GGUF file, or vLLM) prompted with
    U-DPO's k-shot class prompts."""

    modality: Literal["image", "text"] = "text"

    def build(
        self,
        cfg: GeneratorConfig,
        *,
        splits: Splits,
        device: torch.device,
        seed: int,
        progress: bool = True,
    ) -> Generator:
        from utilgen.generate.causal_lm import CausalLMGenerator

        return CausalLMGenerator.from_config(
            cfg.lm,
            device=device,
            batch_size=cfg.batch_size,
            seed=seed,
            cleaning=cfg.text_filters,
        )

    def static_requests(
        self, cfg: GeneratorConfig, *, splits: Splits, seed: int, round_index: int
    ) -> list[GenerationRequest]:
        from utilgen.generate.fewshot import fewshot_requests

        return fewshot_requests(
            splits.train,
            per_class=cfg.per_class,
            seed=seed,
            round_index=round_index,
            cfg=cfg.text_prompt,
        )


BUILTIN_DIFFUSION = BuiltinDiffusionKind()
DIFFUSERS = DiffusersKind()
CAUSAL_LM = CausalLMKind()


def generator_kind(name: str) -> GeneratorKind:
    """The registered kind ``name`` (``generator.kind``).

    Raises:
        ConfigError: no kind of that name is registered.
    """
    from utilgen.registry import GENERATOR_KINDS

    return GENERATOR_KINDS.get(name)
