"""``LabelledData``: the one in-memory form of a labelled dataset, images or texts.

Images are ``uint8`` arrays of shape (H, W, C) with C = 1 (grey) or 3 (RGB); texts are
``str``. Labels are class indices into ``class_names``. Every sample has a stable ``id``
(``<dataset>/<class>/<name or index>``) that survives splitting and subsampling, so the pool
and every later round can refer to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Modality = Literal["image", "text"]
Item = np.ndarray | str


@dataclass(frozen=True)
class LabelledData:
    """Samples with class labels, of one modality.

    Attributes:
        modality: ``"image"`` or ``"text"``.
        items: the samples (uint8 HxWxC arrays, or strings), aligned with ``labels``.
        labels: int64 array of class indices, shape (n,).
        class_names: class index -> name.
        ids: stable unique id per sample.
        name: the dataset's name (e.g. ``digits``), used in reports and ids.
    """

    modality: Modality
    items: tuple[Item, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    ids: tuple[str, ...]
    name: str = "data"

    def __post_init__(self) -> None:
        n = len(self.items)
        if len(self.labels) != n or len(self.ids) != n:
            raise ValueError(
                f"items ({n}), labels ({len(self.labels)}) and ids ({len(self.ids)}) "
                "differ in length"
            )
        if len(set(self.ids)) != n:
            raise ValueError("sample ids must be unique")
        object.__setattr__(self, "labels", np.asarray(self.labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabelledData:
        """The samples at ``indices``, in that order, with the same classes."""
        idx = [int(i) for i in np.asarray(indices, dtype=np.int64).ravel()]
        return LabelledData(
            modality=self.modality,
            items=tuple(self.items[i] for i in idx),
            labels=self.labels[idx] if idx else np.zeros(0, dtype=np.int64),
            class_names=self.class_names,
            ids=tuple(self.ids[i] for i in idx),
            name=self.name,
        )

    def class_counts(self) -> np.ndarray:
        """Number of samples per class, shape (num_classes,)."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def concat(self, other: LabelledData) -> LabelledData:
        """This data followed by ``other`` (same modality and classes)."""
        if other.modality != self.modality or other.class_names != self.class_names:
            raise ValueError("can only concatenate data of the same modality and classes")
        return LabelledData(
            modality=self.modality,
            items=self.items + other.items,
            labels=np.concatenate([self.labels, other.labels]),
            class_names=self.class_names,
            ids=self.ids + other.ids,
            name=self.name,
        )
