"""Refuse to resume a damaged run directory, or repair it: ``utilgen run ... --repair``.

``utilgen run`` calls :func:`check_run_dir` before it touches a run directory it resumes:
under the run lock, :func:`~utilgen.pool.verify.verify_pool` re-hashes every blob and opens
every checkpoint of a finished round (cheap: see :mod:`utilgen.pool.verify`). Without
``repair`` any damage stops the run with one line that names it and points to ``utilgen
pool verify`` and ``--repair``. With ``repair`` it fixes what it can without losing anything
healthy, then the run resumes as after a crash. A repair killed half-way is finished by
the next one (every step is atomic or idempotent):

* a damaged blob of a real sample (missing, changed, truncated) is written again from the
  dataset when its re-encoded item hashes to the blob's name; the row stays as it was,
  scores included;
* every other row whose blob is damaged is dropped from the manifest (one atomic write),
  and so is every repeat of a duplicated id. A dropped real sample comes back when the
  run's stage-1 pool step appends the real data again. A dropped synthetic sample of a
  finished round is *not* regenerated (its round's metrics stand); one of an unfinished
  round is, because that round generates whatever requests the pool lacks;
* corrupt blob files (bytes that are no sample's payload) are deleted;
* a missing or corrupt checkpoint of a finished round, or an unreadable ``metrics.json``:
  the checkpoint and the round's ``metrics.json`` are deleted so that the step that wrote
  them (stage-1 training, or the whole round) runs again; its training rewrites every
  checkpoint;
* an unreadable manifest (its base or one of its appended segments) is set aside as
  ``pool/manifest.parquet.damaged`` and ``pool/manifest.d.damaged`` (kept, never deleted).
  It was the only record of the synthetic samples, so every generation round runs again
  (their ``metrics.json`` are deleted; blobs already on disk are reused) and the real
  samples are appended again; stage 1's training, which reads the dataset, is kept.

Whenever a step is redone, ``summary.json`` is deleted too, so that a summary only ever
exists for a finished run. Every repair is recorded in ``RUN/repair.json``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from utilgen.atomic import write_json_atomic
from utilgen.data import Splits
from utilgen.errors import PoolError
from utilgen.pool.blobs import write_blobs
from utilgen.pool.layout import REPAIR_RECORD as REPAIR_RECORD  # kept for its importers
from utilgen.pool.layout import RoundLayout, RunLayout
from utilgen.pool.lock import RunLock
from utilgen.pool.manifest_log import load_manifest, write_base
from utilgen.pool.payload import encode_item
from utilgen.pool.sample import content_hash
from utilgen.pool.verify import VerifyReport, round_of, run_started, verify_pool

log = logging.getLogger(__name__)

SET_ASIDE_SUFFIX = ".damaged"
STAGE1_ROUND = 0


@dataclass(frozen=True)
class Repair:
    """What :func:`repair_run` did.

    Attributes:
        restored: ids of real samples whose blob was written again from the dataset.
        dropped_real: ids of real samples dropped from the manifest (appended again by the
            run's stage-1 pool step).
        dropped_synthetic: ids of synthetic samples dropped from the manifest.
        lost_synthetic: those of them no round regenerates (their round had finished and
            does not run again).
        dropped_duplicates: ids whose repeated rows were dropped (the first row stays).
        deleted_blob_files: corrupt blob files deleted.
        deleted_checkpoints: damaged checkpoints deleted (paths relative to the run dir).
        rerun_rounds: rounds whose ``metrics.json`` was deleted so that they run again
            (0 is stage 1's training).
        manifest_set_aside: where an unreadable manifest was moved, None if it was readable.
    """

    restored: tuple[str, ...] = ()
    dropped_real: tuple[str, ...] = ()
    dropped_synthetic: tuple[str, ...] = ()
    lost_synthetic: tuple[str, ...] = ()
    dropped_duplicates: tuple[str, ...] = ()
    deleted_blob_files: int = 0
    deleted_checkpoints: tuple[str, ...] = ()
    rerun_rounds: tuple[int, ...] = ()
    manifest_set_aside: str | None = None

    def describe(self) -> list[str]:
        """One line per action taken, for the log."""
        lines = []
        if self.manifest_set_aside:
            lines.append(
                f"unreadable manifest moved to {self.manifest_set_aside}; the real samples "
                "are appended again and the generation rounds regenerate theirs"
            )
        if self.restored:
            lines.append(f"restored {len(self.restored)} real sample(s) from the dataset")
        if self.dropped_real:
            lines.append(
                f"dropped {len(self.dropped_real)} damaged real sample(s); stage 1 appends "
                "them again from the dataset"
            )
        if self.dropped_synthetic:
            regenerated = len(self.dropped_synthetic) - len(self.lost_synthetic)
            lost = (
                f"{len(self.lost_synthetic)} of finished rounds are not regenerated (e.g. "
                f"{self.lost_synthetic[0]})"
                if self.lost_synthetic
                else "none is lost"
            )
            lines.append(
                f"dropped {len(self.dropped_synthetic)} damaged synthetic sample(s): "
                f"{regenerated} are regenerated by their round, {lost}"
            )
        if self.dropped_duplicates:
            lines.append(f"dropped the repeated rows of {len(self.dropped_duplicates)} id(s)")
        if self.deleted_blob_files:
            lines.append(f"deleted {self.deleted_blob_files} corrupt blob file(s)")
        if self.deleted_checkpoints:
            lines.append(f"deleted damaged checkpoint(s) {', '.join(self.deleted_checkpoints)}")
        if self.rerun_rounds:
            rounds = ", ".join(
                "stage 1" if r == STAGE1_ROUND else f"round {r}" for r in self.rerun_rounds
            )
            lines.append(f"{rounds} will run again")
        return lines


def refusal_message(report: VerifyReport) -> str:
    """The one line ``utilgen run`` stops with on a damaged run directory."""
    run_dir = report.run_dir
    return (
        f"run directory {run_dir} is damaged ({', '.join(report.damage())}); "
        f"`utilgen pool verify {run_dir}` lists it; re-run this `utilgen run` command with "
        "--repair to drop the damaged samples (real ones are restored from the dataset; "
        "synthetic ones of finished rounds are not regenerated), redo the steps whose "
        "checkpoints are damaged and resume"
    )


def check_run_dir(
    run_dir: str | os.PathLike[str], splits: Splits | None, *, repair: bool
) -> Repair | None:
    """Before a run resumes in ``run_dir``: raise PoolError if it is damaged, or with
    ``repair`` repair it. Returns the repair made, None if nothing was damaged (or
    ``run_dir`` holds no run yet). ``splits``, the run's data, lets real samples be
    restored in place; without them they are dropped.

    The check holds the run lock (RunLockedError if another process writes the run): a
    writer appending meanwhile would show blobs the manifest names before they were hashed.
    """
    run_dir = Path(run_dir)
    if not run_started(run_dir):
        return None
    with RunLock(run_dir):
        report = verify_pool(run_dir)
        if report.ok:
            return None
        if not repair:
            raise PoolError(refusal_message(report))
        done = repair_run(report, splits)
    for line in done.describe():
        log.warning("repair of %s: %s", run_dir, line)
    return done


def repair_run(report: VerifyReport, splits: Splits | None) -> Repair:
    """Repair the damage in ``report`` (see the module docstring); the caller holds the run
    lock. Returns what was done, also appended to ``RUN/repair.json``."""
    run_dir = report.run_dir
    layout = RunLayout(run_dir)
    # 1. blob files whose bytes are no sample's payload
    for name in report.corrupt_blobs:
        layout.blob(name).unlink(missing_ok=True)

    # 2. the manifest: restore and drop rows, or set an unreadable one aside
    finished = {i for i, d in layout.round_dirs() if RoundLayout(d).metrics.exists()}
    rerun: set[int] = set()
    if report.manifest_readable:
        done, synthetic_rounds = _repair_rows(run_dir, report, splits)
    else:
        # the base first: a repair killed in between still finds no manifest, and sets
        # the segments aside next time
        done = Repair(manifest_set_aside=_set_aside(layout.manifest))
        _set_aside(layout.segments_dir)
        synthetic_rounds = {}
        rerun = finished - {STAGE1_ROUND}

    # 3. checkpoints: delete the damaged ones and the metrics that make their step skip
    for relative in (*report.missing_checkpoints, *report.corrupt_checkpoints):
        path = run_dir / relative
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)  # its sidecar
        rerun.add(round_of(relative))
    rerun.update(round_of(relative) for relative in report.unreadable_metrics)
    if rerun:
        # first: a summary must never outlive a round it summarises
        layout.summary.unlink(missing_ok=True)
    folders = dict(layout.round_dirs())
    for index in rerun:
        RoundLayout(folders[index]).metrics.unlink(missing_ok=True)

    kept_finished = finished - rerun
    done = replace(
        done,
        lost_synthetic=tuple(i for i, r in synthetic_rounds.items() if r in kept_finished),
        deleted_blob_files=len(report.corrupt_blobs),
        deleted_checkpoints=report.corrupt_checkpoints,
        rerun_rounds=tuple(sorted(rerun)),
    )
    _record(run_dir, done)
    return done


def _repair_rows(
    run_dir: Path, report: VerifyReport, splits: Splits | None
) -> tuple[Repair, dict[str, int]]:
    """Restore real samples' blobs from ``splits``, drop the other damaged rows and repeated
    ids with one atomic manifest write. Returns the row fields of the ``Repair`` and the
    round of every dropped synthetic sample."""
    loaded = load_manifest(run_dir)
    table = loaded.table
    ids = [str(i) for i in table.column("id").to_pylist()]
    damaged = set(report.missing) | set(report.corrupt) | set(report.truncated)
    restored = _restore_from_dataset(run_dir, table, damaged, splits) if damaged else set()
    damaged -= restored
    seen: set[str] = set()
    keep = []
    for sample_id in ids:
        keep.append(sample_id not in damaged and sample_id not in seen)
        seen.add(sample_id)
    if not all(keep):
        write_base(run_dir, table.filter(pa.array(keep)), loaded.generation + 1)
    rows = table.select(["id", "source", "round"]).to_pylist()
    dropped = [row for row in rows if row["id"] in damaged]
    done = Repair(
        restored=tuple(i for i in ids if i in restored),
        dropped_real=tuple(r["id"] for r in dropped if r["source"] == "real"),
        dropped_synthetic=tuple(r["id"] for r in dropped if r["source"] != "real"),
        dropped_duplicates=tuple(sorted(set(report.duplicate_ids) - damaged)),
    )
    return done, {r["id"]: int(r["round"]) for r in dropped if r["source"] != "real"}


def _restore_from_dataset(
    run_dir: Path, table: pa.Table, damaged: set[str], splits: Splits | None
) -> set[str]:
    """Ids of the damaged real samples whose item in ``splits`` encodes to exactly their
    blob again (same id, same split), after writing those blobs; the rest must be dropped
    (e.g. a Pillow upgrade changed the PNG bytes: stage 1 then appends them anew)."""
    if splits is None:
        return set()
    positions: dict[str, dict[str, int]] = {}
    payloads: dict[str, bytes] = {}
    for row in table.select(["id", "source", "split", "blob"]).to_pylist():
        if (
            row["id"] not in damaged
            or row["source"] != "real"
            or row["split"] not in ("train", "val", "test", "meta")
        ):
            continue
        part = getattr(splits, row["split"])
        if part is None:  # a meta row, and this run reserves no meta set
            continue
        index = positions.setdefault(row["split"], {i: n for n, i in enumerate(part.ids)})
        if row["id"] not in index:
            continue
        payload = encode_item(part.items[index[row["id"]]], part.modality)
        if content_hash(payload) == row["blob"]:
            payloads[row["id"]] = payload
    write_blobs(run_dir, payloads.values())
    return set(payloads)


def _set_aside(path: Path) -> str | None:
    """Move an unreadable manifest out of the way without overwriting an earlier one;
    returns its new path (None if there was no file)."""
    if not path.exists():
        return None
    target = path.with_name(path.name + SET_ASIDE_SUFFIX)
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}{SET_ASIDE_SUFFIX}-{n}")
        n += 1
    os.replace(path, target)
    return str(target)


def _record(run_dir: Path, done: Repair) -> None:
    """Append ``done`` to ``RUN/repair.json`` (a list, oldest first)."""
    path = RunLayout(run_dir).repair_record
    history: list[dict[str, Any]] = []
    if path.is_file():
        try:
            history = list(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError):
            history = []  # a damaged record is not worth stopping a repair for
    entry = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **asdict(done)}
    write_json_atomic(path, [*history, entry])
