"""``GenerationRequest``: what a policy asks a generator for (images and texts alike).

A request names the class to condition on and every knob that shapes the output; a
generator turns it into ``num_outputs`` samples whose provenance repeats the request
(docs/architecture.md, "The loop"). Tensors (prompt embeddings, initial noise) and init images
cannot live in the manifest, so :func:`request_details` records their SHA-256 instead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from utilgen.errors import UtilgenError


class GenerationError(UtilgenError):
    """A generation request or generator setting that cannot be honoured."""


def tensor_digest(value: torch.Tensor | np.ndarray) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (16 hex characters)."""
    array = value.detach().cpu().float().numpy() if isinstance(value, torch.Tensor) else value
    array = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{array.dtype}{array.shape}".encode())
    h.update(array.tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True, kw_only=True, eq=False)
class GenerationRequest:
    """One conditioning of the generator; it yields ``num_outputs`` samples.

    Attributes:
        label: class index to condition on.
        class_name: the name of ``label``.
        seed: seeds the request's noise / sampling; output ``i`` uses ``seed + i``.
        prompt: the text prompt (image prompt, or the LM's full class-conditional prompt).
        negative_prompt: the negative prompt ("" for none).
        guidance_scale: classifier-free guidance; None uses the generator's default.
        num_inference_steps: denoising steps; None uses the generator's default.
        init_image: uint8 (H, W, C) image to start from (img2img); None for text-to-image.
        strength: img2img noise strength in [0, 1]; required with ``init_image``.
        parent_id: id of the real sample this request was built around ("" if none).
        prompt_embeds: precomputed prompt / class embeddings, passed through unchanged.
        negative_prompt_embeds: their negative counterpart (diffusers pipelines).
        latents: initial noise, passed through unchanged.
        num_outputs: samples generated for this request (n per prompt).
        perturbation: how the prompt was perturbed ("" if not).
        metadata: extra provenance (e.g. ``{"shot_ids": [...]}`` for k-shot text prompts);
            must be JSON-serialisable.
    """

    label: int
    class_name: str
    seed: int
    prompt: str = ""
    negative_prompt: str = ""
    guidance_scale: float | None = None
    num_inference_steps: int | None = None
    init_image: np.ndarray | None = None
    strength: float | None = None
    parent_id: str = ""
    prompt_embeds: torch.Tensor | None = None
    negative_prompt_embeds: torch.Tensor | None = None
    latents: torch.Tensor | None = None
    num_outputs: int = 1
    perturbation: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.label < 0:
            raise GenerationError(f"request label must be >= 0, got {self.label}")
        if self.num_outputs < 1:
            raise GenerationError(f"num_outputs must be >= 1, got {self.num_outputs}")
        if self.strength is not None and not 0.0 <= self.strength <= 1.0:
            raise GenerationError(
                f"img2img strength must be in [0, 1], got {self.strength}; "
                "0 keeps the init image, 1 ignores it"
            )
        if self.init_image is not None and self.strength is None:
            raise GenerationError("an img2img request with init_image needs a strength in [0, 1]")
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise GenerationError(
                f"guidance scale must be >= 0, got {self.guidance_scale} (1 disables guidance)"
            )
        if self.num_inference_steps is not None and self.num_inference_steps < 1:
            raise GenerationError(f"steps must be >= 1, got {self.num_inference_steps}")

    def key(self) -> str:
        """A stable 16-hex digest of every field: equal requests get equal sample ids."""
        return hashlib.sha256(
            json.dumps(request_details(self), sort_keys=True).encode()
        ).hexdigest()[:16]


def request_details(request: GenerationRequest) -> dict[str, Any]:
    """Every field of ``request`` as JSON-ready provenance (tensors and images as digests)."""
    out: dict[str, Any] = {
        "label": request.label,
        "class_name": request.class_name,
        "seed": request.seed,
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "guidance_scale": request.guidance_scale,
        "num_inference_steps": request.num_inference_steps,
        "strength": request.strength,
        "parent_id": request.parent_id,
        "num_outputs": request.num_outputs,
        "perturbation": request.perturbation,
    }
    for name in ("init_image", "prompt_embeds", "negative_prompt_embeds", "latents"):
        value = getattr(request, name)
        if value is not None:
            out[f"{name}_sha256"] = tensor_digest(value)
    if request.metadata:
        out["metadata"] = dict(request.metadata)
    return out
