"""Valuation on Ray: the per-sample passes of every score, computed by the actor pool.

Each score splits into work per sample, which the actors share out, and a small step over
the whole set, which the driver does with the very functions the local scores use:

- output scores (``marginal``, ``margin``, ``entropy``, ``loss``): the logits of each
  candidate; then the score of each row;
- ``vog``: each candidate's input gradients at the configured checkpoints and their variance
  (raw VoG, on the actors); then the per-class normalisation;
- ``similarity``: the embeddings of the candidates and of the real reference; then the
  class centroids and the cosines;
- ``composite``: the two above (similarity and the margin); then the per-class
  normalisation and the weighted sum.

The actors fetch the task model once (for VoG: once per checkpoint) and process contiguous
slices of the samples they are sent. A slice starts on a multiple of the batch the local
code uses (the model's ``eval_batch_size``; ``valuation.batch_size`` for VoG), so each sample
goes through the very batch it would locally, and the scores equal the local ones bit for
bit. ``meta_weight`` trains a weight net over all samples at once (bi-level SGD, not a map)
and runs in the driver as before.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from utilgen.config.valuation import ValuationConfig
from utilgen.data.labelled import Item, LabelledData
from utilgen.scale.cluster import import_ray
from utilgen.scale.executor import Call, RayExecutor
from utilgen.task import TaskModel
from utilgen.task.checkpoint import load_checkpoint
from utilgen.value.base import Valuator, check_data, preserved_state
from utilgen.value.composite import Composite, composite_utility
from utilgen.value.logit_scores import OutputScore, margin
from utilgen.value.scoring import build_valuators
from utilgen.value.similarity import Similarity, class_centroids, cosine_to_centroid
from utilgen.value.vog import VoG, class_normalize

log = logging.getLogger(__name__)


def slice_bounds(n: int, eval_batch_size: int, slice_rows: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of consecutive slices covering ``n`` items, each a whole number of
    ``eval_batch_size`` batches of at least ``slice_rows`` items (the last one: the rest)."""
    if eval_batch_size < 1 or slice_rows < 1:
        raise ValueError(f"batch sizes must be >= 1, got {eval_batch_size}, {slice_rows}")
    step = math.ceil(slice_rows / eval_batch_size) * eval_batch_size
    return [(start, min(start + step, n)) for start in range(0, n, step)]


def _slices(executor: RayExecutor, n: int, batch: int, method: str, *args: Any) -> list[Call]:
    """One call of ``method(args..., items[slice], ...)`` per slice of whole ``batch``es."""
    cfg = executor.cfg
    calls: list[Call] = []
    for start, stop in slice_bounds(n, batch, cfg.batch_size or batch):

        def call(actor: Any, start: int = start, stop: int = stop) -> Any:
            picked = [a.value[start:stop] if isinstance(a, Sliced) else a for a in args]
            return getattr(actor, method).remote(*picked)

        calls.append(call)
    return calls


@dataclass(frozen=True)
class Sliced:
    """An argument of :func:`_slices` cut to each call's slice (the others go whole)."""

    value: Any


def _on_actors(
    executor: RayExecutor, method: str, n: int, batch: int, *args: Any
) -> list[np.ndarray]:
    return list(executor.map_ordered(_slices(executor, n, batch, method, *args)))


def _eval_batch(model: TaskModel, n: int) -> int:
    return int(getattr(model, "eval_batch_size", n or 1))


def ray_logits(executor: RayExecutor, model: TaskModel, items: Sequence[Item]) -> np.ndarray:
    """``model.logits(items)``, float32 (n, classes), computed by ``executor``'s actor pool
    equal to the local result."""
    ray = import_ray()
    executor.check_device(str(model.device), "task model")
    if not len(items):
        return np.zeros((0, model.num_classes), dtype=np.float32)
    started = time.perf_counter()
    holder = [ray.put(model)]  # in a list: the actors get the reference, not a copy
    parts = _on_actors(
        executor, "logits", len(items), _eval_batch(model, len(items)), holder, Sliced(items)
    )
    log.info("ray: logits of %d item(s) in %.1f s", len(items), time.perf_counter() - started)
    return np.concatenate(parts)


def ray_embeddings(executor: RayExecutor, model: TaskModel, items: Sequence[Item]) -> np.ndarray:
    """``model.embed(items)``, computed by ``executor``'s actor pool equal to the local
    result."""
    ray = import_ray()
    executor.check_device(str(model.device), "task model")
    if not len(items):
        raise ValueError("embed() needs at least one item")
    holder = [ray.put(model)]
    batch = _eval_batch(model, len(items))
    return np.concatenate(_on_actors(executor, "embed", len(items), batch, holder, Sliced(items)))


def ray_raw_vog(
    executor: RayExecutor, vog: VoG, model: TaskModel, data: LabelledData
) -> np.ndarray:
    """``vog.raw(model, data)`` computed by ``executor``'s actor pool, equal to the local
    result: the actors get the model with each checkpoint's weights (loaded here, then the
    model's own weights restored) and the samples in slices of whole ``vog.batch_size``
    chunks."""
    ray = import_ray()
    executor.check_device(str(model.device), "task model")
    check_data(model, data, vog.name)
    if not len(data):
        return np.zeros(0, dtype=np.float64)
    refs = []
    with preserved_state(model.module()):
        for path in vog.checkpoints:
            load_checkpoint(model, path)
            refs.append(ray.put(model))  # a snapshot: the weights as loaded now
    started = time.perf_counter()
    parts = _on_actors(
        executor,
        "raw_vog",
        len(data),
        vog.batch_size,
        refs,
        Sliced(data.items),
        Sliced(data.labels),
        vog.batch_size,
    )
    log.info("ray: VoG of %d sample(s) in %.1f s", len(data), time.perf_counter() - started)
    return np.concatenate(parts)


class _Passes:
    """The per-sample passes of one valuation on Ray, each computed once when first needed."""

    def __init__(self, executor: RayExecutor, model: TaskModel, data: LabelledData) -> None:
        self.executor, self.model, self.data = executor, model, data
        self._logits: np.ndarray | None = None
        self._similarity: np.ndarray | None = None

    def logits(self) -> np.ndarray:
        if self._logits is None:
            self._logits = ray_logits(self.executor, self.model, self.data.items)
        return self._logits

    def similarity(self, reference: LabelledData) -> np.ndarray:
        """``Similarity(reference).score(model, data)``."""
        if self._similarity is None:
            check_data(self.model, reference, "similarity reference")
            ref = ray_embeddings(self.executor, self.model, reference.items)
            centroids = class_centroids(ref, reference.labels, self.model.num_classes)
            own = ray_embeddings(self.executor, self.model, self.data.items)
            self._similarity = cosine_to_centroid(own, self.data.labels, centroids)
        return self._similarity


def score_samples_on_ray(
    executor: RayExecutor,
    cfg: ValuationConfig,
    model: TaskModel,
    data: LabelledData,
    *,
    checkpoints: Sequence[str | Path] = (),
    trained_epochs: int | None = None,
    real_train: LabelledData | None = None,
    meta_set: LabelledData | None = None,
    fitted_ids: Sequence[str] = (),
    seed: int = 0,
    on_scored: Callable[[str, Valuator], None] | None = None,
) -> pd.DataFrame:
    """:func:`~utilgen.value.score_samples` with the per-sample passes on Ray.

    Same arguments (plus the :class:`~utilgen.scale.executor.RayExecutor`; ``on_scored``
    is called as there), the same checks
    and errors, and the same table: ``id`` then one float64 column per score in
    ``cfg.scores``, equal to the local values. ``meta_weight`` is computed in the driver, as
    ``score_samples`` does, with the same meta set (``meta_set``) and overlap check
    (``fitted_ids``).
    """
    valuators = build_valuators(
        cfg,
        checkpoints=checkpoints,
        trained_epochs=trained_epochs,
        real_train=real_train,
        meta_set=meta_set,
        fitted_ids=fitted_ids,
        seed=seed,
    )
    check_data(model, data, "valuation")
    frame = pd.DataFrame({"id": list(data.ids)})
    passes = _Passes(executor, model, data)
    for name, valuator in valuators.items():
        if not len(data):
            values = valuator.score(model, data)  # nothing to share out
        elif isinstance(valuator, OutputScore):
            values = valuator.from_logits(passes.logits(), data.labels)
        elif isinstance(valuator, VoG):
            raw = ray_raw_vog(executor, valuator, model, data)
            values = class_normalize(raw, data.labels) if valuator.normalize else raw
        elif isinstance(valuator, Similarity):
            values = passes.similarity(valuator.reference)
        elif isinstance(valuator, Composite):
            r_int = passes.similarity(valuator.similarity.reference)
            r_ext = margin(passes.logits(), data.labels)
            values = composite_utility(
                r_int, r_ext, data.labels, valuator.lam, valuator.normalization
            )
        else:  # meta_weight: one training over every sample, in the driver
            values = valuator.score(model, data)
        frame[name] = np.asarray(values, dtype=np.float64)
        if on_scored is not None:
            on_scored(name, valuator)
        log.info("scored %d samples on ray: %s", len(data), name)
    return frame
