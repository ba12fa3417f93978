"""Between ``LabelledData`` and the pool: real data in as samples, manifest rows back out.

The ids, labels and class names survive the round trip, so a split stored in round 0 is
the same ``LabelledData`` when read back in any later round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import numpy as np
import pandas as pd

from utilgen.data.labelled import LabelledData, Modality
from utilgen.errors import PoolError
from utilgen.pool.payload import decode_item, encode_item
from utilgen.pool.sample import SOURCES, SPLITS, Sample, Source, Split


def samples_from_labelled(
    data: LabelledData, split: str, source: str = "real", round: int = 0
) -> list[Sample]:
    """One ``Sample`` per item of ``data``, in order, with its id, label and class name.

    ``split`` is ``"train"``, ``"val"``, ``"test"`` or ``"meta"`` (``""`` only for synthetic
    data) and ``source`` is ``"real"`` or ``"synthetic"``; anything else raises ValueError.
    Images are encoded as PNG, texts as UTF-8; provenance fields keep their defaults (real
    data was not generated).
    """
    if split not in SPLITS or source not in SOURCES:
        raise ValueError(f"split must be one of {SPLITS} and source one of {SOURCES}")
    split_ = cast(Split, split)
    source_ = cast(Source, source)
    return [
        Sample(
            id=sample_id,
            modality=data.modality,
            label=int(label),
            class_name=data.class_names[int(label)],
            payload=encode_item(item, data.modality),
            source=source_,
            split=split_,
            round=round,
        )
        for sample_id, item, label in zip(data.ids, data.items, data.labels, strict=True)
    ]


def class_names_from_manifest(frame: pd.DataFrame) -> tuple[str, ...]:
    """Class index -> name as recorded in the manifest ``frame``.

    Raises PoolError if a label has two names or a label between 0 and the largest one has
    no row (then pass the class names explicitly, e.g. from the run's config).
    """
    pairs = frame[["label", "class_name"]].drop_duplicates()
    names: dict[int, str] = {}
    for label, name in zip(pairs["label"], pairs["class_name"], strict=True):
        label = int(label)
        if label in names and names[label] != name:
            raise PoolError(
                f"label {label} has two class names in the pool ({names[label]!r}, {name!r}); "
                "the manifest is inconsistent — run `utilgen pool verify` on the run directory"
            )
        names[label] = str(name)
    missing = [i for i in range(max(names, default=-1) + 1) if i not in names]
    if missing:
        raise PoolError(
            f"the pool has no sample of label(s) {missing[:5]}, so their class names are "
            "unknown; pass class_names explicitly"
        )
    return tuple(names[i] for i in range(len(names)))


def labelled_from_manifest(
    frame: pd.DataFrame,
    read_payload: Callable[[str], bytes],
    class_names: Sequence[str],
    modality: Modality,
    name: str = "pool",
) -> LabelledData:
    """The samples of manifest rows ``frame``, in row order, as ``LabelledData``.

    Args:
        frame: manifest rows (``PoolStore.manifest()`` or a filtered part of it).
        read_payload: blob name -> payload bytes (``PoolStore.read_payload``).
        class_names: class index -> name for the result (all classes of the run, so that
            labels mean the same in every part).
        modality: the pool's modality (needed when ``frame`` is empty).
        name: the ``LabelledData`` name.
    """
    if not frame.empty and set(frame["modality"]) != {modality}:
        raise PoolError(f"the rows mix modalities {sorted(set(frame['modality']))}")
    labels = np.asarray(frame["label"], dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise PoolError(
            f"labels range over {labels.min()}..{labels.max()} but only "
            f"{len(class_names)} class names were given; pass all class names"
        )
    items = tuple(decode_item(read_payload(blob), modality) for blob in frame["blob"])
    return LabelledData(
        modality=modality,
        items=items,
        labels=labels,
        class_names=tuple(class_names),
        ids=tuple(str(i) for i in frame["id"]),
        name=name,
    )
