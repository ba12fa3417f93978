"""Reproducible pixel arrays for the data tests."""

from __future__ import annotations

import numpy as np


def pixels(seed: int, height: int = 5, width: int = 7, channels: int = 3) -> np.ndarray:
    """A random uint8 image, (H, W) for one channel else (H, W, C); non-square so that a
    transposition would show."""
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels == 1 else (height, width, channels)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)
