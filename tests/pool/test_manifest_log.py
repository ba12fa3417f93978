"""The manifest log (issue 10): appends cost O(batch), crashes between its writes are safe."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pool_samples import BATCH_SIZE, batch

from utilgen.errors import PoolError
from utilgen.pool import PoolStore, verify_pool
from utilgen.pool import manifest_log as log_module
from utilgen.pool.layout import manifest_path, segments_dir
from utilgen.pool.lock import RunLock
from utilgen.pool.manifest_log import (
    chain,
    list_segments,
    load_manifest,
    read_manifest,
    segment_path,
)


def _ids(b0: int, b1: int) -> list[str]:
    return [s.id for b in range(b0, b1) for s in batch(b)]


def _rows_written(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the row count of every manifest file (base or segment) written."""
    written: list[int] = []
    real = log_module.table_to_bytes

    def counting(table: pa.Table) -> bytes:
        written.append(table.num_rows)
        return real(table)

    monkeypatch.setattr(log_module, "table_to_bytes", counting)
    return written


def test_appends_write_each_row_a_logarithmic_number_of_times(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with PoolStore.open(run_dir, writable=True) as store:
        store.append([s for b in range(40) for s in batch(b)])  # a base of 240 rows
        written = _rows_written(monkeypatch)
        appends = 32
        for b in range(40, 40 + appends):
            store.append(batch(b))
            # a reader sees every committed row, in order, while the writer goes on
            assert PoolStore(run_dir).ids() == _ids(0, b + 1)
        segments = list_segments(run_dir)
        during = list(written)
    # Rewriting the base per append would write 240..426 rows each time (>10,000 in all).
    # The log writes each appended row once, then once more each time a merge makes its
    # segment at least 1.5 times larger (the older of two merged is at most twice the newer).
    assert sum(during) <= appends * BATCH_SIZE * (1 + math.log(appends, 1.5))
    assert max(during) < 240  # the base was never rewritten by an append
    assert 1 <= len(segments) <= math.log2(appends) + 1
    # closing folds the log into manifest.parquet, which alone then holds every row
    assert written[len(during) :] == [432]
    assert not segments_dir(run_dir).exists()
    assert pq.read_table(manifest_path(run_dir)).column("id").to_pylist() == _ids(0, 72)


def test_the_log_is_folded_into_the_base_once_it_is_as_large(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with PoolStore.open(run_dir, writable=True) as store:
        store.append(batch(0) + batch(1))  # base: 12 rows
        written = _rows_written(monkeypatch)
        store.append(batch(2))
        assert written == [6] and len(list_segments(run_dir)) == 1
        store.append(batch(3))  # 12 rows in the log, as many as the base: fold
        assert written == [6, 24] and not list_segments(run_dir)
        assert pq.read_table(manifest_path(run_dir)).num_rows == 24


def test_setting_a_column_rewrites_the_base_and_orphans_the_segments(run_dir: Path) -> None:
    with PoolStore.open(run_dir, writable=True) as store:
        store.append(batch(0) + batch(1) + batch(2))
        store.append(batch(3))
        assert list_segments(run_dir)
        before = load_manifest(run_dir).generation
        store.set_column("utility_r001_marginal", {s.id: 0.5 for s in batch(3)})
        assert not list_segments(run_dir)
        loaded = load_manifest(run_dir)
        assert loaded.generation == before + 1 and loaded.base_rows == 24
        # appends after it go to segments of the new generation, with the new column
        store.append(batch(4))
        assert {s.generation for s in list_segments(run_dir)} == {before + 1}
        frame = PoolStore(run_dir).manifest()
        assert frame["id"].tolist() == _ids(0, 5)
        assert (
            frame["utility_r001_marginal"].notna().tolist()
            == [False] * 18 + [True] * 6 + [False] * 6
        )


def test_files_a_crash_leaves_between_writes_and_deletes_read_as_every_row_once(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A writer killed right after a merge or a base rewrite leaves the files these
    # replace: keep every one of them, as if each delete never happened. A store opened
    # without PoolStore.open is not compacted when its lock goes, as a killed writer's.
    with RunLock(run_dir) as lock:
        store = PoolStore(run_dir, lock=lock)
        store.append(batch(0) + batch(1) + batch(2) + batch(3))
        with monkeypatch.context() as patch:
            patch.setattr(log_module.Path, "unlink", lambda self, missing_ok=False: None)
            for b in range(4, 12):
                store.append(batch(b))
            store.set_column("utility_r001_marginal", {s.id: 1.0 for s in batch(11)})
            store.append(batch(12))
            store.append(batch(13))
        leftovers = list_segments(run_dir)
        generations = {s.generation for s in leftovers}
        assert len(generations) >= 2 and len(leftovers) > 3  # orphans and merged-away
        assert read_manifest(run_dir).column("id").to_pylist() == _ids(0, 14)
    # the next writer deletes every file the chain does not use, and reads the same rows
    with RunLock(run_dir) as lock:
        store = PoolStore(run_dir, lock=lock)
        kept = list_segments(run_dir)
        assert {s.generation for s in kept} == {max(generations)}
        loaded = load_manifest(run_dir)
        assert kept == chain(kept, loaded.generation, loaded.base_rows) and kept
        assert store.ids() == _ids(0, 14)
    assert verify_pool(run_dir).ok


def test_a_reader_racing_a_merge_reads_again(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with PoolStore.open(run_dir, writable=True) as store:
        store.append(batch(0) + batch(1) + batch(2) + batch(3))
        store.append(batch(4))
        stale = list_segments(run_dir)
        store.append(batch(5))  # merges batch 4's segment away
        assert all(not s.path.exists() for s in stale)
        listings = iter([stale])
        real = log_module.list_segments
        # the reader lists the folder just before the merge, then opens a deleted file
        monkeypatch.setattr(
            log_module, "list_segments", lambda run: next(listings, None) or real(run)
        )
        assert read_manifest(run_dir).column("id").to_pylist() == _ids(0, 6)


def test_a_damaged_segment_is_named_by_the_reader_and_by_verify(run_dir: Path) -> None:
    with RunLock(run_dir) as lock:
        store = PoolStore(run_dir, lock=lock)
        store.append(batch(0) + batch(1) + batch(2))
        store.append(batch(3))
    (segment,) = list_segments(run_dir)
    data = bytearray(segment.path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    segment.path.write_bytes(bytes(data))
    with pytest.raises(PoolError, match="is unreadable") as raised:
        read_manifest(run_dir)
    assert str(segment.path) in str(raised.value)
    report = verify_pool(run_dir)
    assert not report.manifest_readable and str(segment.path) in report.describe()


def test_a_writer_refuses_segments_whose_base_is_missing(run_dir: Path) -> None:
    with RunLock(run_dir) as lock:
        store = PoolStore(run_dir, lock=lock)
        store.append(batch(0) + batch(1) + batch(2))
        store.append(batch(3))
    manifest_path(run_dir).unlink()
    (segment,) = list_segments(run_dir)
    with (
        RunLock(run_dir) as lock,
        pytest.raises(PoolError, match=r"is missing but .* holds appended rows"),
    ):
        PoolStore(run_dir, lock=lock)
    assert segment.path.exists()  # nothing deleted
    assert not manifest_path(run_dir).exists()


def test_a_reader_racing_a_base_rewrite_reads_the_new_base(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with PoolStore.open(run_dir, writable=True) as store:
        store.append(batch(0) + batch(1) + batch(2) + batch(3))
        store.append(batch(4))
        real = log_module.list_segments
        rewrites = iter([True])

        def list_then_rewrite(run: Path) -> list[log_module.Segment]:
            # between the reader's base and its listing, the writer folds the log into a
            # new base and deletes the segment: the listing finds none of the old generation
            if next(rewrites, False):
                store.compact()
            return real(run)

        monkeypatch.setattr(log_module, "list_segments", list_then_rewrite)
        assert read_manifest(run_dir).column("id").to_pylist() == _ids(0, 5)


def test_an_unreadable_generation_is_an_error_and_newer_segments_are_kept(
    run_dir: Path,
) -> None:
    with RunLock(run_dir) as lock:
        store = PoolStore(run_dir, lock=lock)
        store.append(batch(0) + batch(1) + batch(2))
        store.append(batch(3))
    (segment,) = list_segments(run_dir)
    # a segment of a generation newer than the base: not this log's, so never deleted
    stray = segment_path(run_dir, segment.generation + 5, 0, 6)
    stray.write_bytes(segment.path.read_bytes())
    with PoolStore.open(run_dir, writable=True) as writer:
        assert writer.ids() == _ids(0, 4)
    assert stray.exists() and not segment.path.exists()  # folded in at close
    # a base whose generation is not a number: an error, not generation 0
    table = pq.read_table(manifest_path(run_dir))
    meta = {**(table.schema.metadata or {}), log_module.GENERATION_KEY: b"x1"}
    pq.write_table(table.replace_schema_metadata(meta), manifest_path(run_dir))
    with pytest.raises(PoolError, match="records generation b'x1', not a number"):
        read_manifest(run_dir)
