"""The control arm of model-level feedback: the last round's requests without the feedback.

``feedback_effect.json``'s round tests compare round 1 with the last round, but each round
draws its own prompts and seeds, so their difference mixes what feedback changed with the
difference between two draws of requests. With ``feedback.control`` the run ends by
generating the last round's requests once more with the generator as it was before any
``dpo`` feedback (the same prompts, seeds, optimised embeddings and noise), filtering and
judging them exactly as the round did, and writing ``rounds/NNN/control.parquet``.

A sample's id is a function of its round, request and output index, so every control sample
shares its id with the round's sample made from the same request and noise;
:func:`utilgen.report.feedback_effect.control_effect` pairs them by id. Control samples are a
measurement: they never enter the pool or a training set, and do not count against
``loop.budget``. The file is written once, atomically; a run killed before that generates
the control again on resume (same seeds, same samples).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from utilgen.atomic import write_bytes_atomic
from utilgen.config import RunConfig
from utilgen.data import LabelledData, Splits
from utilgen.generate import GenerationRequest, Generator
from utilgen.pool import RoundLayout, Sample
from utilgen.pool.payload import decode_item
from utilgen.report.feedback_effect import ABSOLUTE_SCORES
from utilgen.scale import on_backend, scorer_on_backend
from utilgen.task import TaskModel

log = logging.getLogger(__name__)


def control_scores(
    base: Generator,
    requests: Sequence[GenerationRequest],
    cfg: RunConfig,
    splits: Splits,
    judge: TaskModel,
    judge_checkpoints: Sequence[Path],
    round_index: int,
) -> pd.DataFrame:
    """Generate ``requests`` with ``base`` (the generator before feedback) as round
    ``round_index``, filter texts and judge every sample with the stage-1 classifier.

    Returns one row per generated sample: ``id``, ``label``, ``kept`` (the text filters'
    verdict; always true for images), ``correct`` (the judge's argmax is the label: label
    fidelity) and one column per absolute score of ``valuation.scores`` (NaN where the
    filters dropped the sample, which the round would not have scored either). Scores that
    are fit afresh on each round's samples (meta_weight, vog, composite) are left out: they
    do not compare across sets of samples.
    """
    log.info(
        "round %d control: generating %d request(s) with %s", round_index, len(requests), base.name
    )
    samples: list[Sample] = sorted(
        on_backend(base, cfg).generate(requests, round_index=round_index), key=lambda s: s.id
    )
    modality = splits.train.modality
    if modality == "text":
        # Same filters, same order as filter_text_samples gives the round's own samples.
        from utilgen.generate.text_filters import filter_texts

        samples = filter_texts(
            samples, [str(t) for t in splits.train.items], cfg.generator.text_filters
        )
    data = LabelledData(
        modality=modality,
        items=tuple(decode_item(s.payload, modality) for s in samples),
        labels=np.array([s.label for s in samples], dtype=np.int64),
        class_names=splits.train.class_names,
        ids=tuple(s.id for s in samples),
        name="control",
    )
    kept = np.array([s.kept for s in samples], dtype=bool)
    frame = pd.DataFrame({"id": list(data.ids), "label": data.labels, "kept": kept})
    frame["correct"] = (
        judge.predict_proba(data.items).argmax(axis=1) == data.labels if len(data) else []
    )
    absolute = [s for s in dict.fromkeys(cfg.valuation.scores) if s in ABSOLUTE_SCORES]
    for name in absolute:
        frame[name] = np.nan
    if absolute and kept.any():
        subset = data.subset(np.flatnonzero(kept))
        scored = scorer_on_backend(cfg)(
            cfg.valuation.model_copy(update={"scores": absolute, "selection": []}),
            judge,
            subset,
            checkpoints=judge_checkpoints,
            real_train=splits.train,
            seed=cfg.seed,
        )
        frame.loc[kept, absolute] = scored[absolute].to_numpy()
    return frame


def write_control(out: Path, frame: pd.DataFrame) -> Path:
    """``out/control.parquet``, atomically."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return write_bytes_atomic(RoundLayout(out).control, buffer.getvalue())
