"""Continued training (loop.continue_training): each round's classifier starts from the
previous round's last checkpoint, bit for bit, as GenDataAgent fine-tunes on-the-fly; a
checkpoint that no longer fits the data fails the round before it writes anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from replay import replay_prepared

import utilgen.loop.generation_round as generation_round
from utilgen.config import RunConfig, resolve_config
from utilgen.errors import ConfigError, UtilgenError
from utilgen.loop.continued import continue_from_previous
from utilgen.loop.run import Prepared, build_model, run
from utilgen.pool import RunLayout
from utilgen.task import TaskModel
from utilgen.task.checkpoint import list_checkpoints
from utilgen.task.small_cnn import SmallCNNModel

pytestmark = pytest.mark.usefixtures("quiet_one_thread")

PER_CLASS = 3
BASE = [
    "task.epochs=2",
    "data.k_shot=5",
    "generator.kind=builtin-diffusion",
    f"generator.per_class={PER_CLASS}",
    "strategy=static",
    "loop.rounds=2",
]


def _config(*overrides: str) -> RunConfig:
    return resolve_config("digits-real-only", [*BASE, *overrides])


def _prepared(config: RunConfig) -> Prepared:
    return replay_prepared(config, PER_CLASS)


def _state(model: TaskModel) -> dict[str, torch.Tensor]:
    assert isinstance(model, SmallCNNModel)
    return {k: v.detach().clone() for k, v in model.net.trainable_state_dict().items()}


def _spy_on_training(monkeypatch: pytest.MonkeyPatch) -> list[tuple[dict[str, Any], int]]:
    """Every round's student weights as training starts, and the epochs it trains."""
    started: list[tuple[dict[str, Any], int]] = []
    real = generation_round.trainer_on_backend

    def spy(cfg: RunConfig) -> Any:
        train = real(cfg)

        def wrapped(model: TaskModel, data: Any, task: Any, **kwargs: Any) -> Any:
            started.append((_state(model), task.epochs))
            return train(model, data, task, **kwargs)

        return wrapped

    monkeypatch.setattr(generation_round, "trainer_on_backend", spy)
    return started


def _last_checkpoint_state(config: RunConfig, prepared: Prepared, directory: Path) -> dict:
    model = build_model(config, prepared.splits)
    model.load(list_checkpoints(directory)[-1])
    return _state(model)


def test_each_round_starts_from_the_previous_rounds_last_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config("loop.continue_training=true", "loop.continue_epochs=1")
    prepared = _prepared(config)
    started = _spy_on_training(monkeypatch)
    run(config, tmp_path / "run", prepared=prepared, report=False)
    layout = RunLayout(tmp_path / "run")
    assert len(started) == 2
    for r, (weights, epochs) in enumerate(started, start=1):
        previous = _last_checkpoint_state(config, prepared, layout.round(r - 1).checkpoints)
        assert weights.keys() == previous.keys()
        for name in weights:  # exact: the checkpoint's tensors are copied in, nothing else
            assert torch.equal(weights[name], previous[name]), (r, name)
        assert epochs == 1  # loop.continue_epochs, not task.epochs
        metrics = json.loads(layout.round(r).metrics.read_text())
        assert metrics["continued_from"] == f"{r - 1:03d}"
        assert len(metrics["val_accuracy_per_epoch"]) == 1


def test_without_continued_training_every_round_starts_from_the_same_initialisation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config()
    prepared = _prepared(config)
    started = _spy_on_training(monkeypatch)
    run(config, tmp_path / "run", prepared=prepared, report=False)
    fresh = _state(build_model(config, prepared.splits))
    stage1 = _last_checkpoint_state(
        config, prepared, RunLayout(tmp_path / "run").round(0).checkpoints
    )
    for weights, epochs in started:
        # exact: both are the same seeded initialisation in this process (torch's CPU RNG
        # draws the same numbers whatever the threads), not a computation
        assert all(torch.equal(weights[k], fresh[k]) for k in fresh)
        assert epochs == 2
    assert not all(torch.equal(stage1[k], fresh[k]) for k in fresh)  # the two cases differ


def test_a_checkpoint_for_other_classes_fails_the_round_in_one_line(tmp_path: Path) -> None:
    config = _config("loop.continue_training=true")
    prepared = _prepared(config)
    layout = RunLayout(tmp_path / "run")
    # round 0's classifier written for 10 classes; the round's model has 4
    ten = build_model(config, prepared.splits)
    ten.save(layout.round(0).checkpoints / "epoch-001.safetensors")
    four = SmallCNNModel(4, channels=1, image_size=16, head="linear", device="cpu")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(UtilgenError) as err:
        continue_from_previous(four, layout, 1)
    message = str(err.value)
    assert "classifies 10 classes and the data now has 4" in message
    assert "\n" not in message
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_continue_epochs_without_continued_training_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"set loop\.continue_training=true"):
        _config("loop.continue_epochs=3")
