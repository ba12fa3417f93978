"""Checks shared by the components that shape image generation."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from utilgen.config import RunConfig


def require_image_generator(config: RunConfig, component: str) -> None:
    """Raise ``ValueError`` unless ``generator.kind`` makes images."""
    from utilgen.registry import GENERATOR_KINDS

    image_kinds = [n for n, k in GENERATOR_KINDS.entries() if k.modality == "image"]
    if config.generator.kind not in image_kinds:
        raise ValueError(
            f"feedback.components [{component}] shapes image generation; it needs "
            f"generator.kind {' or '.join(image_kinds)}, not {config.generator.kind}"
        )


def require_text_to_image(config: RunConfig, component: str) -> None:
    """Raise ``ValueError`` when ``generator.real_init`` makes the static requests img2img,
    which ``component`` cannot optimise (it runs the text-to-image sampler)."""
    if config.generator.real_init.enabled:
        raise ValueError(
            f"feedback.components [{component}] optimises text-to-image requests, but "
            "generator.real_init makes them img2img around real samples; set "
            f"generator.real_init.enabled=false or remove {component}"
        )
