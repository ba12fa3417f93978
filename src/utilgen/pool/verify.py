"""``verify_pool``: re-hash every blob and check the manifest against the blobs.

Verification only reads; it reports damage instead of raising, so that it works on the
very pools that ``PoolStore`` refuses to open (an unreadable manifest, missing blobs).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from utilgen.errors import PoolError
from utilgen.pool.blobs import is_blob_name, iter_blob_files
from utilgen.pool.layout import manifest_path, pool_dir
from utilgen.pool.sample import content_hash
from utilgen.pool.schema import read_manifest

_LISTED = 5  # ids named per problem in describe(); the report itself holds all of them


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify_pool`` found.

    Attributes:
        run_dir: the run directory checked.
        manifest_error: why ``pool/manifest.parquet`` could not be read; None if it could.
        n_rows: manifest rows (0 if unreadable).
        n_blobs: blob files re-hashed.
        missing: ids of samples whose blob file does not exist.
        corrupt: ids of samples whose blob's bytes do not hash to its name (bit flips,
            truncation).
        corrupt_blobs: names of every blob file that fails its hash, referenced or not
            (the only blob check possible when the manifest is unreadable).
        duplicate_ids: ids that occur in more than one row.
        unreferenced_blobs: intact blobs no row refers to, e.g. from an append that was
            killed before it committed; harmless, not counted as damage.
        stale_temp_files: temp files of an interrupted writer; the next writer removes
            them; not counted as damage.
    """

    run_dir: Path
    manifest_error: str | None
    n_rows: int
    n_blobs: int
    missing: tuple[str, ...] = ()
    corrupt: tuple[str, ...] = ()
    corrupt_blobs: tuple[str, ...] = ()
    duplicate_ids: tuple[str, ...] = ()
    unreferenced_blobs: int = 0
    stale_temp_files: int = 0

    @property
    def manifest_readable(self) -> bool:
        """Whether the manifest could be read and has the expected columns."""
        return self.manifest_error is None

    @property
    def ok(self) -> bool:
        """True when the pool is intact: readable manifest, every blob present and valid."""
        return (
            self.manifest_readable
            and not self.missing
            and not self.corrupt
            and not self.corrupt_blobs
            and not self.duplicate_ids
        )

    def describe(self) -> str:
        """A few lines for people: the verdict, then each problem with example ids."""
        lines = [
            f"pool of {self.run_dir}: {'OK' if self.ok else 'DAMAGED'} "
            f"({self.n_rows} rows, {self.n_blobs} blobs checked)"
        ]
        if self.manifest_error is not None:
            lines.append(f"manifest unreadable: {self.manifest_error}")
        for what, items in (
            ("missing blobs", self.missing),
            ("corrupt blobs", self.corrupt),
            ("corrupt blob files", self.corrupt_blobs),
            ("duplicate ids", self.duplicate_ids),
        ):
            if items:
                shown = ", ".join(items[:_LISTED]) + (", ..." if len(items) > _LISTED else "")
                lines.append(f"{what} ({len(items)}): {shown}")
        if self.unreferenced_blobs:
            lines.append(f"{self.unreferenced_blobs} unreferenced blob(s) (harmless)")
        if self.stale_temp_files:
            lines.append(
                f"{self.stale_temp_files} temp file(s) of an interrupted writer "
                "(removed when the run is resumed)"
            )
        return "\n".join(lines)


def verify_pool(run_dir: str | os.PathLike[str]) -> VerifyReport:
    """Check the pool of ``run_dir``; returns a report, raising only if it is no directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PoolError(f"run directory {run_dir} does not exist; pass an existing run directory")

    # 1. re-hash every blob file on disk
    valid: dict[str, bool] = {}
    for path in iter_blob_files(run_dir):
        valid[path.name] = content_hash(path.read_bytes()) == path.name
    corrupt_blobs = tuple(sorted(name for name, good in valid.items() if not good))
    stale = sum(1 for _ in pool_dir(run_dir).rglob(".*.tmp")) if pool_dir(run_dir).is_dir() else 0

    # 2. read the manifest, tolerating any damage
    error: str | None = None
    if not manifest_path(run_dir).is_file():
        error = f"{manifest_path(run_dir)} does not exist"
    else:
        try:
            table = read_manifest(run_dir)
        except (PoolError, OSError) as err:
            error = str(err)
    if error is not None:
        return VerifyReport(
            run_dir=run_dir,
            manifest_error=error,
            n_rows=0,
            n_blobs=len(valid),
            corrupt_blobs=corrupt_blobs,
            stale_temp_files=stale,
        )

    # 3. check every row against the blobs
    ids = [str(i) for i in table.column("id").to_pylist()]
    blobs = [str(b) for b in table.column("blob").to_pylist()]
    missing = tuple(
        i for i, b in zip(ids, blobs, strict=True) if not is_blob_name(b) or b not in valid
    )
    corrupt = tuple(i for i, b in zip(ids, blobs, strict=True) if valid.get(b) is False)
    duplicates = tuple(sorted(i for i, n in Counter(ids).items() if n > 1))
    referenced = set(blobs)
    unreferenced = sum(1 for name, good in valid.items() if good and name not in referenced)
    return VerifyReport(
        run_dir=run_dir,
        manifest_error=None,
        n_rows=len(ids),
        n_blobs=len(valid),
        missing=missing,
        corrupt=corrupt,
        corrupt_blobs=corrupt_blobs,
        duplicate_ids=duplicates,
        unreferenced_blobs=unreferenced,
        stale_temp_files=stale,
    )
