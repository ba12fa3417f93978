"""Every data source loads into the same LabelledData form, with sorted classes and stable ids."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fake_images import pixels
from PIL import Image

from utilgen.config import DataConfig
from utilgen.data import (
    LabelledData,
    load_data,
    load_hf_disk,
    load_image_folder,
    load_parquet,
    load_table,
)


def _by_id(data: LabelledData) -> dict[str, object]:
    return dict(zip(data.ids, data.items, strict=True))


def _labels_by_id(data: LabelledData) -> dict[str, str]:
    return {i: data.class_names[c] for i, c in zip(data.ids, data.labels, strict=True)}


# --- ImageFolder ---------------------------------------------------------------------------


def test_image_folder_reads_classes_files_and_pixels(pets: tuple[Path, dict]) -> None:
    root, expected = pets
    data = load_image_folder(root)
    assert data.modality == "image" and data.name == "pets"
    assert data.class_names == ("cat", "dog")
    # sorted within each class; the non-image and hidden files are skipped
    assert data.ids == (
        "pets/cat/a.png",
        "pets/cat/b.png",
        "pets/cat/c.BMP",
        "pets/dog/d0.png",
        "pets/dog/d1.png",
        "pets/dog/d2.png",
        "pets/dog/g.png",
    )
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    for sample_id, item in _by_id(data).items():
        assert isinstance(item, np.ndarray) and item.dtype == np.uint8
        np.testing.assert_array_equal(item, expected[sample_id])


def test_image_folder_of_grey_images_has_one_channel(tmp_path: Path, write_image) -> None:
    for cls in ("a", "b"):
        write_image(tmp_path / "g" / cls / "x.png", seed=1, channels=1)
    data = load_image_folder(tmp_path / "g")
    assert {item.shape for item in data.items} == {(5, 7, 1)}


def test_image_folder_decodes_every_supported_suffix(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        (tmp_path / "s" / cls).mkdir(parents=True)
    for i, suffix in enumerate([".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"]):
        Image.fromarray(pixels(3)).save(tmp_path / "s" / "ab"[i % 2] / f"x{suffix}")
    data = load_image_folder(tmp_path / "s")
    assert len(data) == 6
    assert all(item.shape == (5, 7, 3) for item in data.items)


# --- Hugging Face datasets on disk ---------------------------------------------------------


def _image_dataset(labels: list[int]) -> datasets.Dataset:
    images = [Image.fromarray(pixels(i)) for i in range(len(labels))]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["zebra", "ant", "bee"])}
    )
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def test_hf_disk_image_dataset_keeps_classlabel_order_and_drops_unused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _image_dataset([1, 0, 1, 0]).save_to_disk(tmp_path / "zoo")
    with caplog.at_level(logging.WARNING):
        data = load_hf_disk(tmp_path / "zoo")
    # ClassLabel order (zebra before ant), not sorted; "bee" has no samples and is dropped
    assert data.class_names == ("zebra", "ant")
    assert "bee" in caplog.text
    assert data.labels.tolist() == [1, 0, 1, 0]
    assert data.ids == ("zoo/ant/00000", "zoo/zebra/00001", "zoo/ant/00002", "zoo/zebra/00003")
    for i, item in enumerate(data.items):
        np.testing.assert_array_equal(item, pixels(i))


def test_hf_disk_datasetdict_text_with_string_labels_reads_the_chosen_split(
    tmp_path: Path,
) -> None:
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["t1", "t2"], "y": ["pos", "neg"]}),
            "test": datasets.Dataset.from_dict(
                {"text": ["good", "bad", "fine"], "y": ["pos", "neg", "pos"]}
            ),
        }
    )
    dd.save_to_disk(tmp_path / "reviews")
    data = load_hf_disk(tmp_path / "reviews", label_column="y", split="test")
    assert data.modality == "text"
    assert data.items == ("good", "bad", "fine")
    assert data.class_names == ("neg", "pos")
    assert data.labels.tolist() == [1, 0, 1]


def test_hf_disk_text_with_classlabel_and_selected_rows(tmp_path: Path) -> None:
    ds = datasets.Dataset.from_dict(
        {"sentence": ["a", "b", "c", "d"], "label": [0, 1, 1, 0]},
        features=datasets.Features(
            {
                "sentence": datasets.Value("string"),
                "label": datasets.ClassLabel(names=["no", "yes"]),
            }
        ),
    )
    # rows come back in the order they were saved, not the order they were created in
    ds.select([3, 1, 2]).save_to_disk(tmp_path / "sel")
    data = load_hf_disk(tmp_path / "sel", text_column="sentence")
    assert data.items == ("d", "b", "c")
    assert [data.class_names[c] for c in data.labels] == ["no", "yes", "yes"]


def test_hf_disk_array_images(tmp_path: Path) -> None:
    arrays = [pixels(i, channels=1) for i in range(3)]
    ds = datasets.Dataset.from_dict(
        {"pixels": [a.tolist() for a in arrays], "label": [2, 10, 2]},
        features=datasets.Features(
            {"pixels": datasets.Array2D((5, 7), "uint8"), "label": datasets.Value("int64")}
        ),
    )
    ds.save_to_disk(tmp_path / "arr")
    data = load_hf_disk(tmp_path / "arr", image_column="pixels")
    assert data.modality == "image"
    assert data.class_names == ("2", "10")  # integers sort numerically
    assert data.labels.tolist() == [0, 1, 0]
    np.testing.assert_array_equal(data.items[1], arrays[1][:, :, None])


# --- Parquet -------------------------------------------------------------------------------


def test_parquet_written_by_datasets_has_image_structs_and_classlabel(tmp_path: Path) -> None:
    _image_dataset([2, 0, 2]).to_parquet(tmp_path / "zoo.parquet")
    assert pq.read_schema(tmp_path / "zoo.parquet").field("image").type.num_fields == 2
    data = load_parquet(tmp_path / "zoo.parquet")
    assert data.class_names == ("zebra", "bee")
    assert data.ids == ("zoo/bee/00000", "zoo/zebra/00001", "zoo/bee/00002")
    np.testing.assert_array_equal(data.items[2], pixels(2))


def test_parquet_with_raw_image_bytes_and_string_labels(tmp_path: Path) -> None:
    encoded = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        Image.fromarray(pixels(i, channels=1)).save(path)
        encoded.append(path.read_bytes())
    table = pa.table({"img": pa.array(encoded, pa.binary()), "label": ["b", "a", "b"]})
    pq.write_table(table, tmp_path / "raw.parquet")
    data = load_parquet(tmp_path / "raw.parquet", image_column="img")
    assert data.class_names == ("a", "b")
    assert data.labels.tolist() == [1, 0, 1]
    np.testing.assert_array_equal(data.items[0], pixels(0, channels=1)[:, :, None])


def test_parquet_directory_of_text_files_read_in_sorted_order(tmp_path: Path) -> None:
    folder = tmp_path / "news"
    folder.mkdir()
    pd.DataFrame({"text": ["third", "fourth"], "label": [10, 2]}).to_parquet(folder / "b.parquet")
    pd.DataFrame({"text": ["first", "second"], "label": [2, 1]}).to_parquet(folder / "a.parquet")
    data = load_parquet(folder)
    assert data.items == ("first", "second", "third", "fourth")
    assert data.class_names == ("1", "2", "10")
    assert data.labels.tolist() == [1, 0, 2, 1]
    assert data.name == "news"


# --- CSV and JSONL -------------------------------------------------------------------------


def test_csv_with_quoted_commas_newlines_and_a_text_named_na(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text(
        '\ufefflabel,text\nspam,"buy now, cheap"\nham,"line one\nline two"\nham,NA\n\n',
        encoding="utf-8",
    )
    data = load_table(path)
    assert data.items == ("buy now, cheap", "line one\nline two", "NA")
    assert data.class_names == ("ham", "spam")
    assert data.labels.tolist() == [1, 0, 0]
    assert data.ids == ("reviews/spam/00000", "reviews/ham/00001", "reviews/ham/00002")


def test_csv_integer_labels_sort_numerically_but_padded_codes_stay_text(tmp_path: Path) -> None:
    ints = tmp_path / "ints.csv"
    ints.write_text("text,label\na,10\nb,2\nc,1\nd,2\n", encoding="utf-8")
    data = load_table(ints)
    assert data.class_names == ("1", "2", "10")
    assert data.labels.tolist() == [2, 1, 0, 1]

    codes = tmp_path / "codes.csv"
    codes.write_text("text,label\na,007\nb,10\n", encoding="utf-8")
    assert load_table(codes).class_names == ("007", "10")


def test_tsv_uses_tabs(tmp_path: Path) -> None:
    path = tmp_path / "t.tsv"
    path.write_text("text\tlabel\nhello, world\tx\nbye\ty\n", encoding="utf-8")
    data = load_table(path)
    assert data.items == ("hello, world", "bye")


def test_jsonl_skips_blank_lines_and_accepts_int_labels(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    rows = [{"text": "héllo\u2028there", "label": 1}, {"text": "b", "label": 0, "extra": 1}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n", "utf-8")
    data = load_table(path)
    assert data.items == ("héllo\u2028there", "b")
    assert data.class_names == ("0", "1")
    assert data.labels.tolist() == [1, 0]


# --- load_data: dispatch and max_per_class -------------------------------------------------


def test_load_data_dispatches_on_source(tmp_path: Path, pets: tuple[Path, dict]) -> None:
    csv_path = tmp_path / "x.csv"
    csv_path.write_text("body,cls\nu,a\nv,b\n", encoding="utf-8")
    jsonl_path = tmp_path / "x.jsonl"
    jsonl_path.write_text('{"body": "u", "cls": "a"}\n{"body": "v", "cls": "b"}\n', "utf-8")
    for source, path in (("csv", csv_path), ("jsonl", jsonl_path)):
        cfg = DataConfig(source=source, path=path, text_column="body", label_column="cls")
        data = load_data(cfg)
        assert data.items == ("u", "v") and data.class_names == ("a", "b")
    image_data = load_data(DataConfig(source="imagefolder", path=pets[0]))
    assert image_data.ids == load_image_folder(pets[0]).ids


def test_max_per_class_keeps_the_first_n_of_each_class(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    labels = ["a", "b", "a", "a", "b", "a", "b", "b", "b"]
    path.write_text(
        "text,label\n" + "".join(f"t{i},{c}\n" for i, c in enumerate(labels)), encoding="utf-8"
    )
    data = load_data(DataConfig(source="csv", path=path, max_per_class=2))
    assert data.items == ("t0", "t1", "t2", "t4")
    full = load_data(DataConfig(source="csv", path=path))
    assert len(full) == 9
