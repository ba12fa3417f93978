"""``generator.builtin``: the built-in offline class-conditional diffusion model.

No pretrained diffusion weights can be downloaded here (docs/assets.md), so utilgen trains
its own small pixel-space diffusers ``UNet2DModel``: DDPM training on the broad split (the
training images left out of the k-shot set), a short adaptation to the task's k real
samples per class, DDIM sampling with classifier-free guidance through a null class. The
defaults train on the bundled digits in about two minutes on two CPU cores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from utilgen.config.section import Section

BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
AdaptMethod = Literal["lora", "full", "none"]


class BuiltinDiffusionConfig(Section):
    """The built-in class-conditional UNet2DModel (DDPM training, DDIM sampling)."""

    # --- sampling (does not change the trained model, so not part of the cache key) ---
    guidance_scale: float = Field(
        1.5,
        ge=0.0,
        description="Classifier-free guidance scale g: eps = eps_null + g (eps_class - "
        "eps_null); 0 samples unconditionally, 1 disables guidance. Mild guidance suits this "
        "small pixel-space model: on digits, label fidelity peaks near 1.25-1.5 and falls "
        "at 2 and above, where strokes saturate (benchmarks/RESULTS.md).",
    )
    steps: int = Field(25, ge=1, description="DDIM sampling steps (eta 0).")
    cache_dir: Path | None = Field(
        None,
        description="Where trained generators are cached (None: $UTILGEN_CACHE_DIR/"
        "builtin-diffusion, else ~/.cache/utilgen/builtin-diffusion).",
    )

    # --- model ---
    image_size: int = Field(
        0,
        ge=0,
        description="Side in pixels of the square images the UNet works on; training images "
        "are resized to it and samples resized back. 0: the training images' larger side, "
        "rounded up to a multiple of 2^(number of blocks - 1).",
    )
    block_out_channels: list[int] = Field(
        default_factory=lambda: [32, 64],
        description="UNet channels per resolution level (one down and one up block each).",
    )
    layers_per_block: int = Field(1, ge=1, description="ResNet layers per UNet block.")
    attention: bool = Field(
        False,
        description="Self-attention in the lowest-resolution blocks (slower on CPU; not "
        "needed for 8x8 digits).",
    )
    norm_num_groups: int = Field(
        8, ge=1, description="GroupNorm groups; must divide every block_out_channels entry."
    )

    # --- DDPM pretraining ---
    num_train_timesteps: int = Field(1000, ge=10, description="DDPM diffusion steps T.")
    beta_schedule: BetaSchedule = Field(
        "squaredcos_cap_v2",
        description="Noise schedule: squaredcos_cap_v2 (cosine, suits small images), "
        "linear or scaled_linear.",
    )
    train_steps: int = Field(
        1500, ge=1, description="Optimiser steps of DDPM pretraining on the broad split."
    )
    train_batch_size: int = Field(64, ge=1, description="Images per training step.")
    learning_rate: float = Field(
        2e-3, gt=0.0, description="Peak AdamW learning rate (linear warm-up, cosine decay)."
    )
    warmup_steps: int = Field(50, ge=0, description="Linear learning-rate warm-up steps.")
    label_dropout: float = Field(
        0.15,
        ge=0.0,
        lt=1.0,
        description="Share of training labels replaced by the null class, so one model "
        "learns the conditional and unconditional noise (classifier-free guidance).",
    )
    ema_decay: float = Field(
        0.995,
        ge=0.0,
        lt=1.0,
        description="Decay of the exponential moving average of the weights that is kept "
        "as the trained model (0: keep the last weights).",
    )

    # --- adaptation to the task's k-shot samples ---
    adapt_method: AdaptMethod = Field(
        "lora",
        description="How the pretrained model is adapted to the task's real samples: lora "
        "(peft LoRA on the UNet, merged afterwards, plus the class-embedding table), full "
        "(fine-tune every weight) or none.",
    )
    adapt_steps: int = Field(150, ge=0, description="Optimiser steps of the adaptation.")
    adapt_learning_rate: float = Field(
        1e-3, gt=0.0, description="Adaptation learning rate (constant after warm-up)."
    )
    lora_rank: int = Field(8, ge=1, description="LoRA rank r (alpha = r).")

    @field_validator("block_out_channels")
    @classmethod
    def _channels(cls, value: list[int]) -> list[int]:
        if not value or any(c < 1 for c in value):
            raise ValueError(
                "generator.builtin.block_out_channels must list one positive channel count per "
                "UNet level, e.g. [32, 64]"
            )
        return value

    @model_validator(mode="after")
    def _groups_divide_channels(self) -> BuiltinDiffusionConfig:
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"generator.builtin.norm_num_groups={self.norm_num_groups} must divide every "
                f"generator.builtin.block_out_channels entry ({bad[0]} is not divisible)"
            )
        levels = len(self.block_out_channels)
        if self.image_size and self.image_size % 2 ** (levels - 1):
            raise ValueError(
                f"generator.builtin.image_size={self.image_size} must be a multiple of "
                f"{2 ** (levels - 1)} for {levels} UNet levels (or 0 for automatic)"
            )
        return self

    def training_fields(self) -> dict[str, object]:
        """The fields that shape the trained weights (everything but sampling settings and
        the cache location): what the generator cache is keyed by."""
        return self.model_dump(mode="json", exclude={"guidance_scale", "steps", "cache_dir"})
