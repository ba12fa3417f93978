"""``utilgen run --dry-run``: what a run would do, from its checked plan, without doing it.

The plan (:func:`utilgen.loop.run.plan_run`) has loaded the data and made round 1's requests;
no model is loaded and nothing is written. The text projects every round's samples and
generator calls with the same cost model the budgets use, so the rounds it lists are the
rounds the budgets allow (a plateau may still stop the run earlier).
"""

from __future__ import annotations

from pathlib import Path

from utilgen.config import RunConfig
from utilgen.feedback.component import active_components
from utilgen.loop.run import Plan, projected_cost
from utilgen.loop.stopping import Cost, budget_exceeded
from utilgen.pool.layout import RunLayout, round_name

STAGE1 = "round 0 (stage 1)"


def _data_line(plan: Plan) -> str:
    splits, data = plan.splits, plan.config.data
    shots = "all" if data.k_shot in (None, "all") else f"{data.k_shot} a class"
    line = (
        f"data: {splits.train.name}, {splits.train.num_classes} classes, {splits.train.modality}; "
        f"train {len(splits.train)} (k_shot {shots}), val {len(splits.val)}, "
        f"test {len(splits.test)}"
    )
    if splits.meta is not None:
        per_class = plan.config.valuation.meta_weight.meta_per_class
        line += (
            f", meta {len(splits.meta)} ({per_class} a class reserved from validation for "
            "meta_weight's meta set)"
        )
    elif "meta_weight" in plan.config.valuation.scores:
        line += "; meta_weight's meta set is drawn from train (meta_set: train, leaky)"
    return line


def _feedback_lines(config: RunConfig, n_requests: int) -> list[str]:
    """What each feedback component does between two rounds, with its step counts."""
    return [c.describe(config, n_requests) for _, c in active_components(config)]


def _round_lines(plan: Plan) -> tuple[list[str], int]:
    """One line per round the budgets pay for, feedback between them; and the last round."""
    config = plan.config
    vog = ""
    if "vog" in config.valuation.scores:
        epochs = config.valuation.vog_epochs(config.task.epochs)  # checked by the config
        vog = f"; VoG reads epochs {', '.join(map(str, epochs))}"
    lines = [
        f"{STAGE1}: train {config.task.model} on {len(plan.splits.train)} real samples "
        f"({config.task.epochs} epochs, a checkpoint each{vog})"
    ]
    spent, last = Cost(), 0
    for r in range(1, config.loop.rounds + 1):
        cost = projected_cost(plan, r)
        over = budget_exceeded(config.loop.budget, spent, cost)
        if over is not None:
            lines.append(f"round {r}: not run, it would exceed {over}")
            break
        if r >= 2:
            lines += [f"  feedback: {line}" for line in _feedback_lines(config, len(plan.requests))]
        made = "imports" if config.loop.mode == "offline" else "generates"
        lines.append(
            f"round {r}: {made} {cost.synthetic_samples} samples "
            f"({cost.generator_calls} generator calls), values them "
            f"({', '.join(config.valuation.scores)}), trains a fresh {config.task.model} on "
            "real + kept synthetic samples"
        )
        spent, last = spent + cost, r
    if config.loop.plateau.patience is not None:
        lines.append(f"(a plateau of {config.loop.plateau.patience} round(s) may stop it sooner)")
    return lines, last


def _written(config: RunConfig, run_dir: Path, last: int) -> list[str]:
    layout = RunLayout(run_dir)
    first, final = round_name(0), round_name(last)
    names = [
        f"{layout.config} (the resolved config) and {layout.lock} while it runs",
        f"{layout.manifest} and pool/blobs/ (real and synthetic samples)",
        f"{layout.rounds_dir}/{first}..{final}/ (metrics.json, checkpoints/, scores and "
        "feedback files)",
        f"{layout.summary}, report.md, report.html",
    ]
    if last >= 2:
        names.append(f"{layout.feedback_effect} and its plot")
    if config.feedback.control and last >= 2:
        names.append(f"{layout.round(last).control} (the control arm)")
    return names


def describe_plan(plan: Plan, run_dir: Path) -> str:
    """The dry run's text: config, data, rounds with their costs and feedback, and the
    files the run would write (its directory is not created)."""
    config = plan.config
    gen = config.generator
    head = [
        f"config {config.name} (strategy {config.strategy}, seed {config.seed}) is valid "
        "against its data (no model was loaded, nothing was written)",
        _data_line(plan),
    ]
    if gen.kind != "none":
        head.append(
            f"generator: {gen.kind}, {gen.per_class} a class a round, "
            f"{len(plan.requests)} requests in round 1"
        )
        if gen.real_init.enabled:
            head.append(
                f"  static requests: img2img around {gen.real_init.k} random real training "
                f"samples a class, strengths {gen.real_init.strengths}"
            )
    rounds, last = _round_lines(plan)
    resumes = RunLayout(run_dir).config.exists()
    where = f"run directory: {run_dir} ({'resumed' if resumes else 'new'})"
    written = ["writes:", *[f"  {line}" for line in _written(config, run_dir, last)]]
    return "\n".join([*head, where, *rounds, *written])
