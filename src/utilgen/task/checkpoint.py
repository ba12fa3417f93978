"""Checkpoints: a model's trainable weights as safetensors, with a JSON sidecar.

``epoch-NNN.safetensors`` holds the tensors (header metadata: model kind and class count);
``epoch-NNN.json`` beside it holds the kind, the class count and whatever the trainer adds
(epoch, validation accuracy, training loss). Both are written atomically, the tensors first,
so a listed checkpoint is always complete. Loading goes through ``safetensors`` only: no
pickle is ever read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from utilgen.atomic import write_bytes_atomic, write_json_atomic
from utilgen.digest import safetensors_digest
from utilgen.errors import UtilgenError
from utilgen.task.base import TaskModel
from utilgen.task.classifier_module import ClassifierModule

CHECKPOINT_PATTERN = re.compile(r"^epoch-(\d+)\.safetensors$")


def checkpoint_name(epoch: int) -> str:
    """``epoch-NNN.safetensors`` (epochs count from 1)."""
    return f"epoch-{epoch:03d}.safetensors"


SHA256_KEY = "sha256"  # the sidecar's digest of the checkpoint (utilgen.digest)


def sidecar_path(path: Path) -> Path:
    """The JSON sidecar of a checkpoint: same name, suffix ``.json``."""
    return Path(path).with_suffix(".json")


def save_state(
    module: ClassifierModule,
    path: Path,
    *,
    kind: str,
    num_classes: int,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``module``'s trainable state to ``path`` and its sidecar; returns ``path``."""
    # safetensors refuses shared or strided storage; checkpoints are small, so copy.
    state = module.trainable_state_dict()
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}
    header = {"model_kind": kind, "num_classes": str(num_classes)}
    write_bytes_atomic(path, save(tensors, metadata=header))
    # safetensors has no checksum of its own: the digest lets `utilgen pool verify` find a
    # flipped bit in the tensor data, which opening the file cannot.
    sidecar = {"model_kind": kind, "num_classes": num_classes, **(metadata or {})}
    sidecar[SHA256_KEY] = safetensors_digest(path)
    write_json_atomic(sidecar_path(path), sidecar)
    return Path(path)


def _read_header(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_state(module: ClassifierModule, path: Path, *, kind: str, num_classes: int) -> None:
    """Load a checkpoint written by :func:`save_state` into ``module``.

    Raises:
        UtilgenError: the file is missing or not safetensors, or it was written by another
            model kind, class count or architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise UtilgenError(f"checkpoint {path} not found; pass a .safetensors file it wrote")
    try:
        header = _read_header(path)
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise UtilgenError(
            f"checkpoint {path} is not a readable safetensors file ({err}); pass one written by "
            "utilgen"
        ) from None
    saved_kind = header.get("model_kind", "?")
    saved_classes = header.get("num_classes", "?")
    if saved_kind != kind or saved_classes != str(num_classes):
        raise UtilgenError(
            f"checkpoint {path} holds a {saved_kind} model with {saved_classes} classes, not "
            f"{kind} with {num_classes}; load it with the task config it was trained with"
        )
    expected = module.trainable_state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shared = set(state) & set(expected)
    mismatched = sorted(k for k in shared if state[k].shape != expected[k].shape)
    if missing or unexpected or mismatched:
        first = (missing or unexpected or mismatched)[0]
        raise UtilgenError(
            f"checkpoint {path} does not fit this {kind} model (e.g. tensor {first!r}); "
            "load it with the task config it was trained with"
        )
    device = next(iter(expected.values())).device if expected else torch.device("cpu")
    module.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=False)


def load_checkpoint(model: TaskModel, path: str | Path) -> None:
    """Load the checkpoint at ``path`` into ``model`` (see :meth:`TaskModel.load`)."""
    model.load(Path(path))


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The JSON sidecar of a checkpoint ({} when it has none)."""
    side = sidecar_path(Path(path))
    if not side.is_file():
        return {}
    data: dict[str, Any] = json.loads(side.read_text(encoding="utf-8"))
    return data


def list_checkpoints(directory: str | Path) -> list[Path]:
    """``epoch-NNN.safetensors`` files in ``directory``, sorted by epoch ([] if none)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]
