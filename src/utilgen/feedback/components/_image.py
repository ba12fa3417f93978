"""A check shared by the components that shape image generation."""

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
