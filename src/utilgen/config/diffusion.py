"""``generator.diffusers``: a diffusers text-to-image pipeline's settings.

Defaults follow GenDataAgent / Real-Fake (shared/papers/002, 004): class prompts
``"a photo of a {class}, which is {caption}"``, the negative prompt below, guidance 7.5
(2.0 when the classifier trains on synthetic data only).
"""

from __future__ import annotations

from pydantic import Field

from utilgen.config.section import Section

DEFAULT_NEGATIVE_PROMPT = "distorted, unrealistic, blurry, out of frame"


class DiffusersConfig(Section):
    """A diffusers text-to-image pipeline (Stable Diffusion 1.x/2.x, SDXL) by hub id or path."""

    model: str | None = Field(
        None, description="Hub id or local directory of a diffusers pipeline (must be on disk)."
    )
    guidance_scale: float = Field(7.5, ge=0.0, description="Classifier-free guidance scale.")
    steps: int = Field(50, ge=1, description="Denoising steps.")
    negative_prompt: str = Field(DEFAULT_NEGATIVE_PROMPT, description="Negative prompt.")
    prompt_template: str = Field(
        "a photo of a {class}, which is {caption}",
        description="Class prompt; {class} is the class name, {caption} a caption.",
    )
