"""The run engine: ``utilgen run CONFIG``.

A run reads and writes one run directory (docs/architecture.md). Stage 1 (round 000) is the
same for every method: put the real data in the pool, train the task model on the real
training split with a checkpoint per epoch, evaluate. With a generator configured, every
round r = 1..``loop.rounds`` generates ``per_class`` new samples per class (fresh seeds and
prompts per round), filters texts, measures label fidelity and utility with the stage-1
classifier (the same judge every round, so rounds compare), retrains a fresh task model on
real + round r's kept synthetic samples and evaluates. One round with no feedback is the
``static`` strategy (Real-Fake / U-DPO's baseline). Between rounds the feedback components
update the generator: ``dpo`` fine-tunes it on round r's utility-ranked preference pairs
(U-DPO, Diffusion-DPO) before round r+1 generates; every component is found by name in
:data:`utilgen.registry.FEEDBACK_COMPONENTS`. With two or more rounds the run ends
with ``feedback_effect.json`` and a plot comparing the rounds' utility distributions.

Every step checks whether its output already exists, so re-running the same command after
a crash continues where the last finished step left off.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from utilgen import __version__
from utilgen.atomic import write_json_atomic
from utilgen.config import (
    RunConfig,
    config_from_dict,
    config_to_yaml,
    save_config,
)
from utilgen.config.device import check_device_available
from utilgen.data import LabelledData, Splits, load_data
from utilgen.determinism import resolve_device, seed_everything
from utilgen.errors import ConfigError, UtilgenError
from utilgen.faults import fault_point
from utilgen.feedback.component import RoundContext, active_components
from utilgen.generate import GenerationRequest, Generator
from utilgen.generate.factory import build_generator, static_requests
from utilgen.generate.kinds import generator_kind
from utilgen.loop.continued import continue_from_previous
from utilgen.loop.generation_round import RoundInputs, run_generation_round, stage1_judge
from utilgen.loop.offline import offline_samples
from utilgen.loop.policy import round_requests
from utilgen.loop.results import RoundMetrics, Summary
from utilgen.loop.run_splits import check_same_splits, run_splits, split_parts
from utilgen.loop.stopping import (
    MAX_ROUNDS,
    PLATEAU,
    Cost,
    budget_exceeded,
    check_first_round_budget,
    optimisation_calls,
    plateaued,
    round_cost,
    spent,
)
from utilgen.loop.training_set import ratio_caps
from utilgen.pool import PoolStore, RoundLayout, RunLayout, Sample, samples_from_labelled
from utilgen.pool.repair import check_run_dir
from utilgen.report import write_run_report
from utilgen.report.feedback_effect import write_feedback_effect
from utilgen.report.html import build_run_html
from utilgen.scale import check_backend, trainer_on_backend, warm_actors
from utilgen.task import (
    TaskModel,
    build_task_model,
    evaluate,
    train_val_gap,
)
from utilgen.task.checkpoint import list_checkpoints, read_sidecar

log = logging.getLogger(__name__)

STAGE1_ROUND = 0


@dataclass(frozen=True)
class Plan:
    """A run's inputs, checked against its data before any model loads: the splits and
    round 1's requests (or offline mode's pre-generated samples)."""

    config: RunConfig
    splits: Splits
    requests: tuple[GenerationRequest, ...] = ()
    imported: tuple[Sample, ...] = ()  # offline mode's pre-generated samples


@dataclass(frozen=True)
class Prepared:
    """Everything validated before the run directory is touched."""

    config: RunConfig
    splits: Splits
    model: TaskModel
    generator: Generator | None = None
    requests: tuple[GenerationRequest, ...] = ()
    imported: tuple[Sample, ...] = ()  # offline mode's pre-generated samples
    # Builds the generator afresh, as it is before any feedback: feedback.control's base
    # (the run's own generator is updated in place by dpo feedback).
    base_generator: Callable[[], Generator] | None = None


@dataclass(frozen=True)
class RunResult:
    """A finished run: its directory, its ``summary.json`` and, when the run was made (or
    resumed) by :func:`run`, every stage's ``metrics.json`` (stage 1 first)."""

    run_dir: Path
    summary: Summary
    rounds: tuple[RoundMetrics, ...] = ()


def build_model(config: RunConfig, splits: Splits) -> TaskModel:
    """A freshly initialised task model (the same weights for the same seed)."""
    return build_task_model(
        config.task,
        modality=splits.train.modality,
        num_classes=splits.train.num_classes,
        example_items=splits.train.items[:1],
        device=resolve_device(config.loop.device),
        seed=config.seed,
    )


def _check_generator_modality(config: RunConfig, splits: Splits) -> None:
    kind = config.generator.kind
    if kind == "none":
        return
    wants = generator_kind(kind).modality
    if splits.train.modality != wants:
        raise ConfigError(
            f"generator.kind={kind} makes {wants}s but data.source={config.data.source} holds "
            f"{splits.train.modality}s; pick a {splits.train.modality} generator"
        )


def plan_run(config: RunConfig, *, with_generator: bool = True) -> Plan:
    """Every check a run can make without a model, in the order a user's mistake is most
    likely: device, backend, data and its splits (k-shot against the class sizes, the
    held-out meta set against validation), the synthetic ratio, round 1's requests (shots
    against the k-shot set, prompt maps), round 1 against the budget, hard-sample inputs.
    Loads the data, never a model; writes nothing.
    """
    check_device_available(config.loop.device)
    check_backend(config)  # Ray missing or its address unreachable: fail before any write
    seed_everything(config.seed)
    data: LabelledData = load_data(config.data)
    splits = run_splits(config, data)
    ratio_caps(config, splits.train)  # a ratio that rounds to nothing fails here
    if config.loop.mode == "offline":
        plan = Plan(config, splits, imported=tuple(offline_samples(config, splits.train)))
        check_first_round_budget(config.loop.budget, projected_cost(plan, 1))
        return plan
    if not with_generator or config.generator.kind == "none":
        return Plan(config, splits)
    _check_generator_modality(config, splits)
    requests = tuple(
        static_requests(config.generator, splits=splits, seed=config.seed, round_index=1)
    )
    plan = Plan(config, splits, requests)
    check_first_round_budget(config.loop.budget, projected_cost(plan, 1))
    for _, component in active_components(config):
        component.check_plan(config, splits)
    return plan


def check_run(config: RunConfig, run_dir: str | Path) -> Plan:
    """Step 1's checks of :func:`run` that need no model: ``run_dir`` was not started with
    another config, then :func:`plan_run`. Writes nothing."""
    _check_same_config(Path(run_dir), config)
    return plan_run(config)


def prepare(config: RunConfig, *, with_generator: bool = True) -> Prepared:
    """:func:`plan_run`, then build the task model and (``with_generator``) the generator;
    raise before anything is written to the run directory."""
    plan = plan_run(config, with_generator=with_generator)
    model = build_model(config, plan.splits)
    if config.loop.mode == "offline":
        return Prepared(config, plan.splits, model, imported=plan.imported)
    if not with_generator or config.generator.kind == "none":
        return Prepared(config=config, splits=plan.splits, model=model)
    build = partial(
        build_generator,
        config.generator,
        splits=plan.splits,
        device=resolve_device(config.loop.device),
        seed=config.seed,
    )
    return Prepared(config, plan.splits, model, build(), plan.requests, base_generator=build)


def projected_cost(plan: Plan | Prepared, round_index: int) -> Cost:
    """Round ``round_index``'s projected cost: every round makes as many samples as the
    static requests do (hard-sample and optimised rounds replace, not add, requests); an
    offline round imports the pre-generated pool."""
    if plan.config.loop.mode == "offline":
        return round_cost(plan.config, round_index, len(plan.imported), 0)
    requests = plan.requests
    n_samples = sum(r.num_outputs for r in requests)
    return round_cost(plan.config, round_index, n_samples, len(requests))


def _check_same_config(run_dir: Path, config: RunConfig) -> None:
    """Refuse to resume a run directory that was started with another config."""
    path = RunLayout(run_dir).config
    if not path.exists():
        return
    old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    # Keys a later utilgen added (with their defaults) do not make a config different; one
    # that no longer validates is compared as written, and its differing keys named.
    with contextlib.suppress(ConfigError):
        old = yaml.safe_load(config_to_yaml(config_from_dict(old)))
    new = yaml.safe_load(config_to_yaml(config))
    if old != new:
        diff = sorted(_differing_keys(old, new))
        unnamed = (
            " (configs without name: all default to runs/run; give this one a name:)"
            if config.name == RunConfig.model_fields["name"].default
            else ""
        )
        raise UtilgenError(
            f"run directory {run_dir} was started with a different config "
            f"(differs at {', '.join(diff[:3])}); re-run with its config or choose a new "
            f"--out{unnamed}"
        )


def _differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return [
            k for key in keys for k in _differing_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        ]
    return [] if a == b else [prefix.rstrip(".")]


def _check_trained_classes(layout: RunLayout, splits: Splits) -> None:
    """Refuse to resume a run whose stage 1 was trained on another number of classes (the
    data gained or lost a class since), before anything is written: every later round
    loads that classifier."""
    found = list_checkpoints(layout.round(STAGE1_ROUND).checkpoints)
    if not found:
        return
    trained = read_sidecar(found[-1]).get("num_classes")
    if trained is not None and int(trained) != splits.train.num_classes:
        raise UtilgenError(
            f"run directory {layout.root} was trained on {trained} classes and the data now "
            f"has {splits.train.num_classes} ({', '.join(splits.train.class_names)}); the "
            "classes changed since, so choose a new --out"
        )


def _stage1_pool(store: PoolStore, splits: Splits) -> None:
    """Append the real samples of every split, the meta set as split ``meta`` (idempotent
    on resume)."""
    for split_name, part in split_parts(splits):
        store.append(
            samples_from_labelled(part, split=split_name, source="real", round=STAGE1_ROUND)
        )


def _train_and_evaluate(prepared: Prepared, out: Path) -> dict[str, Any]:
    """Train on the real training split, checkpoint per epoch, evaluate; returns metrics."""
    cfg, splits, model = prepared.config, prepared.splits, prepared.model
    started = time.perf_counter()
    result = trainer_on_backend(cfg)(
        model,
        splits.train,
        cfg.task,
        val=splits.val,
        checkpoint_dir=RoundLayout(out).checkpoints,
        seed=cfg.seed,
    )
    test_metrics = evaluate(model, splits.test)
    val_metrics = evaluate(model, splits.val)
    train_metrics = evaluate(model, splits.train)
    return {
        "round": STAGE1_ROUND,
        "n_train_real": len(splits.train),
        "n_train_synthetic": 0,
        "n_generated": 0,
        "generator_calls": 0,
        "n_val": len(splits.val),
        "n_test": len(splits.test),
        "n_meta": len(splits.meta) if splits.meta is not None else 0,
        "train_loss": list(result.train_loss),
        "val_accuracy_per_epoch": list(result.val_accuracy),
        "train_accuracy": train_metrics["accuracy"],
        "val_accuracy": val_metrics["accuracy"],
        "train_val_gap": train_val_gap(train_metrics["accuracy"], val_metrics["accuracy"]),
        "test": test_metrics,
        "train_seconds": round(time.perf_counter() - started, 3),
    }


def _summary(config: RunConfig, metrics: dict[str, Any], data_name: str) -> dict[str, Any]:
    """``summary.json``: the last round's test metrics, plus label fidelity when generated."""
    test = metrics["test"]
    fidelity = metrics.get("label_fidelity") or {}
    return {
        "name": config.name,
        "strategy": config.strategy,
        "dataset": data_name,
        "seed": config.seed,
        "rounds": metrics["round"] + 1,
        "generator": metrics.get("generator", ""),
        "label_fidelity": fidelity.get("overall"),
        "label_fidelity_per_class": fidelity.get("per_class", {}),
        "n_generated": metrics.get("n_generated", 0),
        "accuracy": test["accuracy"],
        "worst_class_ratio": test["worst_class_ratio"],
        "worst_class_accuracy": test["worst_class_accuracy"],
        "macro_f1": test["macro_f1"],
        "ece": test["ece"],
        "per_class_accuracy": test["per_class_accuracy"],
        "train_val_gap": metrics["train_val_gap"],
        "n_train_real": metrics["n_train_real"],
        "n_train_synthetic": metrics["n_train_synthetic"],
        "n_test": metrics["n_test"],
        "utilgen_version": __version__,
    }


def _stop_record(reason: str, finished: list[dict[str, Any]]) -> dict[str, Any]:
    """``summary.json``'s ``stop``: why the loop ended, what it spent, its best round (wall
    time stays in the rounds' metrics.json: the summary of a resumed run must equal an
    uninterrupted one's)."""
    total = spent(finished)
    val = [float(m["val_accuracy"]) for m in finished]
    return {
        "reason": reason,
        "rounds_run": len(finished) - 1,
        "synthetic_samples": total.synthetic_samples,
        "generator_calls": total.generator_calls,
        "best_val_round": int(max(range(len(val)), key=lambda i: (val[i], -i))),
    }


def _round_metrics(run_dir: Path, round_index: int) -> dict[str, Any] | None:
    """A finished round's metrics, None if it has not finished."""
    path = RunLayout(run_dir).round(round_index).metrics
    if not path.exists():
        return None
    metrics: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return metrics


def _round_context(
    prepared: Prepared, generator: Generator, run_dir: Path, round_index: int, judge: TaskModel
) -> RoundContext:
    cfg = prepared.config
    layout = RunLayout(run_dir)
    return RoundContext(
        config=cfg,
        splits=prepared.splits,
        generator=generator,
        round_index=round_index,
        out=layout.round_dir(round_index),
        previous=layout.round_dir(round_index - 1),
        judge=judge,
        new_model=lambda: build_model(cfg, prepared.splits),
    )


def _control_arm(prepared: Prepared, run_dir: Path, round_index: int) -> None:
    """``feedback.control``: round ``round_index``'s requests generated again by a freshly
    built generator (the weights before any dpo feedback), judged, and written to
    ``rounds/NNN/control.parquet`` (:mod:`utilgen.loop.control`); skipped when written."""
    from utilgen.loop.control import control_scores, write_control

    layout = RunLayout(run_dir)
    out = layout.round_dir(round_index)
    if layout.round(round_index).control.exists():
        return
    cfg = prepared.config
    if prepared.base_generator is None:
        raise UtilgenError("internal: feedback.control needs Prepared.base_generator")
    judge, judge_checkpoints = stage1_judge(
        build_model(cfg, prepared.splits), layout.round(STAGE1_ROUND).checkpoints
    )
    base = prepared.base_generator()
    # The round's own requests: its optimised or hard-sample requests are read back from
    # the files the round wrote, not planned again.
    context = _round_context(prepared, base, run_dir, round_index, judge)
    requests = round_requests(context, prepared.requests)
    frame = control_scores(
        base, requests, cfg, prepared.splits, judge, judge_checkpoints, round_index
    )
    fault_point("control.scored")
    write_control(out, frame)


def _generation_round(
    prepared: Prepared,
    generator: Generator | None,
    store: PoolStore,
    run_dir: Path,
    round_index: int,
    started: float,
) -> dict[str, Any]:
    layout = RunLayout(run_dir)
    out = layout.round_dir(round_index)
    cfg = prepared.config
    judge, judge_checkpoints = stage1_judge(
        build_model(cfg, prepared.splits), layout.round(STAGE1_ROUND).checkpoints
    )
    requests: Sequence[GenerationRequest] = ()
    optimisation = 0
    if generator is not None:
        context = _round_context(prepared, generator, run_dir, round_index, judge)
        requests = round_requests(context, prepared.requests)
        if round_index >= 2:
            optimisation = optimisation_calls(cfg, len(requests))
    student = build_model(cfg, prepared.splits)
    continued = None
    if cfg.loop.continue_training:
        # before anything is generated: a checkpoint that does not fit fails the round clean
        continued = continue_from_previous(student, layout, round_index)
    inputs = RoundInputs(cfg, prepared.splits, generator, requests, prepared.imported, optimisation)
    metrics = run_generation_round(
        inputs,
        store,
        round_index=round_index,
        judge=judge,
        judge_checkpoints=judge_checkpoints,
        student=student,
        out=out,
    )
    if continued is not None:
        metrics["continued_from"] = continued
    metrics["seconds"] = round(time.perf_counter() - started, 3)
    fault_point("round.trained")
    write_json_atomic(layout.round(round_index).metrics, metrics)
    return metrics


def _stop_reason(cfg: RunConfig, finished: list[dict[str, Any]], next_cost: Cost) -> str | None:
    """Why no further round starts (None: the next one does); ``finished`` holds stage 1's
    and every finished round's metrics, in order."""
    if len(finished) > cfg.loop.rounds:
        return MAX_ROUNDS
    if plateaued(cfg.loop.plateau, [float(m["val_accuracy"]) for m in finished]):
        return PLATEAU
    return budget_exceeded(cfg.loop.budget, spent(finished), next_cost)


def _generation_rounds(
    prepared: Prepared, store: PoolStore, run_dir: Path, stage1: dict[str, Any]
) -> tuple[list[dict[str, Any]], str]:
    """Rounds 1, 2, ... until a stopping rule fires (each skipped when finished; feedback
    between rounds). Returns stage 1's and every round's metrics, and why it stopped."""
    cfg = prepared.config
    generator = prepared.generator
    finished = [stage1]
    fed_back = 0  # rounds whose feedback the generator carries
    trainers = [c for _, c in active_components(cfg) if c.trains_generator]
    while True:
        round_index = len(finished)
        reason = _stop_reason(cfg, finished, projected_cost(prepared, round_index))
        if reason is not None:
            return finished, reason
        done = _round_metrics(run_dir, round_index)
        if done is not None:
            finished.append(done)
            continue
        started = time.perf_counter()
        if generator is None and cfg.loop.mode != "offline":
            raise UtilgenError("internal: a generation round needs prepare(with_generator=True)")
        if generator is not None and trainers:
            # Rounds 1..r-1's feedback, in order: trained once, restored on resume.
            for earlier in range(fed_back + 1, round_index):
                for component in trainers:
                    generator = component.update_generator(generator, store, cfg, run_dir, earlier)
            fed_back = round_index - 1
        finished.append(
            _generation_round(prepared, generator, store, run_dir, round_index, started)
        )


def run(
    config: RunConfig,
    run_dir: str | Path,
    prepared: Prepared | None = None,
    *,
    report: bool = True,
    repair: bool = False,
) -> RunResult:
    """Run (or resume) ``config`` in ``run_dir``; returns the final summary.

    ``report=False`` skips ``report.html`` (figures and a t-SNE: seconds per run), for
    callers that report over many runs at once, as the demo does. A damaged run directory
    (``utilgen pool verify``) is refused, or with ``repair`` repaired first
    (:mod:`utilgen.pool.repair`).

    Steps, each skipped when its output exists:
    1. check inputs (data, splits, task model) — nothing is written if this fails
    2. lock the run directory and write the resolved config
    3. stage 1: real samples into the pool
    4. stage 1: train on real data with a checkpoint per epoch, evaluate
    5. rounds 1..loop.rounds: (feedback from the previous round,) generate, filter, judge
       label fidelity and utility, retrain, evaluate
    6. ``feedback.control``: the last round's requests generated without dpo feedback
    7. summary.json, report.md and (``report``) report.html
    """
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    # 1. check inputs: first what needs no model (the run directory's config, the data, the
    # requests, the budget), then load the models
    _check_same_config(run_dir, config)
    prepared = prepared or prepare(config)
    check_run_dir(run_dir, prepared.splits, repair=repair)
    _check_trained_classes(layout, prepared.splits)
    check_same_splits(run_dir, prepared.splits)

    # 2. lock the run directory and write the resolved config
    with PoolStore.open(run_dir, writable=True) as store:
        save_config(config, layout.config)

        # 3. stage 1: real samples into the pool
        _stage1_pool(store, prepared.splits)
        fault_point("stage1.pool")

        # 4. stage 1: train on real data, evaluate
        out = layout.round_dir(STAGE1_ROUND)
        metrics_path = layout.round(STAGE1_ROUND).metrics
        if metrics_path.exists():
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        else:
            if config.loop.rounds > 0:
                # the Ray actors start and load the generator while stage 1 trains
                warm_actors(prepared.generator, config)
            metrics = _train_and_evaluate(prepared, out)
            fault_point("stage1.trained")
            write_json_atomic(metrics_path, metrics)

        # 5. generation rounds, feedback between them, until a stopping rule fires
        finished, reason = _generation_rounds(prepared, store, run_dir, metrics)

        # 6. feedback.control: the last round's requests without the dpo feedback
        if config.feedback.control and len(finished) >= 3:
            _control_arm(prepared, run_dir, len(finished) - 1)

        # 7. summary and report, written last
        summary = _summary(config, finished[-1], prepared.splits.train.name)
        summary["stop"] = _stop_record(reason, finished)
        if len(finished) >= 3:
            summary["feedback_effect"] = write_feedback_effect(run_dir, config)
        fault_point("summary.before")
        write_json_atomic(layout.summary, summary)
        write_run_report(run_dir)
        fault_point("report.before")
        if report:
            build_run_html(run_dir)
    return RunResult(
        run_dir=run_dir,
        summary=Summary.from_dict(summary),
        rounds=tuple(RoundMetrics.from_dict(m) for m in finished),
    )
