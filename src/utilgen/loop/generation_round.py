"""One generation round of the ``static`` strategy: generate, filter, judge, retrain.

Round ``r >= 1`` reads what stage 1 wrote (the real-data classifier's checkpoints) and
writes ``rounds/NNN/``. Every step is idempotent: generated samples are appended to the
pool batch by batch, and a resumed round generates only the requests whose samples the pool
does not hold yet, so a killed run ends with the same pool as an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from utilgen.config import RunConfig
from utilgen.data import Splits
from utilgen.errors import UtilgenError
from utilgen.faults import fault_point
from utilgen.generate import GenerationRequest, Generator, synthetic_id
from utilgen.loop.continued import round_task_config
from utilgen.loop.training_set import build_training_set
from utilgen.pool import PoolStore, RoundLayout, Sample
from utilgen.scale import on_backend, scorer_on_backend, trainer_on_backend
from utilgen.task import TaskModel, evaluate, train_val_gap
from utilgen.task.checkpoint import list_checkpoints, load_checkpoint
from utilgen.task.fidelity import LabelFidelity, label_fidelity

log = logging.getLogger(__name__)

APPEND_EVERY = 64  # samples per pool write: bounds the work lost to a crash


@dataclass(frozen=True)
class RoundInputs:
    """What a generation round needs besides the pool."""

    config: RunConfig
    splits: Splits
    generator: Generator | None
    requests: Sequence[GenerationRequest]
    imported: Sequence[Sample] = ()  # offline mode: the pre-generated samples, no generator
    generator_calls: int = 0  # passes spent optimising the requests (instance feedback)


def missing_requests(
    requests: Sequence[GenerationRequest], store: PoolStore, round_index: int
) -> list[GenerationRequest]:
    """The requests with at least one output the pool does not hold yet."""
    return [
        r
        for r in requests
        if any(synthetic_id(round_index, r, i) not in store for i in range(r.num_outputs))
    ]


def generate_into_pool(
    generator: Generator,
    requests: Sequence[GenerationRequest],
    store: PoolStore,
    round_index: int,
) -> int:
    """Generate ``requests`` the pool lacks and append their samples; returns how many.

    ``generator`` is the round's generator as :func:`~utilgen.scale.on_backend` returns it:
    on ``loop.backend=ray`` its samples are made by Ray actors and stream back here, so this
    process stays the pool's only writer on both backends."""
    todo = missing_requests(requests, store, round_index)
    if not todo:
        return 0
    log.info("round %d: generating %d request(s) with %s", round_index, len(todo), generator.name)
    buffer: list[Sample] = []
    added = 0
    for sample in generator.generate(todo, round_index=round_index):
        buffer.append(sample)
        if len(buffer) >= APPEND_EVERY:
            added += store.append(buffer)
            fault_point("generate.append")
            buffer = []
    if buffer:
        added += store.append(buffer)
        fault_point("generate.append")
    return added


def filter_text_samples(store: PoolStore, cfg: RunConfig, splits: Splits, round_index: int) -> None:
    """Apply the text filters to the round's samples and record keep/drop with reasons."""
    from utilgen.generate.text_filters import filter_texts

    ids = set(store.manifest().query("source == 'synthetic' and round == @round_index")["id"])
    samples = store.samples(sorted(ids))
    real_texts = [str(t) for t in splits.train.items]
    decided = filter_texts(samples, real_texts, cfg.generator.text_filters)
    store.set_kept({s.id: (s.kept, s.reason) for s in decided})


def stage1_judge(model: TaskModel, stage1_checkpoints: Path) -> tuple[TaskModel, list[Path]]:
    """``model`` with the last stage-1 checkpoint loaded, and all stage-1 checkpoints: the
    classifier trained on real data only, which judges label fidelity (it has never seen a
    synthetic sample) and values the generated samples."""
    found = list_checkpoints(stage1_checkpoints)
    if not found:
        raise UtilgenError(
            f"no stage-1 checkpoint in {stage1_checkpoints}; delete rounds/000/metrics.json "
            "and re-run the command to retrain stage 1"
        )
    load_checkpoint(model, found[-1])
    return model, found


def keep_weight_net(layout: RoundLayout, name: str, valuator: object) -> None:
    """Save the weight net a ``meta_weight`` valuation trained to the round's
    ``meta_weight_net.safetensors`` (the next round's meta-weight utility reads it); a file
    already there is kept, so a resumed round does not rewrite it."""
    from utilgen.value.meta_weight import MetaWeight
    from utilgen.value.weight_net_file import save_weight_net

    if not isinstance(valuator, MetaWeight) or valuator.last_result is None:
        return
    if save_weight_net(valuator.last_result.weight_net, layout.meta_weight_net):
        log.info("saved the meta-weight net to %s", layout.meta_weight_net)


def value_and_select(
    store: PoolStore,
    cfg: RunConfig,
    splits: Splits,
    round_index: int,
    judge: TaskModel,
    judge_checkpoints: Sequence[Path],
) -> None:
    """Score the round's kept synthetic samples with the stage-1 model, record the scores,
    apply ``valuation.selection`` (kept, reason and training weight go into the pool, where
    :func:`~utilgen.loop.training_set.build_training_set` reads them). A ``meta_weight``
    score's trained weight net is saved to ``rounds/NNN/meta_weight_net.safetensors``."""
    from utilgen.value import (
        apply_selection,
        build_selector,
        record_scores,
        scored_samples,
        selection_candidates,
    )

    # Kept by the filters, including what this round's own selection dropped before a crash.
    candidates = selection_candidates(store, round_index, splits.train.class_names)
    if not len(candidates):
        return
    # loop.backend=ray: the forward passes run on the actor pool, with the same scores.
    frame = scorer_on_backend(cfg)(
        cfg.valuation,
        judge,
        candidates,
        checkpoints=judge_checkpoints,
        trained_epochs=cfg.task.epochs,  # stage 1 trained task.epochs epochs
        real_train=splits.train,
        # meta_weight's clean meta set (reserved from validation; None with meta_set: train)
        # and what the judge was fitted on, which the meta set must not share
        meta_set=splits.meta,
        fitted_ids=splits.train.ids,
        seed=cfg.seed,
        on_scored=partial(keep_weight_net, store.layout.round(round_index)),
    )
    record_scores(store, round_index, frame)
    fault_point("value.scored")
    if not cfg.valuation.selection:
        return
    selection = build_selector(cfg.valuation.selection).select(scored_samples(candidates, frame))
    apply_selection(store, round_index, selection)
    fault_point("select.applied")


def run_generation_round(
    inputs: RoundInputs,
    store: PoolStore,
    *,
    round_index: int,
    judge: TaskModel,
    judge_checkpoints: Sequence[Path],
    student: TaskModel,
    out: Path,
) -> dict[str, Any]:
    """Generate, filter, measure label fidelity, value and select, retrain on real + kept
    synthetic, evaluate.

    ``judge`` is the stage-1 real-data classifier (its checkpoints ``judge_checkpoints`` feed
    VoG); ``student`` the task model trained here: freshly initialised (same seed as stage
    1), or with ``loop.continue_training`` the previous round's classifier.
    Returns the round's metrics.
    """
    cfg, splits = inputs.config, inputs.splits
    started = time.perf_counter()
    class_names = splits.train.class_names

    # 1. generate what the pool lacks (offline: import the pre-generated samples)
    if inputs.generator is not None:
        generator = on_backend(inputs.generator, cfg)
        generate_into_pool(generator, inputs.requests, store, round_index)
        generator_name = inputs.generator.name
    else:
        store.append(inputs.imported)
        generator_name = f"offline:{cfg.loop.offline_pool}"
    fault_point("generate.done")
    generated_at = time.perf_counter()

    # 2. filter (texts: empty, short, long, duplicate, copied), decisions recorded in the pool
    if splits.train.modality == "text":
        filter_text_samples(store, cfg, splits, round_index)

    # 3. label fidelity of everything generated, judged by the real-data classifier
    generated = store.load_labelled(
        source="synthetic", round=round_index, class_names=class_names, name="synthetic"
    )
    fidelity: LabelFidelity = label_fidelity(judge, generated.items, generated.labels, class_names)
    for name, value in fidelity.per_class.items():
        log.info("round %d: label fidelity %-20s %.3f", round_index, name, value)

    # 4. utility of the kept samples under the stage-1 model; selection with reasons
    if cfg.valuation.scores:
        value_and_select(store, cfg, splits, round_index, judge, judge_checkpoints)

    valued_at = time.perf_counter()

    # 5. train the student on real + the round's synthetic samples (its kept ones, or
    # every round's with loop.accumulate, capped by loop.synthetic_ratio), evaluate
    chosen = build_training_set(store, cfg, splits, round_index, out)
    train_data = chosen.data
    result = trainer_on_backend(cfg)(
        student,
        train_data,
        round_task_config(cfg),
        weights=chosen.weights,
        val=splits.val,
        checkpoint_dir=RoundLayout(out).checkpoints,
        seed=cfg.seed,
    )
    train_metrics = evaluate(student, train_data)
    val_metrics = evaluate(student, splits.val)
    return {
        "round": round_index,
        "generator": generator_name,
        "n_generated": len(generated),
        "generator_calls": (len(generated) if inputs.generator is not None else 0)
        + inputs.generator_calls,
        "n_train_real": len(splits.train),
        "n_train_synthetic": chosen.n_synthetic,
        "n_over_ratio": chosen.n_over_ratio,
        "n_val": len(splits.val),
        "n_test": len(splits.test),
        "label_fidelity": fidelity.as_dict(),
        "train_loss": list(result.train_loss),
        "val_accuracy_per_epoch": list(result.val_accuracy),
        "train_accuracy": train_metrics["accuracy"],
        "val_accuracy": val_metrics["accuracy"],
        "train_val_gap": train_val_gap(train_metrics["accuracy"], val_metrics["accuracy"]),
        "test": evaluate(student, splits.test),
        # Stage by stage, for the report's cost table (a resumed round counts its last try).
        "generate_seconds": round(generated_at - started, 3),
        "value_seconds": round(valued_at - generated_at, 3),
        "train_seconds": round(time.perf_counter() - valued_at, 3),
    }
