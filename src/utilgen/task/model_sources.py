"""Where pretrained weights come from, and the one-line errors when they are not there.

Two sources: offline asset packages from the package registry (MiniLM, EfficientNet-Lite0;
see docs/assets.md), and transformers checkpoints given by hub id or local directory.
Nothing here downloads: a hub id works only if it is already in the local Hugging Face cache.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from utilgen.errors import ModelNotFoundError, first_line

T = TypeVar("T")


def import_asset_package(module: str, requirement: str, purpose: str) -> ModuleType:
    """Import the offline asset package ``module`` quietly (some print on import).

    Raises:
        ModelNotFoundError: the package is not installed; names the pip requirement.
    """
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return importlib.import_module(module)
    except ImportError:
        raise ModelNotFoundError(
            f"{purpose} needs the {requirement.split('==')[0]} package; "
            f"install it with `pip install {requirement}`"
        ) from None


def not_found_message(model_id: str, field: str = "task.model_path") -> str:
    """The one-line fix for a model that is not on this machine."""
    return (
        f"model {model_id!r} is neither a local directory nor in the offline Hugging Face "
        f"cache; download it where there is network (`hf download {model_id} --local-dir DIR`), "
        f"copy DIR here and set {field}=DIR"
    )


def load_pretrained(
    loader: Callable[..., T], model_id: str, *, trust_remote_code: bool, **kwargs: Any
) -> T:
    """``loader(model_id, **kwargs)`` (a ``from_pretrained``), with user-facing errors.

    A local directory is read with ``local_files_only`` so that a typo never reaches the
    network; anything else is a hub id, found only in the local cache when offline.

    Raises:
        ModelNotFoundError: the id or path is not on disk, or the model needs its own code
            while ``trust_remote_code`` is off.
    """
    local = Path(model_id).expanduser()
    if local.is_dir():
        kwargs.setdefault("local_files_only", True)
        model_id = str(local)
    elif local.exists() or model_id.startswith((".", "/", "~")):
        raise ModelNotFoundError(
            f"task.model_path {model_id!r} is not a model directory; pass a directory written "
            "by save_pretrained (config.json + weights) or a hub id"
        )
    try:
        return loader(model_id, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as err:
        if isinstance(err, ValueError) and "trust_remote_code" in str(err):
            raise ModelNotFoundError(
                f"model {model_id!r} runs code from its repository; set "
                "task.trust_remote_code=true only if you trust that code"
            ) from None
        if local.is_dir():
            raise ModelNotFoundError(
                f"task.model_path {model_id!r} holds no loadable model ({first_line(err)}); "
                "pass a directory written by save_pretrained"
            ) from None
        if isinstance(err, OSError):
            raise ModelNotFoundError(not_found_message(model_id)) from None
        raise
