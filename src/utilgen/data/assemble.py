"""From raw rows to :class:`LabelledData`: label encoding, text checks, ids, dataset checks.

Every loader reads its format into parallel lists (samples, raw label values, a key per row)
and ends here, so the rules that make datasets comparable live in one place:

* labels are class names (strings) or integers; names are sorted for determinism, integers
  numerically (``"2"`` before ``"10"``), unless the format names its classes itself
  (a ``datasets`` ``ClassLabel``), in which case that order is kept;
* a row without a label or without text is an error naming the row;
* class names must be safe as path components and there must be at least two classes;
* ids are ``<dataset>/<class>/<key>``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np

from utilgen.data.images import unify_channels
from utilgen.data.labelled import Item, LabelledData, Modality
from utilgen.data.validate import check_class_name, check_enough_classes
from utilgen.errors import DataError

log = logging.getLogger(__name__)

RowName = Callable[[int], str]
"""Describes row ``i`` for an error message, e.g. ``"line 12 of data.jsonl"``."""

_CANONICAL_INT = re.compile(r"-?(0|[1-9][0-9]*)")


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def text_from_value(value: Any, where: str) -> str:
    """One cell of a text column as ``str``; numbers are kept as their text."""
    if _is_missing(value) or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where} has an empty text; fill it in or remove the row")
    if isinstance(value, str):
        return value
    if isinstance(value, (Real, np.number)) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"{where} has a {type(value).__name__} where text was expected; store a string")


def _normalise_label(value: Any, where: str) -> int | str:
    """A raw label as an ``int`` or a stripped, non-empty ``str``."""
    if isinstance(value, (np.generic,)):
        value = value.item()
    if _is_missing(value) or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where} has no label; fill in the label or remove the row")
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise DataError(f"{where} has label {value!r}, neither a class name nor an integer; fix it")
    if isinstance(value, str):
        return value.strip()
    raise DataError(
        f"{where} has a {type(value).__name__} label; give one class name or index per row"
    )


def encode_labels(
    values: Sequence[Any],
    row_name: RowName,
    class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Raw labels as class indices (int64, shape (n,)) and the class names they index.

    With ``class_names`` (a ``ClassLabel``'s names) the values must be indices into it; a
    negative index is the ``datasets`` convention for "no label" and is reported as such.
    """
    if class_names is not None:
        labels = np.empty(len(values), dtype=np.int64)
        for i, value in enumerate(values):
            label = _normalise_label(value, row_name(i))
            if not isinstance(label, int) or label < 0:
                raise DataError(
                    f"{row_name(i)} has no label ({value!r}); fill it in or remove the row"
                )
            if label >= len(class_names):
                raise DataError(
                    f"{row_name(i)} has label {label}, but only {len(class_names)} classes are "
                    "named; fix the label or the ClassLabel names"
                )
            labels[i] = label
        return labels, tuple(class_names)

    normalised = [_normalise_label(value, row_name(i)) for i, value in enumerate(values)]
    # Integers (or their canonical text, as CSV stores them) sort numerically; anything else,
    # including zero-padded codes like "007", keeps its spelling and sorts as text.
    if all(isinstance(v, int) or _CANONICAL_INT.fullmatch(v) for v in normalised):
        ints = [int(v) for v in normalised]
        names = tuple(str(v) for v in sorted(set(ints)))
        keys = [str(v) for v in ints]
    else:
        keys = [str(v) for v in normalised]
        names = tuple(sorted(set(keys)))
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[k] for k in keys], dtype=np.int64), names


def assemble(
    name: str,
    modality: Modality,
    items: Sequence[Item],
    labels: np.ndarray,
    class_names: Sequence[str],
    keys: Sequence[str],
    origin: str,
) -> LabelledData:
    """Check the classes and build the dataset with ids ``<name>/<class>/<key>``.

    Classes without samples (a ``ClassLabel`` may name more classes than a split holds) are
    dropped, keeping the order of the rest. ``origin`` names the input in error messages.
    """
    if len(items) == 0:
        raise DataError(f"{origin} holds no samples; point data.path at a dataset with data")
    labels = np.asarray(labels, dtype=np.int64)
    present = np.flatnonzero(np.bincount(labels, minlength=len(class_names)))
    if len(present) < len(class_names):
        kept = set(present.tolist())
        dropped = [class_names[i] for i in range(len(class_names)) if i not in kept]
        log.warning("%s: classes without samples are left out: %s", origin, ", ".join(dropped))
        remap = np.full(len(class_names), -1, dtype=np.int64)
        remap[present] = np.arange(len(present))
        labels = remap[labels]
        class_names = [class_names[i] for i in present.tolist()]
    for class_name in class_names:
        check_class_name(class_name, origin)
    check_enough_classes(class_names, origin)
    if modality == "image":
        items = unify_channels([np.asarray(item) for item in items])
    ids = tuple(
        f"{name}/{class_names[label]}/{key}"
        for label, key in zip(labels.tolist(), keys, strict=True)
    )
    if len(set(ids)) != len(ids):
        raise DataError(f"{origin} has duplicate sample names; make file names unique")
    for sample_id in ids:
        try:
            sample_id.encode("utf-8")
        except UnicodeEncodeError:
            # Linux hands over a file name that is not UTF-8 with its odd bytes as lone
            # surrogates; the pool (UTF-8 Parquet) cannot store such an id.
            raise DataError(
                f"sample {sample_id!r} from {origin} is not valid Unicode (a file name in "
                "another encoding?); rename the file in UTF-8"
            ) from None
    return LabelledData(
        modality=modality,
        items=tuple(items),
        labels=labels,
        class_names=tuple(class_names),
        ids=ids,
        name=name,
    )
