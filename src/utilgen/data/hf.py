"""Hugging Face ``datasets`` saved with ``save_to_disk`` (a ``Dataset`` or ``DatasetDict``).

``datasets`` is imported only when such a dataset is loaded: it takes about a second, which
the bundled demos and CSV files should not pay.
"""

from __future__ import annotations

from pathlib import Path

from utilgen.data.arrow import labelled_from_arrow
from utilgen.data.labelled import LabelledData
from utilgen.data.validate import require_dir
from utilgen.errors import DataError


def load_hf_disk(
    path: str | Path,
    text_column: str = "text",
    image_column: str = "image",
    label_column: str = "label",
    split: str = "train",
    name: str | None = None,
) -> LabelledData:
    """Load a dataset written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``.

    The text column is used when present, else the image column (an ``Image`` feature or
    pixel arrays). Labels may be ``ClassLabel`` indices (their names become the class names,
    in the feature's order) or strings/integers.

    Args:
        path: the directory passed to ``save_to_disk``.
        split: the split to read when the directory holds a ``DatasetDict``.
        name: the dataset's name; defaults to the directory's name.

    Returns:
        Data with ids ``<name>/<class>/<row index, 5 digits>``.
    """
    import datasets

    root = require_dir(path, "hf-disk", "a dataset written with save_to_disk")
    try:
        loaded = datasets.load_from_disk(str(root))
    except Exception as err:
        # Broad on purpose: besides FileNotFoundError for a foreign directory, datasets fails
        # on damaged or empty saves with assorted errors (an empty save raises IndexError).
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'}"
        raise DataError(
            f"{root} cannot be loaded as a dataset saved with save_to_disk ({reason}); "
            "write it with Dataset.save_to_disk or choose another data.source"
        ) from None
    origin = str(root)
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(
                f"{root} has no split {split!r}; available splits: {', '.join(loaded)}; "
                "set data.hf_split to one of them"
            )
        loaded = loaded[split]
        origin = f"split {split!r} of {root}"
    label_feature = loaded.features.get(label_column)
    class_names = (
        list(label_feature.names) if isinstance(label_feature, datasets.ClassLabel) else None
    )
    # The Arrow storage (image structs, label ints), with any index mapping applied.
    table = loaded.with_format("arrow")[:]
    return labelled_from_arrow(
        table,
        name=name or root.resolve().name or "hf",
        origin=origin,
        text_column=text_column,
        image_column=image_column,
        label_column=label_column,
        class_names=class_names,
        base_dir=root,
    )
