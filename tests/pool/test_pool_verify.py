"""verify_pool: re-hashes blobs, tells changed from truncated and missing ones, survives a
broken manifest, and opens every checkpoint a finished round names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pool_samples import batch
from safetensors.numpy import save_file

from utilgen.atomic import write_bytes_atomic
from utilgen.errors import PoolError
from utilgen.pool import PoolStore, verify_pool
from utilgen.pool.layout import blob_path, manifest_path
from utilgen.pool.manifest_log import read_manifest
from utilgen.pool.schema import table_to_bytes
from utilgen.pool.verify import SIDECAR_SHA256, checkpoint_name, looks_truncated
from utilgen.task.checkpoint import CHECKPOINT_PATTERN
from utilgen.task.checkpoint import checkpoint_name as task_checkpoint_name


@pytest.fixture
def filled(run_dir: Path) -> Path:
    with PoolStore.open(run_dir, writable=True) as store:
        store.append(batch(0))
        store.append(batch(1))
    return run_dir


def _lines(report_text: str, start: str) -> list[str]:
    return [line for line in report_text.splitlines() if line.startswith(start)]


def test_an_intact_pool_is_ok(filled: Path) -> None:
    report = verify_pool(filled)
    assert report.ok and report.manifest_readable and report.damage() == []
    assert report.n_rows == 12 and report.n_blobs == 12
    assert report.describe().splitlines() == [
        f"run directory {filled}: OK (12 rows, 12 blobs checked)"
    ]


def test_a_flipped_byte_is_found(filled: Path) -> None:
    sample = batch(1)[3]
    path = blob_path(filled, sample.blob)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    report = verify_pool(filled)
    assert not report.ok
    assert report.corrupt == (sample.id,) and report.corrupt_blobs == (sample.blob,)
    assert report.missing == () and report.truncated == ()
    assert _lines(report.describe(), "corrupt blob(s), bytes changed") == [
        "corrupt blob(s), bytes changed (1): syn/001/03"
    ]
    assert report.damage() == ["1 corrupt blob(s), bytes changed"]


def test_a_truncated_and_a_missing_blob_are_found(filled: Path) -> None:
    truncated, emptied, missing = batch(0)[1], batch(0)[2], batch(0)[4]
    path = blob_path(filled, truncated.blob)
    path.write_bytes(path.read_bytes()[:-5])
    blob_path(filled, emptied.blob).write_bytes(b"")
    blob_path(filled, missing.blob).unlink()
    report = verify_pool(filled)
    assert report.truncated == (truncated.id, emptied.id) and report.corrupt == ()
    assert report.missing == (missing.id,)
    assert not report.ok and report.n_blobs == 11
    text = report.describe()
    assert _lines(text, "truncated blob(s)") == ["truncated blob(s) (2): syn/000/01, syn/000/02"]
    assert _lines(text, "missing blob(s)") == ["missing blob(s) (1): syn/000/04"]
    assert "--repair" in text.splitlines()[-1]


def test_only_a_png_that_lost_its_end_counts_as_truncated() -> None:
    png = batch(0)[0].payload
    assert looks_truncated(b"") and looks_truncated(png[:-1]) and looks_truncated(png[:20])
    assert looks_truncated(png[:-12]) and looks_truncated(png[:-4])
    assert not looks_truncated(png[:-1] + b"x")  # a changed CRC byte: changed, not cut
    # a cut text cannot be told from an edited one
    assert not looks_truncated(b"a text that was cut"[:7])


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
    assert _lines(report.describe(), "manifest unreadable: ")
    assert report.damage() == ["unreadable manifest"]


def test_a_garbled_manifest_is_reported(filled: Path) -> None:
    path = manifest_path(filled)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(range(64))
    path.write_bytes(bytes(data))
    blob = batch(0)[0].blob
    blob_path(filled, blob).write_bytes(b"junk")
    report = verify_pool(filled)
    assert not report.manifest_readable and report.n_rows == 0
    # without rows, the damaged blob files are named by their hash
    assert _lines(report.describe(), "corrupt blob files") == [f"corrupt blob files (1): {blob}"]
    assert report.damage() == ["unreadable manifest", "1 corrupt blob file(s)"]


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


def test_a_corrupt_blob_no_row_refers_to_is_damage(filled: Path) -> None:
    orphan = batch(5)[0]
    blob_path(filled, orphan.blob).parent.mkdir(parents=True, exist_ok=True)
    blob_path(filled, orphan.blob).write_bytes(orphan.payload[:-3])
    report = verify_pool(filled)
    assert not report.ok and report.corrupt == () and report.truncated == ()
    assert report.damage() == ["1 unreferenced corrupt blob file(s)"]


def test_duplicate_ids_are_found(filled: Path) -> None:
    table = read_manifest(filled)
    write_bytes_atomic(manifest_path(filled), table_to_bytes(pa.concat_tables([table, table])))
    report = verify_pool(filled)
    assert len(report.duplicate_ids) == 12 and not report.ok
    assert report.damage() == ["12 duplicate id(s)"]


# -- checkpoints of finished rounds ------------------------------------------------------


def test_the_checkpoint_name_is_the_task_package_s() -> None:
    for epoch in (1, 7, 123):
        assert checkpoint_name(epoch) == task_checkpoint_name(epoch)
        assert CHECKPOINT_PATTERN.match(checkpoint_name(epoch))


def _finished_round(run_dir: Path, index: int, epochs: int) -> Path:
    """``rounds/NNN`` with ``epochs`` safetensors checkpoints and a metrics.json naming them."""
    directory = run_dir / "rounds" / f"{index:03d}"
    (directory / "checkpoints").mkdir(parents=True)
    for epoch in range(1, epochs + 1):
        weights = {"head.weight": np.full((3, 4), epoch, dtype=np.float32)}
        save_file(weights, str(directory / "checkpoints" / checkpoint_name(epoch)))
    (directory / "metrics.json").write_text(json.dumps({"train_loss": [1.0] * epochs}))
    return directory


def test_missing_and_corrupt_checkpoints_of_finished_rounds_are_found(filled: Path) -> None:
    stage1 = _finished_round(filled, 0, epochs=3)
    round1 = _finished_round(filled, 1, epochs=2)
    assert verify_pool(filled).ok

    (stage1 / "checkpoints" / "epoch-002.safetensors").unlink()
    cut = round1 / "checkpoints" / "epoch-001.safetensors"
    cut.write_bytes(cut.read_bytes()[:-10])
    garbled = round1 / "checkpoints" / "epoch-002.safetensors"
    data = bytearray(garbled.read_bytes())
    data[12:20] = b"\xff" * 8  # inside the JSON header
    garbled.write_bytes(bytes(data))
    report = verify_pool(filled)
    assert not report.ok
    assert report.missing_checkpoints == ("rounds/000/checkpoints/epoch-002.safetensors",)
    assert report.corrupt_checkpoints == (
        "rounds/001/checkpoints/epoch-001.safetensors",
        "rounds/001/checkpoints/epoch-002.safetensors",
    )
    text = report.describe()
    assert _lines(text, "missing checkpoint(s) (1): rounds/000/")
    assert _lines(text, "corrupt checkpoint(s) (2): rounds/001/checkpoints/epoch-001")
    assert report.damage() == ["1 missing checkpoint(s)", "2 corrupt checkpoint(s)"]


def test_a_flipped_bit_in_a_checkpoint_s_tensors_is_found(filled: Path) -> None:
    # safetensors still opens such a file: only the digest in the sidecar tells
    import torch

    from utilgen.config import TaskConfig
    from utilgen.task.checkpoint import SHA256_KEY, sidecar_path
    from utilgen.task.factory import build_task_model

    assert SHA256_KEY == SIDECAR_SHA256
    model = build_task_model(
        TaskConfig(model="small-cnn"), modality="image", num_classes=3,
        example_items=[np.zeros((8, 8), dtype=np.float32)], device=torch.device("cpu"), seed=0,
    )
    directory = filled / "rounds" / "000"
    path = model.save(directory / "checkpoints" / checkpoint_name(1))
    (directory / "metrics.json").write_text(json.dumps({"train_loss": [1.0]}))
    assert "sha256" in json.loads(sidecar_path(path).read_text())
    assert verify_pool(filled).ok
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # the last tensor's bytes, past the header
    path.write_bytes(bytes(data))
    report = verify_pool(filled)
    assert report.corrupt_checkpoints == ("rounds/000/checkpoints/epoch-001.safetensors",)
    assert "rounds/000/checkpoints/epoch-001" in report.describe()


def test_an_unfinished_round_s_checkpoints_are_not_checked(filled: Path) -> None:
    # its training starts over and rewrites them
    directory = _finished_round(filled, 1, epochs=2)
    (directory / "metrics.json").unlink()
    (directory / "checkpoints" / "epoch-001.safetensors").write_bytes(b"half")
    assert verify_pool(filled).ok


def test_an_unreadable_round_metrics_file_is_found(filled: Path) -> None:
    directory = _finished_round(filled, 0, epochs=2)
    (directory / "metrics.json").write_text('{"train_loss": [0.5, 0.')
    report = verify_pool(filled)
    assert report.unreadable_metrics == ("rounds/000/metrics.json",) and not report.ok
    assert _lines(report.describe(), "unreadable round metrics (1): rounds/000/metrics.json")
