"""Where the pool lives inside a run directory (shared/DESIGN.md, "The run directory").

```
RUN/lock                     held while a process writes the run
RUN/pool/manifest.parquet    one row per sample (plus, while a writer appends, manifest.d/)
RUN/pool/blobs/ab/abcd...    payloads, named by their SHA-256
```
"""

from __future__ import annotations

from pathlib import Path

LOCK_FILE = "lock"
POOL_DIR = "pool"
MANIFEST_FILE = "manifest.parquet"
SEGMENTS_DIR = "manifest.d"
BLOBS_DIR = "blobs"


def lock_path(run_dir: Path) -> Path:
    """``RUN/lock``."""
    return run_dir / LOCK_FILE


def pool_dir(run_dir: Path) -> Path:
    """``RUN/pool``."""
    return run_dir / POOL_DIR


def manifest_path(run_dir: Path) -> Path:
    """``RUN/pool/manifest.parquet``."""
    return pool_dir(run_dir) / MANIFEST_FILE


def segments_dir(run_dir: Path) -> Path:
    """``RUN/pool/manifest.d``: rows appended since the base was last written
    (:mod:`utilgen.pool.manifest_log`)."""
    return pool_dir(run_dir) / SEGMENTS_DIR


def blobs_dir(run_dir: Path) -> Path:
    """``RUN/pool/blobs``."""
    return pool_dir(run_dir) / BLOBS_DIR


def blob_path(run_dir: Path, blob: str) -> Path:
    """``RUN/pool/blobs/<first two hex chars>/<blob>``: 256 folders keep listings short."""
    return blobs_dir(run_dir) / blob[:2] / blob
