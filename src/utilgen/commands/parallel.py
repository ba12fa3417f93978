"""Several runs at once on one machine: worker processes and the jobs they run.

``utilgen demo`` and ``utilgen compare --jobs N`` hand their runs to :class:`WorkerPool`:
``N`` spawned processes, each with its share of the cores, fed by
:func:`~utilgen.commands.schedule.run_jobs` (costliest chains first). :func:`run_jobs_for` makes
one job per run plus one per built-in generator the runs share, so a generator is trained
once, by a job of its own, while the other workers run what does not need it.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from utilgen.commands.schedule import Job, run_jobs
from utilgen.config import RunConfig
from utilgen.loop.run import prepare, run
from utilgen.pool import RunLayout

# Pretraining and adapting a built-in generator (demo settings, one thread), in the units of
# the runs' costs (seconds): what makes its job start before the runs that wait for it.
GENERATOR_COST = 150.0


@dataclass(frozen=True)
class PlannedRun:
    """One run to make: its config, directory and rough cost (seconds on one thread)."""

    config: RunConfig
    run_dir: Path
    cost: float = 60.0


def run_key(run_dir: Path) -> str:
    """The job key of the run in ``run_dir``."""
    return f"run:{run_dir}"


def generator_job_key(config: RunConfig) -> str | None:
    """One key per built-in generator the runs will train: runs with the same data, split,
    generator settings and seed share it, so it is trained once as a job of its own, which
    the runs wait for, instead of inside whichever run gets to it first while the others
    block on its cache lock. None for other generators (nothing to share)."""
    if config.generator.kind != "builtin-diffusion":
        return None
    inputs = {
        "data": config.data.model_dump(mode="json"),
        "builtin": config.generator.builtin.training_fields(),
        "seed": config.seed,
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
    return f"generator:{digest}"


def prepare_generator(config: RunConfig) -> None:
    """Train (or find cached) the built-in generator ``config`` uses; writes no run."""
    prepare(config)


def run_summary(config: RunConfig, run_dir: Path, report: bool) -> dict[str, Any]:
    """Run (or resume) ``config`` in ``run_dir``; its summary."""
    return run(config, run_dir, report=report).summary.to_dict()


def run_jobs_for(planned: Sequence[PlannedRun], *, report: bool) -> list[Job]:
    """A job per run (key :func:`run_key`, result its summary) plus a job per built-in
    generator that the unfinished runs using it wait for (a resumed batch does not retrain
    the generator of runs that are done)."""
    generators: dict[str, Job] = {}
    runs = []
    for item in planned:
        after: tuple[str, ...] = ()
        finished = RunLayout(item.run_dir).summary.is_file()
        if not finished and (key := generator_job_key(item.config)) is not None:
            generators.setdefault(key, Job(key, prepare_generator, (item.config,), GENERATOR_COST))
            after = (key,)
        args = (item.config, item.run_dir, report)
        runs.append(Job(run_key(item.run_dir), run_summary, args, item.cost, after))
    return [*generators.values(), *runs]


def _in_worker(threads: int) -> None:
    """Set-up of a worker process: its share of the cores, no progress bars."""
    import torch

    from utilgen.progress import set_quiet

    torch.set_num_threads(threads)
    set_quiet(True)


def default_jobs() -> int:
    """Runs at once: one per core, at most 2 (each run's small models use a core well)."""
    return max(1, min(2, os.cpu_count() or 1))


class WorkerPool:
    """Runs jobs in this process (``jobs=1``) or in ``jobs`` spawned worker processes, each
    with its share of the cores. A context manager: leaving it stops the workers."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self._executor: Executor | None = None
        if jobs > 1:
            threads = max(1, (os.cpu_count() or jobs) // jobs)
            self._executor = ProcessPoolExecutor(
                max_workers=jobs,
                # spawn: a forked worker would inherit torch's thread pool and locks
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_in_worker,
                initargs=(threads,),
            )

    def run(self, jobs: Sequence[Job]) -> dict[str, Any]:
        """Every job's result by key (:func:`~utilgen.commands.schedule.run_jobs`)."""
        return run_jobs(jobs, self._executor, self.jobs)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
