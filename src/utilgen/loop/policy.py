"""The requests of a generation round: the static class prompts, shaped by instance-level
feedback from round 2 on.

Round 1 always generates the static requests (it is the unoptimised baseline that the
feedback effect is measured against). From round 2 on:

* ``hard_samples``: img2img requests around the k lowest-marginal real training samples per
  class (GenDataAgent), the parents and their perturbed captions written to
  ``rounds/NNN/hard_samples.json`` before anything is generated;
* ``prompt_ascent`` and / or ``noise_opt``: the round's static requests with optimised prompt
  embeddings and / or initial noise (UtilGen), in that order, written to
  ``rounds/NNN/instance_requests.{json,safetensors}``.

A resumed round reads those files instead of recomputing them, so it issues the very same
requests (their keys, hence the sample ids, hash the optimised tensors).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from utilgen.config import RunConfig
from utilgen.data import Splits
from utilgen.errors import UtilgenError
from utilgen.faults import fault_point
from utilgen.generate import GenerationRequest, Generator
from utilgen.generate.factory import static_requests
from utilgen.pool import RoundLayout
from utilgen.task import TaskModel
from utilgen.task.checkpoint import list_checkpoints, load_checkpoint

log = logging.getLogger(__name__)

OPTIMISERS = ("prompt_ascent", "noise_opt")


@dataclass(frozen=True)
class RoundContext:
    """What a round's policy may read.

    Attributes:
        out: ``rounds/NNN`` of the round being generated.
        previous: ``rounds/NNN`` of the round before it (its checkpoints are the student's).
        judge: the stage-1 real-data classifier, last checkpoint loaded.
        new_model: a freshly initialised task model (same seed as stage 1).
    """

    config: RunConfig
    splits: Splits
    generator: Generator
    round_index: int
    out: Path
    previous: Path
    judge: TaskModel
    new_model: Callable[[], TaskModel]


def _scorer(ctx: RoundContext, which: str) -> TaskModel:
    """The judge, or the student: the classifier trained in the previous round."""
    if which == "judge":
        return ctx.judge
    previous = RoundLayout(ctx.previous)
    found = list_checkpoints(previous.checkpoints)
    if not found:
        raise UtilgenError(
            f"no checkpoint in {previous.checkpoints}; delete {previous.metrics} and re-run "
            "to retrain that round"
        )
    model = ctx.new_model()
    load_checkpoint(model, found[-1])
    return model


def round_requests(
    ctx: RoundContext, first_round: Sequence[GenerationRequest] = ()
) -> list[GenerationRequest]:
    """The requests round ``ctx.round_index`` generates (see the module docstring).

    ``first_round``: round 1's static requests when already built (``prepare`` builds them
    to check the inputs), reused instead of rebuilt.
    """
    cfg, r = ctx.config, ctx.round_index
    components = cfg.feedback.components
    if r >= 2 and "hard_samples" in components:
        return _hard_sample_requests(ctx)
    if r == 1 and first_round:
        requests = list(first_round)
    else:
        requests = static_requests(cfg.generator, splits=ctx.splits, seed=cfg.seed, round_index=r)
    if r == 1 or not any(c in components for c in OPTIMISERS):
        return requests
    return _optimised_requests(ctx, requests)


def _optimised_requests(
    ctx: RoundContext, requests: list[GenerationRequest]
) -> list[GenerationRequest]:
    from utilgen.feedback.noise_optimisation import optimise_noise
    from utilgen.feedback.prompt_ascent import ascend_prompts
    from utilgen.feedback.utility import LogProbUtility
    from utilgen.generate.differentiable import differentiable_sampler
    from utilgen.generate.request_io import read_requests, write_requests

    path = RoundLayout(ctx.out).instance_requests
    if path.with_suffix(".json").exists():
        log.info("round %d: optimised requests read from %s", ctx.round_index, path)
        return read_requests(path)
    feedback = ctx.config.feedback
    utility = LogProbUtility(_scorer(ctx, feedback.instance.utility_model))
    sampler = differentiable_sampler(ctx.generator)
    if "prompt_ascent" in feedback.components:
        requests = list(ascend_prompts(sampler, utility, requests, feedback.prompt_ascent).requests)
    if "noise_opt" in feedback.components:
        requests = list(optimise_noise(sampler, utility, requests, feedback.noise_opt).requests)
    fault_point("policy.planned")
    write_requests(path, requests)
    return requests


def _hard_sample_requests(ctx: RoundContext) -> list[GenerationRequest]:
    from utilgen.feedback.hard_samples import (
        hard_parents,
        hard_sample_requests,
        perturbed_parent_captions,
        read_hard_sample_plan,
        write_hard_sample_plan,
    )

    cfg = ctx.config
    hs = cfg.feedback.hard_samples
    plan = RoundLayout(ctx.out).hard_sample_plan
    if plan.exists():
        parents, prompts = read_hard_sample_plan(plan)
    else:
        parents = hard_parents(_scorer(ctx, hs.scorer), ctx.splits.train, hs.k)
        prompts = None
        if hs.captions:
            from utilgen.determinism import resolve_device
            from utilgen.generate.causal_lm import CausalLMGenerator
            from utilgen.generate.prompts import captions_for

            table = captions_for(cfg.generator.diffusers, ctx.splits.train)
            if table is None:
                raise UtilgenError(
                    "feedback.hard_samples.captions found no captions; set "
                    "generator.diffusers.captions_file or generator.diffusers.captioner"
                )
            lm = CausalLMGenerator.from_config(
                cfg.generator.lm,
                device=resolve_device(cfg.loop.device),
                batch_size=cfg.generator.batch_size,
                seed=cfg.seed,
            )
            prompts = perturbed_parent_captions(
                lm,
                parents,
                table,
                cfg.generator.perturbation,
                diffusers=cfg.generator.diffusers,
                class_names=ctx.splits.train.class_names,
                seed=cfg.seed,
                round_index=ctx.round_index,
            )
        write_hard_sample_plan(plan, parents, prompts)
    return hard_sample_requests(
        parents,
        ctx.splits.train,
        cfg=hs,
        generator=cfg.generator,
        per_class=cfg.generator.per_class,
        seed=cfg.seed,
        round_index=ctx.round_index,
        captions=prompts,
    )
