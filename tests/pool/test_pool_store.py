"""PoolStore: schema, idempotent appends, resume, columns, loading, damaged manifests."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pool_samples import CLASS_NAMES, batch, image_data, synthetic, text_data

from utilgen.errors import PoolError
from utilgen.pool import (
    COLUMNS,
    MANIFEST_SCHEMA,
    PoolStore,
    decode_image,
    encode_image,
    samples_from_labelled,
    utility_column,
)
from utilgen.pool.layout import blob_path, manifest_path


def test_manifest_has_the_design_columns_and_fixed_types(store: PoolStore, run_dir: Path) -> None:
    store.append(batch(0))
    design = [
        "id", "modality", "label", "source", "round", "generator", "prompt", "negative_prompt",
        "seed", "guidance", "steps", "strength", "parent_id", "perturbation", "blob", "kept",
        "reason",
    ]  # fmt: skip
    assert set(design) | {"class_name", "split", "details"} == set(COLUMNS)
    on_disk = pq.read_schema(manifest_path(run_dir))
    assert on_disk.names == list(COLUMNS)
    for field in MANIFEST_SCHEMA:
        assert on_disk.field(field.name).type == field.type
    row = store.manifest().iloc[1]
    sample = batch(0)[1]
    assert row["id"] == sample.id and row["blob"] == sample.blob
    assert row["seed"] == sample.seed and row["strength"] == 0.6 and row["steps"] == 20
    assert row["generator"] == "toy-diffusion+lora:abc123" and row["parent_id"] == sample.parent_id
    assert bool(row["kept"]) is True and row["split"] == ""
    assert blob_path(run_dir, sample.blob).read_bytes() == sample.payload


def test_append_is_idempotent_and_a_new_store_sees_the_rows(
    store: PoolStore, run_dir: Path
) -> None:
    assert store.append(batch(0)) == 6
    assert store.append(batch(0)) == 0  # resume: the same batch again
    assert store.append(batch(0) + batch(1)) == 6  # half old, half new
    reader = PoolStore(run_dir)
    assert len(reader) == 12 and reader.manifest()["id"].is_unique
    assert reader.ids() == [s.id for s in batch(0) + batch(1)]
    assert "syn/001/05" in reader


def test_appends_survive_reopening(run_dir: Path) -> None:
    with PoolStore.open(run_dir, writable=True) as store:
        store.append(batch(0))
    with PoolStore.open(run_dir, writable=True) as store:
        assert store.append(batch(0)) == 0 and store.append(batch(1)) == 6
    assert len(PoolStore(run_dir)) == 12


def test_reusing_an_id_for_other_content_raises_and_writes_nothing(
    store: PoolStore, run_dir: Path
) -> None:
    store.append(batch(0))
    before = manifest_path(run_dir).read_bytes()
    other = synthetic(5, 0)
    clash = replace(other, id=batch(0)[0].id)
    with pytest.raises(PoolError, match=r"syn/000/00.*different content"):
        store.append([*batch(1), clash])
    relabelled = replace(batch(0)[0], label=2, class_name="owl")
    with pytest.raises(PoolError, match="different label"):
        store.append([relabelled])
    assert manifest_path(run_dir).read_bytes() == before
    with pytest.raises(PoolError, match="twice in one batch"):
        store.append([synthetic(7, 0), replace(synthetic(7, 1), id="syn/007/00")])


def test_same_pixels_with_other_png_bytes_count_as_the_same_sample(store: PoolStore) -> None:
    sample = batch(0)[0]
    store.append([sample])
    # Another encoder build (e.g. after a Pillow upgrade) may compress the same pixels
    # differently; a resumed run must not fail on that.
    buffer = io.BytesIO()
    Image.fromarray(decode_image(sample.payload)).save(buffer, format="PNG", compress_level=1)
    assert buffer.getvalue() != sample.payload
    assert store.append([replace(sample, payload=buffer.getvalue())]) == 0


def test_real_data_round_trips_through_load_labelled(store: PoolStore, run_dir: Path) -> None:
    data = image_data(9)
    store.append(samples_from_labelled(data.subset(range(6)), split="train"))
    store.append(samples_from_labelled(data.subset(range(6, 9)), split="test"))
    store.append(batch(0))
    train = PoolStore(run_dir).load_labelled(source="real", split="train")
    assert train.ids == data.ids[:6] and train.class_names == CLASS_NAMES
    assert train.labels.tolist() == data.labels[:6].tolist()
    for a, b in zip(train.items, data.items[:6], strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(store.load_labelled(source="synthetic")) == 6
    assert len(store.load_labelled(split="test")) == 3
    store.set_kept({data.ids[0]: (False, "low marginal")})
    assert data.ids[0] not in store.load_labelled(kept_only=True, source="real").ids


def test_text_pool_round_trip_and_one_modality_per_pool(store: PoolStore) -> None:
    data = text_data(6)
    store.append(samples_from_labelled(data, split="train"))
    assert store.load_labelled().items == data.items
    with pytest.raises(PoolError, match="one modality"):
        store.append(batch(0))


def test_set_column_adds_and_updates_a_float_column(store: PoolStore, run_dir: Path) -> None:
    store.append(batch(0))
    name = utility_column(0, "marginal")
    assert name == "utility_r000_marginal"
    store.set_column(name, {"syn/000/00": 0.25, "syn/000/01": np.float32(0.5)})
    store.set_column(name, {"syn/000/01": 0.75})
    store.append(batch(1))  # new rows get null utilities
    frame = PoolStore(run_dir).manifest().set_index("id")
    assert frame[name].dtype == np.float64
    assert frame.loc["syn/000/00", name] == 0.25 and frame.loc["syn/000/01", name] == 0.75
    assert frame[name].isna().sum() == 10
    assert pq.read_schema(manifest_path(run_dir)).field(name).type == "double"
    with pytest.raises(PoolError, match="no sample with id"):
        store.set_column(name, {"nope": 1.0})
    with pytest.raises(ValueError, match="fixed manifest column"):
        store.set_column("label", {"syn/000/00": 1.0})


def test_set_kept_records_decision_and_reason(store: PoolStore, run_dir: Path) -> None:
    store.append(batch(0))
    store.set_kept({"syn/000/02": (False, "vog below 10th percentile")})
    row = PoolStore(run_dir).manifest().set_index("id").loc["syn/000/02"]
    assert not row["kept"] and row["reason"] == "vog below 10th percentile"
    assert store.samples(["syn/000/02"])[0].kept is False


def test_samples_round_trip_with_provenance(store: PoolStore) -> None:
    store.append(batch(2))
    assert store.samples() == batch(2)


def test_read_only_store_refuses_writes_and_missing_pool(run_dir: Path, tmp_path: Path) -> None:
    with PoolStore.open(run_dir, writable=True) as store:
        store.append(batch(0))
    reader = PoolStore(run_dir)
    with pytest.raises(PoolError, match="read-only"):
        reader.append(batch(1))
    # the store given out by open() stops writing once the lock is released
    with pytest.raises(PoolError, match="read-only"):
        store.append(batch(1))
    with pytest.raises(PoolError, match="not found"):
        PoolStore(tmp_path / "elsewhere")


def test_stale_temp_files_are_removed_by_the_next_writer(run_dir: Path) -> None:
    with PoolStore.open(run_dir, writable=True) as store:
        store.append(batch(0))
    stale = [
        manifest_path(run_dir).parent / ".manifest.parquet.abc.tmp",
        blob_path(run_dir, batch(0)[0].blob).parent / f".{batch(0)[0].blob}.xyz.tmp",
    ]
    for path in stale:
        path.write_bytes(b"half")
    PoolStore(run_dir).manifest()  # a reader leaves them (a writer could be using them)
    assert all(p.exists() for p in stale)
    with PoolStore.open(run_dir, writable=True):
        assert not any(p.exists() for p in stale)


def test_a_truncated_manifest_raises_a_pool_error_naming_verify(run_dir: Path) -> None:
    with PoolStore.open(run_dir, writable=True) as store:
        store.append(batch(0))
    path = manifest_path(run_dir)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(PoolError, match=r"unreadable.*utilgen pool verify") as err:
        PoolStore(run_dir).manifest()
    assert "\n" not in str(err.value)
    with pytest.raises(PoolError, match="unreadable"), PoolStore.open(run_dir, writable=True):
        pass


def test_corrupt_blob_is_refused_on_read(store: PoolStore, run_dir: Path) -> None:
    store.append(batch(0))
    blob = batch(0)[0].blob
    path = blob_path(run_dir, blob)
    path.write_bytes(b"\x00" + path.read_bytes()[1:])
    with pytest.raises(PoolError, match="corrupt"):
        store.read_payload(blob)
    with pytest.raises(PoolError, match="invalid blob name"):
        store.read_payload("../../../etc/passwd")


def test_image_payload_must_be_png(store: PoolStore) -> None:
    bad = replace(batch(0)[0], payload=b"raw pixels")
    with pytest.raises(ValueError, match="PNG"):
        store.append([bad])
    assert encode_image(np.zeros((2, 2, 1), np.uint8)).startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"prompt": "a cat \udc80"}, "prompt is not valid UTF-8"),
        ({"class_name": "\ud800"}, "class_name is not valid UTF-8"),
        ({"id": "syn/\udcff"}, "id is not valid UTF-8"),
        ({"payload": b"caf\xe9"}, "a text payload must be UTF-8"),
    ],
)
def test_a_sample_with_text_that_is_not_utf8_is_refused_when_built(
    change: dict[str, object], problem: str
) -> None:
    # Parquet stores UTF-8: without this a lone surrogate failed only at the commit
    good = synthetic(0, 0, modality="text")
    with pytest.raises(ValueError, match=problem):
        replace(good, **change)  # type: ignore[arg-type]


def test_a_manifest_from_before_the_details_column_reads_with_empty_details(
    store: PoolStore, run_dir: Path
) -> None:
    store.append(batch(0))
    table = pq.read_table(manifest_path(run_dir))
    pq.write_table(table.drop_columns(["details"]), manifest_path(run_dir))
    frame = PoolStore(run_dir).manifest()
    assert list(frame.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert set(frame["details"]) == {""}
    assert PoolStore(run_dir).samples(list(frame["id"][:1]))[0].details == ""
