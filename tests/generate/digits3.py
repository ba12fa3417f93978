"""Digits of the classes 0, 1 and 2 only, as a 3-class dataset for the built-in generator tests."""

from __future__ import annotations

import numpy as np

from utilgen.data import LabelledData


def digits_of_three_classes(data: LabelledData, idx: np.ndarray) -> LabelledData:
    """The digits at ``idx`` (all labelled 0, 1 or 2), sorted, with class names "0".."2"."""
    part = data.subset(np.sort(idx))
    return LabelledData(
        modality="image",
        items=part.items,
        labels=part.labels,
        class_names=("0", "1", "2"),
        ids=part.ids,
        name="digits3",
    )
