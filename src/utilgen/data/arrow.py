"""Arrow tables (read from Parquet or a ``datasets`` directory) to :class:`LabelledData`.

Both formats hold the same kinds of columns: text as strings, images as the ``datasets``
Image struct ``{"bytes", "path"}`` (or raw bytes, or pixel arrays), labels as strings or
integers (with class names from a ``ClassLabel`` feature when there is one). Reading the
Arrow storage directly, rather than through ``datasets``' decoding, lets a corrupt image be
reported with its row instead of surfacing from deep inside a formatter.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from utilgen.data.assemble import assemble, encode_labels, text_from_value
from utilgen.data.images import image_from_value
from utilgen.data.labelled import Item, LabelledData
from utilgen.data.validate import choose_column, require_column


def class_label_names(schema: pa.Schema, column: str) -> list[str] | None:
    """The ``ClassLabel`` names that ``datasets`` stored in a schema's metadata, if any.

    ``datasets`` writes its features as JSON under the ``huggingface`` metadata key (Parquet
    files from ``Dataset.to_parquet`` carry it), so integer labels keep their class names.
    """
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw is None:
        return None
    try:
        feature = json.loads(raw)["info"]["features"][column]
    except (ValueError, KeyError, TypeError):
        return None
    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and feature.get("names"):
        return [str(n) for n in feature["names"]]
    return None


def labelled_from_arrow(
    table: pa.Table,
    *,
    name: str,
    origin: str,
    text_column: str,
    image_column: str,
    label_column: str,
    class_names: Sequence[str] | None = None,
    base_dir: Path | None = None,
) -> LabelledData:
    """Build a dataset from an Arrow table; the text column wins if both sample columns exist.

    Args:
        table: the rows.
        name: dataset name used in ids ``<name>/<class>/<row index, 5 digits>``.
        origin: how error messages name the input (a file or directory).
        class_names: the label column's ``ClassLabel`` names, when known.
        base_dir: where relative image paths stored in the table are resolved.
    """
    columns = list(table.column_names)
    modality, sample_column = choose_column(columns, text_column, image_column, origin)
    require_column(columns, label_column, "label", origin)

    def row_name(i: int) -> str:
        return f"row {i} of {origin}"

    values = table.column(sample_column).to_pylist()
    items: list[Item]
    if modality == "text":
        items = [text_from_value(v, row_name(i)) for i, v in enumerate(values)]
    else:
        items = [image_from_value(v, row_name(i), base_dir) for i, v in enumerate(values)]
    labels, names = encode_labels(table.column(label_column).to_pylist(), row_name, class_names)
    keys = [f"{i:05d}" for i in range(table.num_rows)]
    return assemble(name, modality, items, labels, names, keys, origin)
