"""UtilGen's prompt-embedding ascent: conditioning that raises a sample's utility.

UtilGen's instance level (shared/papers/000, "Input-Space Policy Optimization") takes
gradient steps on a request's prompt embeddings so that the sample generated from them is
more useful to the downstream classifier, while a regulariser keeps the prompt semantically
where it was. Here, per request r with original embedding e0 (one row of the sampler's
conditioning: a class-embedding row (d,) for the built-in model, (T, D) token embeddings for
Stable Diffusion) and its fixed initial noises z_i (i over its ``num_outputs``):

    minimise over e:  L(e) = -1/n sum_i log p(y | decode(denoise(z_i, e)))  +  w * d(e, e0)

with Adam, step size ``learning_rate * RMS(e0)`` (so one setting suits embeddings of any
scale), gradients taken through the whole sampler (or its last ``backprop_steps`` steps).
After every step e is projected back inside the drift bound ``max_drift``:

* ``cosine``: d = mean over tokens of 1 - cos(e_t, e0_t); the bound holds per token, and a
  token outside it is rotated toward e0_t in the plane of the two, keeping its norm;
* ``l2``: d = ||e - e0|| / ||e0|| over the whole embedding; outside the bound, e - e0 is
  shrunk onto the bound.

Of the iterates e_0 = e0, e_1, ..., e_steps the one with the lowest L is returned (best
iterate, not last: Adam on a sampler is not monotone, and a step that overshoots must not
leave the request worse than the steps before it; with ``steps`` 0 the original embedding is
returned). Each request is optimised independently: the loss of a batch is the sum of its
requests' losses, so batching changes speed, not results.

Departure from the paper: UtilGen's regulariser is a CLIP similarity, which cannot be had
offline; the cosine or L2 distance to e0 stands in for it (config/instance.py).

The request-level helpers below (text-to-image check, batching by step count, the per-row
Adam loop with best-iterate tracking) are shared with :mod:`utilgen.feedback.noise_optimisation`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from utilgen.config import PromptAscentConfig
from utilgen.config.instance import DriftMeasure
from utilgen.feedback.errors import FeedbackError
from utilgen.feedback.utility import Utility
from utilgen.generate.differentiable import DifferentiableSampler
from utilgen.generate.request import GenerationRequest
from utilgen.progress import progress_or_nothing

log = logging.getLogger(__name__)

# Row objective: x (R, ...) -> (objective (R,), utility (R,)); lower objective is better.
RowObjective = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

_EPS = 1e-12


# 1. distances to the original embedding, and the projection onto the drift bound ----------


def _tokens(e: torch.Tensor) -> torch.Tensor:
    """Rows (R, *E) as (R, tokens, width): a (R, d) class embedding is one token."""
    return e.reshape(len(e), -1, e.shape[-1])


def embedding_rms(e: torch.Tensor) -> torch.Tensor:
    """Root mean square of each row's elements, (R,) (the unit of Adam's step size)."""
    return e.detach().reshape(len(e), -1).square().mean(dim=1).sqrt()


def embedding_distance(e: torch.Tensor, e0: torch.Tensor, measure: DriftMeasure) -> torch.Tensor:
    """The regulariser d(e, e0) per row, (R,), differentiable in ``e``.

    cosine: mean over tokens of 1 - cos(e_t, e0_t), in [0, 2]; l2: ||e - e0|| / ||e0|| over
    each row's elements (relative, unitless).
    """
    if measure == "cosine":
        return (1.0 - F.cosine_similarity(_tokens(e), _tokens(e0), dim=-1, eps=_EPS)).mean(1)
    diff = (e - e0).reshape(len(e), -1).norm(dim=1)
    return diff / e0.reshape(len(e0), -1).norm(dim=1).clamp_min(_EPS)


def embedding_drift(e: torch.Tensor, e0: torch.Tensor, measure: DriftMeasure) -> torch.Tensor:
    """The quantity ``max_drift`` bounds, per row (R,): cosine, the largest 1 - cos over a
    row's tokens; l2, ||e - e0|| / ||e0|| (the regulariser itself)."""
    if measure == "cosine":
        cos = F.cosine_similarity(_tokens(e), _tokens(e0), dim=-1, eps=_EPS)
        return (1.0 - cos).amax(dim=1)
    return embedding_distance(e, e0, "l2")


@torch.no_grad()
def project_drift(
    e: torch.Tensor, e0: torch.Tensor, measure: DriftMeasure, max_drift: float
) -> torch.Tensor:
    """``e`` moved back inside ``embedding_drift(e, e0) <= max_drift`` (rows already inside
    are returned unchanged).

    cosine: each token with 1 - cos > max_drift is rotated toward its original in the plane
    the two span, to 1 - cos = max_drift exactly, keeping its norm (a token pointing exactly
    away from its original spans no plane and is turned onto it). l2: e - e0 is scaled down
    to length ``max_drift * ||e0||``. Computed in float64 so the bound holds to float32
    rounding.
    """
    dtype = e.dtype
    x, x0 = e.double(), e0.double()
    if measure == "l2":
        diff = (x - x0).reshape(len(x), -1)
        length = diff.norm(dim=1)
        limit = max_drift * x0.reshape(len(x0), -1).norm(dim=1)
        scale = torch.where(length > limit, limit / length.clamp_min(_EPS), torch.ones_like(length))
        return (x0 + (diff * scale[:, None]).reshape(x.shape)).to(dtype)
    t, t0 = _tokens(x), _tokens(x0)
    unit = t0 / t0.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    along = (t * unit).sum(-1, keepdim=True)
    perp = t - along * unit
    norm = t.norm(dim=-1, keepdim=True)
    cos = along / norm.clamp_min(_EPS)
    target = max(1.0 - max_drift, -1.0)
    outside = cos < target
    perp_norm = perp.norm(dim=-1, keepdim=True)
    # The rotated token: |e_t| (c u + s w), w the unit direction of e_t's part orthogonal to u.
    s = math.sqrt(max(0.0, 1.0 - target * target))
    rotated = norm * (target * unit + s * perp / perp_norm.clamp_min(_EPS))
    onto = norm * unit  # for a token with no orthogonal part (exactly opposite its original)
    fixed = torch.where(perp_norm > _EPS * norm.clamp_min(1.0), rotated, onto)
    return torch.where(outside, fixed, t).reshape(x.shape).to(dtype)


# 2. requests: what the optimisers accept, and how they are batched -------------------------


def check_text_to_image(requests: Sequence[GenerationRequest], component: str) -> None:
    """Raise a one-line :class:`FeedbackError` for an img2img request (``init_image`` set):
    prompt ascent and noise optimisation run the text-to-image sampler."""
    for request in requests:
        if request.init_image is not None:
            raise FeedbackError(
                f"{component} optimises text-to-image requests only, but the request for class "
                f"{request.class_name!r} (seed {request.seed}) has an init_image (img2img); "
                f"switch {component} off for img2img requests such as hard_samples'"
            )


def request_settings(
    sampler: DifferentiableSampler, request: GenerationRequest
) -> tuple[float, int]:
    """(guidance, steps) of ``request``, the sampler's defaults filled in."""
    guidance = sampler.guidance_scale if request.guidance_scale is None else request.guidance_scale
    steps = sampler.steps if request.num_inference_steps is None else request.num_inference_steps
    return float(guidance), int(steps)


def request_batches(
    sampler: DifferentiableSampler, requests: Sequence[GenerationRequest], batch_size: int
) -> Iterator[list[GenerationRequest]]:
    """Consecutive requests, at most ``batch_size`` at a time, that share their step count
    (one denoising schedule per batch)."""
    batch: list[GenerationRequest] = []
    for request in requests:
        if batch and (
            len(batch) == batch_size
            or request_settings(sampler, request)[1] != request_settings(sampler, batch[0])[1]
        ):
            yield batch
            batch = []
        batch.append(request)
    if batch:
        yield batch


@dataclass(frozen=True)
class BatchOutputs:
    """The outputs of a batch of requests, flattened.

    Attributes:
        owner: (N,) index of each output's request in the batch.
        counts: (R,) outputs per request.
        noise: (N, *noise_shape) each output's initial noise.
        labels: (N,) each output's class.
        guidance: (N,) each output's request guidance.
        steps: the batch's denoising steps.
    """

    owner: torch.Tensor
    counts: torch.Tensor
    noise: torch.Tensor
    labels: torch.Tensor
    guidance: torch.Tensor
    steps: int


def batch_outputs(
    sampler: DifferentiableSampler, batch: Sequence[GenerationRequest]
) -> BatchOutputs:
    """The flattened outputs of ``batch`` (all sharing one step count)."""
    device = sampler.device
    counts = torch.tensor([r.num_outputs for r in batch], device=device)
    owner = torch.repeat_interleave(torch.arange(len(batch), device=device), counts)
    noise = torch.cat([sampler.initial_noise(r) for r in batch]).to(device)
    labels = torch.tensor([r.label for r in batch], device=device)[owner]
    settings = [request_settings(sampler, r) for r in batch]
    guidance = torch.tensor([g for g, _ in settings], device=device)[owner]
    return BatchOutputs(owner, counts, noise, labels, guidance, settings[0][1])


def per_request_mean(values: torch.Tensor, outputs: BatchOutputs) -> torch.Tensor:
    """Mean of per-output ``values`` (N,) over each request's outputs, (R,)."""
    total = torch.zeros(len(outputs.counts), dtype=values.dtype, device=values.device)
    return total.index_add(0, outputs.owner, values) / outputs.counts.to(values.dtype)


# 3. the optimiser: Adam per row, best iterate kept ----------------------------------------


@dataclass(frozen=True)
class RowMinimum:
    """Where :func:`minimise_rows` ended.

    Attributes:
        best: (R, ...) each row's iterate with the lowest objective (detached).
        best_step: (R,) at which step it was reached (0: the start).
        objective_start, utility_start: (R,) objective and utility at the start.
        objective_best, utility_best: (R,) objective and utility at ``best``.
    """

    best: torch.Tensor
    best_step: torch.Tensor
    objective_start: torch.Tensor
    utility_start: torch.Tensor
    objective_best: torch.Tensor
    utility_best: torch.Tensor


def minimise_rows(
    start: torch.Tensor,
    objective: RowObjective,
    *,
    steps: int,
    learning_rates: Sequence[float],
    project: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> RowMinimum:
    """Minimise ``objective`` row by row from ``start`` (R, ...) with ``steps`` Adam steps.

    Each row is its own parameter with its own step size (``learning_rates``, R of them); the
    gradient of the summed objective reaches each row from its own objective only, taken with
    ``torch.autograd.grad`` so that no model weight collects a ``.grad``. ``project`` maps
    the stacked rows back into the feasible set after every step. The objective is evaluated
    at all ``steps + 1`` iterates (the last without a graph) and each row's best is kept.
    """
    rows = [row[None].clone().requires_grad_(True) for row in start.detach()]
    optimiser = torch.optim.Adam(
        [{"params": [row], "lr": float(lr)} for row, lr in zip(rows, learning_rates, strict=True)]
    )
    best = start.detach().clone()
    best_step = torch.zeros(len(rows), dtype=torch.long, device=start.device)
    for step in range(steps + 1):
        with torch.set_grad_enabled(step < steps):
            x = torch.cat(rows)
            value, utility = objective(x)
        if step == 0:
            objective_start, utility_start = value.detach(), utility.detach()
            objective_best, utility_best = objective_start.clone(), utility_start.clone()
        else:
            # NaN never compares lower: a diverged iterate is never kept.
            better = value.detach() < objective_best
            best[better] = x.detach()[better]
            best_step[better] = step
            objective_best = torch.where(better, value.detach(), objective_best)
            utility_best = torch.where(better, utility.detach(), utility_best)
        if step == steps:
            break
        grads = torch.autograd.grad(value.sum(), rows)
        for row, grad in zip(rows, grads, strict=True):
            row.grad = grad
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        if project is not None:
            with torch.no_grad():
                projected = project(torch.cat(rows))
                for row, new in zip(rows, projected, strict=True):
                    row.copy_(new[None])
    return RowMinimum(
        best=best,
        best_step=best_step,
        objective_start=objective_start,
        utility_start=utility_start,
        objective_best=objective_best,
        utility_best=utility_best,
    )


# 4. prompt-embedding ascent -----------------------------------------------------------------


@dataclass(frozen=True)
class AscentResult:
    """Requests with optimised prompt embeddings, and what the ascent achieved.

    Attributes:
        requests: the input requests in order, each with ``prompt_embeds`` (1, *E) set to its
            best embedding, ``guidance_scale`` and ``num_inference_steps`` set to the values
            used, and ``metadata["prompt_ascent"]`` recording the run.
        drift: per request, the bounded drift of the returned embedding (cosine: largest
            per-token 1 - cos; l2: relative distance); <= ``max_drift``, and exactly 0 for a
            request returned with its original embedding (``best_step`` 0).
        utility_before: per request, mean utility (log p(y|x), nats <= 0; or the meta
            weight, in (0, 1)) of its outputs from the original embedding, on the float
            samples.
        utility_after: the same from the returned embedding.
        best_step: per request, the Adam step of the returned embedding (0: the original).
    """

    requests: tuple[GenerationRequest, ...]
    drift: tuple[float, ...]
    utility_before: tuple[float, ...]
    utility_after: tuple[float, ...]
    best_step: tuple[int, ...]


def _ascent_objective(
    sampler: DifferentiableSampler,
    utility: Utility,
    cfg: PromptAscentConfig,
    e0: torch.Tensor,
    null: torch.Tensor,
    outputs: BatchOutputs,
) -> RowObjective:
    """e (R, *E) -> (-mean log p(y|x) + w * d(e, e0), mean log p(y|x)) per request."""
    null_rows = null[outputs.owner]

    def objective(e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        clean = sampler.denoise(
            outputs.noise,
            e[outputs.owner],
            null_rows,
            guidance=outputs.guidance,
            steps=outputs.steps,
            backprop_steps=cfg.backprop_steps,
            checkpointing=cfg.gradient_checkpointing,
        )
        logp = per_request_mean(utility(sampler.decode(clean), outputs.labels).float(), outputs)
        distance = embedding_distance(e, e0, cfg.regulariser)
        return -logp + cfg.regulariser_weight * distance, logp

    return objective


def ascend_prompts(
    sampler: DifferentiableSampler,
    utility: Utility,
    requests: Sequence[GenerationRequest],
    cfg: PromptAscentConfig,
    *,
    progress: bool = True,
) -> AscentResult:
    """UtilGen's prompt-embedding ascent on every request (see the module docstring).

    One embedding per request: all its outputs share it and the utility term is averaged
    over them. Requests are optimised ``cfg.batch_size`` at a time.

    Raises:
        FeedbackError: a request is img2img.
    """
    # 1. check inputs
    requests = list(requests)
    check_text_to_image(requests, "prompt_ascent")
    out: list[GenerationRequest] = []
    drift: list[float] = []
    before: list[float] = []
    after: list[float] = []
    best_steps: list[int] = []
    with progress_or_nothing("prompt ascent", len(requests), progress) as advance:
        for batch in request_batches(sampler, requests, cfg.batch_size):
            # 2. the original embeddings e0 (one row per request) and the outputs' noise
            e0, null = sampler.conditioning(batch)
            outputs = batch_outputs(sampler, batch)

            # 3. ascend: minimise -mean log p(y|x) + w * d(e, e0) inside the drift bound
            found = minimise_rows(
                e0,
                _ascent_objective(sampler, utility, cfg, e0, null, outputs),
                steps=cfg.steps,
                learning_rates=(cfg.learning_rate * embedding_rms(e0)).tolist(),
                project=functools.partial(
                    project_drift, e0=e0, measure=cfg.regulariser, max_drift=cfg.max_drift
                ),
            )

            # 4. the optimised requests, with what was done recorded as provenance. A request
            # whose best iterate is its start (always so with steps 0) gets a copy of e0 back
            # and drift 0 by construction: 1 - cos(e0, e0) itself can round to 1e-7 in float32,
            # on some CPUs and not on others.
            moved = torch.where(
                found.best_step > 0, embedding_drift(found.best, e0, cfg.regulariser), 0.0
            ).tolist()
            start, best = found.utility_start.tolist(), found.utility_best.tolist()
            steps_taken = found.best_step.tolist()
            for i, request in enumerate(batch):
                guidance, steps = request_settings(sampler, request)
                record = {
                    "steps": cfg.steps,
                    "best_step": steps_taken[i],
                    "learning_rate": cfg.learning_rate,
                    "regulariser": cfg.regulariser,
                    "regulariser_weight": cfg.regulariser_weight,
                    "max_drift": cfg.max_drift,
                    "backprop_steps": cfg.backprop_steps,
                    "drift": moved[i],
                    "utility_before": start[i],
                    "utility_after": best[i],
                }
                out.append(
                    dataclasses.replace(
                        request,
                        prompt_embeds=found.best[i : i + 1].detach().cpu().clone(),
                        guidance_scale=guidance,
                        num_inference_steps=steps,
                        metadata={**request.metadata, "prompt_ascent": record},
                    )
                )
            drift += moved
            before += start
            after += best
            best_steps += steps_taken
            advance(len(batch))
    if requests:
        log.info(
            "prompt ascent: %d requests, mean utility %.4f -> %.4f, largest %s drift %.4g "
            "(bound %.4g)",
            len(requests),
            sum(before) / len(before),
            sum(after) / len(after),
            cfg.regulariser,
            max(drift),
            cfg.max_drift,
        )
    return AscentResult(
        requests=tuple(out),
        drift=tuple(drift),
        utility_before=tuple(before),
        utility_after=tuple(after),
        best_step=tuple(best_steps),
    )
