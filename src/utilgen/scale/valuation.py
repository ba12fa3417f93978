"""Valuation on Ray: the task model's logits of every candidate, computed by an actor pool.

The output scores (``marginal``, ``margin``, ``entropy``, ``loss``) are functions of one
forward pass per sample, so that pass is what the actors share out: each actor fetches the
task model once and returns the logits of the contiguous slices of the candidates it is
sent. A slice starts on a multiple of the model's ``eval_batch_size``, so each sample is
forwarded in the very batch it would be locally, and the scores equal the local ones bit
for bit.

The other scores need the whole set at once (VoG and the composite normalise per class, the
meta weight net trains on every sample) and run in the driver as before.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from utilgen.config.valuation import ValuationConfig
from utilgen.data.labelled import Item, LabelledData
from utilgen.scale.cluster import import_ray
from utilgen.scale.executor import Call, RayExecutor
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
    holder = [ray.put(model)]  # in a list: the actors get the reference, not a copy

    def call(start: int, stop: int) -> Call:
        chunk = list(items[start:stop])
        return lambda actor: actor.logits.remote(holder, chunk)

    parts = list(executor.map_ordered([call(start, stop) for start, stop in bounds]))
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
