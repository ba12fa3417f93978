"""Acceptance (issue 11, item 3): damage in a run directory is found, refused and repaired
without losing anything healthy.

Each test damages a copy of one finished tiny run in one way: digits (5-shot, 20 per
class), one static round of 30 images by the untrained built-in generator of
``tests/loop/tiny_builtin.py`` with a top-2 marginal selection, 2 epochs per model. Then
``verify_pool`` must name the damage, ``run`` must refuse to resume with one line that
points to ``utilgen pool verify`` and ``--repair``, ``run(..., repair=True)`` must finish
with a run directory ``verify_pool`` passes, and every healthy row must still be there,
unchanged: where the repair can restore everything, the repaired run must equal the
undamaged one file for file (``kill_resume.differences``: manifest, scores, checkpoints
tensor for tensor, metrics without wall time).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from kill_resume import differences

from utilgen.cli import main
from utilgen.config import RunConfig, resolve_config
from utilgen.errors import PoolError, RunLockedError
from utilgen.loop.run import run
from utilgen.pool import RunLock, verify_pool
from utilgen.pool.layout import blob_path, manifest_path
from utilgen.pool.manifest_log import read_manifest, segment_path, write_base
from utilgen.pool.repair import REPAIR_RECORD, check_run_dir
from utilgen.pool.schema import table_to_bytes
from utilgen.progress import set_quiet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loop"))
from tiny_builtin import prepared

pytestmark = pytest.mark.usefixtures("quiet_one_thread")

SETS = [
    "task.epochs=2",
    "data.k_shot=5",
    "data.max_per_class=20",
    "generator.kind=builtin-diffusion",
    "generator.per_class=3",
    "strategy=static",
    "loop.rounds=1",
    "valuation.scores=[marginal]",
    "valuation.selection=[{rule: top_k, score: marginal, k: 2}]",
]


def _config() -> RunConfig:
    return resolve_config("digits-real-only", SETS)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The undamaged run (one thread, as the tests' runs: checkpoints must match bit for bit).

    The repaired runs are compared with it exactly (blobs by hash, checkpoints tensor for
    tensor, metrics and scores as written). That holds by construction: a repair redoes the
    same steps with the same seeds and inputs, in this process, on one thread, so every
    number it recomputes is the same computation on the same numbers."""
    out = tmp_path_factory.mktemp("corruption") / "reference"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    set_quiet(True)
    try:
        run(_config(), out, prepared=prepared(_config()), report=False)
    finally:
        torch.set_num_threads(threads)
        set_quiet(False)
    return out


@pytest.fixture
def run_dir(reference: Path, tmp_path: Path) -> Path:
    """A copy of the reference run, to damage."""
    return Path(shutil.copytree(reference, tmp_path / "run"))


def _manifest(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(manifest_path(run_dir))


def _resume(run_dir: Path, *, repair: bool = False) -> dict[str, Any]:
    return run(
        _config(), run_dir, prepared=prepared(_config()), report=False, repair=repair
    ).summary.to_dict()


def _refusal(run_dir: Path) -> str:
    """The one line ``run`` refuses ``run_dir`` with."""
    with pytest.raises(PoolError) as refused:
        _resume(run_dir)
    message = str(refused.value)
    assert "\n" not in message
    assert f"`utilgen pool verify {run_dir}`" in message and "--repair" in message
    return message


def _repaired(run_dir: Path) -> dict[str, Any]:
    """Resume with repair; returns what the repair recorded (and removes the record, which
    an undamaged run does not have)."""
    _resume(run_dir, repair=True)
    report = verify_pool(run_dir)
    assert report.ok, report.describe()
    record = run_dir / REPAIR_RECORD
    entries = json.loads(record.read_text(encoding="utf-8"))
    record.unlink()
    assert len(entries) == 1
    entry: dict[str, Any] = entries[0]
    return entry


def _row(reference: Path, source: str, split: str = "") -> pd.Series:
    frame = _manifest(reference)
    kept = frame[(frame["source"] == source) & (frame["split"] == split) & frame["kept"]]
    return kept.iloc[len(kept) // 2]


# -- blobs -----------------------------------------------------------------------------------


def test_a_flipped_byte_drops_only_that_synthetic_sample(reference: Path, run_dir: Path) -> None:
    row = _row(reference, "synthetic")
    path = blob_path(run_dir, row["blob"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))

    assert verify_pool(run_dir).corrupt == (row["id"],)
    assert "(1 corrupt blob(s), bytes changed)" in _refusal(run_dir)
    done = _repaired(run_dir)
    assert done["dropped_synthetic"] == done["lost_synthetic"] == [row["id"]]
    assert done["rerun_rounds"] == [] and done["deleted_blob_files"] == 1

    # every other row as it was, scores and keep decisions included; round 1 not redone
    expected = _manifest(reference).query("id != @row.id").reset_index(drop=True)
    pd.testing.assert_frame_equal(_manifest(run_dir), expected)
    summary = json.loads((reference / "summary.json").read_text())
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert _resume(run_dir) == summary  # healthy again: resumes without --repair


def test_a_truncated_real_blob_is_restored_from_the_dataset(reference: Path, run_dir: Path) -> None:
    row = _row(reference, "real", "train")
    path = blob_path(run_dir, row["blob"])
    path.write_bytes(path.read_bytes()[:-20])

    assert verify_pool(run_dir).truncated == (row["id"],)
    assert "(1 truncated blob(s))" in _refusal(run_dir)
    done = _repaired(run_dir)
    assert done["restored"] == [row["id"]] and done["dropped_real"] == []
    assert differences(reference, run_dir) == []


def test_a_missing_real_blob_is_dropped_then_appended_again(reference: Path, run_dir: Path) -> None:
    row = _row(reference, "real", "test")
    blob_path(run_dir, row["blob"]).unlink()

    assert verify_pool(run_dir).missing == (row["id"],)
    assert "(1 missing blob(s))" in _refusal(run_dir)
    # without the dataset the row can only be dropped ...
    done = check_run_dir(run_dir, None, repair=True)
    assert done is not None and done.dropped_real == (row["id"],) and done.restored == ()
    assert row["id"] not in set(_manifest(run_dir)["id"]) and verify_pool(run_dir).ok
    # ... and the resumed run's stage-1 pool step appends it again, at the end
    _resume(run_dir)
    by_id = _manifest(run_dir).set_index("id").sort_index()
    pd.testing.assert_frame_equal(by_id, _manifest(reference).set_index("id").sort_index())
    assert _manifest(run_dir)["id"].iloc[-1] == row["id"]


def test_repeated_rows_are_dropped_keeping_the_first(reference: Path, run_dir: Path) -> None:
    frame = _manifest(run_dir)
    pd.concat([frame, frame.iloc[:3]]).to_parquet(manifest_path(run_dir), index=False)

    assert len(verify_pool(run_dir).duplicate_ids) == 3
    assert "(3 duplicate id(s))" in _refusal(run_dir)
    done = _repaired(run_dir)
    assert len(done["dropped_duplicates"]) == 3
    assert differences(reference, run_dir) == []


# -- the manifest ----------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _garble(path: Path) -> None:
    data = path.read_bytes()
    middle = len(data) // 2
    path.write_bytes(data[:middle] + bytes(range(200)) + data[middle + 200 :])


def _delete(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize(
    "damage", [_truncate, _garble, _delete], ids=["truncated", "garbled", "deleted"]
)
def test_an_unreadable_manifest_is_set_aside_and_the_pool_rebuilt(
    reference: Path, run_dir: Path, damage: Callable[[Path], None]
) -> None:
    # (deleted: also what a repair killed right after setting the manifest aside leaves)
    path = manifest_path(run_dir)
    damage(path)
    damaged = path.read_bytes() if path.exists() else None

    assert not verify_pool(run_dir).manifest_readable
    assert "(unreadable manifest)" in _refusal(run_dir)
    done = _repaired(run_dir)
    assert done["rerun_rounds"] == [1]  # the manifest was the only record of its samples
    if damaged is None:
        assert done["manifest_set_aside"] is None
    else:
        set_aside = Path(done["manifest_set_aside"])
        assert set_aside == path.with_name("manifest.parquet.damaged")
        assert set_aside.read_bytes() == damaged
        set_aside.unlink()
    # real samples appended again, round 1 regenerated, valued and trained: the same run
    assert differences(reference, run_dir) == []


def test_an_unreadable_manifest_segment_sets_the_whole_manifest_aside(
    reference: Path, run_dir: Path
) -> None:
    # What a writer killed after appending leaves: a base plus a segment of the last rows
    # (utilgen.pool.manifest_log); the segment is then damaged.
    table = read_manifest(run_dir)
    split = table.num_rows - 4
    write_base(run_dir, table.slice(0, split), 7)
    segment = segment_path(run_dir, 7, split, table.num_rows)
    segment.parent.mkdir()
    segment.write_bytes(table_to_bytes(table.slice(split)))
    assert read_manifest(run_dir).equals(table)
    _garble(segment)

    assert not verify_pool(run_dir).manifest_readable
    assert "(unreadable manifest)" in _refusal(run_dir)
    done = _repaired(run_dir)
    assert done["rerun_rounds"] == [1]
    assert Path(done["manifest_set_aside"]) == manifest_path(run_dir).with_name(
        "manifest.parquet.damaged"
    )
    aside = segment.parent.with_name("manifest.d.damaged")
    assert [p.name for p in aside.iterdir()] == [segment.name]
    shutil.rmtree(aside)
    Path(done["manifest_set_aside"]).unlink()
    assert differences(reference, run_dir) == []


# -- checkpoints of finished steps -----------------------------------------------------------

STAGE1_CKPT = "rounds/000/checkpoints/epoch-001.safetensors"
ROUND1_CKPT = "rounds/001/checkpoints/epoch-002.safetensors"


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _break_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[9:13] = b"\xff\xfe\xfd\xfc"
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("relative", "damage", "field", "phrase", "rerun"),
    [
        (STAGE1_CKPT, _delete, "missing_checkpoints", "1 missing checkpoint(s)", 0),
        (ROUND1_CKPT, _cut, "corrupt_checkpoints", "1 corrupt checkpoint(s)", 1),
        (STAGE1_CKPT, _break_header, "corrupt_checkpoints", "1 corrupt checkpoint(s)", 0),
        ("rounds/001/metrics.json", _cut, "unreadable_metrics", "1 unreadable round metrics", 1),
    ],
    ids=["missing", "truncated", "garbled-header", "unreadable-metrics"],
)
def test_a_damaged_checkpoint_makes_its_step_run_again(
    reference: Path,
    run_dir: Path,
    relative: str,
    damage: Callable[[Path], None],
    field: str,
    phrase: str,
    rerun: int,
) -> None:
    damage(run_dir / relative)

    assert getattr(verify_pool(run_dir), field) == (relative,)
    assert f"({phrase})" in _refusal(run_dir)
    done = _repaired(run_dir)
    assert done["rerun_rounds"] == [rerun]
    assert done["deleted_checkpoints"] == ([relative] if field == "corrupt_checkpoints" else [])
    # retrained on one thread from the same seed: the same tensors, the same metrics
    assert differences(reference, run_dir) == []


def test_the_check_waits_for_no_writer(run_dir: Path) -> None:
    # a writer appending while the check hashes would look like missing blobs: the check
    # takes the run lock, so a second process gets the lock error, not a false alarm
    blob_path(run_dir, str(_manifest(run_dir)["blob"].iloc[0])).unlink()
    with RunLock(run_dir), pytest.raises(RunLockedError, match="locked"):
        check_run_dir(run_dir, None, repair=False)
    assert check_run_dir(run_dir.parent / "fresh", None, repair=False) is None
    assert not (run_dir.parent / "fresh").exists()  # nothing written for a new run


# -- the command line ------------------------------------------------------------------------


def test_utilgen_run_refuses_in_one_line_and_repairs(
    tmp_path: Path, cli_error: Callable[[list[str]], str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["--quiet", "run", "digits-real-only", "--out", str(out), "--no-report"]
    args += [
        a for s in ("task.epochs=2", "data.k_shot=5", "data.max_per_class=20") for a in ("--set", s)
    ]
    with pytest.raises(SystemExit) as finished:
        main(args)
    assert finished.value.code == 0
    summary = json.loads((out / "summary.json").read_text())
    blob = str(_manifest(out)["blob"].iloc[0])
    data = bytearray(blob_path(out, blob).read_bytes())
    data[len(data) // 2] ^= 0x01
    blob_path(out, blob).write_bytes(bytes(data))
    _cut(out / "rounds/000/checkpoints/epoch-002.safetensors")
    capsys.readouterr()

    line = cli_error(args)
    assert line.startswith(f"utilgen: error: run directory {out} is damaged (")
    assert "1 corrupt blob(s), bytes changed, 1 corrupt checkpoint(s)" in line
    with pytest.raises(SystemExit) as verified:
        main(["pool", "verify", str(out)])
    assert verified.value.code == 1
    assert "corrupt checkpoint(s) (1): rounds/000/checkpoints/epoch-002" in capsys.readouterr().out

    with pytest.raises(SystemExit) as repaired:
        main([*args, "--repair"])
    assert repaired.value.code == 0, capsys.readouterr().err
    assert verify_pool(out).ok
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed == summary
