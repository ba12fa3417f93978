"""``generator.builtin``: the built-in offline class-conditional diffusion model."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from utilgen.config.section import Section


class BuiltinDiffusionConfig(Section):
    """The built-in class-conditional UNet2DModel (DDPM training, DDIM sampling)."""

    guidance_scale: float = Field(2.0, ge=0.0, description="Classifier-free guidance scale.")
    steps: int = Field(25, ge=1, description="DDIM sampling steps.")
    cache_dir: Path | None = Field(
        None, description="Where trained generators are cached (None: ~/.cache/utilgen)."
    )
