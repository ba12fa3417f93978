"""UtilGen's initial-noise optimisation: invert a sample with asymmetric CFG, optimise its noise.

UtilGen's instance level (shared/papers/000, "Input-Space Policy Optimization") also tunes a
sample's initial noise: the sample is DDIM-inverted to its noise with one classifier-free
guidance scale and regenerated with another (asymmetric CFG), which injects the class's
semantics into the noise, and the noise is then optimised for utility. Per output i of a
request (label y, conditioning c, guidance g, steps S, initial noise z_i):

1. x_i = denoise(z_i, c, g): the sample the request gives as it is;
2. z0_i = invert(x_i, c, ``inversion_guidance``, S): DDIM inversion (with
   ``inversion_fixed_point`` refinements per step), the noise of x_i as seen at the
   inversion guidance;
3. minimise over z, from z0_i, with Adam (step ``learning_rate``):

       L(z) = -log p(y | decode(denoise(z, c, g_regen, S)))  +  w * penalty(z)

   where g_regen is ``regeneration_guidance`` (None: the generator's default) and the
   penalty keeps z a plausible draw of N(0, I) (the sampler was trained on nothing else):
   ``kl``, KL(N(m, v) || N(0, 1)) of the Gaussian fitted to z's D elements,
   0.5 (v + m^2 - 1 - log v); ``norm``, (||z||^2 / D - 1)^2;
4. the iterate with the lowest L (z0_i itself included, so ``steps`` 0 returns the inverted
   noise) becomes the request's ``latents``, regenerated at g_regen.

Outputs are optimised independently (each its own Adam parameter; the loss of a batch is
the sum of its outputs' losses).

Gradients must reach the initial noise through every denoising step, so truncated
backpropagation (``backprop_steps``) cannot be used here and is refused; gradient
checkpointing bounds the memory instead.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from utilgen.config import NoiseOptimisationConfig
from utilgen.config.instance import NoisePenalty
from utilgen.feedback.prompt_ascent import (
    BatchOutputs,
    RowObjective,
    batch_outputs,
    check_text_to_image,
    minimise_rows,
    per_request_mean,
    request_batches,
    request_settings,
)
from utilgen.feedback.utility import Utility
from utilgen.generate.differentiable import DifferentiableSampler
from utilgen.generate.request import GenerationRequest
from utilgen.progress import progress_or_nothing

log = logging.getLogger(__name__)


# 1. penalties that keep the noise Gaussian ------------------------------------------------


def kl_penalty(z: torch.Tensor) -> torch.Tensor:
    """KL(N(m, v) || N(0, 1)) per row of ``z`` (n, ...), (n,), in nats: m and v are the mean
    and (population) variance of the row's elements, so the KL is 0.5 (v + m^2 - 1 - log v),
    zero exactly when they are 0 and 1."""
    flat = z.reshape(len(z), -1)
    mean = flat.mean(dim=1)
    var = flat.var(dim=1, unbiased=False)
    return 0.5 * (var + mean.square() - 1.0 - var.log())


def norm_penalty(z: torch.Tensor) -> torch.Tensor:
    """(||z||^2 / D - 1)^2 per row of ``z`` (n, ...), (n,): zero when the row has the squared
    norm D that a standard normal vector of D elements has on average."""
    flat = z.reshape(len(z), -1)
    return (flat.square().sum(dim=1) / flat.shape[1] - 1.0).square()


def noise_penalty(z: torch.Tensor, kind: NoisePenalty) -> torch.Tensor:
    """The configured penalty (``kl`` or ``norm``) per row of ``z``, (n,)."""
    return kl_penalty(z) if kind == "kl" else norm_penalty(z)


# 2. checks ----------------------------------------------------------------------------------


def regeneration_guidance(sampler: DifferentiableSampler, cfg: NoiseOptimisationConfig) -> float:
    """The guidance the optimised noise is regenerated with (None: the sampler's default)."""
    if cfg.regeneration_guidance is None:
        return float(sampler.guidance_scale)
    return float(cfg.regeneration_guidance)


# 3. the optimiser ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NoiseResult:
    """Requests with optimised initial noise, and what the optimisation achieved.

    Attributes:
        requests: the input requests in order, each with ``latents`` (num_outputs,
            *noise_shape) set to its outputs' best noise, ``guidance_scale`` the regeneration
            guidance, ``num_inference_steps`` the steps used, and ``metadata["noise_opt"]``
            recording the run.
        utility_before: per request, mean utility (log p(y|x), nats <= 0; or the meta
            weight, in (0, 1)) of the samples the request gave as it was, on the float
            samples.
        utility_inverted: the same for the inverted noise regenerated at the regeneration
            guidance (what asymmetric CFG alone gives).
        utility_after: the same for the returned noise.
        penalty_inverted, penalty_after: per request, mean penalty of the inverted and of the
            returned noise (nats for kl).
    """

    requests: tuple[GenerationRequest, ...]
    utility_before: tuple[float, ...]
    utility_inverted: tuple[float, ...]
    utility_after: tuple[float, ...]
    penalty_inverted: tuple[float, ...]
    penalty_after: tuple[float, ...]


def _noise_objective(
    sampler: DifferentiableSampler,
    utility: Utility,
    cfg: NoiseOptimisationConfig,
    cond_rows: torch.Tensor,
    null_rows: torch.Tensor,
    guidance: float,
    outputs: BatchOutputs,
) -> RowObjective:
    """z (N, *noise_shape) -> (-log p(y|x) + w * penalty(z), log p(y|x)) per output, x
    regenerated from z at ``guidance``."""
    scales = torch.full((len(outputs.owner),), guidance, device=sampler.device)

    def objective(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        clean = sampler.denoise(
            z,
            cond_rows,
            null_rows,
            guidance=scales,
            steps=outputs.steps,
            checkpointing=cfg.gradient_checkpointing,
        )
        logp = utility(sampler.decode(clean), outputs.labels).float()
        return -logp + cfg.penalty_weight * noise_penalty(z, cfg.penalty), logp

    return objective


def _optimise_batch(
    sampler: DifferentiableSampler,
    utility: Utility,
    batch: Sequence[GenerationRequest],
    cfg: NoiseOptimisationConfig,
    g_regen: float,
) -> tuple[list[GenerationRequest], dict[str, list[float]]]:
    """Steps 2 to 5 of :func:`optimise_noise` for one batch of requests: the optimised
    requests, in order, and per request the mean of ``before``, ``inverted``, ``after``
    (log p(y|x)), ``penalty_inverted`` and ``penalty_after``."""
    cond, null = sampler.conditioning(batch)
    outputs = batch_outputs(sampler, batch)
    n = len(outputs.owner)
    cond_rows, null_rows = cond[outputs.owner], null[outputs.owner]

    # 2. the samples as requested, and their utility
    with torch.no_grad():
        clean = sampler.denoise(
            outputs.noise,
            cond_rows,
            null_rows,
            guidance=outputs.guidance,
            steps=outputs.steps,
        )
        original = utility(sampler.decode(clean), outputs.labels).float()

    # 3. DDIM inversion at the inversion guidance
    z0 = sampler.invert(
        clean,
        cond_rows,
        null_rows,
        guidance=torch.full((n,), cfg.inversion_guidance, device=sampler.device),
        steps=outputs.steps,
        fixed_point=cfg.inversion_fixed_point,
    )

    # 4. optimise the noise for utility at the regeneration guidance
    objective = _noise_objective(sampler, utility, cfg, cond_rows, null_rows, g_regen, outputs)
    found = minimise_rows(z0, objective, steps=cfg.steps, learning_rates=[cfg.learning_rate] * n)

    # 5. the optimised requests, with what was done recorded as provenance
    penalty0 = noise_penalty(z0, cfg.penalty)
    penalty1 = noise_penalty(found.best, cfg.penalty)
    means = {
        name: per_request_mean(values, outputs).tolist()
        for name, values in (
            ("before", original),
            ("inverted", found.utility_start),
            ("after", found.utility_best),
            ("penalty_inverted", penalty0),
            ("penalty_after", penalty1),
        )
    }
    out: list[GenerationRequest] = []
    for i, request in enumerate(batch):
        mine = (outputs.owner == i).nonzero().flatten()
        _, steps = request_settings(sampler, request)
        record = {
            "steps": cfg.steps,
            "best_step": found.best_step[mine].tolist(),
            "learning_rate": cfg.learning_rate,
            "inversion_guidance": cfg.inversion_guidance,
            "inversion_fixed_point": cfg.inversion_fixed_point,
            "regeneration_guidance": g_regen,
            "request_guidance": float(outputs.guidance[mine[0]]),
            "penalty": cfg.penalty,
            "penalty_weight": cfg.penalty_weight,
            "penalty_inverted": means["penalty_inverted"][i],
            "penalty_after": means["penalty_after"][i],
            "utility_before": means["before"][i],
            "utility_inverted": means["inverted"][i],
            "utility_after": means["after"][i],
        }
        out.append(
            dataclasses.replace(
                request,
                latents=found.best[mine].detach().cpu().clone(),
                guidance_scale=g_regen,
                num_inference_steps=steps,
                metadata={**request.metadata, "noise_opt": record},
            )
        )
    return out, means


def optimise_noise(
    sampler: DifferentiableSampler,
    utility: Utility,
    requests: Sequence[GenerationRequest],
    cfg: NoiseOptimisationConfig,
    *,
    progress: bool = True,
) -> NoiseResult:
    """UtilGen's initial-noise optimisation on every output of every request (see the module
    docstring). Requests are processed ``cfg.batch_size`` at a time.

    Raises:
        FeedbackError: a request is img2img (``backprop_steps``, which cannot work here, is
            refused by the config).
    """
    # 1. check inputs
    requests = list(requests)
    check_text_to_image(requests, "noise_opt")
    g_regen = regeneration_guidance(sampler, cfg)
    if g_regen == cfg.inversion_guidance:
        log.info(
            "noise optimisation: inversion and regeneration guidance are both %g (symmetric "
            "CFG): the inverted noise regenerates the sample itself",
            g_regen,
        )
    out: list[GenerationRequest] = []
    before: list[float] = []
    inverted: list[float] = []
    after: list[float] = []
    pen_inverted: list[float] = []
    pen_after: list[float] = []
    with progress_or_nothing("noise optimisation", len(requests), progress) as advance:
        for batch in request_batches(sampler, requests, cfg.batch_size):
            # 2.-5. generate, invert, optimise, record (one batch)
            optimised, means = _optimise_batch(sampler, utility, batch, cfg, g_regen)
            out += optimised
            before += means["before"]
            inverted += means["inverted"]
            after += means["after"]
            pen_inverted += means["penalty_inverted"]
            pen_after += means["penalty_after"]
            advance(len(batch))
    if requests:
        log.info(
            "noise optimisation: %d requests, mean utility %.4f (as requested) -> %.4f "
            "(inverted at guidance %g, regenerated at %g) -> %.4f (optimised)",
            len(requests),
            sum(before) / len(before),
            sum(inverted) / len(inverted),
            cfg.inversion_guidance,
            g_regen,
            sum(after) / len(after),
        )
    return NoiseResult(
        requests=tuple(out),
        utility_before=tuple(before),
        utility_inverted=tuple(inverted),
        utility_after=tuple(after),
        penalty_inverted=tuple(pen_inverted),
        penalty_after=tuple(pen_after),
    )
