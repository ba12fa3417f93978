"""Valuation on Ray: the task model's logits of every candidate, computed by an actor pool.

The output scores (``marginal``, ``margin``, ``entropy``, ``loss``) are functions of one
forward pass per sample, so that pass is what the actors share out: each actor holds a copy
of the task model and returns the logits of contiguous slices of the candidates. A slice
starts on a multiple of the model's ``eval_batch_size``, so each sample is forwarded in the
very batch it would be locally, and the scores equal the local ones bit for bit.

The other scores need the whole set at once (VoG and the composite normalise per class, the
meta weight net trains on every sample) and run in the driver as before.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from utilgen.config.valuation import ValuationConfig
from utilgen.data.labelled import Item, LabelledData
from utilgen.scale.actors import resolved
from utilgen.scale.cluster import import_ray
from utilgen.scale.executor import RayExecutor, user_errors_from_actors
from utilgen.task import TaskModel
from utilgen.value import score_samples
from utilgen.value.base import check_data
from utilgen.value.scores import OUTPUT_SCORES, OutputScore

log = logging.getLogger(__name__)


def slice_bounds(n: int, eval_batch_size: int, slice_rows: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of consecutive slices covering ``n`` items, each a whole number of
    ``eval_batch_size`` batches of at least ``slice_rows`` items (the last one: the rest)."""
    if eval_batch_size < 1 or slice_rows < 1:
        raise ValueError(f"batch sizes must be >= 1, got {eval_batch_size}, {slice_rows}")
    step = math.ceil(slice_rows / eval_batch_size) * eval_batch_size
    return [(start, min(start + step, n)) for start in range(0, n, step)]


class LogitSlices:
    """A Ray Data callable class: the actor's copy of the task model and the items.

    Args:
        model: the task model (an ObjectRef to it, or the object), on the CPU or on
            ``device``.
        items: every candidate item (an ObjectRef, or the sequence).
        threads: torch threads in this actor.
        device: "cpu", or "cuda" when the actor holds a GPU.
    """

    def __init__(self, model: Any, items: Any, *, threads: int, device: str) -> None:
        torch.set_num_threads(threads)
        self.model: TaskModel = resolved(model)
        if device != "cpu":
            self.model.module().to(device)
            self.model.device = torch.device(device)
        self.items: Sequence[Item] = resolved(items)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``{"logits": (rows, classes) float32}`` of the slices in ``batch``, in order."""
        parts = [
            self.model.logits(self.items[int(start) : int(stop)])
            for start, stop in zip(batch["start"], batch["stop"], strict=True)
        ]
        return {"logits": np.concatenate(parts)}


def ray_logits(executor: RayExecutor, model: TaskModel, items: Sequence[Item]) -> np.ndarray:
    """``model.logits(items)``, float32 (n, classes), computed by ``executor``'s actor pool
    equal to the local result."""
    ray = import_ray()
    cfg = executor.cfg
    executor.check_device(str(model.device), "task model")
    eval_batch_size = int(getattr(model, "eval_batch_size", len(items) or 1))
    bounds = slice_bounds(len(items), eval_batch_size, cfg.batch_size or eval_batch_size)
    if not bounds:
        return np.zeros((0, model.num_classes), dtype=np.float32)
    started = time.perf_counter()
    dataset = executor.map_actors(
        [{"start": start, "stop": stop} for start, stop in bounds],
        LogitSlices,
        (ray.put(model), ray.put(items)),
        {"threads": cfg.num_cpus_per_actor, "device": executor.actor_device},
    )
    with user_errors_from_actors():
        parts = [b["logits"] for b in dataset.iter_batches(batch_size=None, batch_format="numpy")]
    logits = np.concatenate(parts)
    log.info("ray: logits of %d item(s) in %.1f s", len(items), time.perf_counter() - started)
    return logits


def score_samples_on_ray(
    executor: RayExecutor,
    cfg: ValuationConfig,
    model: TaskModel,
    data: LabelledData,
    *,
    checkpoints: Sequence[str | Path] = (),
    real_train: LabelledData | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """:func:`~utilgen.value.score_samples` with the output scores' forward pass on Ray.

    Same arguments (plus the :class:`~utilgen.scale.executor.RayExecutor`) and the same
    table: ``id`` then one float64 column per score in ``cfg.scores``, equal to the local
    values. The scores that need the whole set (vog, similarity, composite, meta_weight)
    are computed here in the driver by ``score_samples`` itself.
    """
    names = list(dict.fromkeys(cfg.scores))
    output = [name for name in names if name in OUTPUT_SCORES]
    rest = [name for name in names if name not in OUTPUT_SCORES]
    if not output:
        return score_samples(
            cfg, model, data, checkpoints=checkpoints, real_train=real_train, seed=seed
        )
    check_data(model, data, "valuation")
    if rest:
        # Validated settings, fewer scores: model_copy skips the validators on purpose
        # (selection rules may name the output scores this copy leaves out).
        frame = score_samples(
            cfg.model_copy(update={"scores": rest}),
            model,
            data,
            checkpoints=checkpoints,
            real_train=real_train,
            seed=seed,
        )
    else:
        frame = pd.DataFrame({"id": list(data.ids)})
    logits = ray_logits(executor, model, data.items)
    for name in output:
        frame[name] = np.asarray(OutputScore(name).from_logits(logits, data.labels), np.float64)
        log.info("scored %d samples on ray: %s", len(data), name)
    return frame[["id", *names]]
