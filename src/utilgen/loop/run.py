"""The run engine: ``utilgen run CONFIG``.

A run reads and writes one run directory (shared/DESIGN.md). Today it performs stage 1 of
every method: put the real data in the pool, train the task model on the real training
split with a checkpoint per epoch, evaluate, and write the metrics. Generation rounds plug in
after stage 1 as their issues land.

Every step checks whether its output already exists, so re-running the same command after
a crash continues where the last finished step left off.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from utilgen import __version__
from utilgen.atomic import write_json_atomic
from utilgen.config import RunConfig, config_to_yaml, save_config
from utilgen.data import LabelledData, Splits, load_data, split_for_config
from utilgen.determinism import resolve_device, seed_everything
from utilgen.errors import UtilgenError
from utilgen.pool import PoolStore, samples_from_labelled
from utilgen.report import write_run_report
from utilgen.task import (
    TaskModel,
    build_task_model,
    evaluate,
    train,
    train_val_gap,
)

log = logging.getLogger(__name__)

STAGE1_ROUND = 0


@dataclass(frozen=True)
class Prepared:
    """Everything validated before the run directory is touched."""

    config: RunConfig
    splits: Splits
    model: TaskModel


@dataclass(frozen=True)
class RunResult:
    """A finished run: its directory and the contents of its ``summary.json``."""

    run_dir: Path
    summary: dict[str, Any]


def round_dir(run_dir: Path, round_index: int) -> Path:
    """``RUN/rounds/NNN``."""
    return run_dir / "rounds" / f"{round_index:03d}"


def prepare(config: RunConfig) -> Prepared:
    """Load and split the data and build the task model; raise before anything is written."""
    seed_everything(config.seed)
    data: LabelledData = load_data(config.data)
    splits = split_for_config(data, config.data, config.seed)
    model = build_task_model(
        config.task,
        modality=data.modality,
        num_classes=data.num_classes,
        example_items=splits.train.items[:1],
        device=resolve_device(config.loop.device),
        seed=config.seed,
    )
    return Prepared(config=config, splits=splits, model=model)


def _check_same_config(run_dir: Path, config: RunConfig) -> None:
    """Refuse to resume a run directory that was started with another config."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return
    old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    new = yaml.safe_load(config_to_yaml(config))
    if old != new:
        diff = sorted(_differing_keys(old, new))
        raise UtilgenError(
            f"run directory {run_dir} was started with a different config "
            f"(differs at {', '.join(diff[:3])}); re-run with its config or choose a new --out"
        )


def _differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return [
            k for key in keys for k in _differing_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        ]
    return [] if a == b else [prefix.rstrip(".")]


def _stage1_pool(store: PoolStore, splits: Splits) -> None:
    """Append the real samples of every split (idempotent on resume)."""
    for split_name, part in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        store.append(
            samples_from_labelled(part, split=split_name, source="real", round=STAGE1_ROUND)
        )


def _train_and_evaluate(prepared: Prepared, out: Path) -> dict[str, Any]:
    """Train on the real training split, checkpoint per epoch, evaluate; returns metrics."""
    cfg, splits, model = prepared.config, prepared.splits, prepared.model
    started = time.perf_counter()
    result = train(
        model,
        splits.train,
        cfg.task,
        val=splits.val,
        checkpoint_dir=out / "checkpoints",
        seed=cfg.seed,
    )
    test_metrics = evaluate(model, splits.test)
    val_metrics = evaluate(model, splits.val)
    train_metrics = evaluate(model, splits.train)
    return {
        "round": STAGE1_ROUND,
        "n_train_real": len(splits.train),
        "n_train_synthetic": 0,
        "n_val": len(splits.val),
        "n_test": len(splits.test),
        "train_loss": list(result.train_loss),
        "val_accuracy_per_epoch": list(result.val_accuracy),
        "train_accuracy": train_metrics["accuracy"],
        "val_accuracy": val_metrics["accuracy"],
        "train_val_gap": train_val_gap(train_metrics["accuracy"], val_metrics["accuracy"]),
        "test": test_metrics,
        "train_seconds": round(time.perf_counter() - started, 3),
    }


def _summary(config: RunConfig, metrics: dict[str, Any], data_name: str) -> dict[str, Any]:
    test = metrics["test"]
    return {
        "name": config.name,
        "strategy": config.strategy,
        "dataset": data_name,
        "seed": config.seed,
        "rounds": STAGE1_ROUND + 1,
        "accuracy": test["accuracy"],
        "worst_class_ratio": test["worst_class_ratio"],
        "worst_class_accuracy": test["worst_class_accuracy"],
        "macro_f1": test["macro_f1"],
        "ece": test["ece"],
        "per_class_accuracy": test["per_class_accuracy"],
        "train_val_gap": metrics["train_val_gap"],
        "n_train_real": metrics["n_train_real"],
        "n_train_synthetic": metrics["n_train_synthetic"],
        "n_test": metrics["n_test"],
        "utilgen_version": __version__,
    }


def run(config: RunConfig, run_dir: str | Path, prepared: Prepared | None = None) -> RunResult:
    """Run (or resume) ``config`` in ``run_dir``; returns the final summary.

    Steps, each skipped when its output exists:
    1. check inputs (data, splits, task model) — nothing is written if this fails
    2. lock the run directory and write the resolved config
    3. stage 1: real samples into the pool
    4. stage 1: train on real data with a checkpoint per epoch, evaluate
    5. summary.json and report.md
    """
    run_dir = Path(run_dir)
    # 1. check inputs
    prepared = prepared or prepare(config)
    _check_same_config(run_dir, config)

    # 2. lock the run directory and write the resolved config
    with PoolStore.open(run_dir, writable=True) as store:
        save_config(config, run_dir / "config.yaml")

        # 3. stage 1: real samples into the pool
        _stage1_pool(store, prepared.splits)

        # 4. stage 1: train on real data, evaluate
        out = round_dir(run_dir, STAGE1_ROUND)
        metrics_path = out / "metrics.json"
        if metrics_path.exists():
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        else:
            metrics = _train_and_evaluate(prepared, out)
            write_json_atomic(metrics_path, metrics)

        # 5. summary and report, written last
        summary = _summary(config, metrics, prepared.splits.train.name)
        write_json_atomic(run_dir / "summary.json", summary)
        write_run_report(run_dir)
    return RunResult(run_dir=run_dir, summary=summary)
