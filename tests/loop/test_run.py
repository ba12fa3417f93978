"""The stage-1 run engine: run directory contents, resume, determinism, refusal on mismatch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from utilgen.config import RunConfig, resolve_config
from utilgen.errors import UtilgenError
from utilgen.loop.run import run
from utilgen.pool import PoolStore


def _config(**over: str) -> RunConfig:
    overrides = ["task.epochs=3", "data.k_shot=5", *(f"{k}={v}" for k, v in over.items())]
    return resolve_config("digits-real-only", overrides)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "digits"
    run(_config(), run_dir)
    return run_dir


def test_run_directory_follows_the_contract(finished: Path) -> None:
    summary = json.loads((finished / "summary.json").read_text())
    for key in ("accuracy", "worst_class_ratio", "macro_f1", "ece", "per_class_accuracy"):
        assert key in summary
    assert 0.0 <= summary["accuracy"] <= 1.0
    assert summary["n_train_real"] == 50 and summary["n_train_synthetic"] == 0
    metrics = json.loads((finished / "rounds/000/metrics.json").read_text())
    assert len(metrics["train_loss"]) == 3
    checkpoints = sorted((finished / "rounds/000/checkpoints").glob("epoch-*.safetensors"))
    assert [p.name for p in checkpoints] == [f"epoch-{i:03d}.safetensors" for i in (1, 2, 3)]
    assert yaml.safe_load((finished / "config.yaml").read_text())["task"]["epochs"] == 3
    assert (finished / "report.md").read_text().startswith("# utilgen run")
    # the full report of this one run: every section, the run's row in the comparison
    html = (finished / "report.html").read_text()
    assert "1. Comparison of strategies" in html and "9. Cost" in html
    assert html.count("<td>digits</td><td>real-only</td>") == 1


def test_report_false_skips_only_the_html(tmp_path: Path, finished: Path) -> None:
    result = run(_config(), tmp_path / "quiet", report=False)
    assert not (result.run_dir / "report.html").exists()
    assert (result.run_dir / "report.md").exists()
    # exact: the same run again, in this process and on the same threads
    assert result.summary.to_dict() == json.loads((finished / "summary.json").read_text())


def test_pool_holds_every_real_sample_once_with_its_split(finished: Path) -> None:
    frame = PoolStore(finished).manifest()
    assert set(frame["source"]) == {"real"}
    counts = frame["split"].value_counts().to_dict()
    # 50 k-shot training samples; val and test come from all 1,797 digits.
    assert counts["train"] == 50
    assert counts["val"] + counts["test"] > 600
    assert frame["id"].is_unique


def test_rerun_resumes_without_duplicates_and_same_summary(finished: Path) -> None:
    before = json.loads((finished / "summary.json").read_text())
    n_rows = len(PoolStore(finished).manifest())
    result = run(_config(), finished)
    assert result.summary.to_dict() == before  # nothing retrained: the stored metrics
    assert len(PoolStore(finished).manifest()) == n_rows


def test_retraining_after_a_lost_round_gives_identical_metrics(
    finished: Path, tmp_path: Path
) -> None:
    before = json.loads((finished / "rounds/000/metrics.json").read_text())
    other = tmp_path / "again"
    run(_config(), other)
    after = json.loads((other / "rounds/000/metrics.json").read_text())
    before.pop("train_seconds"), after.pop("train_seconds")
    # exact: the same training on the same samples, in this process on the same threads
    assert after == before


def test_resume_with_a_different_config_is_refused(finished: Path) -> None:
    with pytest.raises(UtilgenError, match=r"different config .*task\.epochs"):
        run(_config(**{"task.epochs": "4"}), finished)


def test_a_different_seed_changes_the_split(tmp_path: Path, finished: Path) -> None:
    other = tmp_path / "seed1"
    run(_config(seed="1"), other)
    ids0 = set(PoolStore(finished).manifest().query("split == 'train'")["id"])
    ids1 = set(PoolStore(other).manifest().query("split == 'train'")["id"])
    assert ids0 != ids1
