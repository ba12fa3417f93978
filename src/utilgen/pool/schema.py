"""The manifest's fixed Arrow schema and conversions between rows, samples and tables.

``RUN/pool/manifest.parquet`` has one row per sample with the columns of
:data:`MANIFEST_SCHEMA`, in that order, followed by the per-round utility columns that
valuation adds (float64, named ``utility_r<round, 3 digits>_<method>``). Text columns hold
``""`` rather than null for "none"; only ``seed``, ``guidance``, ``steps`` and ``strength``
are nullable, because 0 is a meaningful value for each of them. Of the fixed columns only
``kept`` and ``reason`` change after a sample is stored (``PoolStore.set_kept``); the rest
are provenance.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from utilgen.errors import PoolError
from utilgen.pool.sample import Sample

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("modality", pa.string(), nullable=False),
        pa.field("label", pa.int64(), nullable=False),
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("round", pa.int64(), nullable=False),
        pa.field("generator", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("negative_prompt", pa.string(), nullable=False),
        pa.field("seed", pa.int64()),
        pa.field("guidance", pa.float64()),
        pa.field("steps", pa.int64()),
        pa.field("strength", pa.float64()),
        pa.field("parent_id", pa.string(), nullable=False),
        pa.field("perturbation", pa.string(), nullable=False),
        pa.field("blob", pa.string(), nullable=False),
        pa.field("kept", pa.bool_(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("details", pa.string(), nullable=False),
    ]
)
COLUMNS: tuple[str, ...] = tuple(MANIFEST_SCHEMA.names)

# Re-appending an id is a no-op only if these agree (resume re-creates the same samples).
IDENTITY_COLUMNS: tuple[str, ...] = ("modality", "label", "source", "split", "blob")

EXTRA_COLUMN_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")

_NULLABLE_INTS = ("seed", "steps")


def utility_column(round_index: int, method: str) -> str:
    """The manifest column of ``method``'s utilities in round ``round_index``.

    E.g. ``utility_column(0, "marginal") == "utility_r000_marginal"``.
    """
    name = f"utility_r{round_index:03d}_{method}"
    if round_index < 0 or not EXTRA_COLUMN_PATTERN.match(name):
        raise ValueError(f"invalid utility column for round {round_index}, method {method!r}")
    return name


def empty_table() -> pa.Table:
    """A manifest with no rows."""
    return MANIFEST_SCHEMA.empty_table()


def samples_to_table(samples: Sequence[Sample]) -> pa.Table:
    """The manifest rows of ``samples``, in order, with the fixed schema (no extra columns)."""
    columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
    for sample in samples:
        for name in COLUMNS:
            columns[name].append(sample.blob if name == "blob" else getattr(sample, name))
    return pa.Table.from_pydict(columns, schema=MANIFEST_SCHEMA)


def conform(table: pa.Table, source: Path | str) -> pa.Table:
    """``table`` with the fixed columns first, in schema order, then the extra columns.

    Raises PoolError naming ``source`` when a fixed column is missing or has the wrong type.
    """
    if "details" not in table.column_names:
        # Manifests of utilgen 0.1.0 predate the column; "" is what they would have held.
        table = table.append_column(
            pa.field("details", pa.string(), nullable=False), pa.array([""] * table.num_rows)
        )
    missing = [name for name in COLUMNS if name not in table.column_names]
    if missing:
        raise PoolError(
            f"manifest {source} lacks column(s) {', '.join(missing)}; "
            "it was not written by this version of utilgen — re-create the run directory"
        )
    fixed = []
    for field in MANIFEST_SCHEMA:
        column = table.column(field.name)
        if not column.type.equals(field.type):
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise PoolError(
                    f"manifest {source}: column {field.name} has type {column.type}, "
                    f"expected {field.type}; re-create the run directory"
                ) from err
        fixed.append(column)
    extras = [name for name in table.column_names if name not in COLUMNS]
    arrays = fixed + [table.column(name) for name in extras]
    fields = list(MANIFEST_SCHEMA) + [table.schema.field(name) for name in extras]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def with_extra_columns(rows: pa.Table, like: pa.Table) -> pa.Table:
    """``rows`` (fixed schema) with ``like``'s extra columns appended as nulls."""
    for field in like.schema:
        if field.name not in rows.column_names:
            rows = rows.append_column(field, pa.nulls(rows.num_rows, type=field.type))
    return rows


def table_to_bytes(table: pa.Table) -> bytes:
    """The Parquet encoding of ``table`` (written atomically by the caller), with a CRC per
    data page: a flipped bit in the rows then fails the read instead of changing a value."""
    sink = io.BytesIO()
    pq.write_table(table, sink, write_page_checksum=True)
    return sink.getvalue()


def table_to_frame(table: pa.Table) -> pd.DataFrame:
    """The manifest as a DataFrame; ``seed`` and ``steps`` become nullable ``Int64``."""
    frame = table.to_pandas()
    for name in _NULLABLE_INTS:
        frame[name] = frame[name].astype("Int64")
    return frame


def _none_if_missing(value: Any) -> Any:
    return None if value is None or pd.isna(value) else value


def row_to_sample(row: Mapping[str, Any], payload: bytes) -> Sample:
    """The ``Sample`` of manifest ``row`` (a dict or DataFrame row) with its ``payload``."""
    return Sample(
        id=str(row["id"]),
        modality=row["modality"],
        label=int(row["label"]),
        class_name=str(row["class_name"]),
        payload=payload,
        source=row["source"],
        split=row["split"],
        round=int(row["round"]),
        generator=str(row["generator"]),
        prompt=str(row["prompt"]),
        negative_prompt=str(row["negative_prompt"]),
        seed=_none_if_missing(row["seed"]),
        guidance=_none_if_missing(row["guidance"]),
        steps=_none_if_missing(row["steps"]),
        strength=_none_if_missing(row["strength"]),
        parent_id=str(row["parent_id"]),
        perturbation=str(row["perturbation"]),
        kept=bool(row["kept"]),
        reason=str(row["reason"]),
        details=str(row["details"]),
    )
