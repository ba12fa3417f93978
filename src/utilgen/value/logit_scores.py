"""Scores read off the classifier's output: marginal, margin, entropy and loss.

All four are functions of a sample's logits z (and label y), computed in float64 from a
log-softmax so that tiny probabilities keep their precision:

* ``marginal``  p_y = softmax(z)_y, in [0, 1]; GenDataAgent's marginal score (Eq. 1). Low
  means the model finds the sample hard (near or across the decision boundary).
* ``margin``    p_y - max_{j != y} p_j, in [-1, 1]; U-DPO's r_ext (Eq. 2/3). Negative means
  the sample is misclassified.
* ``entropy``   -sum_j p_j log p_j, in nats, in [0, log C]; label-free uncertainty.
* ``loss``      -log p_y, in nats, >= 0; the per-sample cross-entropy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from utilgen.data.labelled import LabelledData
from utilgen.task.base import TaskModel
from utilgen.value.base import ValuationError, check_data


def _check(logits: np.ndarray, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must have shape (n, num_classes), got {z.shape}")
    if labels is None:
        return z, np.zeros(len(z), dtype=np.int64)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(y) != len(z):
        raise ValueError(f"got {len(y)} labels for {len(z)} rows of logits")
    if len(y) and (y.min() < 0 or y.max() >= z.shape[1]):
        raise ValueError(f"labels must lie in [0, {z.shape[1]})")
    return z, y


def log_probabilities(logits: np.ndarray) -> np.ndarray:
    """log softmax(z), float64 (n, C), shifted by the row maximum for stability."""
    z = np.asarray(logits, dtype=np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def marginal(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """p(y|x) of the labelled class, float64 (n,), in [0, 1]."""
    z, y = _check(logits, labels)
    return np.exp(log_probabilities(z)[np.arange(len(y)), y])


def margin(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """p_y - max_{j != y} p_j, float64 (n,), in [-1, 1]."""
    z, y = _check(logits, labels)
    if z.shape[1] < 2:
        raise ValueError("the margin needs at least two classes")
    p = np.exp(log_probabilities(z))
    rows = np.arange(len(y))
    own = p[rows, y]
    others = p.copy()
    others[rows, y] = -np.inf
    return own - others.max(axis=1)


def entropy(logits: np.ndarray) -> np.ndarray:
    """Predictive entropy -sum_j p_j log p_j in nats, float64 (n,)."""
    z, _ = _check(logits, None)
    logp = log_probabilities(z)
    # p log p -> 0 as p -> 0; exp(logp) * logp is exactly 0 there only when logp is finite,
    # which the shifted log-softmax guarantees.
    return -(np.exp(logp) * logp).sum(axis=1)


def loss(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy -log p_y in nats, float64 (n,)."""
    z, y = _check(logits, labels)
    return -log_probabilities(z)[np.arange(len(y)), y]


OUTPUT_SCORES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "marginal": marginal,
    "margin": margin,
    "entropy": lambda logits, _labels: entropy(logits),
    "loss": loss,
}
"""The scores computed from logits alone, by name."""


class OutputScore:
    """A :class:`~utilgen.value.base.Valuator` for one of :data:`OUTPUT_SCORES`.

    Args:
        name: ``marginal``, ``margin``, ``entropy`` or ``loss``.
    """

    def __init__(self, name: str) -> None:
        if name not in OUTPUT_SCORES:
            raise ValuationError(
                f"unknown output score {name!r}; use one of {', '.join(OUTPUT_SCORES)}"
            )
        self.name = name

    def __repr__(self) -> str:
        return f"OutputScore({self.name!r})"

    def score(self, model: TaskModel, data: LabelledData) -> np.ndarray:
        """The score of every sample under ``model`` (eval mode), float64 (n,)."""
        check_data(model, data, self.name)
        return self.from_logits(model.logits(data.items), data.labels)

    def from_logits(self, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The score from precomputed logits (n, C) and labels (n,), float64 (n,)."""
        return OUTPUT_SCORES[self.name](logits, labels)
