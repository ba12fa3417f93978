"""Embedding similarity r_int (U-DPO Sec. 3.4): how close a sample lies to its class.

    r_int(x, y) = cos(e(x), c_y),   c_y = mean of the L2-normalised embeddings of the real
                                          samples of class y

e is the task model's :meth:`~utilgen.task.TaskModel.embed`: the features the head reads,
which for ``minilm`` are the MiniLM sentence embeddings U-DPO uses (it uses MiniLM-L12; the
offline asset is MiniLM-L6) and for image models the backbone features. The score lies in
[-1, 1]; higher means more typical of the class.
"""

from __future__ import annotations

import numpy as np

from utilgen.data.labelled import LabelledData
from utilgen.task.base import TaskModel
from utilgen.value.base import ValuationError, check_data


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def class_centroids(embeddings: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Mean of the L2-normalised embeddings of each class, float64 (num_classes, d).

    Raises:
        ValueError: a class has no embedding.
    """
    e = _unit_rows(np.asarray(embeddings, dtype=np.float64))
    y = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y, minlength=num_classes)
    if np.any(counts[:num_classes] == 0):
        missing = int(np.flatnonzero(counts[:num_classes] == 0)[0])
        raise ValueError(f"class {missing} has no reference embedding")
    sums = np.zeros((num_classes, e.shape[1]))
    np.add.at(sums, y, e)
    return sums / counts[:num_classes, None]


def cosine_to_centroid(
    embeddings: np.ndarray, labels: np.ndarray, centroids: np.ndarray
) -> np.ndarray:
    """cos(e_i, centroids[y_i]) per sample, float64 (n,); 0 for a zero vector."""
    e = _unit_rows(np.asarray(embeddings, dtype=np.float64))
    c = _unit_rows(np.asarray(centroids, dtype=np.float64))
    return np.einsum("nd,nd->n", e, c[np.asarray(labels, dtype=np.int64)])


class Similarity:
    """The r_int :class:`~utilgen.value.base.Valuator`.

    Args:
        reference: real labelled samples (the real training split) whose class centroids the
            samples are compared with; every class must have one.
    """

    name = "similarity"

    def __init__(self, reference: LabelledData) -> None:
        counts = reference.class_counts()
        if np.any(counts == 0):
            empty = reference.class_names[int(np.flatnonzero(counts == 0)[0])]
            raise ValuationError(
                f"similarity: class {empty!r} has no real reference sample to form its "
                "centroid; give the real data at least one sample per class"
            )
        self.reference = reference

    def __repr__(self) -> str:
        return f"Similarity(reference={len(self.reference)} samples)"

    def centroids(self, model: TaskModel) -> np.ndarray:
        """The real-data class centroids under ``model``'s embedding, float64 (C, d)."""
        check_data(model, self.reference, "similarity reference")
        embeddings = model.embed(self.reference.items)
        return class_centroids(embeddings, self.reference.labels, model.num_classes)

    def score(self, model: TaskModel, data: LabelledData) -> np.ndarray:
        """r_int of every sample, float64 (n,), in [-1, 1]."""
        check_data(model, data, self.name)
        if not len(data):
            return np.zeros(0, dtype=np.float64)
        return cosine_to_centroid(model.embed(data.items), data.labels, self.centroids(model))
