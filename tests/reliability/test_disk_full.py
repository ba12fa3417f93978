"""Acceptance (issue 11): a disk that fills up mid-write stops a run cleanly.

``UTILGEN_FAULT=enospc@<n>`` (``utilgen.faults``) makes the n-th atomic write of the process
fail half-way with ``OSError(ENOSPC)``. For the first write of every kind a real-only run
makes (config, pool blob, manifest, checkpoint, metrics, summary, reports), ``utilgen run``
must exit 2 with one line that says the disk is full and that re-running resumes; it must
leave no temp file and a pool that ``verify`` passes; and the same command, once the disk
has room, must finish as an uninterrupted run does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from kill_resume import differences, leftover_temporaries

from utilgen import atomic, faults
from utilgen.cli import main
from utilgen.pool import verify_pool

SETS = ["task.epochs=2", "data.k_shot=5", "data.max_per_class=20"]
# One write of each kind, named by what its path contains.
KINDS = (
    "config.yaml",
    "pool/blobs/",
    "manifest.parquet",
    "checkpoints/",
    "metrics.json",
    "summary.json",
    "report.md",
    "report.html",
)

pytestmark = pytest.mark.usefixtures("quiet_one_thread")


def _utilgen_run(out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    args = ["--quiet", "run", "digits-real-only", "--out", str(out)]
    args += [a for s in SETS for a in ("--set", s)]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return int(exit_info.value.code or 0), capsys.readouterr().err


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """An uninterrupted run, and the path of every atomic write it made, in order."""
    out = tmp_path_factory.mktemp("disk-full") / "reference"
    written: list[str] = []
    # one thread, as the tests' runs (quiet_one_thread): another count sums floats in
    # another order and the checkpoints would differ in their last bits. With it, the
    # resumed runs are compared exactly: the same steps on the same inputs, in this
    # process, on one thread, recompute the same numbers.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(atomic, "write_fault", lambda path: written.append(str(path)))
        args = ["--quiet", "run", "digits-real-only", "--out", str(out)]
        with pytest.raises(SystemExit) as exit_info:
            main(args + [a for s in SETS for a in ("--set", s)])
    torch.set_num_threads(threads)
    assert exit_info.value.code == 0
    return out, written


def _first_write_of(kind: str, written: list[str]) -> int:
    """1-based index of the first write whose path contains ``kind``."""
    return next(i for i, path in enumerate(written, 1) if kind in path.replace("\\", "/"))


@pytest.mark.parametrize("kind", KINDS)
def test_disk_full_stops_cleanly_and_the_rerun_resumes(
    reference: tuple[Path, list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    kind: str,
) -> None:
    expected, written = reference
    nth = _first_write_of(kind, written)
    run_dir = tmp_path / "run"
    monkeypatch.setattr(faults, "_reached", {})
    monkeypatch.setenv(faults.ENV, f"{faults.DISK_FULL}@{nth}")

    code, err = _utilgen_run(run_dir, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("utilgen: error: no space left")
    assert "re-run the same command to resume" in lines[0] and kind.rstrip("/") in lines[0]
    assert leftover_temporaries(run_dir) == []
    assert not (run_dir / "summary.json").exists() or kind in ("report.md", "report.html")
    if (run_dir / "pool").exists():
        # every blob on disk is whole; a manifest, once written, is readable and complete
        report = verify_pool(run_dir)
        assert report.corrupt_blobs == ()
        assert report.ok or not (run_dir / "pool" / "manifest.parquet").exists()

    monkeypatch.delenv(faults.ENV)
    code, err = _utilgen_run(run_dir, capsys)
    assert code == 0, err
    assert differences(expected, run_dir) == []
    assert (
        json.loads((run_dir / "summary.json").read_text())["accuracy"]
        == json.loads((expected / "summary.json").read_text())["accuracy"]
    )


def test_other_os_errors_keep_their_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # only a full disk is the user's to fix; anything else is a bug to report in full
    def fail(path: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(atomic, "write_fault", fail)
    with pytest.raises(PermissionError):
        main(["--quiet", "run", "digits-real-only", "--out", str(tmp_path / "run")])


def test_every_kind_of_write_is_covered(reference: tuple[Path, list[str]]) -> None:
    _, written = reference
    found: Callable[[str], bool] = lambda kind: any(kind in p for p in written)  # noqa: E731
    assert all(found(kind) for kind in KINDS)
