"""verify_pool: re-hashes blobs, finds missing and corrupt ones, survives a broken manifest."""

from __future__ import annotations

from pathlib import Path

import pytest
from pool_samples import batch

from utilgen.errors import PoolError
from utilgen.pool import PoolStore, verify_pool
from utilgen.pool.layout import blob_path, manifest_path


@pytest.fixture
def filled(run_dir: Path) -> Path:
    with PoolStore.open(run_dir, writable=True) as store:
        store.append(batch(0))
        store.append(batch(1))
    return run_dir


def test_an_intact_pool_is_ok(filled: Path) -> None:
    report = verify_pool(filled)
    assert report.ok and report.manifest_readable
    assert report.n_rows == 12 and report.n_blobs == 12
    assert report.describe().splitlines()[0].endswith("OK (12 rows, 12 blobs checked)")


def test_a_flipped_byte_is_found(filled: Path) -> None:
    sample = batch(1)[3]
    path = blob_path(filled, sample.blob)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    report = verify_pool(filled)
    assert not report.ok
    assert report.corrupt == (sample.id,) and report.corrupt_blobs == (sample.blob,)
    assert report.missing == ()
    assert "corrupt blobs (1): syn/001/03" in report.describe()


def test_a_truncated_and_a_missing_blob_are_found(filled: Path) -> None:
    truncated, missing = batch(0)[1], batch(0)[4]
    path = blob_path(filled, truncated.blob)
    path.write_bytes(path.read_bytes()[:10])
    blob_path(filled, missing.blob).unlink()
    report = verify_pool(filled)
    assert report.corrupt == (truncated.id,) and report.missing == (missing.id,)
    assert not report.ok and report.n_blobs == 11


def test_a_blob_outside_its_shard_is_missing(filled: Path) -> None:
    # read_blob only looks in RUN/pool/blobs/<first two hex chars>/, so a moved file is lost.
    moved = batch(0)[2]
    path = blob_path(filled, moved.blob)
    other = "00" if moved.blob[:2] != "00" else "01"
    (path.parent.parent / other).mkdir(exist_ok=True)
    path.rename(path.parent.parent / other / moved.blob)
    report = verify_pool(filled)
    assert report.missing == (moved.id,) and not report.ok and report.n_blobs == 11
    with PoolStore.open(filled) as store, pytest.raises(PoolError, match="is missing"):
        store.read_payload(moved.blob)


def test_a_truncated_manifest_is_reported_not_raised(filled: Path) -> None:
    path = manifest_path(filled)
    path.write_bytes(path.read_bytes()[:100])
    report = verify_pool(filled)
    assert not report.ok and not report.manifest_readable
    assert "unreadable" in (report.manifest_error or "")
    assert report.n_blobs == 12 and report.corrupt_blobs == ()  # blobs still checked
    assert "manifest unreadable" in report.describe()


def test_an_empty_or_absent_manifest_is_reported(filled: Path, tmp_path: Path) -> None:
    manifest_path(filled).write_bytes(b"")
    assert not verify_pool(filled).manifest_readable
    manifest_path(filled).unlink()
    assert "does not exist" in (verify_pool(filled).manifest_error or "")
    with pytest.raises(PoolError, match="does not exist"):
        verify_pool(tmp_path / "nowhere")


def test_uncommitted_blobs_and_temp_files_are_harmless(filled: Path) -> None:
    (manifest_path(filled).parent / ".manifest.parquet.x.tmp").write_bytes(b"partial")
    orphan = batch(5)[0]
    blob_path(filled, orphan.blob).parent.mkdir(parents=True, exist_ok=True)
    blob_path(filled, orphan.blob).write_bytes(orphan.payload)
    report = verify_pool(filled)
    assert report.ok and report.unreferenced_blobs == 1 and report.stale_temp_files == 1
