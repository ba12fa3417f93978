"""``RayExecutor``: a round's generation (and valuation's forward passes, see
:mod:`utilgen.scale.valuation`) on a pool of long-lived Ray actors.

Generation:

1. the requests are cut into shards that start where the local generator starts a batch
   (:mod:`utilgen.scale.shards`), so each sample is made in the same batch as locally;
2. the generator goes into the object store once per call; each actor fetches it once;
3. shards go to whichever actor is idle, one call in flight per actor (a shard is seconds
   to minutes of work; an actor holding a queue would keep it from an idle one);
4. the driver yields the samples in request order as the shards finish; the caller (the
   loop) is the only writer of the pool.

The actors outlive the call. Ray Data's ``map_batches`` builds a new actor pool for every
dataset, and on a 2-core machine starting one (a process that imports torch, diffusers and
utilgen, then receives the model) took 13-17 s per round; the executor's actors start once
and serve every round and every stage of the run (benchmarks/RESULTS.md, "scaling.py").

An actor that dies is restarted by Ray (``ray.max_restarts``) and its unfinished call re-run
on it (``ray.max_task_retries``); a call's rows come back once, from the run that finished,
so nothing is lost or yielded twice.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from utilgen.config.scale import RayConfig
from utilgen.errors import UtilgenError
from utilgen.generate import GenerationRequest, Generator
from utilgen.pool import Sample
from utilgen.progress import progress_bar
from utilgen.scale.actors import KILL_ONCE_ENV, Worker, rows_to_samples
from utilgen.scale.cluster import ClusterInfo, RayBackendError, connect, import_ray
from utilgen.scale.shards import plan_shards

log = logging.getLogger(__name__)

Call = Callable[[Any], Any]
"""Given an actor handle, submit one call on it and return its ObjectRef."""


def _generator_device(generator: Generator) -> str:
    device = getattr(generator, "device", None)
    return str(device) if device is not None else "cpu"


def _user_error(err: BaseException) -> UtilgenError | None:
    """The UtilgenError an actor raised, found through Ray's wrapping exceptions."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, UtilgenError):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    return None


def _session_key() -> tuple[str, str]:
    """This driver's Ray session: its node and job (a restarted local Ray reuses job ids,
    but not node ids)."""
    context = import_ray().get_runtime_context()
    return context.get_node_id(), context.get_job_id()


class RayExecutor:
    """Runs generation and valuation on a Ray cluster (``loop.backend=ray``).

    Construction joins the cluster at ``cfg.address`` (or starts a local one) and checks
    that it can hold the actor pool; the actors start on the first call and stay for the
    next ones. Use it as a context manager, or call :meth:`shutdown`, to stop the actors
    and a local Ray it started; a cluster it joined is left running.

    Raises:
        RayBackendError: Ray is not installed, the address does not answer, or the cluster
            lacks the CPUs/GPUs for ``actors`` actors.
    """

    def __init__(self, cfg: RayConfig) -> None:
        self.cfg = cfg
        self.cluster: ClusterInfo = connect(cfg)
        self._check_resources()
        self._session = _session_key()
        self._actors: list[Any] = []
        self._warming: list[Any] = []  # refs of warm() calls not waited for yet
        self.actor_startup_seconds = 0.0

    def _check_resources(self) -> None:
        cfg, have = self.cfg, self.cluster.resources
        need = {
            "CPU": cfg.actors * cfg.num_cpus_per_actor,
            "GPU": cfg.actors * cfg.num_gpus_per_actor,
        }
        for name, amount in need.items():
            if amount and have.get(name, 0.0) < amount:
                raise RayBackendError(
                    f"the Ray cluster at {self.cluster.address} has {have.get(name, 0.0):g} "
                    f"{name}(s); ray.actors={cfg.actors} x ray.num_{name.lower()}s_per_actor="
                    f"{getattr(cfg, f'num_{name.lower()}s_per_actor'):g} needs {amount:g}: "
                    f"lower ray.actors or add nodes"
                )

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    @property
    def alive(self) -> bool:
        """False once Ray was shut down under the executor (its actors went with it)."""
        return import_ray().is_initialized() and _session_key() == self._session

    @property
    def started(self) -> bool:
        """True while the executor's actors are up (from the first call to shutdown)."""
        return bool(self._actors)

    def shutdown(self) -> None:
        """Stop the actors, and the local Ray this executor started (a joined cluster keeps
        running)."""
        ray = import_ray()
        if ray.is_initialized():
            for actor in self._actors:
                ray.kill(actor)
        self._actors = []
        self._warming = []
        if self.cluster.started_here:
            ray.shutdown()

    @property
    def actor_device(self) -> str:
        """Where the actors run their model: "cuda" when they hold GPUs, else "cpu"."""
        return "cuda" if self.cfg.num_gpus_per_actor else "cpu"

    def check_device(self, device: str, what: str) -> None:
        """RayBackendError when ``what`` (on ``device``) is on a GPU but the actors have none:
        they could not even load it."""
        if device.startswith("cuda") and self.actor_device == "cpu":
            raise RayBackendError(
                f"the {what} is on a GPU (loop.device) but ray.num_gpus_per_actor=0 gives "
                "the actors none: set ray.num_gpus_per_actor=1 or loop.device=cpu"
            )

    def actors(self) -> list[Any]:
        """The pool's actor handles, started (and waited for) on first use.

        Each reserves ``num_cpus_per_actor`` CPUs and ``num_gpus_per_actor`` GPUs; a dead
        actor is restarted and its call retried per ``max_restarts`` and
        ``max_task_retries``.
        """
        if self._actors:
            return self._actors
        ray = import_ray()
        cfg = self.cfg
        options: dict[str, Any] = {
            "num_cpus": cfg.num_cpus_per_actor,
            "num_gpus": cfg.num_gpus_per_actor,
            "max_restarts": cfg.max_restarts,
        }
        # A retry runs on the restarted actor: with restarts off there is nothing to retry on.
        if cfg.max_restarts != 0:
            options["max_task_retries"] = cfg.max_task_retries
        remote = ray.remote(**options)(Worker)
        started = time.perf_counter()
        actors = [
            remote.remote(threads=cfg.num_cpus_per_actor, device=self.actor_device)
            for _ in range(cfg.actors)
        ]
        ray.get([actor.pid.remote() for actor in actors])  # constructors done, imports too
        self.actor_startup_seconds = time.perf_counter() - started
        log.info("ray: %d actor(s) started in %.1f s", len(actors), self.actor_startup_seconds)
        self._actors = actors
        return actors

    def warm(self, generator: Generator, *, wait: bool = False) -> None:
        """Start the actors and have each fetch ``generator``; without ``wait``, return at
        once: ``utilgen run`` calls this before stage 1's training, which the warm-up then
        overlaps, and the next call on the pool waits for it (and raises what it raised)."""
        ray = import_ray()
        self.check_device(_generator_device(generator), "generator")
        holder = [ray.put(generator)]
        self._warming = [actor.warm.remote(holder) for actor in self.actors()]
        if wait:
            with user_errors_from_actors():
                warming, self._warming = self._warming, []
                ray.get(warming)

    def map_ordered(self, calls: Sequence[Call]) -> Iterator[Any]:
        """The results of ``calls``, in order, each submitted on an idle actor of the pool.

        Each actor has one call in flight; the next call goes to whichever actor finishes
        first. At most two calls per actor are in flight or finished but not yet yielded,
        so the driver's memory stays bounded however many calls there are.
        """
        ray = import_ray()
        actors = self.actors()
        window = 2 * len(actors)
        idle = list(reversed(actors))
        running: dict[Any, tuple[int, Any]] = {}  # ref -> (call index, actor)
        done: dict[int, Any] = {}
        submitted = returned = 0

        def submit() -> None:
            nonlocal submitted
            while idle and submitted < len(calls) and submitted < returned + window:
                actor = idle.pop()
                running[calls[submitted](actor)] = (submitted, actor)
                submitted += 1

        with user_errors_from_actors():
            warming, self._warming = self._warming, []
            ray.get(warming)  # queued before these calls on the same actors: already done
            while returned < len(calls):
                submit()
                ready, _ = ray.wait(list(running), num_returns=1)
                for ref in ready:
                    index, actor = running.pop(ref)
                    done[index] = ray.get(ref)
                    idle.append(actor)
                # Before the caller gets the results: the actors work while it appends them.
                submit()
                while returned in done:
                    yield done.pop(returned)
                    returned += 1

    def generate(
        self,
        generator: Generator,
        requests: Sequence[GenerationRequest],
        round_index: int,
    ) -> Iterator[Sample]:
        """The samples of ``requests``, in request order, as ``generator.generate`` would
        yield them locally (same ids, provenance and payload bytes), generated by the pool.

        Raises:
            RayBackendError: the generator sits on a GPU but the actors have none.
        """
        requests = list(requests)
        if not requests:
            return iter(())
        self.check_device(_generator_device(generator), "generator")
        batch_size = int(getattr(generator, "batch_size", 1))
        shards = plan_shards(
            generator,
            requests,
            generator_batch_size=batch_size,
            shard_rows=self.cfg.batch_size or batch_size,
        )
        log.info(
            "ray: %d request(s) in %d shard(s) over %d actor(s)",
            len(requests),
            len(shards),
            min(self.cfg.actors, len(shards)),
        )
        return self._stream(generator, shards, round_index)

    def _stream(
        self, generator: Generator, shards: list[list[GenerationRequest]], round_index: int
    ) -> Iterator[Sample]:
        ray = import_ray()
        started = time.perf_counter()
        holder = [ray.put(generator)]  # in a list: the actors get the reference, not a copy
        kill_marker = os.environ.get(KILL_ONCE_ENV) or None

        def call(shard: list[GenerationRequest]) -> Call:
            return lambda actor: actor.generate.remote(holder, shard, round_index, kill_marker)

        total = sum(r.num_outputs for shard in shards for r in shard)
        n = 0
        with progress_bar(f"generating on {self.cfg.actors} Ray actor(s)", total) as advance:
            for table in self.map_ordered([call(shard) for shard in shards]):
                for sample in rows_to_samples(table):
                    n += 1
                    yield sample
                advance(table.num_rows)
        log.info("ray: %d sample(s) in %.1f s", n, time.perf_counter() - started)


@contextmanager
def user_errors_from_actors() -> Iterator[None]:
    """Re-raise a UtilgenError an actor raised (a bad request, a model the node lacks) as
    itself, one line for the CLI; any other failure is a bug and keeps Ray's traceback."""
    ray = import_ray()
    try:
        yield
    except ray.exceptions.RayTaskError as err:
        cause = _user_error(err)
        if cause is None:
            raise
        raise cause from None
