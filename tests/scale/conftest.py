"""Shared pieces of the Ray backend tests: the tiny generators' helper modules on the path,
and one small local Ray session per test module (2 CPUs, shut down afterwards)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
for helpers in ("loop", "generate", "cli"):
    if str(TESTS / helpers) not in sys.path:
        sys.path.insert(0, str(TESTS / helpers))


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    """A local Ray with 2 CPUs for the module's tests; the executors under test join it."""
    if os.environ.get("CI"):
        import ray  # CI installs the ray extra (Makefile): a missing Ray is a failure there
    else:
        ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(autouse=True)
def release_shared_executor() -> Iterator[None]:
    """Stop the run-wide executor's actors after each test: the session has 2 CPUs, and
    idle actors kept for the next round would leave none to a test's own executor."""
    yield
    from utilgen.scale.backend import release_shared_executors

    release_shared_executors()
