"""Running a set of jobs with prerequisites on a few workers, longest path first.

The demo's runs differ in cost by 20x and some share a prerequisite (the built-in generator
of a seed is trained once, then every digits strategy of that seed loads it). Handing
runs to workers in a fixed order leaves a worker idle while another trains the shared
generator; list scheduling by *upward rank* (a job's own cost plus the costliest chain of
jobs that wait on it, as in HEFT) starts the critical chain first and fills the other
workers with whatever is ready.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass
from functools import cache
from typing import Any


@dataclass(frozen=True)
class Job:
    """One unit of work: ``fn(*args)`` after every job in ``after`` has finished."""

    key: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    cost: float = 1.0
    """Expected seconds (only the ratios matter): what orders the jobs."""
    after: tuple[str, ...] = ()


def upward_ranks(jobs: Sequence[Job]) -> dict[str, float]:
    """Each job's cost plus the largest upward rank of the jobs that wait on it.

    Raises:
        ValueError: a duplicate key, an unknown prerequisite or a cycle.
    """
    by_key = {job.key: job for job in jobs}
    if len(by_key) != len(jobs):
        raise ValueError("job keys must be unique")
    waiting: dict[str, list[str]] = {key: [] for key in by_key}
    for job in jobs:
        for before in job.after:
            if before not in by_key:
                raise ValueError(f"job {job.key!r} waits on unknown job {before!r}")
            waiting[before].append(job.key)
    visiting: set[str] = set()

    @cache
    def rank(key: str) -> float:
        if key in visiting:
            raise ValueError(f"jobs wait on each other in a cycle through {key!r}")
        visiting.add(key)
        value = by_key[key].cost + max((rank(k) for k in waiting[key]), default=0.0)
        visiting.discard(key)
        return value

    return {key: rank(key) for key in by_key}


def run_jobs(jobs: Sequence[Job], executor: Executor | None, workers: int) -> dict[str, Any]:
    """Run ``jobs`` and return their results by key.

    With an ``executor``, at most ``workers`` jobs run at once and, whenever a worker is
    free, the ready job of highest upward rank starts (ties: the order given). Without one,
    the jobs run here one after another in that same order. The first job to raise stops
    the scheduling (running jobs finish) and its exception propagates.
    """
    ranks = upward_ranks(jobs)
    position = {job.key: i for i, job in enumerate(jobs)}
    pending = {job.key: job for job in jobs}
    done: dict[str, Any] = {}

    def next_ready() -> Job | None:
        ready = [j for j in pending.values() if all(k in done for k in j.after)]
        if not ready:
            return None
        return min(ready, key=lambda j: (-ranks[j.key], position[j.key]))

    if executor is None:
        while (job := next_ready()) is not None:
            del pending[job.key]
            done[job.key] = job.fn(*job.args)
        return done
    running: dict[Future[Any], str] = {}
    while pending or running:
        while len(running) < max(1, workers) and (job := next_ready()) is not None:
            del pending[job.key]
            running[executor.submit(job.fn, *job.args)] = job.key
        if not running:  # pragma: no cover - upward_ranks rejects what could cause this
            raise RuntimeError(f"jobs {sorted(pending)} can never start")
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            done[running.pop(future)] = future.result()
    return done


def results_in_order(jobs: Sequence[Job], results: Mapping[str, Any]) -> list[Any]:
    """``results`` of ``jobs`` in the order of ``jobs``."""
    return [results[job.key] for job in jobs]
