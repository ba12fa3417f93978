"""Generators: diffusers pipelines, the built-in offline image generator, causal LMs.

Every generator implements :class:`Generator`: ``generate(requests)`` yields pool
``Sample``s with full provenance. Backends are imported lazily by
:func:`utilgen.generate.factory.build_generator`, so importing this package stays cheap.
"""

from utilgen.generate.base import Generator, make_sample, synthetic_id
from utilgen.generate.request import (
    GenerationError,
    GenerationRequest,
    request_details,
    tensor_digest,
)

__all__ = [
    "GenerationError",
    "GenerationRequest",
    "Generator",
    "make_sample",
    "request_details",
    "synthetic_id",
    "tensor_digest",
]
