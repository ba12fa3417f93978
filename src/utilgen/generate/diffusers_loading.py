"""Loading a diffusers pipeline and its LoRA file from disk only: the text-to-image pipeline
(local directory or offline-cached hub id, one-line errors) and the adapter file with its
SHA-256 that names it in provenance.

Split from :mod:`utilgen.generate.diffusers_backend`, which keeps the generator: finding
and loading files is independent of how images are generated from the pipeline.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from utilgen.errors import ModelNotFoundError, first_line

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def _not_found(model: str) -> str:
    return (
        f"generator.diffusers.model {model!r} is neither a local pipeline directory nor in "
        f"the offline Hugging Face cache; download it where there is network (`hf download "
        f"{model} --local-dir DIR`), copy DIR here and set generator.diffusers.model=DIR"
    )


def load_text2image_pipeline(model: str, *, dtype: torch.dtype, variant: str | None = None) -> Any:
    """``AutoPipelineForText2Image.from_pretrained(model)`` from disk only.

    A local directory is read with ``local_files_only``; any other string is a hub id that
    must already be in the offline cache. Nothing is downloaded.

    Raises:
        ModelNotFoundError: the id is not cached, or the path is not a pipeline directory.
    """
    from diffusers import AutoPipelineForText2Image

    local = Path(model).expanduser()
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"generator.diffusers.model {model!r} has no model_index.json; pass the "
                "directory of a whole diffusers pipeline (written by save_pretrained)"
            )
        source = str(local)
    elif local.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelNotFoundError(
            f"generator.diffusers.model {model!r} is not a pipeline directory; pass a directory "
            "with model_index.json (diffusers save_pretrained) or a cached hub id"
        )
    else:
        source = model
    try:
        return AutoPipelineForText2Image.from_pretrained(
            source, torch_dtype=dtype, variant=variant, local_files_only=True
        )
    except (OSError, ValueError) as err:
        if local.is_dir():
            raise ModelNotFoundError(
                f"generator.diffusers.model {model!r} cannot be loaded ({first_line(err)}); pass a "
                "directory written by a diffusers pipeline's save_pretrained"
            ) from None
        raise ModelNotFoundError(_not_found(model)) from None


def file_sha256(path: Path) -> str:
    """SHA-256 (64 hex characters) of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def lora_file(path: str | Path) -> Path:
    """The adapter file of ``path``: the file itself or ``path/pytorch_lora_weights.safetensors``.

    Raises:
        ModelNotFoundError: no such safetensors file.
    """
    path = Path(path).expanduser()
    file = path / LORA_WEIGHT_NAME if path.is_dir() else path
    if not file.is_file() or file.suffix != ".safetensors":
        raise ModelNotFoundError(
            f"generator.diffusers.lora.path {str(path)!r} is not a LoRA adapter; pass a "
            f".safetensors file written by save_lora_weights or its directory"
        )
    return file
