"""Run directories with just the files the report reads, for tests of the report's parts."""

from __future__ import annotations

import json
from pathlib import Path


def fake_run(run_dir: Path, strategy: str, seed: int, dataset: str = "digits") -> Path:
    """A run directory with a summary and the metrics of stage 1 and one round."""
    summary = {
        "dataset": dataset,
        "strategy": strategy,
        "seed": seed,
        "accuracy": 0.5 + 0.1 * seed,
        "worst_class_ratio": 0.25,
        "n_train_synthetic": 10,
    }
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    for r in (0, 1):
        (run_dir / "rounds" / f"{r:03d}").mkdir(parents=True)
        metrics = {"round": r, "test": {"accuracy": 0.5}, "train_seconds": 1.5}
        (run_dir / "rounds" / f"{r:03d}" / "metrics.json").write_text(json.dumps(metrics))
    return run_dir
