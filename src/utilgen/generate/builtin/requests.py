"""``builtin_class_requests``: the ``static`` strategy's requests for the built-in generator."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from utilgen.config import BuiltinDiffusionConfig
from utilgen.generate.request import GenerationRequest


def request_seed(seed: int, round_index: int, class_name: str, index: int) -> int:
    """A seed in [0, 2^31) fixed by (run seed, round, class, index): a resumed run asks for
    the same samples, and no two requests of a run share their noise by construction."""
    digest = hashlib.sha256(f"{seed}/{round_index}/{class_name}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def builtin_class_requests(
    class_names: Sequence[str],
    *,
    per_class: int,
    seed: int,
    round_index: int,
    cfg: BuiltinDiffusionConfig,
) -> list[GenerationRequest]:
    """``per_class`` one-output requests per class, conditioned on the class label, with the
    configured guidance and steps; the prompt is the class name (provenance only: the
    built-in model conditions on its class embedding)."""
    return [
        GenerationRequest(
            label=label,
            class_name=name,
            seed=request_seed(seed, round_index, name, index),
            prompt=name,
            guidance_scale=cfg.guidance_scale,
            num_inference_steps=cfg.steps,
        )
        for label, name in enumerate(class_names)
        for index in range(per_class)
    ]
