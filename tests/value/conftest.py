"""Fixtures for the valuation tests: digits subsets, tiny task models and a linear one.

Models are tiny and built under fixed seeds; torch runs on one thread here because the
models are far too small to gain from two, and on a shared 2-core machine the second
thread's spin-waiting costs more than it brings.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from value_helpers import TINY_CNN, LinearModel, cnn

from utilgen.data.bundled import load_digits
from utilgen.data.labelled import LabelledData
from utilgen.progress import is_quiet, set_quiet
from utilgen.task import TaskModel, train


@pytest.fixture(autouse=True)
def _quiet_single_thread() -> Iterator[None]:
    was_quiet, threads = is_quiet(), torch.get_num_threads()
    set_quiet(True)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    set_quiet(was_quiet)


@pytest.fixture(scope="session")
def digits() -> LabelledData:
    """All 1,797 digits (8x8 grey)."""
    return load_digits()


@pytest.fixture(scope="session")
def digits_small(digits: LabelledData) -> LabelledData:
    """The first 8 digits of each class (80 images), in a fixed order."""
    idx = np.concatenate([np.flatnonzero(digits.labels == c)[:8] for c in range(10)])
    return digits.subset(np.sort(idx))


@pytest.fixture(scope="session")
def digits_other(digits: LabelledData) -> LabelledData:
    """Another 6 digits of each class (60 images), disjoint from ``digits_small``."""
    idx = np.concatenate([np.flatnonzero(digits.labels == c)[8:14] for c in range(10)])
    return digits.subset(np.sort(idx))


@pytest.fixture(scope="session")
def trained_cnn(
    digits_small: LabelledData, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TaskModel, list[Path]]:
    """A small-cnn trained 3 epochs on ``digits_small``, and its 3 checkpoints."""
    with torch.random.fork_rng(devices=[]):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        model = cnn(digits_small)
        out = tmp_path_factory.mktemp("cnn-checkpoints")
        result = train(model, digits_small, TINY_CNN, checkpoint_dir=out, seed=0, progress=None)
        torch.set_num_threads(threads)
    return model, list(result.checkpoints)


@pytest.fixture
def linear_model() -> LinearModel:
    """A linear softmax classifier on the 64 digit pixels."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LinearModel(num_classes=10)
