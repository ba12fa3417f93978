"""``RayExecutor``: a round's generation (and valuation's forward passes, see
:mod:`utilgen.scale.valuation`) as Ray Data ``map_batches`` over an actor pool.

Generation:

1. the requests are cut into shards that start where the local generator starts a batch
   (:mod:`utilgen.scale.shards`), so each sample is made in the same batch as locally;
2. the generator and the shards go into the object store once;
3. a dataset of shard indices is mapped by ``ray.actors`` :class:`GenerateShards` actors
   (one generator each, ``num_cpus_per_actor`` CPUs and torch threads, ``num_gpus_per_actor``
   GPUs), with ``preserve_order`` so results come back in request order;
4. the driver iterates the results as they stream in and yields ``Sample`` objects; the
   caller (the loop) is the only writer of the pool.

An actor that dies is restarted by Ray (``ray.max_restarts``) and its unfinished batch
re-run on it (``ray.max_task_retries``); a batch's rows come back once, from the run that
finished, so nothing is lost or yielded twice.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from utilgen.config.scale import RayConfig
from utilgen.errors import UtilgenError
from utilgen.generate import GenerationRequest, Generator
from utilgen.pool import Sample
from utilgen.scale.actors import KILL_ONCE_ENV, GenerateShards, rows_to_samples
from utilgen.scale.cluster import ClusterInfo, RayBackendError, connect, import_ray
from utilgen.scale.shards import plan_shards

if TYPE_CHECKING:
    from ray.data import Dataset

log = logging.getLogger(__name__)


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


def _remote_args(cfg: RayConfig) -> dict[str, Any]:
    """Ray's actor options for the pool: restarts and retries of a dead actor's batch."""
    args: dict[str, Any] = {"max_restarts": cfg.max_restarts}
    # A retry runs on the restarted actor: with restarts off there is nothing to retry on
    # (Ray Data leaves max_task_retries unset then, too).
    if cfg.max_restarts != 0:
        args["max_task_retries"] = cfg.max_task_retries
    return args


class RayExecutor:
    """Runs generation and valuation on a Ray cluster (``loop.backend=ray``).

    Construction joins the cluster at ``cfg.address`` (or starts a local Ray) and checks
    that it can hold the actor pool. Use it as a context manager, or call :meth:`shutdown`,
    to stop a local Ray it started; a cluster it joined is left running.

    Raises:
        RayBackendError: Ray is not installed, the address does not answer, or the cluster
            lacks the CPUs/GPUs for ``actors`` actors.
    """

    def __init__(self, cfg: RayConfig) -> None:
        self.cfg = cfg
        self.cluster: ClusterInfo = connect(cfg)
        self._check_resources()

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

    def shutdown(self) -> None:
        """Stop the local Ray this executor started (a joined cluster keeps running)."""
        if self.cluster.started_here:
            import_ray().shutdown()

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

    def map_actors(
        self,
        rows: list[dict[str, Any]],
        udf: type,
        constructor_args: tuple[Any, ...],
        constructor_kwargs: dict[str, Any],
    ) -> Dataset:
        """The dataset of ``rows`` mapped one row per call by a pool of ``udf`` actors
        (``udf(*constructor_args, **constructor_kwargs)`` each), in row order.

        Each actor reserves ``num_cpus_per_actor`` CPUs and ``num_gpus_per_actor`` GPUs;
        a dead actor is restarted and its batch retried per ``max_restarts`` and
        ``max_task_retries``. Nothing runs until the dataset is iterated.
        """
        ray = import_ray()
        from ray.data import ActorPoolStrategy, DataContext

        from utilgen.progress import is_quiet

        cfg = self.cfg
        context = DataContext.get_current()
        saved = (context.execution_options.preserve_order, context.enable_progress_bars)
        try:
            # A dataset snapshots the context when it is created: order and bars are set
            # for this one only, then the caller's settings come back.
            context.execution_options.preserve_order = True
            context.enable_progress_bars = not is_quiet()
            with warnings.catch_warnings():
                # Ray 2.60 flags every extra remote argument as deprecated, but actor
                # restarts and task retries have no named parameter yet.
                warnings.simplefilter("ignore", DeprecationWarning)
                return ray.data.from_items(rows).map_batches(
                    udf,
                    batch_size=1,
                    fn_constructor_args=constructor_args,
                    fn_constructor_kwargs=constructor_kwargs,
                    batch_format="numpy",
                    # One call in flight per actor: a row is seconds to minutes of work,
                    # and an actor that queued several would keep them from an idle one.
                    compute=ActorPoolStrategy(
                        size=min(cfg.actors, len(rows)), max_tasks_in_flight_per_actor=1
                    ),
                    num_cpus=cfg.num_cpus_per_actor,
                    num_gpus=cfg.num_gpus_per_actor or None,
                    **_remote_args(cfg),
                )
        finally:
            context.execution_options.preserve_order, context.enable_progress_bars = saved

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
        dataset = self.map_actors(
            [{"shard": i} for i in range(len(shards))],
            GenerateShards,
            (ray.put(generator), ray.put(shards)),
            {
                "round_index": round_index,
                "threads": self.cfg.num_cpus_per_actor,
                "device": self.actor_device,
                "kill_marker": os.environ.get(KILL_ONCE_ENV) or None,
            },
        )
        n = 0
        with user_errors_from_actors():
            for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                for sample in rows_to_samples(table):
                    n += 1
                    yield sample
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
