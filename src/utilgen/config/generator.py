"""``generator``: which generator makes synthetic samples, and how many."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from utilgen.config.builtin_diffusion import BuiltinDiffusionConfig
from utilgen.config.diffusion import DiffusersConfig
from utilgen.config.instance import check_img2img_strengths
from utilgen.config.names import check_registered
from utilgen.config.section import Section
from utilgen.config.text_generation import (
    CaptionPerturbationConfig,
    CausalLMConfig,
    FewShotPromptConfig,
    TextFilterConfig,
)
from utilgen.registry import GENERATOR_KINDS

# The kinds whose requests can start from a real image (img2img).
IMG2IMG_KINDS = ("builtin-diffusion", "diffusers")


class RealInitConfig(Section):
    """Static requests as img2img around real training samples drawn at random: Real-Fake's
    latent prior of real images, the start GenDataAgent's hard samples also take (appendix
    D, shared/papers/004), without their choice of parents."""

    enabled: bool = Field(
        False,
        description="Make the static requests (every round's, or round 1's when "
        "feedback.hard_samples makes the later ones) img2img around k real training samples "
        "per class drawn at random (seeded by seed and round) instead of generation from "
        "noise; each sample records its parent in parent_id and its strength. "
        "builtin-diffusion and diffusers only; not with prompt_ascent or noise_opt.",
    )
    k: int = Field(
        5,
        ge=1,
        description="Random real training samples per class a round generates around, its "
        "per_class outputs spread over them as over feedback.hard_samples' k parents; at "
        "most the smallest class.",
    )
    strengths: list[float] = Field(
        default_factory=lambda: [0.5, 0.75, 0.9],
        min_length=1,
        description="img2img strengths in (0, 1], cycled over each parent's outputs as "
        "feedback.hard_samples cycles them (GenDataAgent appendix D, Table 8: 0.5, 0.75, 0.9).",
    )

    @field_validator("strengths")
    @classmethod
    def _in_unit_interval(cls, value: list[float]) -> list[float]:
        return check_img2img_strengths(value)


class GeneratorConfig(Section):
    """The generator and its settings; only the sub-section of ``kind`` is used."""

    kind: str = Field(
        "none",
        description="none (real data only), builtin-diffusion (offline class-conditional "
        "UNet2DModel), diffusers (any diffusers text-to-image pipeline), causal-lm "
        "(transformers causal LM or GGUF file), or a kind registered in "
        "utilgen.registry.GENERATOR_KINDS.",
    )
    per_class: int = Field(0, ge=0, description="Synthetic samples generated per class per round.")
    batch_size: int = Field(16, ge=1, description="Samples generated per forward batch.")
    diffusers: DiffusersConfig = Field(default_factory=DiffusersConfig)
    builtin: BuiltinDiffusionConfig = Field(default_factory=BuiltinDiffusionConfig)
    lm: CausalLMConfig = Field(default_factory=CausalLMConfig)
    text_prompt: FewShotPromptConfig = Field(default_factory=FewShotPromptConfig)
    text_filters: TextFilterConfig = Field(default_factory=TextFilterConfig)
    perturbation: CaptionPerturbationConfig = Field(default_factory=CaptionPerturbationConfig)
    real_init: RealInitConfig = Field(
        default_factory=RealInitConfig,
        description="Start the static requests from random real training images (img2img).",
    )

    @field_validator("kind")
    @classmethod
    def _registered(cls, value: str) -> str:
        return check_registered(GENERATOR_KINDS, value, also=("none",))

    @model_validator(mode="after")
    def _per_class_needed(self) -> GeneratorConfig:
        if self.kind != "none" and self.per_class < 1:
            raise ValueError(
                f"generator.kind={self.kind} needs generator.per_class >= 1 (samples per class)"
            )
        return self

    @model_validator(mode="after")
    def _real_init_needs_img2img(self) -> GeneratorConfig:
        init = self.real_init
        if not init.enabled or self.kind == "none":
            return self
        if self.kind not in IMG2IMG_KINDS:
            raise ValueError(
                f"generator.real_init starts generation from real images (img2img), which "
                f"generator.kind={self.kind} cannot; use {' or '.join(IMG2IMG_KINDS)}, or set "
                "generator.real_init.enabled=false"
            )
        if self.kind == "diffusers":
            steps = self.diffusers.steps
            too_weak = [s for s in init.strengths if int(steps * s) < 1]
            if too_weak:
                raise ValueError(
                    f"generator.real_init.strengths {too_weak} run no denoising step with "
                    f"generator.diffusers.steps={steps} (int(steps * strength) = 0); raise the "
                    "strengths or the steps"
                )
        return self
