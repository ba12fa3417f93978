"""Label fidelity: how often a real-data classifier agrees with a generated sample's label.

A generator that draws a "3" when asked for a "3" has fidelity 1 on it. The classifier is
the one trained on real data only (stage 1), so the figure measures the generator, not
a classifier that has already seen synthetic data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from utilgen.data.labelled import Item
from utilgen.task.base import TaskModel


@dataclass(frozen=True)
class LabelFidelity:
    """Share of generated samples classified as their conditioning label.

    Attributes:
        overall: over all samples, in [0, 1].
        per_class: class name -> share for that class (NaN for a class with no samples).
        n: number of samples scored.
    """

    overall: float
    per_class: dict[str, float]
    n: int

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form (NaN becomes None)."""
        return {
            "overall": self.overall,
            "per_class": {k: (None if np.isnan(v) else v) for k, v in self.per_class.items()},
            "n": self.n,
        }


def label_fidelity(
    model: TaskModel,
    items: Sequence[Item],
    labels: np.ndarray,
    class_names: Sequence[str],
) -> LabelFidelity:
    """Label fidelity of ``items`` generated for ``labels`` under ``model`` (argmax)."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(items) != len(labels):
        raise ValueError(f"{len(items)} items but {len(labels)} labels")
    if not len(items):
        return LabelFidelity(float("nan"), {name: float("nan") for name in class_names}, 0)
    predicted = model.predict_proba(items).argmax(axis=1)
    hit = predicted == labels
    per_class = {
        name: float(hit[labels == c].mean()) if (labels == c).any() else float("nan")
        for c, name in enumerate(class_names)
    }
    return LabelFidelity(float(hit.mean()), per_class, len(items))
