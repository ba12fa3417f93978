"""Generation requests on disk: JSON for the fields, safetensors for tensors and images.

Instance-level feedback makes requests whose prompt embeddings and initial noise came out
of an optimisation. A resumed round must issue exactly those requests again (their key,
hence their samples' ids, hashes the tensors), so the loop writes them once and reads them
back instead of re-optimising. Layout: ``PATH.json`` (one object per request, in order) and
``PATH.safetensors`` (tensor ``"<i>.<field>"`` for request i's tensor fields).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from utilgen.atomic import write_json_atomic
from utilgen.errors import UtilgenError
from utilgen.generate.request import GenerationRequest

_TENSORS = ("prompt_embeds", "negative_prompt_embeds", "latents")
_SCALARS = (
    "label",
    "class_name",
    "seed",
    "prompt",
    "negative_prompt",
    "guidance_scale",
    "num_inference_steps",
    "strength",
    "parent_id",
    "num_outputs",
    "perturbation",
)


def write_requests(path: str | Path, requests: Sequence[GenerationRequest]) -> Path:
    """Write ``requests`` to ``path`` + ``.json`` / ``.safetensors`` (tensors first, the JSON
    last and atomically: a reader that finds the JSON finds both). Returns the JSON path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    rows: list[dict[str, Any]] = []
    for i, request in enumerate(requests):
        row: dict[str, Any] = {name: getattr(request, name) for name in _SCALARS}
        row["metadata"] = dict(request.metadata)
        for name in _TENSORS:
            value = getattr(request, name)
            if value is not None:
                tensors[f"{i}.{name}"] = value.detach().cpu().contiguous()
        if request.init_image is not None:
            tensors[f"{i}.init_image"] = torch.from_numpy(np.ascontiguousarray(request.init_image))
        rows.append(row)
    blob = path.with_suffix(".safetensors")
    partial = blob.with_suffix(".safetensors.partial")
    save_file(tensors, str(partial))
    partial.replace(blob)
    json_path = path.with_suffix(".json")
    write_json_atomic(json_path, {"format_version": 1, "requests": rows})
    return json_path


def read_requests(path: str | Path) -> list[GenerationRequest]:
    """The requests written by :func:`write_requests` at ``path``.

    Raises:
        UtilgenError: the files are missing, truncated or not written by utilgen.
    """
    path = Path(path)
    json_path, blob = path.with_suffix(".json"), path.with_suffix(".safetensors")
    try:
        rows = json.loads(json_path.read_text(encoding="utf-8"))["requests"]
        tensors = load_file(str(blob))
    except (OSError, ValueError, KeyError, SafetensorError) as error:
        raise UtilgenError(
            f"saved requests {json_path} cannot be read ({type(error).__name__}); delete "
            f"{json_path} and re-run to recompute them"
        ) from error
    out = []
    for i, row in enumerate(rows):
        fields = {name: row[name] for name in _SCALARS}
        for name in _TENSORS:
            fields[name] = tensors.get(f"{i}.{name}")
        image = tensors.get(f"{i}.init_image")
        fields["init_image"] = None if image is None else image.numpy()
        out.append(GenerationRequest(**fields, metadata=row.get("metadata", {})))
    return out
