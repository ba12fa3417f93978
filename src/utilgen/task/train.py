"""Weighted training of a task model, with a checkpoint per epoch.

``train`` minimises the per-sample weighted cross-entropy (see ``weighted_loss``) with AdamW
over the module's trainable parameters (a frozen backbone stays as it is). On a CPU, one
seed fixes everything: the model's dropout, and the visiting order, which is a shuffle keyed
by sample id (see ``epoch_order``) rather than a DataLoader.

A weight of 0 removes a sample exactly: zero-weight samples are dropped before batching and
the id-keyed order does not depend on which samples are present, so the run is bit-for-bit
the run that never saw them (batch-norm statistics included).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from utilgen.config import TaskConfig
from utilgen.data.labelled import Item, LabelledData
from utilgen.determinism import seed_everything
from utilgen.errors import UtilgenError
from utilgen.faults import fault_point
from utilgen.progress import progress_bar
from utilgen.task.base import TaskModel
from utilgen.task.checkpoint import checkpoint_name
from utilgen.task.epoch_order import epoch_order, id_keys
from utilgen.task.torch_task_model import check_labels, chunks
from utilgen.task.weighted_loss import weighted_cross_entropy

log = logging.getLogger(__name__)

Advance = Callable[[int], None]
"""A progress callback, called with 1 after each epoch (``rich``'s ``advance``)."""


@dataclass(frozen=True)
class TrainResult:
    """What a call to :func:`train` did.

    Attributes:
        train_loss: weighted mean cross-entropy (nats) over each epoch's batches, as seen
            during that epoch.
        val_accuracy: top-1 accuracy on ``val`` after each epoch; empty without ``val``.
        checkpoints: ``epoch-NNN.safetensors`` written, one per epoch; empty without a
            checkpoint directory.
        n_trained: samples with a non-zero weight (the others were left out).
        seconds: wall time of the call.
    """

    train_loss: tuple[float, ...]
    val_accuracy: tuple[float, ...]
    checkpoints: tuple[Path, ...]
    n_trained: int
    seconds: float


def check_weights(weights: np.ndarray | None, n: int) -> np.ndarray:
    """Per-sample weights as float64 (n,): ones when None; finite and non-negative.

    Raises:
        ValueError: wrong length, NaN/inf or negative weights.
    """
    if weights is None:
        return np.ones(n, dtype=np.float64)
    arr = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(arr) != n:
        raise ValueError(f"got {len(arr)} weights for {n} training samples")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError("sample weights must be finite and non-negative")
    return arr


@dataclass(frozen=True)
class TrainingInputs:
    """What training visits, checked: the samples with a non-zero weight, their labels,
    weights and visiting-order keys, and the validation data (None when empty)."""

    items: list[Item]
    labels: np.ndarray
    weights: np.ndarray
    keys: np.ndarray
    val: LabelledData | None


def training_inputs(
    model: TaskModel,
    train: LabelledData,
    weights: np.ndarray | None,
    val: LabelledData | None,
    seed: int,
) -> TrainingInputs:
    """The checked inputs of :func:`train` (also Ray Train's, see ``utilgen.scale.train``).

    Zero-weight samples are left out here: their influence is removed exactly, not scaled
    to 0.

    Raises:
        UtilgenError: modality mismatch, or no sample with a non-zero weight.
        ValueError: labels outside the model's classes, or invalid weights.
    """
    if train.modality != model.modality:
        raise UtilgenError(
            f"the {model.kind} task model classifies {model.modality}s but the training data "
            f"holds {train.modality}s; choose a task.model for {train.modality}s"
        )
    labels = check_labels(train.labels, len(train), model.num_classes)
    sample_weights = check_weights(weights, len(train))
    if val is not None:
        check_labels(val.labels, len(val), model.num_classes)
        val = val if len(val) else None
    kept = np.flatnonzero(sample_weights > 0)
    if len(kept) == 0:
        raise UtilgenError("nothing to train on: every training sample has weight 0")
    return TrainingInputs(
        items=[train.items[i] for i in kept],
        labels=labels[kept],
        weights=sample_weights[kept],
        keys=id_keys([train.ids[i] for i in kept], seed),
        val=val,
    )


@contextmanager
def _epoch_progress(description: str, total: int, progress: Advance | None) -> Iterator[Advance]:
    if progress is not None:
        yield progress
        return
    with progress_bar(description, total) as advance:
        yield advance


def top1_accuracy(model: TaskModel, data: LabelledData) -> float:
    """Share of ``data`` whose largest logit under ``model`` is the true label."""
    predicted = model.logits(data.items).argmax(axis=1)
    return float(np.mean(predicted == data.labels))


def _train_epoch(
    model: TaskModel,
    net: torch.nn.Module,
    inputs: TrainingInputs,
    order: np.ndarray,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
) -> float:
    """One epoch of weighted steps over ``inputs`` in ``order``, ``batch_size`` samples a
    step; returns the epoch's loss, the batches' losses weighted by their sample weight."""
    device = model.device
    loss_sum, weight_sum = 0.0, 0.0
    for part in chunks(len(order), batch_size):
        idx = order[part]
        batch = model.prepare([inputs.items[i] for i in idx])
        y = torch.as_tensor(inputs.labels[idx], device=device)
        w = torch.as_tensor(inputs.weights[idx], dtype=torch.float32, device=device)
        loss = weighted_cross_entropy(net(batch), y, w)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        batch_weight = float(inputs.weights[idx].sum())
        loss_sum += float(loss.detach()) * batch_weight
        weight_sum += batch_weight
    return loss_sum / weight_sum


def train(
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
    """Train ``model`` in place on ``train`` for ``cfg.epochs`` epochs.

    Args:
        model: the task model; training continues from its current weights.
        train: training samples (same modality as the model).
        cfg: ``epochs``, ``batch_size``, ``lr`` and ``weight_decay`` are used.
        weights: per-sample weights (n,), non-negative; None weighs every sample 1.
        val: when given (and not empty), top-1 accuracy on it is measured after every epoch.
        checkpoint_dir: when given, ``epoch-NNN.safetensors`` (+ ``.json`` sidecar with the
            epoch, validation accuracy and loss) is written there after every epoch.
        seed: fixes the visiting order and dropout.
        progress: called with 1 after each epoch; None shows a quiet-aware progress bar.

    Returns:
        per-epoch losses and validation accuracies, and the checkpoint paths.

    Raises:
        UtilgenError: modality mismatch, or no sample with a non-zero weight.
        ValueError: labels outside the model's classes, or invalid weights.
    """
    started = time.perf_counter()
    # 1-2. checked inputs, zero-weight samples left out
    inputs = training_inputs(model, train, weights, val, seed)
    val = inputs.val

    # 3. optimiser over the trainable parameters only
    seed_everything(seed)
    net = model.module()
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise UtilgenError(f"the {model.kind} task model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    # 4. epochs: shuffle by id, weighted steps, validation, checkpoint
    losses: list[float] = []
    accuracies: list[float] = []
    checkpoints: list[Path] = []
    with _epoch_progress(f"training {model.kind}", cfg.epochs, progress) as advance:
        for epoch in range(1, cfg.epochs + 1):
            net.train()
            order = epoch_order(inputs.keys, epoch)
            losses.append(_train_epoch(model, net, inputs, order, cfg.batch_size, optimizer))
            if val is not None:
                accuracies.append(top1_accuracy(model, val))
            if checkpoint_dir is not None:
                path = Path(checkpoint_dir) / checkpoint_name(epoch)
                model.save(
                    path,
                    metadata={
                        "epoch": epoch,
                        "train_loss": losses[-1],
                        "val_accuracy": accuracies[-1] if accuracies else None,
                        "seed": seed,
                        "n_trained": len(inputs.items),
                    },
                )
                checkpoints.append(path)
                fault_point("train.checkpoint")
            log.info(
                "epoch %d/%d: train loss %.4f%s",
                epoch,
                cfg.epochs,
                losses[-1],
                f", val accuracy {accuracies[-1]:.4f}" if accuracies else "",
            )
            advance(1)
    net.eval()
    return TrainResult(
        train_loss=tuple(losses),
        val_accuracy=tuple(accuracies),
        checkpoints=tuple(checkpoints),
        n_trained=len(inputs.items),
        seconds=time.perf_counter() - started,
    )
