"""``verify_pool``: re-hash every blob, check the manifest against the blobs, and open every
checkpoint a finished round names.

Verification only reads; it reports damage instead of raising, so that it works on the
very run directories that ``PoolStore`` refuses to open (an unreadable manifest, missing
blobs). ``utilgen run`` calls it before resuming (:mod:`utilgen.pool.repair`): a digits
run's 728 blobs take 0.1 s (0.3 s with a cold page cache), 5,000 32x32 PNGs (21 MB) 0.5 s
(1.2 s cold), so every resume re-hashes everything rather than trust file sizes or dates.

Checkpoints: a round is finished once its ``rounds/NNN/metrics.json`` exists, and its
``train_loss`` (one value per epoch) names the ``checkpoints/epoch-NNN.safetensors`` files
training wrote; later rounds and the report load them. Each is opened with safetensors,
which checks that its header is valid and covers the whole file (a truncated file fails);
tensor bytes carry no checksum, so a flipped bit inside a tensor goes unnoticed.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open

from utilgen.digest import safetensors_digest
from utilgen.errors import PoolError
from utilgen.pool.blobs import is_blob_name, iter_blob_files
from utilgen.pool.layout import RoundLayout, RunLayout
from utilgen.pool.manifest_log import read_manifest
from utilgen.pool.payload import PNG_SIGNATURE
from utilgen.pool.sample import content_hash

_LISTED = 5  # ids named per problem in describe(); the report itself holds all of them

# Every PNG ends with an empty IEND chunk: 4 length bytes, the type, 4 CRC bytes.
_IEND = b"IEND"


def checkpoint_name(epoch: int) -> str:
    """``epoch-NNN.safetensors``: the name ``utilgen.task.checkpoint`` gives epoch
    ``epoch``'s checkpoint (restated because the pool sits below the task package; a test
    pins the two together)."""
    return f"epoch-{epoch:03d}.safetensors"


def looks_truncated(data: bytes) -> bool:
    """Whether blob bytes that fail their hash lost their end: an empty file, or a PNG whose
    closing IEND chunk is not where it ends (a changed CRC byte still reads as changed). A
    cut text blob cannot be told from an edited one and counts as changed."""
    if not data:
        return True
    return data.startswith(PNG_SIGNATURE) and data[-8:-4] != _IEND


def run_started(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds anything a run wrote (a pool or a round), i.e. whether
    there is something to verify before resuming it."""
    layout = RunLayout(run_dir)
    return layout.manifest.exists() or layout.blobs_dir.exists() or bool(layout.round_dirs())


# The digest ``utilgen.task.checkpoint`` writes into a checkpoint's JSON sidecar (same name,
# suffix .json); restated here as the pool sits below the task package (a test pins them).
SIDECAR_SHA256 = "sha256"


def _safetensors_problem(path: Path) -> str | None:
    """None if safetensors opens ``path`` (valid header covering the file) and the file
    hashes to the digest its sidecar recorded (checkpoints written before the digest have
    none), else why not."""
    try:
        recorded = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = None  # no sidecar to compare with: opening the file is all there is
    expected = recorded.get(SIDECAR_SHA256) if isinstance(recorded, dict) else None
    try:
        if expected is None:
            with safe_open(str(path), framework="numpy") as f:
                f.keys()
        # the digest opens the file itself: one read checks the header and the tensors
        elif safetensors_digest(path) != expected:
            return "its tensors differ from the sha256 its sidecar recorded"
    except (SafetensorError, OSError) as err:
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    return None


def _check_rounds(run_dir: Path) -> tuple[list[str], list[str], list[str]]:
    """Paths (relative to ``run_dir``) of finished rounds' missing and corrupt checkpoints,
    and of ``metrics.json`` files that cannot be read. An unfinished round is skipped: its
    training starts over and rewrites every checkpoint."""
    missing: list[str] = []
    corrupt: list[str] = []
    unreadable: list[str] = []
    for _, directory in RunLayout(run_dir).round_dirs():
        files = RoundLayout(directory)
        metrics = files.metrics
        if not metrics.exists():
            continue
        try:
            epochs = len(json.loads(metrics.read_text(encoding="utf-8"))["train_loss"])
        except (OSError, ValueError, KeyError, TypeError):
            unreadable.append(metrics.relative_to(run_dir).as_posix())
            continue
        for epoch in range(1, epochs + 1):
            path = files.checkpoints / checkpoint_name(epoch)
            relative = path.relative_to(run_dir).as_posix()
            if not path.is_file():
                missing.append(relative)
            elif _safetensors_problem(path) is not None:
                corrupt.append(relative)
    return missing, corrupt, unreadable


def round_of(relative: str) -> int:
    """The round index of a path ``rounds/NNN/...`` relative to the run directory."""
    return int(Path(relative).parts[1])


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify_pool`` found.

    Attributes:
        run_dir: the run directory checked.
        manifest_error: why ``pool/manifest.parquet`` could not be read; None if it could.
        n_rows: manifest rows (0 if unreadable).
        n_blobs: blob files re-hashed.
        missing: ids of samples whose blob file does not exist.
        corrupt: ids of samples whose blob's bytes were changed (bit flips, overwrites):
            they no longer hash to the blob's name.
        truncated: ids of samples whose blob fails its hash and lost its end (empty, or a
            PNG without its closing chunk).
        corrupt_blobs: names of every blob file that fails its hash, referenced or not
            (the only blob check possible when the manifest is unreadable).
        duplicate_ids: ids that occur in more than one row.
        missing_checkpoints: checkpoints a finished round's metrics name but that do not
            exist (paths relative to ``run_dir``).
        corrupt_checkpoints: such checkpoints that safetensors cannot open (truncated,
            garbled header).
        unreadable_metrics: finished rounds' ``metrics.json`` files that are not valid JSON
            with a ``train_loss`` list.
        unreferenced_corrupt_blobs: blob files that fail their hash and that no row refers
            to (harmless to the run, but a sign of disk trouble; counted as damage).
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
    truncated: tuple[str, ...] = ()
    corrupt_blobs: tuple[str, ...] = ()
    duplicate_ids: tuple[str, ...] = ()
    missing_checkpoints: tuple[str, ...] = ()
    corrupt_checkpoints: tuple[str, ...] = ()
    unreadable_metrics: tuple[str, ...] = ()
    unreferenced_corrupt_blobs: int = 0
    unreferenced_blobs: int = 0
    stale_temp_files: int = 0

    @property
    def manifest_readable(self) -> bool:
        """Whether the manifest could be read and has the expected columns."""
        return self.manifest_error is None

    @property
    def ok(self) -> bool:
        """True when the run directory is intact: readable manifest, every blob present and
        valid, every checkpoint of a finished round present and readable."""
        return self.manifest_readable and not self.damage()

    def damage(self) -> list[str]:
        """One short phrase per kind of damage found, e.g. ``"2 missing blob(s)"``."""
        found = [] if self.manifest_readable else ["unreadable manifest"]
        if not self.manifest_readable and self.corrupt_blobs:
            found.append(f"{len(self.corrupt_blobs)} corrupt blob file(s)")
        for what, items in self._itemised():
            if items:
                found.append(f"{len(items)} {what}")
        if self.unreferenced_corrupt_blobs:
            found.append(f"{self.unreferenced_corrupt_blobs} unreferenced corrupt blob file(s)")
        return found

    def describe(self) -> str:
        """A few lines for people: the verdict, then each problem with example ids."""
        lines = [
            f"run directory {self.run_dir}: {'OK' if self.ok else 'DAMAGED'} "
            f"({self.n_rows} rows, {self.n_blobs} blobs checked)"
        ]
        if self.manifest_error is not None:
            lines.append(f"manifest unreadable: {self.manifest_error}")
        # By hash, the files to look at (without rows, all there is to name).
        lines.append(_listed("corrupt blob files", self.corrupt_blobs))
        for what, items in self._itemised():
            lines.append(_listed(what, items))
        if not self.ok:
            lines.append(
                "repair: re-run `utilgen run` with its config, --out and --repair (drops the "
                "damaged samples, redoes the steps whose checkpoints are damaged, resumes)"
            )
        if self.unreferenced_blobs:
            lines.append(f"{self.unreferenced_blobs} unreferenced blob(s) (harmless)")
        if self.stale_temp_files:
            lines.append(
                f"{self.stale_temp_files} temp file(s) of an interrupted writer "
                "(removed when the run is resumed)"
            )
        return "\n".join(line for line in lines if line)

    def _itemised(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        return (
            ("missing blob(s)", self.missing),
            ("corrupt blob(s), bytes changed", self.corrupt),
            ("truncated blob(s)", self.truncated),
            ("duplicate id(s)", self.duplicate_ids),
            ("missing checkpoint(s)", self.missing_checkpoints),
            ("corrupt checkpoint(s)", self.corrupt_checkpoints),
            ("unreadable round metrics", self.unreadable_metrics),
        )


def _listed(what: str, items: tuple[str, ...]) -> str:
    """``"what (n): a, b, ..."``, or "" when there are no items."""
    if not items:
        return ""
    shown = ", ".join(items[:_LISTED]) + (", ..." if len(items) > _LISTED else "")
    return f"{what} ({len(items)}): {shown}"


def verify_pool(run_dir: str | os.PathLike[str]) -> VerifyReport:
    """Check the pool and the finished rounds' checkpoints of ``run_dir``; returns a
    report, raising only if ``run_dir`` is no directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PoolError(f"run directory {run_dir} does not exist; pass an existing run directory")
    layout = RunLayout(run_dir)

    # 1. re-hash every blob file on disk; a failing one is truncated or changed
    valid: dict[str, bool] = {}
    cut: set[str] = set()
    for path in iter_blob_files(run_dir):
        data = path.read_bytes()
        valid[path.name] = content_hash(data) == path.name
        if not valid[path.name] and looks_truncated(data):
            cut.add(path.name)
    corrupt_blobs = tuple(sorted(name for name, good in valid.items() if not good))
    pool = layout.pool_dir
    stale = sum(1 for _ in pool.rglob(".*.tmp")) if pool.is_dir() else 0

    # 2. open every checkpoint a finished round names
    missing_ckpt, corrupt_ckpt, unreadable_metrics = _check_rounds(run_dir)

    # 3. read the manifest, tolerating any damage
    error: str | None = None
    if not layout.manifest.is_file():
        error = f"{layout.manifest} does not exist"
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
            missing_checkpoints=tuple(missing_ckpt),
            corrupt_checkpoints=tuple(corrupt_ckpt),
            unreadable_metrics=tuple(unreadable_metrics),
            stale_temp_files=stale,
        )

    # 4. check every row against the blobs
    ids = [str(i) for i in table.column("id").to_pylist()]
    blobs = [str(b) for b in table.column("blob").to_pylist()]
    missing = tuple(
        i for i, b in zip(ids, blobs, strict=True) if not is_blob_name(b) or b not in valid
    )
    failing = [(i, b) for i, b in zip(ids, blobs, strict=True) if valid.get(b) is False]
    duplicates = tuple(sorted(i for i, n in Counter(ids).items() if n > 1))
    referenced = set(blobs)
    unreferenced = sum(1 for name, good in valid.items() if good and name not in referenced)
    return VerifyReport(
        run_dir=run_dir,
        manifest_error=None,
        n_rows=len(ids),
        n_blobs=len(valid),
        missing=missing,
        corrupt=tuple(i for i, b in failing if b not in cut),
        truncated=tuple(i for i, b in failing if b in cut),
        corrupt_blobs=corrupt_blobs,
        duplicate_ids=duplicates,
        missing_checkpoints=tuple(missing_ckpt),
        corrupt_checkpoints=tuple(corrupt_ckpt),
        unreadable_metrics=tuple(unreadable_metrics),
        unreferenced_corrupt_blobs=sum(1 for name in corrupt_blobs if name not in referenced),
        unreferenced_blobs=unreferenced,
        stale_temp_files=stale,
    )
