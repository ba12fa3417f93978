"""The CLI end to end on a small finished run: run, pool show/verify/export, report, train, eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from utilgen.cli import main

SMALL = ["--set", "task.epochs=2", "--set", "data.k_shot=5", "--quiet"]


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    return int(exc.value.code or 0), captured.out, captured.err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    with pytest.raises(SystemExit) as exc:
        main(["run", "digits-real-only", *SMALL, "--out", str(out)])
    assert exc.value.code == 0
    return out


def test_run_prints_the_results_table(run_dir: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["strategy"] == "real-only" and summary["n_train_real"] == 50


def test_pool_show_and_verify(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(["pool", "show", str(run_dir), "--limit", "3"], capsys)
    assert code == 0 and "digits/" in out
    code, out, _ = _cli(["pool", "verify", str(run_dir)], capsys)
    assert code == 0


def test_pool_verify_exits_1_on_a_damaged_blob(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    blob = next((copy / "pool" / "blobs").rglob("*"))
    while blob.is_dir():
        blob = next(blob.iterdir())
    blob.write_bytes(b"flipped" + blob.read_bytes()[7:])
    code, out, _ = _cli(["pool", "verify", str(copy)], capsys)
    assert code == 1 and blob.name in out


def test_pool_export_parquet_loads_with_datasets(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import datasets

    dest = tmp_path / "pool.parquet"
    code, _, _ = _cli(
        ["pool", "export", str(run_dir), "--format", "parquet", "--out", str(dest)], capsys
    )
    assert code == 0
    ds = datasets.load_dataset("parquet", data_files=str(dest), split="train")
    frame_len = len(json.loads((run_dir / "summary.json").read_text())["per_class_accuracy"])
    assert frame_len == 10 and len(ds) > 600


def test_report_writes_html_and_markdown(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    # the same run given twice is reported once
    code, stdout, _ = _cli(["report", str(run_dir), str(run_dir), "--out", str(out)], capsys)
    assert code == 0 and "real-only" in stdout and "report.html" in stdout
    assert (out / "report.html").read_text().count("<td>digits</td><td>real-only</td>") == 1
    assert "## 1. Comparison of strategies" in (out / "report.md").read_text()
    code, _, err = _cli(["report", str(tmp_path / "absent"), "--out", str(tmp_path / "r2")], capsys)
    assert code == 2 and "not found" in err and not (tmp_path / "r2").exists()


def test_train_then_eval_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model"
    code, _, _ = _cli(["train", "digits-real-only", *SMALL, "--out", str(out)], capsys)
    assert code == 0
    checkpoint = out / "checkpoints" / "epoch-002.safetensors"
    assert checkpoint.is_file()
    code, stdout, _ = _cli(
        ["eval", "digits-real-only", *SMALL, "--checkpoint", str(checkpoint), "--split", "val"],
        capsys,
    )
    assert code == 0
    metrics = json.loads(stdout)
    assert 0.0 <= metrics["accuracy"] <= 1.0
    val = json.loads((out / "metrics.json").read_text())["val"]
    assert metrics["accuracy"] == pytest.approx(val["accuracy"])
