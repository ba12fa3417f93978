"""``export_pool``: the pool as an ImageFolder, a JSONL file, or a ``datasets`` Parquet file.

Formats:

- ``imagefolder`` (images only): ``DEST/<class name>/<sample id>.png``, the stored PNG bytes
  unchanged. Loadable with ``datasets.load_dataset("imagefolder", data_dir=DEST)`` or
  torchvision's ``ImageFolder``. Provenance is not kept; use ``parquet`` for that.
- ``jsonl``: one JSON object per sample with every manifest column (utility columns
  included, NaN as ``null``) plus the payload: ``"text"`` for texts, ``"image_png_base64"``
  (the PNG bytes, base64) for images. Self-contained: no file refers to the run directory.
- ``parquet``: one file for ``datasets.load_dataset("parquet", data_files=FILE)``: column
  ``image`` (the ``datasets.Image`` struct ``{"bytes", "path"}``, decoding to PIL) or
  ``text``, then ``label`` (int64), ``class_name``, ``id`` and every other manifest column.

Names taken from the data (class names, sample ids) are made safe before they become
paths: separators, control and reserved characters become ``_``, names longer than 120
bytes are cut and suffixed with a hash, and nothing is ever written outside ``DEST`` (an
ImageFolder is written to a hidden folder beside it, ``.utilgen-export-*.tmp``, renamed to
``DEST`` when complete and removed on failure). Inputs are checked before anything is
written, and ``DEST`` may not overwrite the run's own files.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import os
import re
import secrets
import shutil
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from utilgen.atomic import write_bytes_atomic, write_text_atomic
from utilgen.errors import PoolError
from utilgen.pool.layout import RunLayout
from utilgen.pool.schema import table_to_frame
from utilgen.pool.store import PoolStore, filter_manifest

ExportFormat = Literal["imagefolder", "jsonl", "parquet"]
FORMATS: tuple[str, ...] = ("imagefolder", "jsonl", "parquet")
DEFAULT_FILE_NAMES = {"jsonl": "pool.jsonl", "parquet": "pool.parquet"}

# Path separators, control characters and characters Windows forbids in file names.
_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')
_MAX_STEM = 120  # well below the 255-byte limit of common file systems, leaves room for ".png"


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def safe_folder_name(class_name: str) -> str:
    """``class_name`` as one path component: unsafe characters -> ``_``, no leading dot.

    Raises PoolError for names that cannot be a folder (empty, ``.``, ``..``).
    """
    if class_name.strip() in ("", ".", ".."):
        raise PoolError(
            f"class name {class_name!r} cannot be a folder name; export with --format "
            "parquet or jsonl, or rename the class"
        )
    name = _UNSAFE.sub("_", class_name).strip()
    # A leading dot would make a hidden folder, which ImageFolder loaders skip.
    name = "_" + name[1:] if name.startswith(".") else name
    if len(name.encode("utf-8")) > _MAX_STEM:
        # File systems cap a name at 255 bytes, not characters: cut on a character boundary.
        cut = name.encode("utf-8")[:_MAX_STEM].decode("utf-8", errors="ignore").rstrip()
        name = f"{cut}-{_short_hash(class_name)}"
    return name


def safe_file_stem(sample_id: str) -> str:
    """``sample_id`` as a file name without extension: characters outside ``[A-Za-z0-9._-]``
    -> ``_``, no leading dot, long ids shortened and suffixed with a hash of the full id."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", sample_id).lstrip(".") or "_"
    if len(stem) > _MAX_STEM:
        stem = f"{stem[:_MAX_STEM]}-{_short_hash(sample_id)}"
    return stem


def _image_paths(frame: pd.DataFrame, dest: Path) -> list[Path]:
    """The file of each row under ``dest``, checked to stay inside it and to be unique."""
    folders: dict[str, str] = {}
    for class_name in sorted(set(frame["class_name"])):
        folder = safe_folder_name(class_name)
        clash = [c for c, f in folders.items() if f == folder]
        if clash:
            raise PoolError(
                f"class names {clash[0]!r} and {class_name!r} map to the same folder "
                f"{folder!r}; export with --format parquet or jsonl, or rename a class"
            )
        folders[class_name] = folder
    names = [
        (folders[c], safe_file_stem(i))
        for c, i in zip(frame["class_name"], frame["id"], strict=True)
    ]
    # Two ids that sanitise to the same name (e.g. "a/b" and "a_b") each get a hash of
    # their own id, so no file overwrites another.
    seen: defaultdict[tuple[str, str], int] = defaultdict(int)
    for key in names:
        seen[key] += 1
    root = dest.resolve()
    paths = []
    for (folder, stem), sample_id in zip(names, frame["id"], strict=True):
        if seen[(folder, stem)] > 1:
            stem = f"{stem}-{_short_hash(sample_id)}"
        path = dest / folder / f"{stem}.png"
        if not path.resolve().is_relative_to(root):
            raise PoolError(f"sample {sample_id!r} would be written outside {dest}; rename it")
        paths.append(path)
    return paths


def _export_imagefolder(frame: pd.DataFrame, dest: Path, read: Callable[[str], bytes]) -> Path:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise PoolError(
            f"{dest} exists and is not an empty folder; choose a new --out for the ImageFolder"
        )
    paths = _image_paths(frame, dest)
    # The files go to a hidden folder next to DEST, renamed to DEST once all are written: a
    # full disk or a crash half-way leaves no half-exported folder that looks complete.
    # Folders made here for DEST's parent go too if the export fails: nothing is left.
    created = next((p for p in reversed(dest.absolute().parents) if not p.exists()), None)
    staging = dest.parent / f".utilgen-export-{secrets.token_hex(6)}.tmp"
    staging.mkdir(parents=True)
    try:
        for path, blob in zip(paths, frame["blob"], strict=True):
            write_bytes_atomic(staging / path.relative_to(dest), read(blob), durable=False)
        os.sync()  # one flush for every file instead of an fsync each
        os.replace(staging, dest)  # replaces DEST only when it is an empty folder
    except BaseException:
        shutil.rmtree(created or staging, ignore_errors=True)
        raise
    return dest


def _file_dest(dest: Path, fmt: str) -> Path:
    return dest / DEFAULT_FILE_NAMES[fmt] if dest.is_dir() else dest


def _json_value(value: Any) -> Any:
    """A JSON-safe Python value: numpy scalars unwrapped, NaN / NA as None."""
    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _export_jsonl(frame: pd.DataFrame, dest: Path, read: Callable[[str], bytes]) -> Path:
    lines = []
    for row in frame.to_dict(orient="records"):
        record = {name: _json_value(value) for name, value in row.items()}
        payload = read(str(row["blob"]))
        if row["modality"] == "text":
            record["text"] = payload.decode("utf-8")
        else:
            record["image_png_base64"] = base64.b64encode(payload).decode("ascii")
        lines.append(json.dumps(record, ensure_ascii=False, allow_nan=False))
    write_text_atomic(dest, "".join(line + "\n" for line in lines))
    return dest


def _export_parquet(
    table: pa.Table, modality: str, dest: Path, read: Callable[[str], bytes]
) -> Path:
    # datasets is imported here only: the rest of the pool does not need it.
    from datasets import Features, Image, Value

    payloads = [read(str(b)) for b in table.column("blob").to_pylist()]
    if modality == "image":
        data_column = pa.array(
            [{"bytes": p, "path": None} for p in payloads],
            type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        )
    else:
        data_column = pa.array([p.decode("utf-8") for p in payloads], type=pa.string())
    first = ["label", "class_name", "id"]
    names = first + [name for name in table.column_names if name not in first]
    features = Features.from_arrow_schema(pa.schema([table.schema.field(n) for n in names]))
    data_feature = Image() if modality == "image" else Value("string")
    features = Features({modality: data_feature, **features})
    columns = {modality: data_column, **{n: table.column(n) for n in names}}
    out = pa.Table.from_arrays([columns[n] for n in features], schema=features.arrow_schema)
    sink = io.BytesIO()
    pq.write_table(out, sink)
    write_bytes_atomic(dest, sink.getvalue())
    return dest


def _check_outside_run(run_dir: Path, dest: Path) -> None:
    """Refuse a destination that would overwrite the run's own files or its pool."""
    target, run = dest.resolve(), run_dir.resolve()
    if target.is_relative_to(RunLayout(run).pool_dir) or (
        target.is_relative_to(run) and target.is_file()
    ):
        raise PoolError(
            f"--out {dest} would overwrite files of the run directory {run_dir}; "
            "export to a path outside it"
        )


def export_pool(
    run_dir: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    fmt: str = "parquet",
    *,
    kept_only: bool = False,
    source: str | None = None,
) -> Path:
    """Export the pool of ``run_dir`` to ``dest`` in format ``fmt``; returns what was written.

    Args:
        run_dir: a run directory.
        dest: a new or empty folder (``imagefolder``) or a file (``jsonl``, ``parquet``;
            an existing folder gets ``pool.jsonl`` / ``pool.parquet`` inside).
        fmt: ``"imagefolder"``, ``"jsonl"`` or ``"parquet"``.
        kept_only: export only samples selection kept.
        source: export only ``"real"`` or only ``"synthetic"`` samples.

    Returns:
        The folder (``imagefolder``) or file written.
    """
    # 1. check inputs; nothing is written before they pass
    if fmt not in FORMATS:
        raise PoolError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    dest = Path(dest)
    _check_outside_run(Path(run_dir), dest)
    store = PoolStore(run_dir)
    table = store.table()
    # One read of the manifest: the rows exported and their payloads must agree.
    frame = filter_manifest(table_to_frame(table), source=source, kept_only=kept_only)
    if frame.empty:
        raise PoolError(
            f"no samples in the pool of {run_dir} match (kept_only={kept_only}, "
            f"source={source}); relax the filters"
        )
    modality = str(frame["modality"].iloc[0])
    if fmt == "imagefolder" and modality != "image":
        raise PoolError(
            "imagefolder export holds images only; export texts with --format jsonl or parquet"
        )

    # 2. write
    if fmt == "imagefolder":
        return _export_imagefolder(frame, dest, store.read_payload)
    if fmt == "jsonl":
        return _export_jsonl(frame, _file_dest(dest, fmt), store.read_payload)
    rows = table.take(pa.array(frame.index.to_numpy()))
    return _export_parquet(rows, modality, _file_dest(dest, fmt), store.read_payload)
