"""Content-addressed payload files: ``RUN/pool/blobs/ab/<sha256 hex>``.

A blob's name is the SHA-256 of its bytes, so identical payloads are stored once, a blob
is never rewritten with other content, and any blob can be checked on its own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from utilgen.atomic import write_bytes_atomic
from utilgen.errors import PoolError
from utilgen.pool.layout import RunLayout
from utilgen.pool.sample import content_hash

BLOB_NAME = re.compile(r"^[0-9a-f]{64}$")


def is_blob_name(name: str) -> bool:
    """Whether ``name`` looks like a blob name (64 lowercase hex characters)."""
    return bool(BLOB_NAME.match(name))


def _checked_path(run_dir: Path, blob: str) -> Path:
    # The name comes from the manifest, which could be damaged: never let it form a path
    # outside the blob folder.
    if not is_blob_name(blob):
        raise PoolError(
            f"invalid blob name {blob!r} in the pool of {run_dir}; "
            f"run `utilgen pool verify {run_dir}`"
        )
    return RunLayout(run_dir).blob(blob)


def has_valid_blob(run_dir: Path, blob: str) -> bool:
    """Whether blob ``blob`` exists and its bytes hash to its name."""
    path = _checked_path(run_dir, blob)
    try:
        return content_hash(path.read_bytes()) == blob
    except FileNotFoundError:
        return False


def write_blobs(run_dir: Path, payloads: Iterable[bytes]) -> list[str]:
    """Store many payloads, then make them durable with one ``os.sync()``; returns their
    names. Two fsyncs per blob dominated appending a dataset's real samples (milliseconds
    each, hundreds of blobs); the manifest that references the blobs is written after this
    returns, so a crash before the sync leaves only unreferenced (rewritable) blobs."""
    names = []
    wrote = False
    for payload in payloads:
        blob = content_hash(payload)
        if not has_valid_blob(run_dir, blob):
            write_bytes_atomic(RunLayout(run_dir).blob(blob), payload, durable=False)
            wrote = True
        names.append(blob)
    if wrote:
        os.sync()
    return names


def read_blob(run_dir: Path, blob: str) -> bytes:
    """The bytes of blob ``blob``, checked against its name; PoolError if missing or corrupt."""
    path = _checked_path(run_dir, blob)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PoolError(
            f"blob {path} is missing; run `utilgen pool verify {run_dir}` to list the "
            "damaged samples"
        ) from None
    if content_hash(data) != blob:
        raise PoolError(
            f"blob {path} is corrupt (its content does not match its hash); run "
            f"`utilgen pool verify {run_dir}` to list the damaged samples"
        )
    return data


def iter_blob_files(run_dir: Path) -> Iterator[Path]:
    """Every file under ``RUN/pool/blobs`` named like a blob and lying in its own shard
    (where ``read_blob`` looks for it), in sorted order."""
    root = RunLayout(run_dir).blobs_dir
    if not root.is_dir():
        return
    for shard in sorted(root.iterdir()):
        if shard.is_dir():
            for path in sorted(shard.iterdir()):
                if path.is_file() and is_blob_name(path.name) and path.name[:2] == shard.name:
                    yield path
