"""Task-model training on Ray Train (``ray.train_workers``): 2 CPU workers, DDP over gloo,
against the same training in one process.

Each worker takes every second sample of each global batch and the loss is scaled to the
global batch's weighted mean, so the run follows local training: the same losses up to the
float noise of another summation order and per-worker batch-norm statistics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from utilgen.config import RayConfig, TaskConfig, load_config
from utilgen.data.bundled import load_digits
from utilgen.scale import RayBackendError, trainer_on_backend
from utilgen.scale.train import rank_share, train_on_ray
from utilgen.task import build_task_model, evaluate, list_checkpoints, read_sidecar, train

CFG = TaskConfig(model="small-cnn", image_size=8, epochs=3, batch_size=32, lr=3e-3)


def test_each_worker_takes_every_world_th_sample_of_a_batch() -> None:
    batch = np.array([7, 3, 9, 1, 4])
    parts = [rank_share(batch, rank, 2) for rank in range(2)]
    assert [p.tolist() for p in parts] == [[7, 9, 4], [3, 1]]
    assert sorted(np.concatenate(parts).tolist()) == sorted(batch.tolist())


def test_the_loop_trains_on_ray_only_when_asked() -> None:
    assert trainer_on_backend(load_config(None)) is train
    assert trainer_on_backend(load_config(None, ["loop.backend=ray"])) is train
    on_ray = trainer_on_backend(load_config(None, ["loop.backend=ray", "ray.train_workers=2"]))
    assert on_ray.func is train_on_ray  # type: ignore[attr-defined]


def _weighted_digits():  # type: ignore[no-untyped-def]
    digits = load_digits()
    data, val = digits.subset(range(0, 400)), digits.subset(range(400, 600))
    weights = np.where(np.arange(len(data)) % 5 == 0, 0.0, 1.0)  # zero weights drop out
    weights[1::5] = 3.0
    return data, val, weights


def _train_both(tmp_path: Path, workers: int):  # type: ignore[no-untyped-def]
    data, val, weights = _weighted_digits()
    models = [build_task_model(CFG, "image", 10, data.items[:1], "cpu", 0) for _ in range(2)]
    local = train(
        models[0],
        data,
        CFG,
        weights=weights,
        val=val,
        checkpoint_dir=tmp_path / "local",
        seed=0,
        progress=lambda n: None,
    )
    remote = train_on_ray(
        RayConfig(train_workers=workers),
        models[1],
        data,
        CFG,
        weights=weights,
        val=val,
        checkpoint_dir=tmp_path / "ray" / "checkpoints",
        seed=0,
    )
    return local, remote, models[1], val


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session", "quiet_one_thread")
def test_one_worker_trains_exactly_like_local_training(tmp_path: Path) -> None:
    """The same order, batches, dropout draws and loss: DDP over one worker changes
    nothing, so the losses and accuracies equal local training's."""
    local, remote, _, _ = _train_both(tmp_path, workers=1)
    np.testing.assert_allclose(remote.train_loss, local.train_loss, rtol=1e-6)
    # The worker's gradients pass through DDP's all-reduce in another process: weights equal
    # up to float noise, which can move a prediction at a near tie, one sample in 200 of
    # the validation accuracy (a different batch or draw would move the loss above).
    np.testing.assert_allclose(remote.val_accuracy, local.val_accuracy, rtol=0, atol=1.5 / 200)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session", "quiet_one_thread")
def test_two_workers_share_each_batch_and_follow_local_training(tmp_path: Path) -> None:
    """Half a batch per worker: the same samples and weighted loss, with batch-norm
    statistics and dropout drawn per worker, so the losses follow local training's
    loosely (within 25 %), and the checkpoints land where local ones do."""
    local, remote, model, val = _train_both(tmp_path, workers=2)
    assert remote.n_trained == local.n_trained == 320
    assert len(remote.train_loss) == len(remote.val_accuracy) == 3
    np.testing.assert_allclose(remote.train_loss, local.train_loss, rtol=0.25)
    assert remote.train_loss[-1] < remote.train_loss[0] / 3  # it learned
    paths = list_checkpoints(tmp_path / "ray" / "checkpoints")
    assert [p.name for p in paths] == [p.name for p in remote.checkpoints]
    assert [read_sidecar(p)["epoch"] for p in paths] == [1, 2, 3]
    assert read_sidecar(paths[-1])["train_workers"] == 2
    # the model holds the last epoch's weights, and they classify as well as local ones
    # (evaluated here and in a worker process: one prediction at a near tie may differ)
    accuracy = evaluate(model, val)["accuracy"]
    assert accuracy == pytest.approx(remote.val_accuracy[-1], abs=1.5 / len(val))
    assert accuracy > 0.8 and abs(accuracy - local.val_accuracy[-1]) < 0.05


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session", "quiet_one_thread")
def test_utilgen_run_trains_every_round_on_ray_train(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli_helpers import TINY_BUILTIN, sets, utilgen

    monkeypatch.setenv("UTILGEN_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    overrides = [
        "task.epochs=2",
        "data.k_shot=5",
        "data.max_per_class=20",
        "generator.per_class=5",
        *TINY_BUILTIN,
        "loop.backend=ray",
        "ray.train_workers=2",
    ]
    assert utilgen("run", "digits-static", "--out", str(run), *sets(overrides)) == 0
    for round_dir in ("000", "001"):  # stage 1 (real only) and the generation round
        paths = list_checkpoints(run / "rounds" / round_dir / "checkpoints")
        assert [read_sidecar(p)["train_workers"] for p in paths] == [2, 2]
        assert (run / "rounds" / round_dir / "metrics.json").is_file()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_more_workers_than_the_cluster_holds_is_one_line() -> None:
    data = _weighted_digits()[0]
    model = build_task_model(CFG, "image", 10, data.items[:1], "cpu", 0)
    with pytest.raises(RayBackendError) as err:
        train_on_ray(RayConfig(train_workers=3), model, data, CFG, seed=0)  # 2 CPUs
    message = str(err.value)
    assert "has 2 CPU(s)" in message and "train_workers=3 needs 3" in message
    assert "\n" not in message
