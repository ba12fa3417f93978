"""A content digest of a safetensors file that does not depend on how it was serialised.

safetensors writes its metadata map in the order of a per-process hash map, so two
processes saving the same tensors produce different bytes; a resumed run must still match
an uninterrupted one. The digest therefore covers what the file means: every tensor's name,
dtype, shape and raw bytes in name order, and the metadata in key order.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from safetensors import safe_open


def safetensors_digest(path: str | Path) -> str:
    """The sha256 hex digest of ``path``'s tensors and metadata (see the module docstring).

    Raises:
        safetensors.SafetensorError, OSError: the file cannot be read as safetensors.
    """
    digest = hashlib.sha256()
    with safe_open(str(path), framework="numpy") as f:
        metadata = f.metadata() or {}
        digest.update(json.dumps(metadata, sort_keys=True).encode("utf-8"))
        for name in sorted(f.keys()):
            array = f.get_tensor(name)
            header = json.dumps([name, str(array.dtype), list(array.shape)])
            digest.update(header.encode("utf-8"))
            digest.update(array.tobytes())
    return digest.hexdigest()
