"""Every bad input is a one-line DataError that names the problem and the fix.

One test per acceptance case; each asserts the exception type, that the message is a single
line, and the words that identify the offending file, row, column or class.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from utilgen.config import DataConfig
from utilgen.data import load_data, load_hf_disk, load_image_folder, load_parquet, load_table
from utilgen.errors import DataError


def _raises(call, *fragments: str) -> str:  # type: ignore[no-untyped-def]
    """Run ``call``; assert a one-line DataError containing every fragment; return it."""
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def _csv(tmp_path: Path, body: str, name: str = "d.csv") -> Path:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


# --- paths ---------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["imagefolder", "hf-disk", "parquet", "csv", "jsonl"])
def test_missing_path(tmp_path: Path, source: str) -> None:
    missing = tmp_path / "nowhere"
    _raises(
        lambda: load_data(DataConfig(source=source, path=missing)),
        str(missing),
        "does not exist",
        "data.path",
    )


def test_file_where_a_directory_is_expected(tmp_path: Path) -> None:
    file = _csv(tmp_path, "text,label\n")
    _raises(lambda: load_image_folder(file), "is a file", "expects a directory")
    _raises(lambda: load_hf_disk(file), "is a file", "expects a directory")


def test_directory_where_a_file_is_expected(tmp_path: Path) -> None:
    _raises(
        lambda: load_data(DataConfig(source="csv", path=tmp_path)), "is a directory", "csv file"
    )


# --- image folders -------------------------------------------------------------------------


def test_empty_class_folder_is_named(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "ds" / "cat" / "a.png", seed=0)
    (tmp_path / "ds" / "dog").mkdir()
    (tmp_path / "ds" / "dog" / "readme.txt").write_text("no images here", encoding="utf-8")
    _raises(
        lambda: load_image_folder(tmp_path / "ds"), f"{tmp_path / 'ds' / 'dog'}", "no image files"
    )


def test_image_folder_without_class_subfolders(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "flat" / "a.png", seed=0)
    _raises(
        lambda: load_image_folder(tmp_path / "flat"),
        "no class subfolders",
        "1 images lie directly in it",
        "<class>/<image>",
    )


def test_truncated_image_names_the_file(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "ds" / "a" / "ok.png", seed=0)
    bad = tmp_path / "ds" / "b" / "cut.png"
    write_image(bad, seed=1)
    bad.write_bytes(bad.read_bytes()[:60])
    _raises(lambda: load_image_folder(tmp_path / "ds"), str(bad), "not a readable image")


def test_file_that_is_not_an_image_names_the_file(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "ds" / "a" / "ok.png", seed=0)
    bad = tmp_path / "ds" / "b" / "fake.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"this is text, not a JPEG")
    _raises(lambda: load_image_folder(tmp_path / "ds"), str(bad), "UnidentifiedImageError")


def test_decompression_bomb_is_refused(
    tmp_path: Path, write_image, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_image(tmp_path / "ds" / "a" / "x.png", seed=0)
    write_image(tmp_path / "ds" / "b" / "y.png", seed=1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5)  # 35 pixels > 2 x 5: a "bomb"
    _raises(lambda: load_image_folder(tmp_path / "ds"), "x.png", "DecompressionBombError")


def test_corrupt_image_inside_parquet_names_the_row(tmp_path: Path) -> None:
    pd.DataFrame({"image": [b"\x89PNG broken"], "label": ["a"]}).to_parquet(tmp_path / "i.parquet")
    _raises(lambda: load_parquet(tmp_path / "i.parquet"), "row 0 of", "not a readable image")


# --- text encodings and syntax -------------------------------------------------------------


def test_non_utf8_csv_names_file_offset_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\nok,a\ncafé,b\n".encode("latin-1"))
    message = _raises(lambda: load_table(path), str(path), "not UTF-8", "line 3", "re-encode")
    offset = b"text,label\nok,a\ncaf"
    assert f"byte offset {len(offset)}" in message


def test_non_utf8_jsonl_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    path.write_bytes(
        '{"text": "a", "label": "x"}\n{"text": "\xe9", "label": "y"}\n'.encode("latin-1")
    )
    _raises(lambda: load_table(path), str(path), "not UTF-8", "line 2", "UTF-8")


def test_invalid_json_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": }\n', encoding="utf-8")
    _raises(lambda: load_table(path), "line 3 of", "not valid JSON", "fix or remove")


def test_json_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n["b", "y"]\n', encoding="utf-8")
    _raises(lambda: load_table(path), "line 2 of", "not an object")


def test_csv_row_with_too_many_fields(tmp_path: Path) -> None:
    path = _csv(tmp_path, "text,label\nfine,a\nnot, quoted,b\n")
    _raises(lambda: load_table(path), "line 3 of", "3 fields but the header has 2", "quote")


def test_unreadable_parquet_and_not_a_saved_dataset(tmp_path: Path) -> None:
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    _raises(lambda: load_parquet(tmp_path / "x.parquet"), "not a readable Parquet file")
    (tmp_path / "plain").mkdir()
    _raises(
        lambda: load_hf_disk(tmp_path / "plain"),
        "cannot be loaded as a dataset saved with save_to_disk",
    )


# --- columns and rows ----------------------------------------------------------------------


def test_missing_label_column_lists_the_columns(tmp_path: Path) -> None:
    path = _csv(tmp_path, "text,category\na,x\n")
    _raises(
        lambda: load_table(path),
        "no label column 'label'",
        "columns: text, category",
        "data.label_column",
    )


def test_missing_text_column_lists_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"body": "a", "label": "x"}\n', encoding="utf-8")
    _raises(lambda: load_table(path), "no text column 'text'", "columns: body, label")


def test_missing_sample_column_in_a_saved_dataset(tmp_path: Path) -> None:
    datasets.Dataset.from_dict({"body": ["a", "b"], "label": [0, 1]}).save_to_disk(tmp_path / "d")
    _raises(
        lambda: load_hf_disk(tmp_path / "d"),
        "neither text column 'text' nor image column 'image'",
        "columns: body, label",
    )


def test_missing_split_lists_the_splits(tmp_path: Path) -> None:
    part = datasets.Dataset.from_dict({"text": ["a", "b"], "label": ["x", "y"]})
    datasets.DatasetDict({"validation": part, "test": part}).save_to_disk(tmp_path / "dd")
    _raises(
        lambda: load_hf_disk(tmp_path / "dd", split="train"),
        "no split 'train'",
        "available splits: validation, test",
        "data.hf_split",
    )


def test_empty_text_row_is_named(tmp_path: Path) -> None:
    path = _csv(tmp_path, 'text,label\nfine,a\n"  ",b\n')
    _raises(lambda: load_table(path), "line 3 of", "empty text")


def test_row_is_named_by_the_line_where_it_starts(tmp_path: Path) -> None:
    # the second record spans lines 3-4; an editor shows it starting on line 3
    path = _csv(tmp_path, 'text,label\nok,x\n"  \n  ",y\n')
    _raises(lambda: load_table(path), "line 3 of", "empty text")


def test_missing_label_row_is_named(tmp_path: Path) -> None:
    path = _csv(tmp_path, "text,label\nfine,a\nlost,\n")
    _raises(lambda: load_table(path), "line 3 of", "has no label")


def test_nan_label_in_parquet_is_named(tmp_path: Path) -> None:
    frame = pd.DataFrame({"text": ["a", "b", "c"], "label": [1.0, np.nan, 2.0]})
    frame.to_parquet(tmp_path / "n.parquet")
    _raises(lambda: load_parquet(tmp_path / "n.parquet"), "row 1 of", "has no label")


def test_unlabelled_classlabel_row_is_named(tmp_path: Path) -> None:
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["x", "y"])}
    )
    ds = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, 1, -1]}, features)
    ds.save_to_disk(tmp_path / "d")
    _raises(lambda: load_hf_disk(tmp_path / "d"), "row 2 of", "has no label")


# --- classes -------------------------------------------------------------------------------


def test_fewer_than_two_classes(tmp_path: Path, write_image) -> None:
    path = _csv(tmp_path, "text,label\na,only\nb,only\n")
    _raises(lambda: load_table(path), "only class 'only'", "at least 2 classes")
    write_image(tmp_path / "one" / "cat" / "a.png", seed=0)
    _raises(lambda: load_image_folder(tmp_path / "one"), "only class 'cat'")


@pytest.mark.parametrize(
    ("label", "problem"),
    [
        ("a/b", "path separator"),
        ("a\\\\b", "path separator"),
        ("..", "'..'"),
        ("ring\\u0007bell", "control character"),
    ],
)
def test_unsafe_class_names_in_tables_are_rejected(
    tmp_path: Path, label: str, problem: str
) -> None:
    path = tmp_path / "d.jsonl"
    rows = ['{"text": "a", "label": "ok"}', f'{{"text": "b", "label": "{label}"}}']
    path.write_text("\n".join(rows), encoding="utf-8")
    shown = repr(json.loads(f'"{label}"'))
    _raises(lambda: load_table(path), f"class name {shown}", problem, "rename the class")


@pytest.mark.parametrize(("folder", "problem"), [("x..y", "'..'"), ("new\nline", "control")])
def test_unsafe_class_folder_names_are_rejected(
    tmp_path: Path, write_image, folder: str, problem: str
) -> None:
    write_image(tmp_path / "ds" / "fine" / "a.png", seed=0)
    write_image(tmp_path / "ds" / folder / "b.png", seed=1)
    message = _raises(lambda: load_image_folder(tmp_path / "ds"), problem)
    assert re.search(r"class name '.*' from image folder", message)
