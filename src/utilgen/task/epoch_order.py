"""The order samples are visited in each epoch: a shuffle keyed by sample id.

Each sample's position in epoch ``e`` comes from a hash of (seed, e, its id) alone, so the
relative order of two samples does not depend on which other samples are present. Adding
or removing a sample therefore never reorders the rest, which is what makes "a sample of
weight 0 has no influence" exact: the trainer drops zero-weight samples and the remaining
batches are the very batches of a run that never saw them. It also keeps runs comparable
when synthetic samples are added to the same real data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a fast bijective mix of uint64 values."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def id_keys(ids: Sequence[str], seed: int) -> np.ndarray:
    """A 64-bit key per sample id, fixed by the seed (uint64, shape (n,))."""
    keys = [
        int.from_bytes(hashlib.blake2b(f"{seed}\0{i}".encode(), digest_size=8).digest(), "little")
        for i in ids
    ]
    return np.array(keys, dtype=np.uint64)


def epoch_order(keys: np.ndarray, epoch: int) -> np.ndarray:
    """Indices sorting the samples of ``keys`` (from :func:`id_keys`) for ``epoch``."""
    with np.errstate(over="ignore"):
        mixed = _splitmix64(keys ^ _splitmix64(np.array([epoch], dtype=np.uint64)))
    return np.argsort(mixed, kind="stable")
