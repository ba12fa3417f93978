"""Task-model training on Ray Train: data-parallel (DDP) over ``ray.train_workers`` workers.

:func:`train_on_ray` takes the arguments of :func:`utilgen.task.train` and returns its
:class:`~utilgen.task.train.TrainResult`; with ``loop.backend=ray`` and
``ray.train_workers >= 1`` the loop calls it instead (see
:func:`~utilgen.scale.backend.trainer_on_backend`). What stays the same as local training:

- the samples left out (zero weight), the id-keyed visiting order per epoch, the batch size
  (``task.batch_size`` is the global batch: each worker takes every ``world``-th sample of
  it), the AdamW settings and the loss. Each worker's loss is scaled so that the gradients
  DDP averages are those of the global batch's weighted mean (normalised by the weight sum
  of the whole batch, not of the worker's share);
- the checkpoints: worker 0 saves one per epoch, the driver writes them to
  ``checkpoint_dir`` as ``epoch-NNN.safetensors`` with the local sidecar, and the model ends
  with the last epoch's weights.

What differs: floating-point sums run in another order and batch-norm statistics are taken
per worker, so losses match local training to a tolerance, not bit for bit; with one worker
they are equal. Ray Train keeps its copies under ``checkpoint_dir/../ray_train`` while it
runs (deleted once they are copied); on a cluster of several nodes that directory, i.e. the
run directory, must be on storage every node can reach (Ray Train's ``storage_path``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utilgen.config import TaskConfig
from utilgen.config.scale import RayConfig
from utilgen.data.labelled import LabelledData
from utilgen.determinism import seed_everything
from utilgen.task.base import TaskModel
from utilgen.task.checkpoint import checkpoint_name
from utilgen.task.epoch_order import epoch_order
from utilgen.task.torch_task_model import chunks
from utilgen.task.train import Advance, TrainResult, top1_accuracy, training_inputs
from utilgen.task.weighted_loss import weighted_cross_entropy

log = logging.getLogger(__name__)

STATE_FILE = "state.safetensors"


def rank_share(batch: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Worker ``rank``'s part of a global batch of indices: every ``world``-th one."""
    return batch[rank::world]


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: DDP over the shared model, worker 0 reports checkpoints."""
    import ray
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    from utilgen.scale.actors import move_task_model

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(config["threads"])
    model: TaskModel = ray.get(config["model"][0])
    move_task_model(model, ray.train.torch.get_device())
    items, labels, weights, keys = ray.get(config["data"][0])
    val: LabelledData | None = ray.get(config["val"][0]) if config["val"] else None
    cfg: TaskConfig = config["task"]

    seed_everything(config["seed"])  # as local training does: same dropout draws on 1 worker
    net = model.module()
    ddp = ray.train.torch.prepare_model(net, move_to_device=False)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    device = model.device
    for epoch in range(1, cfg.epochs + 1):
        ddp.train()
        order = epoch_order(keys, epoch)
        sums = torch.zeros(2, dtype=torch.float64)  # weighted loss, weight
        for part in chunks(len(order), cfg.batch_size):
            batch = order[part]
            mine = rank_share(batch, rank, world)
            if len(mine) == 0:
                # A last batch smaller than the world: a zero-weight sample keeps this
                # worker in step with DDP's all-reduce and adds nothing.
                mine, zero = batch[:1], True
            else:
                zero = False
            y = torch.as_tensor(labels[mine], device=device)
            w = torch.as_tensor(
                np.zeros(len(mine)) if zero else weights[mine], dtype=torch.float32, device=device
            )
            own_weight = float(w.sum())
            total_weight = float(weights[batch].sum())
            loss = weighted_cross_entropy(ddp(model.prepare([items[i] for i in mine])), y, w)
            # DDP averages gradients over workers: scaled by world x (own / total weight),
            # the average is the gradient of the whole batch's weighted mean.
            scaled = loss * (own_weight / total_weight) * world
            optimizer.zero_grad(set_to_none=True)
            scaled.backward()
            optimizer.step()
            sums += torch.tensor([float(loss.detach()) * own_weight, own_weight])
        dist.all_reduce(sums)
        metrics: dict[str, Any] = {"epoch": epoch, "train_loss": float(sums[0] / sums[1])}
        if rank == 0:
            if val is not None:
                metrics["val_accuracy"] = top1_accuracy(model, val)
            with tempfile.TemporaryDirectory() as tmp:
                model.save(Path(tmp) / STATE_FILE)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)


def _check_resources(cfg: RayConfig, have: dict[str, float]) -> None:
    """RayBackendError, at once, when the cluster cannot hold the workers (Ray Train would
    wait for them and time out after a minute)."""
    from utilgen.scale.cluster import RayBackendError

    workers = cfg.train_workers
    need = {"CPU": workers * cfg.num_cpus_per_actor, "GPU": workers if cfg.train_gpus else 0}
    for name, amount in need.items():
        if amount and have.get(name, 0.0) < amount:
            raise RayBackendError(
                f"the Ray cluster has {have.get(name, 0.0):g} {name}(s); ray.train_workers="
                f"{workers} needs {amount:g}: lower ray.train_workers or add nodes"
            )


def train_on_ray(
    ray_cfg: RayConfig,
    model: TaskModel,
    train: LabelledData,
    cfg: TaskConfig,
    *,
    weights: np.ndarray | None = None,
    val: LabelledData | None = None,
    checkpoint_dir: Path | None = None,
    seed: int,
    progress: Advance | None = None,
) -> TrainResult:
    """:func:`utilgen.task.train` on ``ray_cfg.train_workers`` Ray Train workers (DDP).

    Same arguments and result; ``model`` ends with the trained weights and the checkpoints
    are written to ``checkpoint_dir`` as local training writes them.

    Raises:
        UtilgenError: as ``train`` (modality, no sample with weight).
        RayBackendError: the cluster lacks the workers' CPUs/GPUs.
    """
    from ray.train import CheckpointConfig, ScalingConfig
    from ray.train import RunConfig as TrainRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from utilgen.scale.backend import release_shared_executors
    from utilgen.scale.cluster import connect, import_ray

    started = time.perf_counter()
    inputs = training_inputs(model, train, weights, val, seed)
    val = inputs.val

    ray = import_ray()
    _check_resources(ray_cfg, connect(ray_cfg).resources)
    # The generation actors would hold the CPUs/GPUs the workers need while they idle
    # between rounds; the next round starts them again.
    release_shared_executors()
    workers = ray_cfg.train_workers
    data = (inputs.items, inputs.labels, inputs.weights, inputs.keys)
    # Ray Train's own copies, next to the checkpoints; cleared first, so that a round
    # trained again (a resumed run) reports only its own epochs.
    root = Path(checkpoint_dir).resolve().parent if checkpoint_dir else Path(tempfile.mkdtemp())
    shutil.rmtree(root / "ray_train", ignore_errors=True)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={
            "model": [ray.put(model)],
            "data": [ray.put(data)],
            "val": [ray.put(val)] if val is not None else None,
            "task": cfg,
            "seed": seed,
            "threads": ray_cfg.num_cpus_per_actor,
        },
        torch_config=TorchConfig(backend="nccl" if ray_cfg.train_gpus else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=ray_cfg.train_gpus,
            resources_per_worker={"CPU": ray_cfg.num_cpus_per_actor},
        ),
        run_config=TrainRunConfig(
            name="ray_train",
            storage_path=str(root),
            checkpoint_config=CheckpointConfig(num_to_keep=None),
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    reported = sorted(result.best_checkpoints or [], key=lambda pair: pair[1]["epoch"])
    losses = tuple(float(m["train_loss"]) for _, m in reported)
    accuracies = tuple(float(m["val_accuracy"]) for _, m in reported if "val_accuracy" in m)
    checkpoints: list[Path] = []
    for checkpoint, metrics in reported:
        with checkpoint.as_directory() as directory:
            model.load(Path(directory) / STATE_FILE)
        if checkpoint_dir is not None:
            path = Path(checkpoint_dir) / checkpoint_name(int(metrics["epoch"]))
            model.save(
                path,
                metadata={
                    "epoch": int(metrics["epoch"]),
                    "train_loss": float(metrics["train_loss"]),
                    "val_accuracy": metrics.get("val_accuracy"),
                    "seed": seed,
                    "n_trained": len(inputs.items),
                    "train_workers": workers,
                },
            )
            checkpoints.append(path)
        if progress is not None:
            progress(1)
    shutil.rmtree(root / "ray_train", ignore_errors=True)  # copied: the run keeps one set
    log.info("ray train: %d epoch(s) on %d worker(s)", len(reported), workers)
    return TrainResult(
        train_loss=losses,
        val_accuracy=accuracies,
        checkpoints=tuple(checkpoints),
        n_trained=len(inputs.items),
        seconds=time.perf_counter() - started,
    )
