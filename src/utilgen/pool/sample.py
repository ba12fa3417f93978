"""``Sample``: one real or synthetic sample with everything needed to trace how it was made.

A sample is the unit the pool stores: its payload (PNG bytes for images, UTF-8 for texts)
goes to a content-addressed blob, every other field to one row of the manifest
(docs/architecture.md, "The run directory").
"""

from __future__ import annotations

import hashlib
import numbers
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from utilgen.data.labelled import Modality

Source = Literal["real", "synthetic"]
Split = Literal["train", "val", "test", "meta", ""]

MODALITIES: tuple[Modality, ...] = ("image", "text")
SOURCES: tuple[Source, ...] = ("real", "synthetic")
SPLITS: tuple[Split, ...] = ("train", "val", "test", "meta", "")


def content_hash(payload: bytes) -> str:
    """The blob name of ``payload``: its SHA-256 as 64 lowercase hex characters."""
    return hashlib.sha256(payload).hexdigest()


_TEXT_FIELDS = (
    "class_name",
    "generator",
    "prompt",
    "negative_prompt",
    "parent_id",
    "perturbation",
    "reason",
    "details",
)


def _as_int(sample_id: str, name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"sample {sample_id}: {name} must be an int, got {value!r}")
    return int(value)


def _as_float(sample_id: str, name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"sample {sample_id}: {name} must be a number, got {value!r}")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class Sample:
    """A sample and its provenance; one manifest row plus one blob.

    Attributes:
        id: unique within the run; real samples keep their dataset id
            (``<dataset>/<class>/<key>``), synthetic ones get theirs from the generator.
        modality: ``"image"`` or ``"text"``.
        label: class index into the run's class names.
        class_name: the name of ``label`` (stored so that exports need no config).
        payload: PNG bytes (images) or UTF-8 bytes (texts); see ``utilgen.pool.payload``.
        source: ``"real"`` or ``"synthetic"``.
        split: ``"train"``, ``"val"`` or ``"test"`` for real samples, ``"meta"`` for the
            meta-weight meta set reserved from validation; ``""`` for synthetic ones, which
            only ever join the training data.
        round: the round that produced the sample (0 for the real data).
        generator: model id or path plus adapter hash, e.g. ``"sd-turbo+lora:3f2a..."``;
            ``""`` for real samples.
        prompt: the prompt or caption the sample was generated from.
        negative_prompt: the negative prompt, ``""`` if none.
        seed: the generation seed; ``None`` for real samples.
        guidance: classifier-free guidance scale; ``None`` if not used.
        steps: number of denoising / decoding steps; ``None`` if not applicable.
        strength: img2img strength in [0, 1]; ``None`` for text-to-image.
        parent_id: id of the real sample it was generated around (GenDataAgent's hard
            samples); ``""`` if none.
        perturbation: how the prompt was perturbed (e.g. the LLM instruction); ``""`` if none.
        kept: whether selection keeps the sample for training.
        reason: why it was kept or dropped (e.g. ``"vog below 10th percentile"``).
        details: the rest of the provenance as a JSON object (scheduler, adapter hash, the
            few-shot example ids of a text prompt, hashes of prompt embeddings or initial
            noise, sampling settings); ``""`` if none.
    """

    id: str
    modality: Modality
    label: int
    class_name: str
    payload: bytes = field(repr=False)
    source: Source
    split: Split = ""
    round: int = 0
    generator: str = ""
    prompt: str = ""
    negative_prompt: str = ""
    seed: int | None = None
    guidance: float | None = None
    steps: int | None = None
    strength: float | None = None
    parent_id: str = ""
    perturbation: str = ""
    kept: bool = True
    reason: str = ""
    details: str = ""

    def __post_init__(self) -> None:
        # A malformed sample is a bug in the code that built it, hence ValueError, raised
        # here so that it never reaches the manifest.
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"sample id must be a non-empty string, got {self.id!r}")
        if self.modality not in MODALITIES:
            raise ValueError(f"sample {self.id}: modality must be one of {MODALITIES}")
        if self.source not in SOURCES:
            raise ValueError(f"sample {self.id}: source must be one of {SOURCES}")
        if self.split not in SPLITS:
            raise ValueError(f"sample {self.id}: split must be one of {SPLITS}")
        if self.source == "real" and not self.split:
            raise ValueError(f"sample {self.id}: a real sample must carry its split")
        if not isinstance(self.payload, bytes):
            raise ValueError(f"sample {self.id}: payload must be bytes")
        # Numpy scalars are welcome (labels usually come from an int64 array) but are
        # stored as Python numbers so that equality and the Arrow conversion are exact.
        for name in ("label", "round"):
            value = _as_int(self.id, name, getattr(self, name))
            if value is None or value < 0:
                raise ValueError(f"sample {self.id}: {name} must be an int >= 0")
            object.__setattr__(self, name, value)
        for name in ("seed", "steps"):
            object.__setattr__(self, name, _as_int(self.id, name, getattr(self, name)))
        for name in ("guidance", "strength"):
            object.__setattr__(self, name, _as_float(self.id, name, getattr(self, name)))
        object.__setattr__(self, "kept", bool(self.kept))
        for name in ("id", *_TEXT_FIELDS):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ValueError(f'sample {self.id}: {name} must be a string ("" if none)')
            try:
                # Parquet stores UTF-8: a lone surrogate would only fail at the commit
                value.encode("utf-8")
            except UnicodeEncodeError as err:
                raise ValueError(
                    f"sample {self.id!r}: {name} is not valid UTF-8 text ({err.reason} at "
                    f"position {err.start})"
                ) from None
        if self.modality == "text":
            try:
                self.payload.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"sample {self.id!r}: a text payload must be UTF-8 ({err.reason} at byte "
                    f"{err.start})"
                ) from None

    @cached_property
    def blob(self) -> str:
        """SHA-256 hex of the payload: the blob's file name and the manifest's ``blob``."""
        return content_hash(self.payload)
