"""``generator``: which generator makes synthetic samples, and how many."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from utilgen.config.builtin_diffusion import BuiltinDiffusionConfig
from utilgen.config.diffusion import DiffusersConfig
from utilgen.config.names import check_registered
from utilgen.config.section import Section
from utilgen.config.text_generation import (
    CaptionPerturbationConfig,
    CausalLMConfig,
    FewShotPromptConfig,
    TextFilterConfig,
)
from utilgen.registry import GENERATOR_KINDS


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
