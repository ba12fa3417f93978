"""``score_samples``: every configured score of a set of samples, as one table.

This is what the round engine calls after generation:

    frame = score_samples(cfg.valuation, model, synthetic, checkpoints=ckpts,
                          trained_epochs=cfg.task.epochs, real_train=real,
                          meta_set=splits.meta, fitted_ids=splits.train.ids)
    record_scores(store, round_index, frame)
    apply_selection(store, round_index, build_selector(cfg.valuation.selection)
                    .select(scored_samples(synthetic, frame)))
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from utilgen.config.valuation import ValuationConfig
from utilgen.data.labelled import LabelledData
from utilgen.task.base import TaskModel
from utilgen.value.base import ValuationError, Valuator, check_data
from utilgen.value.composite import Composite
from utilgen.value.logit_scores import OUTPUT_SCORES, OutputScore
from utilgen.value.meta_weight import MetaWeight
from utilgen.value.selectors import ScoredSamples
from utilgen.value.similarity import Similarity
from utilgen.value.vog import VoG, checkpoint_epoch

log = logging.getLogger(__name__)


def _need_real(real_train: LabelledData | None, score: str) -> LabelledData:
    if real_train is None or not len(real_train):
        raise ValuationError(
            f"valuation score {score} needs the real training samples (real_train); pass them"
        )
    return real_train


def _vog_epochs(
    cfg: ValuationConfig, checkpoints: Sequence[str | Path], trained_epochs: int | None
) -> tuple[int, ...]:
    """The epochs ``cfg.vog_checkpoints`` stands for in a run of ``trained_epochs`` (None:
    the last checkpoint's epoch)."""
    if trained_epochs is None:
        found = [e for p in checkpoints if (e := checkpoint_epoch(p)) is not None]
        if not found:
            raise ValuationError(
                "VoG needs the task model's epoch-NNN.safetensors checkpoints but none were "
                "given; train it with a checkpoint directory and pass its checkpoints"
            )
        trained_epochs = max(found)
    try:
        return cfg.vog_epochs(trained_epochs)
    except ValueError as err:
        raise ValuationError(str(err)) from None


def build_valuators(
    cfg: ValuationConfig,
    *,
    checkpoints: Sequence[str | Path] = (),
    trained_epochs: int | None = None,
    real_train: LabelledData | None = None,
    meta_set: LabelledData | None = None,
    fitted_ids: Sequence[str] = (),
    seed: int = 0,
) -> dict[str, Valuator]:
    """One valuator per score in ``cfg.scores`` (in order), built and checked up front.

    Args:
        cfg: the ``valuation`` config section.
        checkpoints: the task model's checkpoints, ``epoch-NNN.safetensors`` (``vog``).
        trained_epochs: the epochs of the training run that saved them (``task.epochs``),
            against which ``cfg.vog_checkpoints`` picks its epochs; None: the last
            checkpoint's epoch.
        real_train: the real training split (``similarity``, ``composite``, ``meta_weight``).
        meta_set: ``meta_weight``'s clean meta set (the run's ``Splits.meta``, reserved from
            validation); None: ``meta_per_class`` per class of ``real_train``.
        fitted_ids: ids of the samples the model was fitted on (``meta_weight`` refuses a
            meta set that shares one, unless ``meta_set: train`` chose that).
        seed: fixes the meta set and the weight net (``meta_weight``).

    Raises:
        ValuationError: a score's inputs are missing (e.g. VoG without the checkpoints of the
            epochs ``cfg.vog_checkpoints`` picks).
    """
    valuators: dict[str, Valuator] = {}
    for name in dict.fromkeys(cfg.scores):
        if name in OUTPUT_SCORES:
            valuators[name] = OutputScore(name)
        elif name == "vog":
            epochs = _vog_epochs(cfg, checkpoints, trained_epochs)
            valuators[name] = VoG(checkpoints, epochs=epochs, batch_size=cfg.batch_size)
        elif name == "similarity":
            valuators[name] = Similarity(_need_real(real_train, name))
        elif name == "composite":
            valuators[name] = Composite(
                _need_real(real_train, name),
                lam=cfg.composite_lambda,
                normalization=cfg.normalization,
            )
        elif name == "meta_weight":
            valuators[name] = MetaWeight(
                _need_real(real_train, name),
                cfg.meta_weight,
                seed=seed,
                meta=meta_set,
                fitted=fitted_ids,
            )
        else:  # pragma: no cover - ScoreName lists every score
            raise ValuationError(f"unknown valuation score {name!r}")
    return valuators


def score_samples(
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
    """Every score in ``cfg.scores`` for every sample of ``data``.

    Args:
        cfg: the ``valuation`` config section.
        model: the current task model (its weights are left as they are).
        data: the samples to score (synthetic or real), with their labels.
        checkpoints, trained_epochs, real_train, meta_set, fitted_ids, seed: see
            :func:`build_valuators`.
        on_scored: called with each score's name and valuator once its column is filled
            (the round engine saves the trained meta-weight net from it).

    Returns:
        a DataFrame with column ``id`` (``data.ids``, in order) and one float64 column per
        configured score (see each valuator for its meaning and units).

    Raises:
        ValuationError: missing inputs for a score, or samples that do not fit the model.
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
    # The output scores share one forward pass.
    logits = None
    for name, valuator in valuators.items():
        if isinstance(valuator, OutputScore):
            if logits is None:
                logits = model.logits(data.items)
            values = valuator.from_logits(logits, data.labels)
        else:
            values = valuator.score(model, data)
        frame[name] = np.asarray(values, dtype=np.float64)
        if on_scored is not None:
            on_scored(name, valuator)
        log.info("scored %d samples: %s", len(data), name)
    return frame


def scored_samples(data: LabelledData, scores: pd.DataFrame) -> ScoredSamples:
    """``data``'s ids and labels with the score columns of ``scores`` (matched by id), ready
    for a :class:`~utilgen.value.selectors.Selector`.

    Raises:
        ValuationError: a sample of ``data`` has no row in ``scores``.
    """
    table = scores.set_index(scores["id"].astype(str))
    missing = [i for i in data.ids if i not in table.index]
    if missing:
        raise ValuationError(
            f"sample {missing[0]!r} has no scores ({len(missing)} unscored); score every sample "
            "before selecting"
        )
    rows = table.loc[list(data.ids)]
    return ScoredSamples(
        ids=data.ids,
        labels=data.labels,
        scores={c: rows[c].to_numpy(dtype=np.float64) for c in scores.columns if c != "id"},
        class_names=data.class_names,
    )
