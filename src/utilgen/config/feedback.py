"""``feedback``: how utility is fed back into generation between rounds.

Model-level feedback (component ``dpo``) turns the utility scores of round r's samples into
preference pairs (``feedback.pairs``) and fine-tunes the generator on them before round r+1
generates: U-DPO for causal LMs (``feedback.dpo``), Diffusion-DPO for diffusion models
(``feedback.diffusion_dpo``). Defaults follow the papers: U-DPO (beta 1.0, lr 2e-5, batch 2,
3 epochs, pairs (high, mid) weighted by tanh(|delta r|)); Diffusion-DPO (Wallace et al. 2024,
beta_dpo 5000 for Stable Diffusion 1.5).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from utilgen.config.instance import (
    HardSampleConfig,
    InstanceFeedbackConfig,
    NoiseOptimisationConfig,
    PromptAscentConfig,
)
from utilgen.config.names import check_registered
from utilgen.config.section import Section
from utilgen.registry import FEEDBACK_COMPONENTS

PairScheme = Literal["top-mid", "top-bottom"]
PairGrouping = Literal["auto", "class", "prompt"]
MixedPrecision = Literal["no", "fp16", "bf16"]


class PreferencePairConfig(Section):
    """Preference pairs from utility: rank each group's samples by ``score``, pair top with
    middle/bottom, weigh each pair by its gap in ``weight_score``."""

    score: str = Field(
        "composite",
        description="The valuation score that ranks samples and so decides which sample of "
        "a pair is preferred (one of valuation.scores; higher is better): margin for U-DPO "
        "(Sec. 3.3), meta_weight for UtilGen.",
    )
    weight_score: str | None = Field(
        None,
        description="The valuation score whose gap weighs a pair, tanh(|w(x+) - w(x-)|) (one "
        "of valuation.scores): composite for U-DPO (Sec. 3.4, Eq. 5: ranked by margin, "
        "weighted by r_util). None: the ranking score, so that rank and weight come from "
        "one score.",
    )
    scheme: PairScheme = Field(
        "top-mid",
        description="top-mid: preferred from the top, dispreferred from the middle of the "
        "ranked group (U-DPO); top-bottom: from the top and the bottom (UtilGen).",
    )
    ratio: float = Field(
        0.2,
        gt=0.0,
        le=0.5,
        description="rho: the fraction of a ranked group taken as preferred (and as many "
        "dispreferred); at least one pair per group of two or more.",
    )
    weighted: bool = Field(
        True,
        description="Pair weight tanh(|w(x+) - w(x-)|) of weight_score (U-DPO Eq. 5); "
        "false: weight 1.",
    )
    group_by: PairGrouping = Field(
        "auto",
        description="Rank within each class, or within each (class, prompt) so that both "
        "texts of a pair answer the same prompt; auto: prompt for texts, class for images.",
    )
    min_gap: float = Field(
        0.0,
        ge=0.0,
        description="Pairs whose gap in the ranking score (score, not weight_score) is not "
        "above this are dropped: a tie in the ranking carries no preference.",
    )


class LMDPOConfig(Section):
    """U-DPO: DPO of the causal LM on weighted preference pairs (peft LoRA by default)."""

    beta: float = Field(1.0, gt=0.0, description="DPO beta (U-DPO: 1.0).")
    sft_weight: float = Field(
        0.0,
        ge=0.0,
        description="Weight of the preferred texts' NLL per token added to the DPO loss "
        "(RPO; TRL's loss_type [sigmoid, sft]); 0: plain DPO, as in U-DPO.",
    )
    learning_rate: float = Field(2e-5, gt=0.0, description="AdamW learning rate (U-DPO: 2e-5).")
    epochs: int = Field(3, ge=1, description="Passes over the pairs (U-DPO: 3).")
    batch_size: int = Field(2, ge=1, description="Pairs per optimiser step (U-DPO: 2).")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Batches per optimiser step.")
    max_length: int = Field(
        1024, ge=8, description="Prompt + completion tokens at most; prompts are cut from the left."
    )
    lora: bool = Field(
        True,
        description="Train a peft LoRA adapter (the reference is the model with the adapter "
        "switched off, no second copy); false: fine-tune every weight against a frozen copy.",
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha.")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout.")
    lora_target_modules: list[str] | str = Field(
        "all-linear", description="Modules that get LoRA (peft's target_modules)."
    )
    adapter: str | None = Field(
        None, description="Start from this peft adapter directory instead of a fresh LoRA."
    )
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradient clipping norm.")
    log_every: int = Field(1, ge=1, description="Optimiser steps between log records.")


class DiffusionDPOConfig(Section):
    """Diffusion-DPO (Wallace et al. 2024) of the generator's denoiser on preference pairs."""

    beta_dpo: float = Field(
        5000.0, gt=0.0, description="beta_dpo (Wallace et al.: 5000 for SD 1.5, 2500 for SDXL)."
    )
    learning_rate: float = Field(1e-4, gt=0.0, description="AdamW learning rate.")
    steps: int = Field(200, ge=1, description="Optimiser steps.")
    batch_size: int = Field(4, ge=1, description="Pairs per batch.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Batches per optimiser step.")
    method: Literal["lora", "full"] = Field(
        "lora", description="Train a LoRA adapter on the denoiser, or every denoiser weight."
    )
    lora_rank: int = Field(8, ge=1, description="LoRA rank r (alpha = r).")
    mixed_precision: MixedPrecision = Field(
        "no", description="Autocast dtype on GPU (no | fp16 | bf16); CPU runs in float32."
    )
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradient clipping norm.")
    log_every: int = Field(10, ge=1, description="Optimiser steps between log records.")
    cond_dropout: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="Share of pair draws trained on the unconditional input (the null class, "
        "the empty prompt) instead of their own, so that the branch classifier-free guidance "
        "extrapolates from learns the preference too (the reference script's "
        "--proportion_empty_prompts). 0 conditions every pair on its own class or prompt.",
    )


class FeedbackConfig(Section):
    """How utility is fed back into generation between rounds."""

    components: list[str] = Field(
        default_factory=list,
        description="Feedback components switched on. dpo: preference pairs from round r's "
        "utility fine-tune the generator (U-DPO for causal LMs, Diffusion-DPO for diffusion "
        "models) before round r+1. hard_samples: round r+1 generates img2img around the k "
        "lowest-marginal real samples per class (GenDataAgent). prompt_ascent and noise_opt: "
        "each request of round r+1 gets optimised prompt embeddings / initial noise "
        "(UtilGen instance level). Or a component registered in "
        "utilgen.registry.FEEDBACK_COMPONENTS.",
    )
    pairs: PreferencePairConfig = Field(default_factory=PreferencePairConfig)
    dpo: LMDPOConfig = Field(default_factory=LMDPOConfig)
    diffusion_dpo: DiffusionDPOConfig = Field(default_factory=DiffusionDPOConfig)
    instance: InstanceFeedbackConfig = Field(default_factory=InstanceFeedbackConfig)
    hard_samples: HardSampleConfig = Field(default_factory=HardSampleConfig)
    prompt_ascent: PromptAscentConfig = Field(default_factory=PromptAscentConfig)
    noise_opt: NoiseOptimisationConfig = Field(default_factory=NoiseOptimisationConfig)
    control: bool = Field(
        False,
        description="After the last round, generate its requests again (same prompts, seeds "
        "and instance-level inputs) with the generator as it was before any dpo feedback, "
        "score them with the same stage-1 classifier and test the paired difference "
        "(feedback_effect.json's control, feedback_control.png). Rounds 1 and r use "
        "different requests, so this is the like-for-like measure of what dpo changed. "
        "Costs one more generation pass of the last round; the control samples are never "
        "trained on and do not count against loop.budget. Needs dpo in components.",
    )

    @field_validator("components")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        for name in value:
            check_registered(FEEDBACK_COMPONENTS, name)
        if len(set(value)) != len(value):
            raise ValueError(f"feedback.components lists a component twice: {value}")
        return value
