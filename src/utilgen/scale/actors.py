"""What runs inside the Ray actors: one generator per actor, shards in, sample rows out.

Ray Data builds one :class:`GenerateShards` per actor of the pool and calls it with batches
of shard indices. The round's generator and its shards travel once through the object
store (the driver puts them, every actor gets them in its constructor); a shard's samples
come back as one Arrow table (the manifest's columns plus the payload), so the driver
rebuilds the exact ``Sample`` objects the local backend would have made.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from utilgen.generate import GenerationRequest, Generator
from utilgen.pool import Sample
from utilgen.pool.schema import row_to_sample, samples_to_table

log = logging.getLogger(__name__)

PAYLOAD = "payload"

# Test hook: a path; the first actor to reach a batch creates the file and exits the way a
# crashed worker would (no cleanup). Its restart finds the file and carries on, so exactly
# one actor dies, which is what the failure tests need.
KILL_ONCE_ENV = "UTILGEN_RAY_KILL_ONCE"


def samples_to_rows(samples: list[Sample]) -> pa.Table:
    """The manifest rows of ``samples`` plus a ``payload`` (binary) column."""
    table = samples_to_table(samples)
    return table.append_column(PAYLOAD, pa.array([s.payload for s in samples], pa.binary()))


def rows_to_samples(table: pa.Table) -> list[Sample]:
    """The samples of a table written by :func:`samples_to_rows`, in row order; a row whose
    payload does not hash to its ``blob`` is a transfer error (RuntimeError)."""
    samples = []
    for row in table.to_pylist():
        sample = row_to_sample(row, row[PAYLOAD])
        if sample.blob != row["blob"]:
            raise RuntimeError(f"sample {sample.id} came back from Ray with a damaged payload")
        samples.append(sample)
    return samples


def move_generator(generator: Any, device: torch.device) -> None:
    """Put ``generator``'s model (or diffusers pipeline) on ``device``, in place."""
    module = getattr(generator, "pipeline", None) or getattr(generator, "model", None)
    if module is None or not hasattr(module, "to"):
        raise TypeError(
            f"{type(generator).__name__} has no model or pipeline to move to {device}; run it "
            "with ray.num_gpus_per_actor=0"
        )
    module.to(device)
    if hasattr(generator, "device"):
        generator.device = device


def resolved(value: Any) -> Any:
    """``value``, fetched from the object store when it is an ObjectRef."""
    import ray

    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


def _maybe_die(marker: str | None) -> None:
    if not marker:
        return
    try:
        # O_EXCL: of all actors and restarts, exactly one creates the file.
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    log.warning("ray actor %d: %s set, exiting mid-batch", os.getpid(), KILL_ONCE_ENV)
    os._exit(1)


class GenerateShards:
    """A Ray Data callable class: the actor's copy of the generator and the round's shards.

    Args:
        generator: the round's generator (an ObjectRef to it, or the object).
        shards: the round's request shards (an ObjectRef, or the list).
        round_index: the round the samples belong to (their ids and ``round``).
        threads: torch threads in this actor (its reserved CPUs).
        device: "cpu", or "cuda" when the actor holds a GPU (Ray sets which one).
        kill_marker: the :data:`KILL_ONCE_ENV` test hook's path, None normally.
    """

    def __init__(
        self,
        generator: Any,
        shards: Any,
        *,
        round_index: int,
        threads: int,
        device: str,
        kill_marker: str | None = None,
    ) -> None:
        from utilgen.progress import set_quiet

        torch.set_num_threads(threads)
        set_quiet(True)  # bars from many actors would interleave in the driver's log
        self.generator: Generator = resolved(generator)
        if device != "cpu":
            move_generator(self.generator, torch.device(device))
        self.shards: list[list[GenerationRequest]] = resolved(shards)
        self.round_index = round_index
        self.kill_marker = kill_marker
        if kill_marker:
            Path(kill_marker).parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """The samples of the shards in ``batch["shard"]``, in shard order."""
        samples: list[Sample] = []
        for index in batch["shard"]:
            _maybe_die(self.kill_marker)
            samples += self.generator.generate(
                self.shards[int(index)], round_index=self.round_index, progress=False
            )
        return samples_to_rows(samples)
