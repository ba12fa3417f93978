"""The requests of a generation round: the static class prompts, shaped by the switched-on
feedback components from round 2 on.

Round 1 always generates the static requests (it is the unoptimised baseline that the
feedback effect is measured against). From round 2 on, in the registry's order
(:mod:`utilgen.feedback.component`):

* a component that *makes* requests (``hard_samples``: img2img around the k lowest-marginal
  real training samples per class, GenDataAgent) replaces the static requests; it keeps
  what they depend on in the round's directory (``rounds/NNN/hard_samples.json``);
* components that *optimise* requests (``prompt_ascent``, ``noise_opt``: UtilGen's instance
  level) run one after the other on the round's static requests, with one utility
  (``feedback.instance.utility``: ``utility_model``'s log p(y|x), or the meta-weight
  utility with the weight net round r-1's valuation saved) and one differentiable sampler;
  the result, each request's metadata naming the utility (``instance_utility``), is written
  to ``rounds/NNN/instance_requests.{json,safetensors}``.

A resumed round reads those files instead of recomputing them, so it issues the very same
requests (their keys, hence the sample ids, hash the optimised tensors).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from utilgen.faults import fault_point
from utilgen.feedback.component import FeedbackComponent, RoundContext, active_components
from utilgen.generate import GenerationRequest
from utilgen.generate.factory import static_requests
from utilgen.pool import RoundLayout

log = logging.getLogger(__name__)

__all__ = ["RoundContext", "round_requests"]


def round_requests(
    ctx: RoundContext, first_round: Sequence[GenerationRequest] = ()
) -> list[GenerationRequest]:
    """The requests round ``ctx.round_index`` generates (see the module docstring).

    ``first_round``: round 1's static requests when already built (``prepare`` builds them
    to check the inputs), reused instead of rebuilt.
    """
    cfg, r = ctx.config, ctx.round_index
    components = [c for _, c in active_components(cfg)]
    makers = [c for c in components if c.makes_requests]
    if r >= 2 and makers:
        return makers[0].make_requests(ctx)
    if r == 1 and first_round:
        requests = list(first_round)
    else:
        requests = static_requests(cfg.generator, splits=ctx.splits, seed=cfg.seed, round_index=r)
    optimisers = [c for c in components if c.optimises_requests]
    if r == 1 or not optimisers:
        return requests
    return _optimised_requests(ctx, requests, optimisers)


def _optimised_requests(
    ctx: RoundContext, requests: list[GenerationRequest], optimisers: list[FeedbackComponent]
) -> list[GenerationRequest]:
    from utilgen.feedback.utility import round_utility
    from utilgen.generate.differentiable import differentiable_sampler
    from utilgen.generate.request_io import read_requests, write_requests

    path = RoundLayout(ctx.out).instance_requests
    if path.with_suffix(".json").exists():
        log.info("round %d: optimised requests read from %s", ctx.round_index, path)
        return read_requests(path)
    utility = round_utility(ctx)
    sampler = differentiable_sampler(ctx.generator)
    for optimiser in optimisers:
        requests = optimiser.optimise_requests(ctx, requests, utility, sampler)
    requests = [
        dataclasses.replace(r, metadata={**r.metadata, "instance_utility": utility.name})
        for r in requests
    ]
    fault_point("policy.planned")
    write_requests(path, requests)
    return requests
