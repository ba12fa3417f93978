"""What runs inside the Ray actors: one long-lived worker per actor.

A :class:`Worker` lives as long as its :class:`~utilgen.scale.executor.RayExecutor`, which
in ``utilgen run`` is the whole run: its process imports torch and utilgen once, not once per
round. Each call names the model it needs (the round's generator, the task model) by an
object-store reference wrapped in a list, so that Ray hands the actor the reference rather
than the object; the worker fetches a model the first time it sees its reference and keeps
it until a call names another one. A restarted actor starts with no models and fetches
them again, so a call retried after a crash needs nothing from the actor that died.

Generation returns a shard's samples as one Arrow table (the manifest's columns plus the
payload), from which the driver rebuilds the exact ``Sample`` objects the local backend
would have made.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from utilgen.data.labelled import Item
from utilgen.generate import GenerationRequest, Generator
from utilgen.pool import Sample
from utilgen.pool.schema import row_to_sample, samples_to_table
from utilgen.task import TaskModel

log = logging.getLogger(__name__)

PAYLOAD = "payload"

# Test hook: a path; the first actor to reach a call creates the file and exits the way a
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


def move_task_model(model: TaskModel, device: torch.device) -> None:
    """Put ``model``'s module on ``device``, in place."""
    model.module().to(device)
    model.device = device


def _maybe_die(marker: str | None) -> None:
    if not marker:
        return
    try:
        # O_EXCL: of all actors and restarts, exactly one creates the file.
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    log.warning("ray actor %d: %s set, exiting mid-call", os.getpid(), KILL_ONCE_ENV)
    os._exit(1)


class Worker:
    """One actor of the pool (wrapped by ``ray.remote`` in the executor).

    Args:
        threads: torch threads in this actor (its reserved CPUs).
        device: "cpu", or "cuda" when the actor holds a GPU (Ray sets which one).
    """

    def __init__(self, *, threads: int, device: str) -> None:
        from utilgen.progress import set_quiet

        torch.set_num_threads(threads)
        set_quiet(True)  # bars from many actors would interleave in the driver's log
        self.device = torch.device(device)
        # kind -> (object-store id, the object): one model of each kind, the latest named.
        self._models: dict[str, tuple[str, Any]] = {}

    def pid(self) -> int:
        """This actor's process id: a restart, or a new actor, has another."""
        return os.getpid()

    def _model(self, kind: str, holder: Sequence[Any]) -> Any:
        import ray

        ref = holder[0]
        cached = self._models.get(kind)
        if cached is not None and cached[0] == ref.hex():
            return cached[1]
        self._models.pop(kind, None)  # free the old model before fetching the new one
        model = ray.get(ref)
        if self.device.type != "cpu":
            (move_generator if kind == "generator" else move_task_model)(model, self.device)
        self._models[kind] = (ref.hex(), model)
        return model

    def warm(self, generator: Sequence[Any]) -> int:
        """Fetch the generator in ``generator[0]`` (a reference) ahead of the first
        ``generate``: the first fetch in a process also imports its modules (diffusers'
        U-Net, transformers), seconds that would otherwise land inside round 1. Returns the
        pid."""
        self._model("generator", generator)
        return os.getpid()

    def generate(
        self,
        generator: Sequence[Any],
        shard: list[GenerationRequest],
        round_index: int,
        kill_marker: str | None = None,
    ) -> pa.Table:
        """The samples of ``shard`` made by the generator in ``generator[0]`` (a reference),
        as :func:`samples_to_rows` rows."""
        if kill_marker:
            Path(kill_marker).parent.mkdir(parents=True, exist_ok=True)
        _maybe_die(kill_marker)
        model: Generator = self._model("generator", generator)
        samples = list(model.generate(shard, round_index=round_index, progress=False))
        return samples_to_rows(samples)

    def logits(self, model: Sequence[Any], items: Sequence[Item]) -> np.ndarray:
        """``logits(items)`` of the task model in ``model[0]`` (a reference), float32."""
        task_model: TaskModel = self._model("task_model", model)
        return task_model.logits(items)

    def embed(self, model: Sequence[Any], items: Sequence[Item]) -> np.ndarray:
        """``embed(items)`` of the task model in ``model[0]`` (a reference)."""
        task_model: TaskModel = self._model("task_model", model)
        return task_model.embed(items)

    def raw_vog(
        self,
        checkpoints: Sequence[Any],
        items: Sequence[Item],
        labels: np.ndarray,
        chunk: int,
    ) -> np.ndarray:
        """Raw VoG, float64, of ``items`` under the task model at each checkpoint
        (``checkpoints``: references to the model with each checkpoint's weights, in
        training order), in chunks of ``chunk`` samples as ``VoG.raw`` makes them."""
        from utilgen.task.torch_task_model import chunks
        from utilgen.value.vog import vog_of_gradients

        models: list[TaskModel] = [
            self._model(f"vog_checkpoint_{k}", [ref]) for k, ref in enumerate(checkpoints)
        ]
        out = np.zeros(len(items), dtype=np.float64)
        for part in chunks(len(items), chunk):
            grads = [m.input_gradients(items[part], labels[part]) for m in models]
            out[part] = vog_of_gradients(grads, models[0].modality)
        return out
