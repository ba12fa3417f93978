"""The generator the loop runs a round with: the round's own, or the same one on Ray.

:class:`RayGenerator` is a :class:`~utilgen.generate.base.Generator` whose ``generate``
hands the requests to a :class:`RayExecutor`; the loop appends what it yields exactly as
it appends a local generator's samples, so the pool's single writer, batching of appends
and resume logic are the same on both backends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING

import pandas as pd

from utilgen.config import RunConfig
from utilgen.config.scale import RayConfig
from utilgen.data.labelled import Modality
from utilgen.generate import GenerationRequest, Generator
from utilgen.pool import Sample
from utilgen.scale.cluster import connect, import_ray

if TYPE_CHECKING:
    from utilgen.scale.executor import RayExecutor
    from utilgen.task.train import TrainResult


_EXECUTORS: dict[str, RayExecutor] = {}


def shared_executor(cfg: RayConfig) -> RayExecutor:
    """The process's executor for ``cfg``: every round and stage of a run (generation,
    valuation) uses the same one, so its actors start once per run, not once per call.

    A new one replaces it when Ray was shut down in between (a later run in the same
    process, a test session).
    """
    from utilgen.scale.executor import RayExecutor

    key = cfg.model_dump_json()
    executor = _EXECUTORS.get(key)
    if executor is None or not executor.alive:
        # One pool at a time: another settings' idle actors would hold the CPUs/GPUs the
        # new pool needs, and its actors would wait for them forever.
        release_shared_executors()
        executor = _EXECUTORS[key] = RayExecutor(cfg)
    return executor


def release_shared_executors() -> None:
    """Stop the shared executors' actors (and a local Ray one of them started)."""
    while _EXECUTORS:
        _, executor = _EXECUTORS.popitem()
        if executor.alive:
            executor.shutdown()


class RayGenerator:
    """``generator`` run by a pool of Ray actors (``loop.backend=ray``).

    Same ``name`` and ``modality`` as ``generator``, and the same samples: the executor
    batches each request as the local generator would. Ray is joined on the first
    ``generate`` call (a resumed round with nothing left to make never starts it).
    """

    def __init__(self, generator: Generator, cfg: RayConfig) -> None:
        self.inner = generator
        self.cfg = cfg
        self.modality: Modality = generator.modality
        self.name = generator.name

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        round_index: int = 1,
        progress: bool = True,
    ) -> Iterator[Sample]:
        """``inner.generate(requests)``'s samples, in request order, made on Ray."""
        del progress  # the executor shows its own bar, unless --quiet
        return shared_executor(self.cfg).generate(self.inner, requests, round_index)


def warm_actors(generator: Generator | None, cfg: RunConfig) -> None:
    """For ``loop.backend=ray``: start the actor pool and load ``generator`` on every
    actor now, without waiting, so that this overlaps what the driver does next (stage 1's
    training) instead of landing in round 1. Nothing for the local backend, without a
    generator, or when Ray Train trains the task model (its workers need the CPUs)."""
    if cfg.loop.backend != "ray" or generator is None or cfg.ray.train_workers > 0:
        return
    shared_executor(cfg.ray).warm(generator)


def on_backend(generator: Generator, cfg: RunConfig) -> Generator:
    """``generator`` as the round should run it: itself for ``loop.backend=local``, wrapped
    in a :class:`RayGenerator` for ``loop.backend=ray``."""
    if cfg.loop.backend == "ray":
        return RayGenerator(generator, cfg.ray)
    return generator


def scorer_on_backend(cfg: RunConfig) -> Callable[..., pd.DataFrame]:
    """:func:`~utilgen.value.score_samples` for ``loop.backend=local``; for ``ray``, the
    same function with its forward passes on the actor pool
    (:func:`~utilgen.scale.valuation.score_samples_on_ray`), which gives the same scores."""
    if cfg.loop.backend == "ray":
        from utilgen.scale.valuation import score_samples_on_ray

        return partial(score_samples_on_ray, shared_executor(cfg.ray))
    from utilgen.value import score_samples

    return score_samples


def trainer_on_backend(cfg: RunConfig) -> Callable[..., TrainResult]:
    """:func:`~utilgen.task.train` for the task model, or, with ``loop.backend=ray`` and
    ``ray.train_workers >= 1``, the same training data-parallel on Ray Train
    (:func:`~utilgen.scale.train.train_on_ray`)."""
    if cfg.loop.backend == "ray" and cfg.ray.train_workers:
        from utilgen.scale.train import train_on_ray

        return partial(train_on_ray, cfg.ray)
    from utilgen.task import train

    return train


def check_backend(cfg: RunConfig) -> None:
    """Fail fast on a Ray backend that cannot run: Ray not installed, or ``ray.address``
    unreachable. Call before the run writes anything; a no-op for ``loop.backend=local``.

    Raises:
        RayBackendError: the one-line reason and its fix.
    """
    if cfg.loop.backend != "ray":
        return
    import_ray()
    if cfg.ray.address is not None:
        # The session stays open: the rounds' executors reuse it.
        connect(cfg.ray)
