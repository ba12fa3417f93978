"""Fixtures for the pool tests: a run directory with a writable store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from utilgen.pool import PoolStore

os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run directory that does not exist yet."""
    return tmp_path / "run"


@pytest.fixture
def store(run_dir: Path) -> Iterator[PoolStore]:
    """A writable store on ``run_dir``, holding the run lock for the test."""
    with PoolStore.open(run_dir, writable=True) as opened:
        yield opened
