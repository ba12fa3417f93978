"""VoG: variance of gradients across training checkpoints (Agarwal et al., 2022), as
GenDataAgent uses it to filter out-of-distribution synthetic samples (Sec. 2.4).

For a sample x with label y and checkpoints 1..K, taken at points during stage-1 training
(GenDataAgent: K = 3, epochs 10, 20 and 30 of 30; here ``valuation.vog_checkpoints``, by
default 3 evenly spaced epochs, see :func:`utilgen.config.valuation.vog_epochs`):

    G_k      = d z_y / d x                       gradient of the true-class logit w.r.t.
                                                 the input, at checkpoint k (Eq. 4)
    mu       = 1/K sum_k G_k                     per input dimension (Eq. 5)
    Var      = 1/K sum_k (G_k - mu)^2            per input dimension (Eq. 6)
    VoG      = mean of Var over input dimensions
    VoG_norm = (VoG - mean_c VoG) / std_c VoG    within the sample's class c (VoG paper)

Images take the gradient w.r.t. the prepared (normalised) pixels, all C x H x W dimensions.
Texts take it w.r.t. the input token embeddings (n, T, d): the mean runs over the sample's
real tokens only, so that padding, whose gradient is zero at every checkpoint, does not dilute
the score of a short text batched with long ones.

Departure from the VoG paper, which averages the per-dimension *standard deviation*: this
follows GenDataAgent's Eq. 6 and averages the variance. The class normalisation is the
paper's (population mean and standard deviation of the class's raw scores); a class whose
raw scores are all equal (e.g. a single sample) gets 0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from utilgen.data.labelled import LabelledData
from utilgen.progress import progress_bar
from utilgen.task.base import TaskModel
from utilgen.task.checkpoint import CHECKPOINT_PATTERN, load_checkpoint
from utilgen.task.torch_task_model import chunks
from utilgen.value.base import ValuationError, check_data, preserved_state

log = logging.getLogger(__name__)


def token_mask(gradients: np.ndarray) -> np.ndarray:
    """Real (non-padding) token positions of text gradients (K, n, T, d): bool (n, T).

    A position is padding when its gradient is zero at every checkpoint: the task models
    zero the gradient of padding positions (``TaskModel.input_gradients``).
    """
    if gradients.ndim != 4:
        raise ValueError(f"text gradients must have shape (K, n, T, d), got {gradients.shape}")
    return np.asarray(np.any(gradients != 0, axis=(0, 3)))


def variance_of_gradients(gradients: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Raw VoG per sample, float64 (n,): the variance across checkpoints (population, 1/K)
    of every input dimension, averaged over the dimensions.

    Args:
        gradients: (K, n, ...) input gradients of K >= 2 checkpoints.
        mask: optional bool (n, ...) of dimensions to average over, broadcastable to one
            checkpoint's gradients (e.g. (n, T, 1) for the real tokens of texts); a sample with
            no dimension in the mask scores 0.
    """
    grads = np.asarray(gradients, dtype=np.float64)
    if grads.ndim < 2:
        raise ValueError(f"gradients must have shape (K, n, ...), got {grads.shape}")
    if grads.shape[0] < 2:
        raise ValueError(f"VoG needs gradients of at least 2 checkpoints, got {grads.shape[0]}")
    n = grads.shape[1]
    var = grads.var(axis=0).reshape(n, -1) if grads.ndim > 2 else grads.var(axis=0)[:, None]
    if mask is None:
        return var.mean(axis=1)
    weights = np.broadcast_to(np.asarray(mask, dtype=np.float64), grads.shape[1:]).reshape(n, -1)
    counts = weights.sum(axis=1)
    totals = (var * weights).sum(axis=1)
    return np.divide(totals, counts, out=np.zeros(n), where=counts > 0)


def vog_of_gradients(per_checkpoint: Sequence[np.ndarray], modality: str) -> np.ndarray:
    """Raw VoG, float64 (n,), of samples whose input gradients at each checkpoint (in
    training order) are ``per_checkpoint``; text gradients are masked to real tokens."""
    grads = np.stack(per_checkpoint)
    mask = token_mask(grads)[:, :, None] if modality == "text" else None
    return variance_of_gradients(grads, mask)


def class_normalize(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(v - mean_c) / std_c within each label's class, float64 (n,); 0 for a class whose
    values are all equal (tested exactly: a float mean of equal values may differ from them
    by rounding, and dividing that by a rounding-sized std would give arbitrary +-1s)."""
    v = np.asarray(values, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    out = np.zeros_like(v)
    for c in np.unique(y):
        members = y == c
        part = v[members]
        if np.ptp(part) > 0:
            out[members] = (part - part.mean()) / part.std()
    return out


def checkpoint_epoch(path: str | Path) -> int | None:
    """The epoch of an ``epoch-NNN.safetensors`` checkpoint (None for another name)."""
    match = CHECKPOINT_PATTERN.match(Path(path).name)
    return int(match.group(1)) if match else None


def select_checkpoints(
    checkpoints: Sequence[str | Path], epochs: Sequence[int] | None = None
) -> list[Path]:
    """The checkpoints of ``epochs`` among ``checkpoints``, in training (epoch) order; with
    ``epochs`` None, every one of ``checkpoints`` as given.

    Raises:
        ValuationError: fewer than 2 checkpoints, or an epoch of ``epochs`` that has no
            ``epoch-NNN.safetensors`` among ``checkpoints``.
    """
    paths = [Path(p) for p in checkpoints]
    if epochs is None:
        picked = paths
    else:
        by_epoch = {e: p for p in paths if (e := checkpoint_epoch(p)) is not None}
        missing = [e for e in epochs if e not in by_epoch]
        if missing:
            have = f"epochs {min(by_epoch)}..{max(by_epoch)}" if by_epoch else "none"
            raise ValuationError(
                f"VoG reads the checkpoint of stage-1 epoch {missing[0]} "
                f"(valuation.vog_checkpoints) but the checkpoints given have {have}; retrain "
                "stage 1 to save every epoch or choose epochs it saved"
            )
        picked = [by_epoch[e] for e in sorted(set(epochs))]
    if len(picked) < 2:
        raise ValuationError(
            f"VoG needs at least 2 training checkpoints but {len(picked)} were given; train the "
            "task model for 2 or more epochs with checkpoints"
        )
    return picked


class VoG:
    """The VoG :class:`~utilgen.value.base.Valuator`.

    Args:
        checkpoints: the task model's saved checkpoints, ``epoch-NNN.safetensors``
            (``utilgen.task.list_checkpoints``).
        epochs: the epochs whose checkpoints VoG reads (at least 2; the loop passes
            ``valuation.vog_epochs(task.epochs)``); None: every one of ``checkpoints``.
        normalize: class-normalise the raw scores (the VoG paper); False returns raw VoG.
        batch_size: samples whose gradients are held at once (K gradient tensors each).
    """

    name = "vog"

    def __init__(
        self,
        checkpoints: Sequence[str | Path],
        *,
        epochs: Sequence[int] | None = None,
        normalize: bool = True,
        batch_size: int = 256,
    ) -> None:
        self.checkpoints = select_checkpoints(checkpoints, epochs)
        self.normalize = normalize
        self.batch_size = batch_size

    def __repr__(self) -> str:
        epochs = [checkpoint_epoch(p) for p in self.checkpoints]
        return f"VoG(epochs={epochs}, normalize={self.normalize})"

    def raw(self, model: TaskModel, data: LabelledData) -> np.ndarray:
        """Raw (not class-normalised) VoG of every sample, float64 (n,).

        Loads each checkpoint into ``model`` in turn; the model's own weights are restored
        afterwards.
        """
        check_data(model, data, self.name)
        out = np.zeros(len(data), dtype=np.float64)
        if not len(data):
            return out
        with (
            preserved_state(model.module()),
            progress_bar("VoG", len(data)) as advance,
        ):
            for part in chunks(len(data), self.batch_size):
                items, labels = data.items[part], data.labels[part]
                per_checkpoint = []
                for path in self.checkpoints:
                    load_checkpoint(model, path)
                    per_checkpoint.append(model.input_gradients(items, labels))
                out[part] = vog_of_gradients(per_checkpoint, model.modality)
                advance(len(items))
        return out

    def score(self, model: TaskModel, data: LabelledData) -> np.ndarray:
        """VoG of every sample (class-normalised unless ``normalize=False``), float64 (n,)."""
        raw = self.raw(model, data)
        return class_normalize(raw, data.labels) if self.normalize else raw
