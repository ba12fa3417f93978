"""``generator.diffusers``: a diffusers text-to-image pipeline's settings.

Defaults follow GenDataAgent / Real-Fake (shared/papers/002, 004): class prompts
``"a photo of a {class}, which is {caption}"``, the negative prompt below, guidance 7.5
(2.0 when the classifier trains on synthetic data only), img2img strength 0.75, and Real-Fake's
LoRA recipe (rank 4, learning rate 1e-4 constant, batch 8, 100 epochs, Min-SNR gamma 5).

Scheduler names are plain data here (name -> diffusers class and extra config) so that the
config can reject an unknown name without importing diffusers; ``utilgen.generate.schedulers``
turns a name into a scheduler object.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from utilgen.config.section import Section

DEFAULT_NEGATIVE_PROMPT = "distorted, unrealistic, blurry, out of frame"

# name -> (diffusers scheduler class, config overrides). Names are lower case; the diffusers
# class names themselves are accepted too (see ``canonical_scheduler_name``).
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    # PLMS, as Stable Diffusion ships it (the Runge-Kutta warm-up needs many steps).
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {}),
    "dpm++-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpm-single": ("DPMSolverSinglestepScheduler", {}),
    "kdpm2": ("KDPM2DiscreteScheduler", {}),
    "kdpm2-a": ("KDPM2AncestralDiscreteScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
# Other spellings users meet in the diffusers docs and web UIs.
SCHEDULER_ALIASES: dict[str, str] = {
    "dpmsolver++": "dpm++",
    "dpm-solver++": "dpm++",
    "dpmsolvermultistep": "dpm++",
    "euler_a": "euler-a",
    "euler-ancestral": "euler-a",
    "k_lms": "lms",
    **{cls.lower(): name for name, (cls, extra) in SCHEDULERS.items() if not extra},
}


def canonical_scheduler_name(name: str) -> str | None:
    """The table name of ``name`` (case-insensitive, aliases and class names accepted), or
    None when it names no known scheduler."""
    key = name.strip().lower()
    if key in SCHEDULERS:
        return key
    return SCHEDULER_ALIASES.get(key) or SCHEDULER_ALIASES.get(key.removesuffix("scheduler"))


def unknown_scheduler_message(name: str) -> str:
    """One line: ``name`` is not a scheduler, the closest valid name, every valid name."""
    close = difflib.get_close_matches(name.strip().lower(), [*SCHEDULERS, *SCHEDULER_ALIASES], 1)
    hint = f"did you mean '{canonical_scheduler_name(close[0])}'? " if close else ""
    return f"unknown scheduler {name!r}; {hint}valid names: {', '.join(SCHEDULERS)}"


class DiffusersLoraConfig(Section):
    """LoRA adaptation of the U-Net to the task's real images (Real-Fake's recipe, which
    GenDataAgent adopts: diffusers' ``train_text_to_image_lora`` with rank 4, learning rate
    1e-4 constant, batch 8, 100 epochs, Min-SNR weighting gamma 5, random flips)."""

    path: Path | None = Field(
        None,
        description="A trained adapter to load at generation: a .safetensors file written by "
        "save_lora_weights, or the directory holding pytorch_lora_weights.safetensors.",
    )
    train: bool = Field(
        False, description="Train an adapter on the task's real images before generating."
    )
    rank: int = Field(4, ge=1, description="LoRA rank r of the attention projections.")
    alpha: int | None = Field(None, ge=1, description="LoRA alpha (None: equal to rank).")
    target_modules: list[str] = Field(
        ["to_k", "to_q", "to_v", "to_out.0"],
        description="U-Net modules that get LoRA layers (diffusers' attention projections).",
    )
    learning_rate: float = Field(1e-4, gt=0.0, description="AdamW learning rate (constant).")
    weight_decay: float = Field(1e-2, ge=0.0, description="AdamW weight decay.")
    batch_size: int = Field(8, ge=1, description="Real images per training step.")
    epochs: int = Field(100, ge=1, description="Passes over the real images.")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many steps (None: epochs decide)."
    )
    snr_gamma: float | None = Field(
        5.0, gt=0.0, description="Min-SNR loss weighting gamma (None: plain MSE)."
    )
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradient clipping norm.")
    random_flip: bool = Field(True, description="Flip training images left-right at random.")
    scale: float = Field(
        1.0, ge=0.0, description="Adapter weight at generation (0 switches it off)."
    )

    @model_validator(mode="after")
    def _train_or_load(self) -> DiffusersLoraConfig:
        if self.train and self.path is not None:
            raise ValueError(
                "set lora.train=true (adapt to the real images) or lora.path, not both"
            )
        return self


class TextualInversionConfig(Section):
    """Textual inversion of class tokens (UtilGen): learn one embedding ``<class-name>`` per
    class the text encoder does not know, from that class's real images (diffusers'
    ``textual_inversion`` recipe: only the new rows train; lr 5e-4 scaled by batch size)."""

    classes: list[str] = Field(
        [], description="Class names that get a learned token <class-name> in their prompts."
    )
    path: Path | None = Field(
        None,
        description="Directory of learned embeddings to load (one <token>.safetensors per "
        "class, diffusers' load_textual_inversion format).",
    )
    learning_rate: float = Field(5e-4, gt=0.0, description="AdamW learning rate (per image).")
    batch_size: int = Field(4, ge=1, description="Real images per training step.")
    steps: int = Field(3000, ge=1, description="Training steps per run (all classes at once).")

    @model_validator(mode="after")
    def _classes_for_path(self) -> TextualInversionConfig:
        if self.path is not None and not self.classes:
            raise ValueError(
                "textual_inversion.path needs textual_inversion.classes: the classes whose "
                "prompts use the loaded tokens"
            )
        return self


class DiffusersConfig(Section):
    """A diffusers text-to-image pipeline (Stable Diffusion 1.x/2.x, SDXL) by hub id or path."""

    model: str | None = Field(
        None,
        description="Hub id (already in the offline cache) or local directory of a diffusers "
        "pipeline (model_index.json + components).",
    )
    variant: str | None = Field(
        None, description="Weight file variant to load, e.g. fp16 (None: the default files)."
    )
    guidance_scale: float = Field(
        7.5,
        ge=0.0,
        description="Classifier-free guidance scale (GenDataAgent: 7.5 when synthetic data "
        "augments real data, 2.0 when the classifier trains on synthetic data only).",
    )
    steps: int = Field(50, ge=1, description="Denoising steps.")
    negative_prompt: str = Field(DEFAULT_NEGATIVE_PROMPT, description="Negative prompt.")
    prompt_template: str = Field(
        "a photo of a {class}, which is {caption}",
        description="Class prompt with a caption; {class} is the class name, {caption} a caption.",
    )
    plain_template: str = Field(
        "a photo of a {class}", description="Class prompt used when a class has no captions."
    )
    prompt_map: dict[str, str] | None = Field(
        None,
        description="Class name -> the text put in place of {class} (e.g. a WordNet id -> "
        "'tench'); every class must have an entry.",
    )
    captions_file: Path | None = Field(
        None,
        description="Captions per class: JSON {class: [caption, ...]} or CSV with columns "
        "class,caption[,id] (see utilgen.generate.prompts).",
    )
    captioner: str | None = Field(
        None,
        description="Local directory of a BLIP-2 model (transformers) that captions the real "
        "images when no captions_file is given.",
    )
    caption_max_new_tokens: int = Field(30, ge=1, description="Caption length limit (tokens).")
    strength: float = Field(
        0.75,
        ge=0.0,
        le=1.0,
        description="img2img noise strength around a real image (Real-Fake: 0.75; 0 keeps the "
        "image, 1 ignores it).",
    )
    image_size: int | None = Field(
        None,
        ge=8,
        description="Generated image side in pixels, a multiple of 8 (None: the model's own).",
    )
    scheduler: str | None = Field(
        None,
        description=f"Sampler by name ({', '.join(SCHEDULERS)}); None keeps the pipeline's.",
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Weights dtype; auto is float16 on CUDA and float32 on CPU."
    )
    attention_slicing: bool = Field(
        False, description="Compute attention in slices (less memory, a little slower)."
    )
    compile: bool = Field(False, description="torch.compile the U-Net (slow first batch).")
    cache_dir: Path | None = Field(
        None,
        description="Where trained LoRA adapters, class tokens and captions are cached (None: "
        "$UTILGEN_CACHE_DIR/diffusers, else ~/.cache/utilgen/diffusers).",
    )
    lora: DiffusersLoraConfig = Field(default_factory=DiffusersLoraConfig)
    textual_inversion: TextualInversionConfig = Field(default_factory=TextualInversionConfig)

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name = canonical_scheduler_name(value)
        if name is None:
            raise ValueError(unknown_scheduler_message(value))
        return name

    @field_validator("image_size")
    @classmethod
    def _multiple_of_eight(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            raise ValueError(
                f"image_size must be a multiple of 8 (the VAE downsamples by 8), got {value}; "
                f"try {max(8, round(value / 8) * 8)}"
            )
        return value

    @field_validator("prompt_template")
    @classmethod
    def _template_has_class(cls, value: str) -> str:
        if "{class}" not in value or "{caption}" not in value:
            raise ValueError(
                f"prompt_template {value!r} must contain both {{class}} and {{caption}}"
            )
        return value

    @field_validator("plain_template")
    @classmethod
    def _plain_has_class(cls, value: str) -> str:
        if "{class}" not in value:
            raise ValueError(f"plain_template {value!r} must contain {{class}}")
        return value

    @model_validator(mode="after")
    def _one_caption_source(self) -> DiffusersConfig:
        if self.captions_file is not None and self.captioner is not None:
            raise ValueError("set either captions_file or captioner (a BLIP-2 directory), not both")
        return self
