"""``PoolStore``: the run's samples, as a Parquet manifest plus content-addressed blobs.

Crash safety rests on one ordering. An ``append`` writes (and fsyncs) every new blob
first, then commits the whole batch with one atomic file write: a segment of the manifest
log (:mod:`utilgen.pool.manifest_log`), so that an append costs O(batch), not O(pool). A
process killed at any point leaves the manifest with or without the batch; at worst some
blobs no row refers to yet (harmless: the same append, re-run, finds them) and temp files,
which the next writer deletes on open. Appends are idempotent, so a resumed run re-appends
what it had and ends with every sample once.

Writing needs the run lock (``PoolStore.open(run_dir, writable=True)``); reading does not,
and a reader always sees whole batches because every file is replaced atomically. Setting a
column or the keep decisions rewrites the base ``manifest.parquet`` with every row, and so
does closing a writable store.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, SupportsFloat

import numpy as np
import pandas as pd
import pyarrow as pa

from utilgen.atomic import remove_stale_temp_files
from utilgen.data.labelled import LabelledData, Modality
from utilgen.errors import PoolError
from utilgen.pool.blobs import read_blob, write_blobs
from utilgen.pool.convert import class_names_from_manifest, labelled_from_manifest
from utilgen.pool.layout import RunLayout
from utilgen.pool.lock import RunLock
from utilgen.pool.manifest_log import (
    LoadedManifest,
    ManifestLog,
    list_segments,
    load_manifest,
    read_manifest,
)
from utilgen.pool.payload import check_payload, decode_item
from utilgen.pool.sample import SOURCES, SPLITS, Sample
from utilgen.pool.schema import (
    COLUMNS,
    EXTRA_COLUMN_PATTERN,
    IDENTITY_COLUMNS,
    empty_table,
    row_to_sample,
    samples_to_table,
    table_to_frame,
    with_extra_columns,
)

log = logging.getLogger(__name__)

Identity = tuple[Any, ...]


def _identity(sample: Sample) -> Identity:
    return tuple(
        sample.blob if name == "blob" else getattr(sample, name) for name in IDENTITY_COLUMNS
    )


def _identities(table: pa.Table) -> dict[str, Identity]:
    columns = [table.column(name).to_pylist() for name in IDENTITY_COLUMNS]
    return dict(zip(table.column("id").to_pylist(), zip(*columns, strict=True), strict=True))


def _same_pixels(png_a: bytes, png_b: bytes) -> bool:
    a, b = decode_item(png_a, "image"), decode_item(png_b, "image")
    assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
    return a.shape == b.shape and bool(np.array_equal(a, b))


def filter_manifest(
    frame: pd.DataFrame,
    *,
    source: str | None = None,
    split: str | None = None,
    kept_only: bool = False,
    round: int | None = None,
) -> pd.DataFrame:
    """The rows of manifest ``frame`` that match every given condition, in order."""
    if source is not None and source not in SOURCES:
        raise PoolError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if split is not None and split not in SPLITS:
        raise PoolError(f"split must be one of train, val, test, meta or '', got {split!r}")
    mask = np.ones(len(frame), dtype=bool)
    if source is not None:
        mask &= (frame["source"] == source).to_numpy()
    if split is not None:
        mask &= (frame["split"] == split).to_numpy()
    if kept_only:
        mask &= frame["kept"].to_numpy(dtype=bool)
    if round is not None:
        mask &= (frame["round"] == round).to_numpy()
    return frame[mask]


class PoolStore:
    """The sample pool of one run directory (``RUN/pool``).

    ``PoolStore(run_dir)`` opens an existing pool read-only; every read goes to disk, so
    it sees the latest committed appends of a writer. ``PoolStore.open(run_dir,
    writable=True)`` takes the run lock and yields a store that can append and set
    columns; it creates the pool if there is none and keeps the manifest in memory, which
    is safe because nobody else may write while it holds the lock.
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, lock: RunLock | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.layout = RunLayout(self.run_dir)
        self._lock = lock
        self._table: pa.Table | None = None
        self._log: ManifestLog | None = None
        self._ids: dict[str, Identity] = {}
        if lock is None:
            if not self.layout.manifest.is_file():
                raise PoolError(
                    f"{self.layout.manifest} not found: {self.run_dir} is not a run "
                    "directory or has no samples yet; pass the --out directory of `utilgen run`"
                )
            return
        if not lock.held or lock.run_dir.resolve() != self.run_dir.resolve():
            raise ValueError("a writable PoolStore needs the held RunLock of its run directory")
        # Only a lock holder may delete temp files: a reader doing so could delete the
        # manifest a live writer is about to rename into place.
        removed = remove_stale_temp_files(self.layout.pool_dir)
        if removed:
            log.info(
                "removed %d temp file(s) left in %s by an interrupted writer",
                removed,
                self.layout.pool_dir,
            )
        fresh = not self.layout.manifest.is_file()
        if not fresh:
            loaded = load_manifest(self.run_dir)
        elif list_segments(self.run_dir):
            # rows without their base: starting a new pool here would delete them
            raise PoolError(
                f"{self.layout.manifest} is missing but {self.layout.segments_dir} "
                f"holds appended rows; run `utilgen pool verify {self.run_dir}`, then "
                "`utilgen run ... --repair`, which sets both aside"
            )
        else:
            loaded = LoadedManifest(empty_table(), generation=0, base_rows=0)
        self._log = ManifestLog(self.run_dir, loaded)
        self._table = loaded.table
        if fresh:
            self._write(loaded.table)  # an empty pool: readers find a manifest from now on
        self._ids = _identities(self._require_table())

    @classmethod
    @contextmanager
    def open(cls, run_dir: str | os.PathLike[str], writable: bool = False) -> Iterator[PoolStore]:
        """The pool of ``run_dir``; with ``writable=True`` the run lock is held throughout.

        Raises RunLockedError at once if another process holds the lock.
        """
        if not writable:
            yield cls(run_dir)
            return
        with RunLock(run_dir) as lock:
            store = cls(run_dir, lock=lock)
            yield store
            # Not on an exception: the log is already whole on disk, and a failing disk
            # should not turn the error being raised into another one.
            store.compact()

    # -- reading ---------------------------------------------------------------------------

    @property
    def writable(self) -> bool:
        """Whether this store holds the run lock and may write."""
        return self._lock is not None and self._lock.held

    def table(self) -> pa.Table:
        """The manifest as an Arrow table (fixed columns, then utility columns)."""
        # The cache is only trusted while the lock guarantees nobody else writes.
        return self._require_table() if self.writable else read_manifest(self.run_dir)

    def manifest(self) -> pd.DataFrame:
        """The manifest as a DataFrame, one row per sample in append order."""
        return table_to_frame(self.table())

    def ids(self) -> list[str]:
        """Every sample id, in append order."""
        return [str(i) for i in self.table().column("id").to_pylist()]

    def __len__(self) -> int:
        return int(self.table().num_rows)

    def __contains__(self, sample_id: object) -> bool:
        if self.writable:
            return sample_id in self._ids
        return sample_id in set(self.ids())

    @property
    def modality(self) -> Modality | None:
        """The pool's modality, or None while it is empty."""
        column = self.table().column("modality")
        return column[0].as_py() if len(column) else None

    def read_payload(self, blob: str) -> bytes:
        """The payload stored as ``blob``, checked against its hash (PoolError if damaged)."""
        return read_blob(self.run_dir, blob)

    def samples(self, ids: Sequence[str] | None = None) -> list[Sample]:
        """The stored samples with ``ids`` (all if None), in that order, payloads included."""
        frame = self.manifest().set_index("id", drop=False)
        if ids is not None:
            unknown = [i for i in ids if i not in frame.index]
            if unknown:
                raise PoolError(f"no sample with id {unknown[0]!r} in the pool of {self.run_dir}")
            frame = frame.loc[list(ids)]
        return [
            row_to_sample(row, self.read_payload(row["blob"]))
            for row in frame.to_dict(orient="records")
        ]

    def load_labelled(
        self,
        *,
        source: str | None = None,
        split: str | None = None,
        kept_only: bool = False,
        round: int | None = None,
        class_names: Sequence[str] | None = None,
        name: str = "pool",
    ) -> LabelledData:
        """The matching samples as ``LabelledData`` (decoded items), in append order.

        Class names default to those recorded in the whole pool, so that every part read
        this way shares label indices.
        """
        frame = self.manifest()
        if frame.empty:
            raise PoolError(f"the pool of {self.run_dir} is empty; nothing to load")
        names = tuple(class_names) if class_names is not None else class_names_from_manifest(frame)
        modality: Modality = frame["modality"].iloc[0]
        rows = filter_manifest(frame, source=source, split=split, kept_only=kept_only, round=round)
        return labelled_from_manifest(rows, self.read_payload, names, modality, name=name)

    # -- writing ---------------------------------------------------------------------------

    def append(self, samples: Iterable[Sample]) -> int:
        """Store ``samples`` as one atomic batch; returns how many rows were added.

        Samples whose id is already stored with the same content (blob, label, modality,
        source, split) are skipped, so re-running an interrupted append is safe. An id
        stored with other content raises PoolError and nothing is written.
        """
        table = self._require_writable()
        # 1. check the batch and drop what is already stored
        batch = list(samples)
        modality = self.modality or (batch[0].modality if batch else None)
        new: dict[str, Sample] = {}
        for sample in batch:
            if not isinstance(sample, Sample):
                raise TypeError(f"append takes Samples, got {type(sample).__name__}")
            if sample.modality != modality:
                raise PoolError(
                    f"sample {sample.id} is {sample.modality} but the pool of {self.run_dir} "
                    f"holds {modality}; one run directory stores one modality"
                )
            problem = check_payload(sample.payload, sample.modality)
            if problem:
                raise ValueError(f"sample {sample.id}: {problem}")
            stored = self._ids.get(sample.id)
            earlier = new.get(sample.id)
            if stored is not None:
                self._check_same(sample, stored)
            elif earlier is not None:
                if _identity(earlier) != _identity(sample):
                    raise PoolError(
                        f"sample id {sample.id!r} appears twice in one batch with different "
                        "content; give every sample its own id"
                    )
            else:
                new[sample.id] = sample
        if not new:
            return 0

        # 2. blobs first: no committed row may ever point to a blob that is not on disk
        payloads = {sample.blob: sample.payload for sample in new.values()}
        write_blobs(self.run_dir, payloads.values())

        # 3. commit the batch with one atomic write (a manifest segment, or a new base)
        rows = with_extra_columns(samples_to_table(list(new.values())), table)
        table = pa.concat_tables([table, rows])
        self._require_log().commit_rows(table)
        self._table = table
        for sample in new.values():
            self._ids[sample.id] = _identity(sample)
        return len(new)

    def set_column(self, name: str, values: Mapping[str, SupportsFloat]) -> None:
        """Add or update float64 column ``name`` (e.g. ``utility_r000_marginal``).

        ``values`` maps sample id -> value; rows not in it keep their value (null in a new
        column). Fixed columns cannot be set this way (see :meth:`set_kept`).
        """
        table = self._require_writable()
        if name in COLUMNS:
            raise ValueError(f"{name} is a fixed manifest column; only extra columns can be set")
        if not EXTRA_COLUMN_PATTERN.match(name):
            raise ValueError(f"column name {name!r} must match {EXTRA_COLUMN_PATTERN.pattern}")
        positions = self._positions(values)
        if name in table.column_names:
            column: list[Any] = table.column(name).cast(pa.float64()).to_pylist()
        else:
            column = [None] * table.num_rows
        for sample_id, value in values.items():
            column[positions[sample_id]] = float(value)
        array = pa.array(column, type=pa.float64())
        if name in table.column_names:
            index = table.column_names.index(name)
            table = table.set_column(index, pa.field(name, pa.float64()), array)
        else:
            table = table.append_column(pa.field(name, pa.float64()), array)
        self._write(table)

    def set_kept(self, decisions: Mapping[str, tuple[bool, str]]) -> None:
        """Record selection: ``decisions`` maps sample id -> (kept, reason)."""
        table = self._require_writable()
        positions = self._positions(decisions)
        kept = table.column("kept").to_pylist()
        reason = table.column("reason").to_pylist()
        for sample_id, (keep, why) in decisions.items():
            kept[positions[sample_id]] = bool(keep)
            reason[positions[sample_id]] = str(why)
        for name, values in (("kept", kept), ("reason", reason)):
            index = table.column_names.index(name)
            field = table.schema.field(name)
            table = table.set_column(index, field, pa.array(values, type=field.type))
        self._write(table)

    def compact(self) -> None:
        """Fold the appended segments into ``manifest.parquet``, which then holds every row
        (closing a writable store does this)."""
        self._require_writable()
        log = self._require_log()
        if log.segments:
            self._write(self._require_table().combine_chunks())

    # -- internals -------------------------------------------------------------------------

    def _require_log(self) -> ManifestLog:
        assert self._log is not None  # set in __init__ for writable stores
        return self._log

    def _require_table(self) -> pa.Table:
        assert self._table is not None  # set in __init__ for writable stores
        return self._table

    def _require_writable(self) -> pa.Table:
        if not self.writable:
            raise PoolError(
                f"the pool of {self.run_dir} is open read-only; write through "
                "`PoolStore.open(run_dir, writable=True)`, which takes the run lock"
            )
        return self._require_table()

    def _write(self, table: pa.Table) -> None:
        self._require_log().rewrite(table)
        self._table = table

    def _positions(self, ids: Iterable[str]) -> dict[str, int]:
        index = {sample_id: i for i, sample_id in enumerate(self.ids())}
        unknown = [i for i in ids if i not in index]
        if unknown:
            raise PoolError(
                f"no sample with id {unknown[0]!r} in the pool of {self.run_dir} "
                f"({len(unknown)} unknown id(s)); score only stored samples"
            )
        return index

    def _check_same(self, sample: Sample, stored: Identity) -> None:
        """Raise PoolError unless ``sample`` is the one stored as ``stored``."""
        mine = _identity(sample)
        if mine == stored:
            return
        differ = [n for n, a, b in zip(IDENTITY_COLUMNS, mine, stored, strict=True) if a != b]
        # An image re-encoded by another PNG encoder build (e.g. after a Pillow upgrade)
        # gets other bytes for the same pixels; that is still the same sample.
        if differ == ["blob"] and sample.modality == "image":
            stored_blob = stored[IDENTITY_COLUMNS.index("blob")]
            if _same_pixels(self.read_payload(stored_blob), sample.payload):
                return
        raise PoolError(
            f"sample id {sample.id!r} is already in the pool of {self.run_dir} with a "
            f"different {', '.join('content' if n == 'blob' else n for n in differ)}; "
            "give new samples new ids or use a new run directory"
        )

    def __repr__(self) -> str:
        mode = "writable" if self.writable else "read-only"
        return f"PoolStore({str(self.run_dir)!r}, {mode})"
