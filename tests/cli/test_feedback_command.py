"""``utilgen feedback RUN --round N``: one round's DPO feedback trained on its own (the
command ``accelerate launch`` runs data-parallel), and its bad input."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from cli_helpers import TINY_BUILTIN, sets, utilgen

RUN_SETS = [
    "task.epochs=2", "data.k_shot=5", "data.max_per_class=40", "generator.per_class=4",
    "valuation.scores=[marginal]", "valuation.selection=[]", "feedback.pairs.score=marginal",
    "feedback.pairs.ratio=0.5", "feedback.diffusion_dpo.steps=2", *TINY_BUILTIN,
]


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("UTILGEN_CACHE_DIR", str(tmp_path / "cache"))
    # tiny models: one thread avoids contention on a busy two-core machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path / "cache"
    torch.set_num_threads(threads)


def test_feedback_command_retrains_the_same_adapter(tmp_path: Path, cache: Path) -> None:
    run_dir = tmp_path / "run"
    assert utilgen("run", "digits-dpo", "--out", str(run_dir), *sets(RUN_SETS)) == 0
    feedback = run_dir / "rounds/001/adapters/dpo"
    first = json.loads((feedback / "result.json").read_text())
    shutil.rmtree(feedback)
    (run_dir / "rounds/001/pairs.parquet").unlink()
    assert utilgen("feedback", str(run_dir), "--round", "1") == 0
    again = json.loads((feedback / "result.json").read_text())
    # same pairs, same seed: the same fine-tuned generator as the one round 2 used (exact,
    # the name hashes the weights: the same training in this process on one thread)
    assert again["generator"] == first["generator"]
    assert (run_dir / "rounds/001/pairs.parquet").is_file()


def test_feedback_command_bad_input(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert utilgen("feedback", str(tmp_path / "nope"), "--round", "1") == 2
    assert "not a run directory" in capsys.readouterr().err
    real_only = tmp_path / "real"
    assert utilgen("run", "digits-real-only", "--out", str(real_only), "--set", "task.epochs=1",
                   "--set", "data.max_per_class=30") == 0
    capsys.readouterr()
    assert utilgen("feedback", str(real_only), "--round", "1") == 2
    assert "has no feedback that trains the generator" in capsys.readouterr().err
    # a dpo run whose round 1 has not been generated yet, and a round without feedback
    pending = tmp_path / "pending"
    pending.mkdir()
    from utilgen.config import resolve_config, save_config

    save_config(resolve_config("digits-dpo", RUN_SETS), pending / "config.yaml")
    assert utilgen("feedback", str(pending), "--round", "2") == 2
    assert "pick one of them" in capsys.readouterr().err
    assert utilgen("feedback", str(pending), "--round", "1") == 2
    assert "has not finished" in capsys.readouterr().err
    assert sorted(p.name for p in pending.iterdir()) == ["config.yaml"]


@pytest.mark.slow
def test_feedback_command_under_accelerate_launch_two_cpu_processes(
    tmp_path: Path, cache: Path
) -> None:
    import os
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    assert utilgen("run", "digits-dpo", "--out", str(run_dir), *sets(RUN_SETS)) == 0
    feedback = run_dir / "rounds/001/adapters/dpo"
    shutil.rmtree(feedback)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "-m", "utilgen", "--quiet", "feedback", str(run_dir),
        "--round", "1",
    ]
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((feedback / "result.json").read_text())
    assert result["generator"].startswith("builtin-diffusion:")
    assert result["steps"] == 2
    assert (feedback / "generator").is_dir() and (feedback / "log.jsonl").is_file()
