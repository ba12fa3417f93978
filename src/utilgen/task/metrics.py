"""Classification metrics of a task model: accuracy, class balance, F1 and calibration.

Conventions (each chosen so a report never shows a misleading number):

* ``per_class_accuracy`` is the recall of each class, ``None`` for a class with no sample in
  the data; such classes are left out of the worst-class figures.
* ``worst_class_ratio`` = min / max of the per-class accuracies: 1 when every class is
  served equally well. When even the best class has accuracy 0 (0 / 0) it is 0, not 1: a
  model that gets nothing right is not "balanced".
* ``macro_f1`` averages F1 = 2TP / (2TP + FP + FN) over the classes that occur in the
  labels or the predictions (scikit-learn's ``f1_score(average="macro")`` with its default
  labels); a class absent from both has no F1 and does not count.
* ``ece`` is the expected calibration error with 15 equal-width confidence bins
  (0, 1/15], (1/15, 2/15], ..., (14/15, 1] (a confidence of exactly 0 goes to the first):
  sum over bins of (bin count / n) * |accuracy in bin - mean confidence in bin|, the
  confidence being the top softmax probability.
* the confusion matrix has true classes as rows and predicted classes as columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from utilgen.data.labelled import LabelledData
from utilgen.task.base import TaskModel

ECE_BINS = 15


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes), int64: row = true class, column = predicted."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def per_class_accuracies(cm: np.ndarray) -> list[float | None]:
    """Recall of each class from a confusion matrix; None where the class has no samples."""
    support = cm.sum(axis=1)
    return [float(cm[c, c] / support[c]) if support[c] else None for c in range(len(cm))]


def worst_class_ratio(accuracies: Sequence[float | None]) -> float:
    """min / max of the defined per-class accuracies; 0 when the max is 0 (see module doc)."""
    defined = [a for a in accuracies if a is not None]
    if not defined or max(defined) == 0:
        return 0.0
    return min(defined) / max(defined)


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over classes present in labels or predictions (see module doc)."""
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    denominator = 2 * tp + fp + fn
    present = denominator > 0
    if not present.any():
        return 0.0
    return float(np.mean(2 * tp[present] / denominator[present]))


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """ECE over ``n_bins`` equal-width, right-closed confidence bins, weighted by bin count.

    Args:
        confidence: (n,) top-class probability of each sample, in [0, 1].
        correct: (n,) whether the top class was the true one.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    # side="left": a confidence equal to an edge falls in the bin that edge closes.
    bins = np.searchsorted(inner_edges, confidence, side="left")
    ece = 0.0
    for b in np.unique(bins):
        members = bins == b
        gap = abs(correct[members].mean() - confidence[members].mean())
        ece += members.mean() * gap
    return float(ece)


def train_val_gap(train_acc: float, val_acc: float) -> float:
    """Training minus validation accuracy: how much the model overfits (in accuracy points
    as a fraction, e.g. 0.05 = five points)."""
    return float(train_acc) - float(val_acc)


def compute_metrics(
    y_true: np.ndarray, proba: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """All metrics of predicted probabilities against true labels.

    Args:
        y_true: (n,) class indices.
        proba: (n, num_classes) predicted probabilities (rows sum to 1).
        class_names: names of the classes, index -> name.

    Returns:
        ``accuracy``, ``per_class_accuracy`` {name: accuracy or None},
        ``worst_class_accuracy``, ``worst_class`` (its name), ``worst_class_ratio``,
        ``macro_f1``, ``ece``, ``n`` and ``confusion_matrix`` (list of lists); every
        number a plain float or int, ready for JSON.

    Raises:
        ValueError: no samples, or shapes/labels that do not match the classes.
    """
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    proba = np.asarray(proba, dtype=np.float64)
    k = len(class_names)
    if len(y_true) == 0:
        raise ValueError("metrics need at least one sample")
    if proba.shape != (len(y_true), k):
        raise ValueError(f"proba has shape {proba.shape}, expected ({len(y_true)}, {k})")
    if y_true.min() < 0 or y_true.max() >= k:
        raise ValueError(f"labels must lie in [0, {k})")

    y_pred = proba.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, k)
    accuracies = per_class_accuracies(cm)
    defined = [(a, c) for c, a in enumerate(accuracies) if a is not None]
    worst_acc, worst_class = min(defined)
    return {
        "accuracy": float(np.mean(y_pred == y_true)),
        "per_class_accuracy": dict(zip(class_names, accuracies, strict=True)),
        "worst_class_accuracy": float(worst_acc),
        "worst_class": class_names[worst_class],
        "worst_class_ratio": worst_class_ratio(accuracies),
        "macro_f1": macro_f1(cm),
        "ece": expected_calibration_error(proba.max(axis=1), y_pred == y_true),
        "n": len(y_true),
        "confusion_matrix": cm.tolist(),
    }


def evaluate(model: TaskModel, data: LabelledData) -> dict[str, Any]:
    """:func:`compute_metrics` of ``model.predict_proba`` on ``data``."""
    return compute_metrics(data.labels, model.predict_proba(data.items), data.class_names)
