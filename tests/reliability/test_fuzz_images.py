"""Fuzzing (issue 11, item 4): image files in image-folder datasets (``DIR/<class>/<image>``).

Folders of two or three classes hold small images in every PIL mode a file can carry
(1, L, LA, P, RGB, RGBA, CMYK, I;16, I, F) and every supported format, some damaged:
truncated, bytes flipped, replaced by noise or text, emptied, 0 x 0 or huge declared
dimensions patched into the header, or a class left without images. Every case must load or
fail with one DataError line, quickly; a loaded dataset holds uint8 (H, W, C) images with
C = 1 or 3 for all, and lossless images keep their pixels. A decompression bomb must be
refused before its pixels are allocated, which a subprocess under a memory limit checks.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fuzz_helpers import SIZES, fuzz, outcome, scratch
from hypothesis import strategies as st
from PIL import Image

from utilgen.data import load_image_folder
from utilgen.errors import DataError

# (mode, PIL format, suffix) pairs PIL can write.
KINDS = [
    ("RGB", "PNG", ".png"),
    ("L", "PNG", ".png"),
    ("1", "PNG", ".png"),
    ("LA", "PNG", ".png"),
    ("P", "PNG", ".png"),
    ("RGBA", "PNG", ".png"),
    ("I;16", "PNG", ".png"),
    ("RGB", "JPEG", ".jpg"),
    ("L", "JPEG", ".jpeg"),
    ("CMYK", "JPEG", ".jpg"),
    ("RGB", "BMP", ".bmp"),
    ("P", "GIF", ".gif"),
    ("RGBA", "WEBP", ".webp"),
    ("I", "TIFF", ".png"),  # a TIFF named .png: PIL goes by content
    ("F", "TIFF", ".png"),
    ("RGB", "JPEG", ".png"),
]
LOSSLESS = {("RGB", "PNG"), ("L", "PNG")}
DAMAGE = ["none", "none", "none", "truncate", "flip", "noise", "text", "empty", "dims"]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` grey pixels (a valid CRC,
    a few bytes of pixel data): what a decompression bomb looks like to a reader."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _chunk(b"IEND", b"")
    )


@st.composite
def image_files(draw: st.DrawFn) -> tuple[str, bytes, np.ndarray | None]:
    """(suffix, file bytes, the pixels a loader must return or None where not checked)."""
    mode, fmt, suffix = draw(st.sampled_from(KINDS))
    height, width = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**16))
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(rgb).convert(mode)
    sink = io.BytesIO()
    image.save(sink, format=fmt)
    data = sink.getvalue()
    expected = np.asarray(image)[:, :, None] if mode == "L" else np.asarray(image)
    damage = draw(st.sampled_from(DAMAGE))
    if damage != "none":
        expected = None
    if damage == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif damage == "flip":
        at = draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=4))
        flipped = bytearray(data)
        for i in at:
            flipped[i] ^= 1 << draw(st.integers(0, 7))
        data = bytes(flipped)
    elif damage == "noise":
        data = draw(st.binary(max_size=64))
    elif damage == "text":
        data = draw(st.text(max_size=40)).encode("utf-8")
    elif damage == "empty":
        data = b""
    elif damage == "dims":
        side = st.integers(0, 4) | st.integers(2**13, 2**31 - 1)
        data, suffix = png_declaring(draw(side), draw(side)), ".png"
    if (mode, fmt) not in LOSSLESS:
        expected = None
    return suffix, data, expected


folders = st.lists(
    st.lists(image_files(), min_size=1, max_size=3) | st.just([]),  # [] a class without images
    min_size=2,
    max_size=3,
).filter(lambda classes: sum(map(len, classes)) > 0)


def _check_folder(
    tmp_path: Path,
) -> Callable[[list[list[tuple[str, bytes, np.ndarray | None]]]], str]:
    def check(classes: list[list[tuple[str, bytes, np.ndarray | None]]]) -> str:
        with scratch(tmp_path) as folder:
            root = folder / "images"
            expected: dict[str, np.ndarray] = {}
            for c, files in enumerate(classes):
                (root / f"class{c}").mkdir(parents=True)
                (root / f"class{c}" / "notes.txt").write_text("not an image", encoding="utf-8")
                for i, (suffix, data, pixels) in enumerate(files):
                    (root / f"class{c}" / f"{i}{suffix}").write_bytes(data)
                    if pixels is not None:
                        expected[f"images/class{c}/{i}{suffix}"] = pixels
            start = time.perf_counter()

            def load() -> None:
                data = load_image_folder(root)
                channels = {item.shape[-1] for item in data.items}
                assert len(channels) == 1 and channels <= {1, 3}, channels
                for sample_id, item in zip(data.ids, data.items, strict=True):
                    assert isinstance(item, np.ndarray) and item.dtype == np.uint8
                    assert item.ndim == 3 and min(item.shape[:2]) >= 1
                    if sample_id in expected:
                        want = expected[sample_id]
                        if want.shape[-1] == 1 and item.shape[-1] == 3:  # promoted to RGB
                            want = np.repeat(want, 3, axis=-1)
                        np.testing.assert_array_equal(item, want)
                assert len(data) == sum(map(len, classes))

            result = outcome(load, DataError)
            assert time.perf_counter() - start < 10, "decoding took too long (a bomb?)"
            return result

    return check


@pytest.mark.parametrize("size", SIZES)
def test_image_folders_load_or_fail_in_one_line(tmp_path: Path, size: int) -> None:
    counts = fuzz("data: image folders", folders, _check_folder(tmp_path), 80 * size)
    assert counts["ok"] > 0 and counts["DataError"] > 0


def test_decompression_bomb_is_refused_before_its_pixels_are_allocated(tmp_path: Path) -> None:
    """A 60-byte PNG declaring 12000 x 12000 pixels (144 M, under PIL's own refusal limit
    of 179 M, so PIL alone would allocate them): under a memory limit 64 MiB above what the
    process already uses, loading must be a DataError, not a MemoryError."""
    folder = tmp_path / "images"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        Image.new("L", (2, 2)).save(folder / name / "ok.png")
    (folder / "a" / "bomb.png").write_bytes(png_declaring(12000, 12000))
    script = textwrap.dedent(
        f"""
        import resource, sys
        from utilgen.data import load_image_folder
        from utilgen.errors import DataError
        used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        limit = used + 64 * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        try:
            load_image_folder({str(folder)!r})
        except DataError as err:
            print("DataError:", err)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "DataError:" in done.stdout and "12000 x 12000 pixels" in done.stdout, done.stdout


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        (0, 0, "not a readable image|empty image"),
        (1, 0, "not a readable image|empty image"),
        (100_000, 100_000, "not a readable image"),  # PIL's DecompressionBombError
        (2**31 - 1, 2**31 - 1, "not a readable image"),
        (10_000, 10_000, "declares 10000 x 10000 pixels"),
    ],
)
def test_declared_dimensions_are_checked(
    tmp_path: Path, width: int, height: int, expected: str
) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.new("L", (2, 2)).save(tmp_path / name / "ok.png")
    (tmp_path / "a" / "x.png").write_bytes(png_declaring(width, height))
    with pytest.raises(DataError, match=expected):
        load_image_folder(tmp_path)
