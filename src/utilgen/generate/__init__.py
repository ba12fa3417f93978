"""Generators: diffusers pipelines, the built-in offline image generator, causal LMs.

Every generator implements :class:`Generator`: ``generate(requests)`` yields pool
``Sample``s with full provenance. A ``generator.kind`` names a
:class:`~utilgen.generate.kinds.GeneratorKind` in :data:`utilgen.registry.GENERATOR_KINDS`,
which imports its backend when it builds the generator. The names below are imported on
first use, so that importing this package (as the config's checks of a generator kind do)
loads no torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from utilgen.generate.base import Generator, make_sample, synthetic_id
    from utilgen.generate.request import (
        GenerationError,
        GenerationRequest,
        request_details,
        tensor_digest,
    )

_EXPORTS = {
    "Generator": "utilgen.generate.base",
    "make_sample": "utilgen.generate.base",
    "synthetic_id": "utilgen.generate.base",
    "GenerationError": "utilgen.generate.request",
    "GenerationRequest": "utilgen.generate.request",
    "request_details": "utilgen.generate.request",
    "tensor_digest": "utilgen.generate.request",
}

__all__ = [
    "GenerationError",
    "GenerationRequest",
    "Generator",
    "make_sample",
    "request_details",
    "synthetic_id",
    "tensor_digest",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'utilgen.generate' has no attribute {name!r}")
