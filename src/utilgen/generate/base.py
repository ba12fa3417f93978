"""The ``Generator`` protocol and the helper every backend uses to build its samples."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from utilgen.data.labelled import Modality
from utilgen.generate.request import GenerationRequest, request_details
from utilgen.pool.sample import Sample


@runtime_checkable
class Generator(Protocol):
    """Turns generation requests into pool samples.

    Attributes:
        modality: ``"image"`` or ``"text"``.
        name: provenance of the model: id or path, plus ``+lora:<hash>`` (or another
            adapter kind) when an adapter is loaded. Goes into every sample's ``generator``.
    """

    modality: Modality
    name: str

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        round_index: int = 1,
        progress: bool = True,
    ) -> Iterator[Sample]:
        """Yield ``request.num_outputs`` samples per request, batched internally, in request
        order; the same requests on the same device give the same samples (ids and
        payloads)."""
        ...


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def synthetic_id(round_index: int, request: GenerationRequest, output_index: int) -> str:
    """``synthetic/r<round>/<class>/<request key>-<i>``: deterministic, so a resumed run
    regenerates the same ids and the pool recognises what it already holds."""
    safe = _UNSAFE.sub("_", request.class_name) or "class"
    return f"synthetic/r{round_index:03d}/{safe}/{request.key()}-{output_index}"


def make_sample(
    request: GenerationRequest,
    output_index: int,
    payload: bytes,
    *,
    modality: Modality,
    generator: str,
    round_index: int,
    guidance: float | None,
    steps: int | None,
    details: Mapping[str, Any] | None = None,
) -> Sample:
    """The pool sample of output ``output_index`` of ``request``, with full provenance.

    ``guidance`` and ``steps`` are the values actually used (the request's or the generator's
    defaults); ``details`` adds backend facts (scheduler, dtype, sampling settings) to the
    request's own fields in the ``details`` JSON.
    """
    record = {"request": request_details(request), **(details or {})}
    return Sample(
        id=synthetic_id(round_index, request, output_index),
        modality=modality,
        label=request.label,
        class_name=request.class_name,
        payload=payload,
        source="synthetic",
        split="",
        round=round_index,
        generator=generator,
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        seed=request.seed + output_index,
        guidance=guidance,
        steps=steps,
        strength=request.strength,
        parent_id=request.parent_id,
        perturbation=request.perturbation,
        details=json.dumps(record, sort_keys=True),
    )
