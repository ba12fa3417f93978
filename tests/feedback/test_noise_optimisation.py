"""UtilGen's initial-noise optimisation on the tiny built-in generator with a trained small-cnn.

* Known answers: the KL and norm penalties on fixed tensors, and the KL's parity with
  ``torch.distributions.kl_divergence``.
* Behaviour: utility rises above the requested samples' and never falls below the inverted
  noise's; steps=0 returns the DDIM-inverted noise (computed here independently); the
  penalty weight keeps the noise Gaussian; no weight collects a gradient.
* Contract: the optimised requests (``latents``, regeneration guidance) regenerate the
  optimised sample through ``generator.generate`` (PNG within one grey level).
* Bad input: an img2img request, ``backprop_steps`` set, steps < 0 through the config and
  the CLI.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from instance_setup import (
    as_uint8,
    clear_grads,
    no_weight_has_grad,
    pngs,
    request,
    requests_of_every_class,
    rgb_judge,
    tiny_sd_generator,
)

from utilgen.config import NoiseOptimisationConfig, config_from_dict
from utilgen.errors import ConfigError
from utilgen.feedback.errors import FeedbackError
from utilgen.feedback.noise_optimisation import kl_penalty, norm_penalty, optimise_noise
from utilgen.feedback.utility import LogProbUtility
from utilgen.generate import GenerationRequest
from utilgen.generate.builtin import BuiltinDiffusionGenerator
from utilgen.generate.builtin.differentiable import BuiltinSampler
from utilgen.generate.diffusers_differentiable import DiffusersSampler
from utilgen.task import TaskModel

pytestmark = pytest.mark.usefixtures("quiet_one_thread")


def _cfg(**fields: object) -> NoiseOptimisationConfig:
    # No checkpointing: it triples the time on this tiny model and gives the same gradients
    # (tests/generate/test_builtin_differentiable.py); one test below keeps it on.
    base: dict[str, object] = {
        "steps": 4, "learning_rate": 0.1, "gradient_checkpointing": False,
        "inversion_fixed_point": 1,
    }
    return NoiseOptimisationConfig(**{**base, **fields})


# ---- 1. known answers: the penalties -------------------------------------------------------


def test_kl_penalty_known_answers() -> None:
    z = torch.tensor([[1.0, -1.0, 1.0, -1.0], [1.0, 3.0, 1.0, 3.0], [-2.0, 2.0, -2.0, 2.0]])
    # mean 0 var 1: 0;  mean 2 var 1: 0.5 * 4 = 2;  mean 0 var 4: 0.5 * (4 - 1 - log 4)
    expected = torch.tensor([0.0, 2.0, 0.5 * (3.0 - float(np.log(4.0)))])
    torch.testing.assert_close(kl_penalty(z), expected)


def test_kl_penalty_matches_torch_distributions() -> None:
    z = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 1.7 + 0.3
    flat = z.reshape(5, -1)
    fitted = torch.distributions.Normal(flat.mean(1), flat.var(1, unbiased=False).sqrt())
    reference = torch.distributions.kl_divergence(
        fitted, torch.distributions.Normal(torch.zeros(5), torch.ones(5))
    )
    torch.testing.assert_close(kl_penalty(z), reference)


def test_norm_penalty_known_answers() -> None:
    z = torch.tensor([[1.0, -1.0, 1.0, -1.0], [1.0, 3.0, 1.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    # ||z||^2 / D = 1, 5, 0
    torch.testing.assert_close(norm_penalty(z), torch.tensor([0.0, 16.0, 1.0]))


# ---- 2. behaviour on the tiny generator ------------------------------------------------------


def test_optimisation_raises_utility_above_the_requested_samples(
    generator: BuiltinDiffusionGenerator, model: TaskModel
) -> None:
    sampler, utility = BuiltinSampler(generator), LogProbUtility(model)
    requests = requests_of_every_class(2)
    result = optimise_noise(sampler, utility, requests, _cfg(), progress=False)
    before, after = np.array(result.utility_before), np.array(result.utility_after)
    inverted = np.array(result.utility_inverted)
    assert after.mean() > before.mean() + 0.05, (before, inverted, after)
    assert (after >= inverted - 1e-6).all()  # best iterate: the inverted noise is one of them
    for r in result.requests:
        assert r.latents is not None and tuple(r.latents.shape) == (1, *sampler.noise_shape)
        assert r.guidance_scale == generator.guidance_scale  # regeneration default


def test_zero_steps_return_the_inverted_noise(
    generator: BuiltinDiffusionGenerator, model: TaskModel
) -> None:
    sampler = BuiltinSampler(generator)
    r = request(1, 11, num_outputs=2, guidance_scale=2.0)
    cfg = _cfg(steps=0, inversion_guidance=1.0, regeneration_guidance=3.0)
    result = optimise_noise(sampler, LogProbUtility(model), [r], cfg, progress=False)
    cond, null = sampler.conditioning([r])
    cond, null = cond.expand(2, -1), null.expand(2, -1)
    with torch.no_grad():
        clean = sampler.denoise(
            sampler.initial_noise(r), cond, null, guidance=torch.full((2,), 2.0),
            steps=sampler.steps,
        )
    inverted = sampler.invert(
        clean, cond, null, guidance=torch.ones(2), steps=sampler.steps, fixed_point=1
    )
    (out,) = result.requests
    assert out.latents is not None
    torch.testing.assert_close(out.latents, inverted)
    assert out.guidance_scale == 3.0
    assert result.utility_after == result.utility_inverted  # exact: step 0 is kept as is
    record = out.metadata["noise_opt"]
    assert record["inversion_guidance"] == 1.0 and record["regeneration_guidance"] == 3.0
    assert record["request_guidance"] == 2.0 and record["best_step"] == [0, 0]


def test_penalty_weight_keeps_the_noise_gaussian(
    generator: BuiltinDiffusionGenerator, model: TaskModel
) -> None:
    sampler, utility = BuiltinSampler(generator), LogProbUtility(model)
    requests = requests_of_every_class(1)
    free = optimise_noise(
        sampler, utility, requests, _cfg(penalty="norm", penalty_weight=0.0, learning_rate=0.3),
        progress=False,
    )
    held = optimise_noise(
        sampler, utility, requests, _cfg(penalty="norm", penalty_weight=100.0, learning_rate=0.3),
        progress=False,
    )
    assert sum(held.penalty_after) < sum(free.penalty_after)


def test_symmetric_guidance_is_allowed_and_logged(
    generator: BuiltinDiffusionGenerator, model: TaskModel, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _cfg(steps=0, inversion_guidance=1.5, regeneration_guidance=1.5)
    with caplog.at_level(logging.INFO, logger="utilgen.feedback.noise_optimisation"):
        optimise_noise(
            BuiltinSampler(generator), LogProbUtility(model), [request(0, 1)], cfg,
            progress=False,
        )
    assert any("symmetric" in rec.getMessage() for rec in caplog.records)


def test_no_weight_collects_a_gradient(
    generator: BuiltinDiffusionGenerator, model: TaskModel
) -> None:
    clear_grads(generator.model, model.module())  # training left its last gradients there
    optimise_noise(
        BuiltinSampler(generator), LogProbUtility(model), [request(2, 5)], _cfg(steps=2),
        progress=False,
    )
    assert no_weight_has_grad(generator.model, model.module())


# ---- 3. the optimised requests regenerate the optimised samples -----------------------------


def test_generate_reproduces_the_optimised_sample(
    generator: BuiltinDiffusionGenerator, model: TaskModel
) -> None:
    sampler, utility = BuiltinSampler(generator), LogProbUtility(model)
    requests = [request(0, 21, num_outputs=2), request(2, 22)]
    cfg = _cfg(gradient_checkpointing=True, regeneration_guidance=2.0)
    result = optimise_noise(sampler, utility, requests, cfg, progress=False)
    images = pngs(generator, list(result.requests))
    decoded = []
    for r in result.requests:
        assert r.latents is not None and r.guidance_scale == 2.0
        n = len(r.latents)
        cond, null = sampler.conditioning([r])
        with torch.no_grad():
            clean = sampler.denoise(
                r.latents, cond.expand(n, -1), null.expand(n, -1),
                guidance=torch.full((n,), 2.0), steps=sampler.steps,
            )
            decoded.append(sampler.decode(clean))
            logp = utility(decoded[-1], torch.full((n,), r.label)).mean().item()
        assert logp == pytest.approx(r.metadata["noise_opt"]["utility_after"], abs=1e-4)
    ours = as_uint8(torch.cat(decoded))
    assert np.abs(ours.astype(int) - images.astype(int)).max() <= 1
    sample = next(iter(generator.generate([result.requests[1]], progress=False)))
    details = json.loads(sample.details)
    assert details["initial_noise"] == "latents"
    assert details["request"]["metadata"]["noise_opt"]["penalty"] == "kl"


def test_noise_optimisation_through_a_stable_diffusion_pipeline() -> None:
    """The same optimiser on VAE latents: the tiny SD pipeline (DDIM), its own inversion."""
    generator = tiny_sd_generator()
    sampler = DiffusersSampler(generator)
    cat = GenerationRequest(label=0, class_name="cat", seed=3, prompt="a photo of a cat",
                            num_outputs=2)
    cfg = _cfg(steps=3, regeneration_guidance=2.0)
    result = optimise_noise(sampler, LogProbUtility(rgb_judge()), [cat], cfg, progress=False)
    (out,) = result.requests
    assert out.latents is not None and tuple(out.latents.shape) == (2, *sampler.noise_shape)
    assert result.utility_after[0] >= result.utility_inverted[0]
    cond, null = sampler.conditioning([out])
    with torch.no_grad():
        clean = sampler.denoise(
            out.latents, cond.expand(2, -1, -1), null.expand(2, -1, -1),
            guidance=torch.full((2,), 2.0), steps=3,
        )
    ours = as_uint8(sampler.decode(clean))
    assert np.abs(ours.astype(int) - pngs(generator, [out]).astype(int)).max() <= 1


# ---- 4. bad input ----------------------------------------------------------------------------


def test_img2img_request_is_refused_in_one_line(
    generator: BuiltinDiffusionGenerator, model: TaskModel
) -> None:
    bad = request(0, 0, init_image=np.zeros((8, 8, 1), dtype=np.uint8), strength=0.4)
    with pytest.raises(FeedbackError) as err:
        optimise_noise(
            BuiltinSampler(generator), LogProbUtility(model), [bad], _cfg(), progress=False
        )
    assert "\n" not in str(err.value) and "noise_opt" in str(err.value)


def test_truncated_backprop_is_a_config_error() -> None:
    # Refused when the config loads, not when round 2 reaches the optimiser.
    with pytest.raises(ConfigError) as err:
        config_from_dict({"feedback": {"noise_opt": {"backprop_steps": 2}}})
    message = str(err.value)
    assert "\n" not in message and "feedback.noise_opt.backprop_steps=2" in message


def test_negative_steps_are_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({"feedback": {"noise_opt": {"steps": -1}}})
    assert "feedback.noise_opt.steps" in str(err.value) and "\n" not in str(err.value)


def test_cli_exits_2_with_one_line_for_negative_steps(
    tmp_path: Path, cli_error: Callable[[list[str]], str]
) -> None:
    run = tmp_path / "run"
    sets = ("feedback.components=[noise_opt]", "feedback.noise_opt.steps=-1")
    line = cli_error(
        ["run", "digits-static", "--out", str(run)]
        + [arg for item in sets for arg in ("--set", item)]
    )
    assert "feedback.noise_opt.steps" in line
    assert not run.exists()
