"""export_pool: Parquet through `datasets`, ImageFolder and JSONL, filters, safe paths."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from pool_samples import CLASS_NAMES, batch, image_data, text_data

from utilgen.data.labelled import LabelledData
from utilgen.errors import PoolError
from utilgen.pool import (
    PoolStore,
    decode_image,
    export_pool,
    safe_file_stem,
    safe_folder_name,
    samples_from_labelled,
    utility_column,
)


def _fill(run_dir: Path, data: LabelledData, synthetic: bool = True) -> None:
    with PoolStore.open(run_dir, writable=True) as store:
        store.append(samples_from_labelled(data, split="train"))
        if synthetic:
            store.append(batch(0))
            store.set_kept({"syn/000/01": (False, "low utility")})
            store.set_column(utility_column(1, "vog"), {"syn/000/00": 0.5})


def _load_parquet(path: Path, cache: Path):  # type: ignore[no-untyped-def]
    import datasets

    return datasets.load_dataset("parquet", data_files=str(path), cache_dir=str(cache))["train"]


def test_parquet_images_load_with_datasets_as_pil(run_dir: Path, tmp_path: Path) -> None:
    data = image_data(6)
    _fill(run_dir, data)
    out = export_pool(run_dir, tmp_path / "pool.parquet", "parquet")
    ds = _load_parquet(out, tmp_path / "cache")
    assert ds.column_names[:4] == ["image", "label", "class_name", "id"]
    assert {"source", "generator", "prompt", "seed", "blob", "kept", "utility_r001_vog"} <= set(
        ds.column_names
    )
    assert len(ds) == 12
    for row, expected, label in zip(ds.select(range(6)), data.items, data.labels, strict=True):
        assert row["image"].__class__.__module__.startswith("PIL")
        np.testing.assert_array_equal(np.asarray(row["image"]), expected)
        assert row["label"] == label and row["class_name"] == CLASS_NAMES[label]
    synthetic = ds[6]
    assert synthetic["source"] == "synthetic" and synthetic["seed"] == 0
    assert synthetic["utility_r001_vog"] == 0.5 and ds[7]["utility_r001_vog"] is None


def test_parquet_texts_and_filters(run_dir: Path, tmp_path: Path) -> None:
    data = text_data(6)
    with PoolStore.open(run_dir, writable=True) as store:
        store.append(samples_from_labelled(data, split="train"))
        store.set_kept({data.ids[2]: (False, "duplicate")})
    out = export_pool(run_dir, tmp_path, "parquet", kept_only=True, source="real")
    assert out == tmp_path / "pool.parquet"  # a folder gets a default file name
    ds = _load_parquet(out, tmp_path / "cache")
    assert ds.column_names[0] == "text"
    kept = [i for i in range(6) if i != 2]
    assert ds["text"] == [data.items[i] for i in kept]
    assert ds["id"] == [data.ids[i] for i in kept]
    with pytest.raises(PoolError, match="no samples"):
        export_pool(run_dir, tmp_path / "x.parquet", "parquet", source="synthetic")
    with pytest.raises(PoolError, match=r"images only.*jsonl or parquet"):
        export_pool(run_dir, tmp_path / "folder", "imagefolder")
    assert not (tmp_path / "folder").exists() and not (tmp_path / "x.parquet").exists()


def test_imagefolder_writes_one_png_per_kept_image(run_dir: Path, tmp_path: Path) -> None:
    data = image_data(6)
    _fill(run_dir, data)
    dest = tmp_path / "folder"
    assert export_pool(run_dir, dest, "imagefolder", kept_only=True) == dest
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.png"))
    assert len(files) == 11  # 6 real + 6 synthetic - 1 dropped
    assert "cat/toy_cat_000.png" in files and "dog/syn_000_01.png" not in files
    exported = decode_image((dest / "dog/toy_dog_001.png").read_bytes())
    np.testing.assert_array_equal(exported, data.items[1])
    with pytest.raises(PoolError, match="not an empty folder"):
        export_pool(run_dir, dest, "imagefolder")


def test_jsonl_holds_provenance_and_payload(run_dir: Path, tmp_path: Path) -> None:
    _fill(run_dir, image_data(3))
    out = export_pool(run_dir, tmp_path / "pool.jsonl", "jsonl", source="synthetic")
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in records] == [s.id for s in batch(0)]
    first = records[0]
    assert base64.b64decode(first["image_png_base64"]) == batch(0)[0].payload
    assert first["prompt"] == "a photo of a cat" and first["seed"] == 0 and first["steps"] == 20
    assert first["strength"] is None and first["utility_r001_vog"] == 0.5
    assert records[1]["kept"] is False and records[1]["reason"] == "low utility"
    assert records[2]["utility_r001_vog"] is None

    texts = tmp_path / "texts"
    with PoolStore.open(texts, writable=True) as store:
        store.append(samples_from_labelled(text_data(2), split="val"))
    line = export_pool(texts, tmp_path / "t.jsonl", "jsonl").read_text(encoding="utf-8")
    assert json.loads(line.splitlines()[1])["text"] == text_data(2).items[1]


def test_unknown_format_is_refused(run_dir: Path, tmp_path: Path) -> None:
    _fill(run_dir, image_data(3), synthetic=False)
    with pytest.raises(PoolError, match="unknown export format 'csv'; use one of"):
        export_pool(run_dir, tmp_path / "x", "csv")


def test_paths_are_sanitised_and_stay_inside_dest(run_dir: Path, tmp_path: Path) -> None:
    assert safe_folder_name("sci/tech") == "sci_tech"
    assert safe_folder_name("a\\b\x00c\n") == "a_b_c_"
    assert safe_folder_name(".hidden") == "_hidden"
    for bad in ("..", ".", "", "  "):
        with pytest.raises(PoolError, match="cannot be a folder name"):
            safe_folder_name(bad)
    assert safe_file_stem("../../etc/passwd") == "_.._etc_passwd"
    assert "/" not in safe_file_stem("a/" * 200) and len(safe_file_stem("a/" * 200)) < 140

    evil = LabelledData(
        modality="image",
        items=tuple(image_data(4).items),
        labels=np.array([0, 1, 1, 0]),
        class_names=("../../escape", "ok"),
        ids=("../../../x", "a/b", "a_b", "/abs/path"),
    )
    _fill(run_dir, evil, synthetic=False)
    dest = tmp_path / "out" / "folder"
    export_pool(run_dir, dest, "imagefolder")
    written = sorted(p for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert len(written) == 4 and all(p.is_relative_to(dest) for p in written)
    names = {p.parent.name for p in written}
    assert names == {"_._.._escape", "ok"}  # ".." never survives as a component
    # "a/b" and "a_b" sanitise alike and are told apart by a hash of their ids
    ok_files = sorted(p.name for p in written if p.parent.name == "ok")
    assert len(ok_files) == 2 and all(n.startswith("a_b-") for n in ok_files)
