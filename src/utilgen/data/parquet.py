"""Parquet datasets: one file, or a directory of ``*.parquet`` files read in sorted order.

Files written by ``datasets`` (``Dataset.to_parquet``) store images as ``{"bytes", "path"}``
structs and keep ``ClassLabel`` names in the schema metadata; both are understood. Files
written by pandas or pyarrow may hold raw image bytes and string or integer labels.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from utilgen.data.arrow import class_label_names, labelled_from_arrow
from utilgen.data.labelled import LabelledData
from utilgen.data.validate import require_path
from utilgen.errors import DataError


def parquet_files(root: Path) -> list[Path]:
    """``root`` itself, or the ``*.parquet`` files below the directory ``root``, sorted."""
    if root.is_file():
        return [root]
    files = sorted(
        p for p in root.rglob("*.parquet") if p.is_file() and not p.name.startswith((".", "_"))
    )
    if not files:
        raise DataError(
            f"directory {root} holds no .parquet files; point data.path at a Parquet file or a "
            "folder of them"
        )
    return files


def read_parquet(files: list[Path], origin: str) -> pa.Table:
    """The files' rows as one table; unreadable files and mismatched schemas are errors."""
    tables = []
    for file in files:
        try:
            tables.append(pq.read_table(file))
        except (pa.ArrowException, OSError) as err:
            reason = str(err).splitlines()[0]
            raise DataError(
                f"{file} is not a readable Parquet file ({reason}); rewrite or remove it"
            ) from None
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables, promote_options="default")
    except pa.ArrowException as err:
        reason = str(err).splitlines()[0]
        raise DataError(
            f"the Parquet files in {origin} have incompatible columns ({reason}); "
            "give every file the same columns and types"
        ) from None


def load_parquet(
    path: str | Path,
    text_column: str = "text",
    image_column: str = "image",
    label_column: str = "label",
    name: str | None = None,
) -> LabelledData:
    """Load texts or images with labels from Parquet.

    The text column is used when present, else the image column. Ids are
    ``<name>/<class>/<row index, 5 digits>``, rows counted across files in sorted order.

    Args:
        path: a ``.parquet`` file or a directory searched recursively for them.
        name: the dataset's name; defaults to the file's stem or the directory's name.
    """
    root = require_path(path, "parquet")
    files = parquet_files(root)
    table = read_parquet(files, str(root))
    return labelled_from_arrow(
        table,
        name=name or (root.stem if root.is_file() else root.resolve().name) or "parquet",
        origin=str(root),
        text_column=text_column,
        image_column=image_column,
        label_column=label_column,
        class_names=class_label_names(table.schema, label_column),
        base_dir=root.parent if root.is_file() else root,
    )
