"""Where trained built-in generators are cached, under which key, and how they are written.

Training takes minutes on a CPU, so a trained generator is kept on disk keyed by everything
that shapes its weights: the training fields of the config, the training data (ids, labels,
class names and pixels), the seed and utilgen's version. Sampling settings (guidance,
steps) are not part of the key: they are applied when the cached model is loaded.

A cache entry is written into a temporary sibling directory and renamed into place, so a
crash leaves at most a ``.tmp-*`` directory that is never read, never a half entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from utilgen import __version__
from utilgen.config import BuiltinDiffusionConfig
from utilgen.data.labelled import LabelledData

CACHE_ENV = "UTILGEN_CACHE_DIR"
CACHE_SUBDIR = "builtin-diffusion"


def cache_root(cfg: BuiltinDiffusionConfig) -> Path:
    """The directory holding cached generators: ``cfg.cache_dir`` if set, else
    ``$UTILGEN_CACHE_DIR/builtin-diffusion``, else ``~/.cache/utilgen/builtin-diffusion``."""
    if cfg.cache_dir is not None:
        return Path(cfg.cache_dir).expanduser()
    base = os.environ.get(CACHE_ENV)
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "utilgen"
    return root / CACHE_SUBDIR


def data_digest(data: LabelledData | None) -> str | None:
    """SHA-256 of a dataset's class names, ids, labels and pixels; None for no data."""
    if data is None:
        return None
    h = hashlib.sha256(json.dumps([list(data.class_names), list(data.ids)]).encode())
    h.update(np.asarray(data.labels, dtype=np.int64).tobytes())
    for item in data.items:
        array = np.ascontiguousarray(item)
        h.update(f"{array.dtype}{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def cache_key(
    cfg: BuiltinDiffusionConfig,
    *,
    task_train: LabelledData,
    broad: LabelledData | None,
    seed: int,
) -> str:
    """24 hex digits identifying the generator these inputs train."""
    record = {
        "config": cfg.training_fields(),
        "task_train": data_digest(task_train),
        "broad": data_digest(broad),
        "seed": seed,
        "utilgen": __version__,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:24]


def _fsync_tree(directory: Path) -> None:
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def write_directory_atomic(target: Path, write: Callable[[Path], object]) -> Path:
    """Run ``write(tmp)`` on a fresh temporary sibling of ``target``, then rename it to
    ``target``; returns ``target``.

    If ``target`` appeared meanwhile (another process finished first), that entry is kept
    and the temporary one removed: both hold the same model.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        write(tmp)
        _fsync_tree(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return target
