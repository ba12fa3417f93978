"""Fixtures for the data tests: small image folders and writers for image files."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fake_images import pixels
from PIL import Image

os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

WriteImage = Callable[..., np.ndarray]


@pytest.fixture
def write_image() -> WriteImage:
    """``write_image(path, seed, channels=3)`` writes a lossless image and returns its pixels
    as (H, W, C)."""

    def write(path: Path, seed: int, channels: int = 3) -> np.ndarray:
        path.parent.mkdir(parents=True, exist_ok=True)
        array = pixels(seed, channels=channels)
        Image.fromarray(array).save(path, format="PNG" if path.suffix.lower() == ".png" else None)
        return array if array.ndim == 3 else array[:, :, None]

    return write


@pytest.fixture
def pets(tmp_path: Path, write_image: WriteImage) -> tuple[Path, dict[str, np.ndarray]]:
    """``pets/{cat,dog}/...``: 3 RGB cats, 4 dogs (one grey), plus files that must be skipped.

    Returns the folder and the expected pixels by id.
    """
    root = tmp_path / "pets"
    expected: dict[str, np.ndarray] = {}
    for i, file in enumerate(["b.png", "a.png", "c.BMP"]):
        expected[f"pets/cat/{file}"] = write_image(root / "cat" / file, seed=i)
    for i, file in enumerate(["d1.png", "d0.png", "d2.png"]):
        expected[f"pets/dog/{file}"] = write_image(root / "dog" / file, seed=10 + i)
    grey = write_image(root / "dog" / "g.png", seed=20, channels=1)
    expected["pets/dog/g.png"] = np.repeat(grey, 3, axis=-1)  # promoted: the folder mixes modes
    (root / "dog" / "notes.txt").write_text("not an image", encoding="utf-8")
    (root / "cat" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / ".ipynb_checkpoints").mkdir()
    return root, expected
