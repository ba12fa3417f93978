"""Fuzzing (issue 11, item 4): class names with path separators, ``..``, absolute paths,
unicode, control characters, empty and very long names.

Each case makes a small dataset whose classes carry the names (class folders of an image
folder where the file system allows the name, else the labels of a Parquet file), loads it,
stores it in a run's pool as stage 1 of ``utilgen run`` does, and exports the pool with
``utilgen pool export`` to an ImageFolder, JSONL and Parquet. The whole test folder is listed
before and after each step: no file may appear, vanish or change outside the run directory
and the export's destination, and a step that fails changes nothing at all. Names must
round-trip: loaded as written (Parquet labels stripped of surrounding spaces), kept exactly
in the JSONL and Parquet exports, and made into ImageFolder folders that load back as the
same classes; or fail with one clear error.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fuzz_helpers import SIZES, changes, fuzz, listing, scratch, utilgen
from hypothesis import strategies as st
from PIL import Image

from utilgen.data import LabelledData, load_image_folder, load_parquet
from utilgen.errors import DataError
from utilgen.pool import PoolStore, safe_folder_name, samples_from_labelled

pytestmark = pytest.mark.usefixtures("quiet_one_thread")

TRICKY = ["/", "\\", ".", "..", " ", "\x00", "\n", "\t", "~", ":", "*", "é", "東", "🚀"]
TRICKY += ["\u2028", "\u200b", "\x85", "\u202e", "$HOME", "%s", "C:", "-", "'", '"']
names = st.lists(st.sampled_from(TRICKY) | st.characters(codec="utf-8"), max_size=6).map("".join)
names |= st.sampled_from(
    ["..", ".", "", "/etc/passwd", "../../escape", "a/../../b", "~/x", "a" * 300, "é" * 130]
)
# Names a user might well choose (letters of any script, digits, spaces, punctuation,
# symbols) mostly load; the rest probes the refusals.
plausible = st.text(
    st.characters(categories=["L", "N", "Zs", "Pd", "Po", "Sm", "So"], exclude_characters="/\\"),
    min_size=1,
    max_size=40,
)
class_sets = st.lists(
    st.one_of(plausible, plausible, plausible, names), min_size=2, max_size=3, unique=True
)


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    sink = io.BytesIO()
    Image.fromarray(pixels).save(sink, format="PNG")
    return sink.getvalue()


def _folder_name_ok(name: str) -> bool:
    """Whether the file system can hold ``name`` as one folder name."""
    return (
        name not in ("", ".", "..")
        and "/" not in name
        and "\x00" not in name
        and len(name.encode("utf-8")) <= 255
    )


def _dataset(folder: Path, classes: list[str]) -> tuple[Callable[[], LabelledData], list[str]]:
    """Write two images per class; return the loader and the class names it must find."""
    if all(_folder_name_ok(c) for c in classes):
        root = folder / "images"
        for c, name in enumerate(classes):
            for i in range(2):
                (root / name).mkdir(parents=True, exist_ok=True)
                (root / name / f"{i}.png").write_bytes(_png(10 * c + i))
        visible = sorted(c for c in classes if not c.startswith("."))  # hidden: skipped
        return lambda: load_image_folder(root), visible
    labels = [name for name in classes for _ in range(2)]
    table = pa.table(
        {"image": [_png(i) for i in range(len(labels))], "label": labels},
    )
    pq.write_table(table, folder / "data.parquet")
    return lambda: load_parquet(folder / "data.parquet"), sorted({c.strip() for c in classes})


def _exported_classes(fmt: str, dest: Path) -> set[str]:
    if fmt == "jsonl":
        lines = dest.read_text(encoding="utf-8").splitlines()
        return {json.loads(line)["class_name"] for line in lines}
    if fmt == "parquet":
        return set(pq.read_table(dest).column("class_name").to_pylist())
    return {p.name for p in dest.iterdir()}


def _chain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], str]:
    def check(classes: list[str]) -> str:
        # three levels down, so that a write escaping the case by up to three ".." still
        # lands in tmp_path, which is listed
        with scratch(tmp_path) as top:
            folder = top / "a" / "b"
            folder.mkdir(parents=True)
            load, expected = _dataset(folder, classes)
            before = listing(tmp_path)
            # 1. load
            try:
                data = load()
            except DataError as err:
                assert "\n" not in str(err)
                assert not changes(before, listing(tmp_path))
                return "DataError at load"
            if sorted(data.class_names) != sorted(expected):
                # integer-like names sort numerically and lose no spelling: compare as sets
                assert set(data.class_names) == set(expected), (data.class_names, expected)
            # 2. the run's pool, as stage 1 writes it
            run = folder / "run"
            with PoolStore.open(run, writable=True) as store:
                store.append(samples_from_labelled(data, split="train"))
            written = changes(before, listing(tmp_path))
            inside = str((run).relative_to(tmp_path))
            assert all(p.startswith(inside) for p in written), written
            # 3. the exports
            results = []
            for fmt, dest in [
                ("imagefolder", folder / "exports" / "images"),
                ("jsonl", folder / "exports" / "pool.jsonl"),
                ("parquet", folder / "exports" / "pool.parquet"),
            ]:
                before = listing(tmp_path)
                result = utilgen(
                    ["pool", "export", str(run), "--format", fmt, "--out", str(dest)], capsys
                )
                written = changes(before, listing(tmp_path))
                allowed = [str(dest.relative_to(tmp_path)), str(dest.parent.relative_to(tmp_path))]
                if result == "exit 0":
                    assert all(p.startswith(tuple(allowed)) for p in written), written
                    exported = _exported_classes(fmt, dest)
                    if fmt == "imagefolder":
                        assert exported == {safe_folder_name(c) for c in data.class_names}
                        again = load_image_folder(dest)
                        assert len(again) == len(data) and again.num_classes == data.num_classes
                    else:
                        assert exported == set(data.class_names)
                else:
                    assert fmt == "imagefolder" and not written, written
                results.append(f"{fmt} {result}")
            return ", ".join(results)

    return check


@pytest.mark.parametrize("size", SIZES)
def test_class_names_load_store_and_export_inside_their_directories(
    tmp_path: Path, size: int, capsys: pytest.CaptureFixture[str]
) -> None:
    counts = fuzz(
        "class names: load, pool, export",
        class_sets,
        _chain(tmp_path, capsys),
        60 * size,
        explicit=[
            ["a" * 300, "b"],  # was: ENAMETOOLONG half-way through an ImageFolder export
            ["é" * 130, "b"],  # 260 bytes in 130 characters
            ["../../escape", "/etc/passwd"],
            ["a ", " a"],  # one folder after stripping: refused, nothing written
            ["x\u2028y", "z"],  # a line break in a name: refused at load
            ["sport", "tech"],
        ],
    )
    assert counts["DataError at load"] > 0
    assert any(k.startswith("imagefolder exit 0") for k in counts)


def test_a_folder_name_that_is_not_utf8_fails_at_load(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for name in (b"caf\xe9", b"tea"):  # latin-1 "café": Linux hands it over as a surrogate
        os.makedirs(os.path.join(bytes(root), name))
        Path(os.fsdecode(os.path.join(bytes(root), name, b"0.png"))).write_bytes(_png(0))
    with pytest.raises(DataError, match="not valid Unicode"):
        load_image_folder(root)


def _fill_pool(run: Path, class_names: tuple[str, ...]) -> None:
    """A pool of two tiny images per class, written as stage 1 of a run writes it."""
    n = 2 * len(class_names)
    data = LabelledData(
        modality="image",
        items=tuple(np.full((3, 3, 3), i, dtype=np.uint8) for i in range(n)),
        labels=np.arange(n) // 2,
        class_names=class_names,
        ids=tuple(f"d/{i}" for i in range(n)),
    )
    with PoolStore.open(run, writable=True) as store:
        store.append(samples_from_labelled(data, split="train"))


def test_export_of_long_class_names_writes_nothing_on_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The second image of an ImageFolder export fails with ENOSPC: exit 2 with the disk-full
    line, and neither the destination nor the staging folder is left behind."""
    from utilgen import faults

    _fill_pool(tmp_path / "run", ("a" * 300, "b"))
    before = listing(tmp_path)
    monkeypatch.setenv(faults.ENV, f"{faults.DISK_FULL}@2")
    monkeypatch.setattr(faults, "_reached", {})
    dest = tmp_path / "out" / "images"
    args = ["pool", "export", str(tmp_path / "run"), "-f", "imagefolder", "-o", str(dest)]
    assert utilgen(args, capsys) == "exit 2"
    assert not changes(before, listing(tmp_path))
    monkeypatch.delenv(faults.ENV)
    assert utilgen(args, capsys) == "exit 0"
    assert len(list(dest.rglob("*.png"))) == 4


@pytest.mark.parametrize("target", ["pool/manifest.parquet", "pool", "config.yaml"])
def test_export_onto_the_run_itself_is_refused(
    tmp_path: Path, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    _fill_pool(run, ("x", "y"))
    (run / "config.yaml").write_text("seed: 0\n", encoding="utf-8")
    before = listing(tmp_path)
    args = ["pool", "export", str(run), "--format", "jsonl", "--out", str(run / target)]
    assert utilgen(args, capsys) == "exit 2"
    assert not changes(before, listing(tmp_path))


def test_utilgen_run_and_export_keep_unicode_class_names_inside_their_directories(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same chain through a real ``utilgen run`` (stage 1 writes the pool, trains and
    evaluates) on class folders whose names a path could trip over."""
    classes = ["naïve café", "東京 tower", "a.b", "🚀 ~ $HOME"]
    images = tmp_path / "images"
    for c, name in enumerate(classes):
        (images / name).mkdir(parents=True)
        for i in range(8):
            (images / name / f"{i}.png").write_bytes(_png(100 * c + i))
    run = tmp_path / "run"
    sets = ["data.source=imagefolder", f"data.path={images}", "data.k_shot=null"]
    sets += ["task.epochs=1", "task.model=small-cnn"]
    before = listing(tmp_path)
    args = ["run", "digits-real-only", "--no-report", "--out", str(run)]
    assert utilgen(args + [a for s in sets for a in ("--set", s)], capsys) == "exit 0"
    assert all(p.startswith("run") for p in changes(before, listing(tmp_path)))
    for fmt, dest in [("imagefolder", "exported"), ("jsonl", "x.jsonl"), ("parquet", "x.parquet")]:
        before = listing(tmp_path)
        export = ["pool", "export", str(run), "-f", fmt, "-o", str(tmp_path / dest)]
        assert utilgen([*export, "--source", "real"], capsys) == "exit 0"
        assert all(p.startswith(dest) for p in changes(before, listing(tmp_path)))
        assert _exported_classes(fmt, tmp_path / dest) == set(classes)
