"""``utilgen train`` and ``utilgen eval``: the task model on its own, outside a run.

``train`` fits the configured task model on the configured real training split and writes a
checkpoint per epoch plus metrics into a directory; ``eval`` scores a saved checkpoint on a
split of the same data. Both use exactly the data, splits and model a run would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from utilgen.atomic import write_json_atomic
from utilgen.config import RunConfig, save_config
from utilgen.errors import UtilgenError
from utilgen.loop.run import prepare
from utilgen.task import evaluate, load_checkpoint, train

SPLITS = ("train", "val", "test")


def train_task(config: RunConfig, out: str | Path) -> dict[str, Any]:
    """Train the task model on real training data into ``out``; returns validation metrics."""
    out = Path(out)
    prepared = prepare(config, with_generator=False)
    save_config(config, out / "config.yaml")
    result = train(
        prepared.model,
        prepared.splits.train,
        config.task,
        val=prepared.splits.val,
        checkpoint_dir=out / "checkpoints",
        seed=config.seed,
    )
    metrics = {
        "val": evaluate(prepared.model, prepared.splits.val),
        "train_loss": list(result.train_loss),
        "checkpoints": [str(p) for p in result.checkpoints],
    }
    write_json_atomic(out / "metrics.json", metrics)
    return metrics


def eval_checkpoint(
    config: RunConfig, checkpoint: str | Path, split: str = "test"
) -> dict[str, Any]:
    """Metrics of the checkpoint at ``checkpoint`` on ``split`` of the configured data."""
    if split not in SPLITS:
        raise UtilgenError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise UtilgenError(
            f"checkpoint {checkpoint} not found; "
            "pass a .safetensors file from a run's checkpoints/ folder"
        )
    prepared = prepare(config, with_generator=False)
    load_checkpoint(prepared.model, checkpoint)
    data = getattr(prepared.splits, split)
    return evaluate(prepared.model, data)
