"""UtilGen's prompt-embedding ascent on the tiny built-in generator with a trained small-cnn.

* Known answers: the cosine / L2 distances, the drift and the projection onto the drift
  bound on hand-made vectors.
* Behaviour: utility rises, drift stays within the bound (and would not without it), the
  weight and the bound change the outcome, steps=0 returns the original embeddings, batching
  does not change results, no weight collects a gradient.
* Contract: the optimised requests regenerate the optimised sample through
  ``generator.generate`` (PNG within one grey level) and record what was done.
* Bad input: an img2img request, steps < 0 through the config and the CLI.
"""

from __future__ import annotations

import json
import math
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

from utilgen.config import PromptAscentConfig, config_from_dict
from utilgen.errors import ConfigError
from utilgen.feedback.errors import FeedbackError
from utilgen.feedback.prompt_ascent import (
    ascend_prompts,
    embedding_distance,
    embedding_drift,
    embedding_rms,
    project_drift,
)
from utilgen.feedback.utility import LogProbUtility
from utilgen.generate import GenerationRequest
from utilgen.generate.builtin import BuiltinDiffusionGenerator
from utilgen.generate.builtin.differentiable import BuiltinSampler
from utilgen.generate.diffusers_differentiable import DiffusersSampler
from utilgen.task import TaskModel

TOL = 1e-5  # the bound holds to float32 rounding


pytestmark = pytest.mark.usefixtures("quiet_one_thread")


def _cfg(**fields: object) -> PromptAscentConfig:
    # Checkpointing triples the time on this tiny model and gives the same gradients
    # (tests/generate/test_builtin_differentiable.py); one test below keeps it on.
    base: dict[str, object] = {
        "steps": 4, "learning_rate": 0.3, "max_drift": 0.05, "gradient_checkpointing": False,
    }
    return PromptAscentConfig(**{**base, **fields})


# ---- 1. known answers: distances, drift, projection ------------------------------------------


def test_cosine_distance_and_drift_on_hand_made_tokens() -> None:
    e0 = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # one row of two tokens
    e = torch.tensor([[[1.0, 1.0], [0.0, 5.0]]])  # 45 degrees off, and parallel
    one_minus_cos = 1 - math.cos(math.pi / 4)
    assert embedding_distance(e, e0, "cosine").item() == pytest.approx(one_minus_cos / 2)
    assert embedding_drift(e, e0, "cosine").item() == pytest.approx(one_minus_cos)


def test_l2_distance_is_relative_to_the_original_norm() -> None:
    e0 = torch.tensor([[3.0, 4.0]])
    e = torch.tensor([[6.0, 8.0]])
    assert embedding_distance(e, e0, "l2").item() == pytest.approx(1.0)
    assert embedding_drift(e, e0, "l2").item() == pytest.approx(1.0)
    assert embedding_rms(e0).item() == pytest.approx(math.sqrt(12.5))


def test_cosine_projection_rotates_toward_the_original_keeping_the_norm() -> None:
    e0 = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
    # token 0: 90 degrees off, norm 2; token 1: inside the bound; token 2: exactly opposite
    e = torch.tensor([[[0.0, 2.0], [0.1, 1.0], [-3.0, 0.0]]])
    bound = 1 - math.cos(math.pi / 4)
    got = project_drift(e, e0, "cosine", bound)
    root2 = math.sqrt(2.0)
    expected = torch.tensor([[[root2, root2], [0.1, 1.0], [3.0, 0.0]]])
    torch.testing.assert_close(got, expected)
    assert embedding_drift(got, e0, "cosine").item() <= bound + TOL


def test_l2_projection_shrinks_the_step_onto_the_bound() -> None:
    e0 = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    e = torch.tensor([[13.0, 4.0], [1.01, 0.0]])  # row 0: 2 times the bound; row 1: inside
    got = project_drift(e, e0, "l2", 0.4)  # row 0 may move 0.4 * 5 = 2
    torch.testing.assert_close(got, torch.tensor([[5.0, 4.0], [1.01, 0.0]]))


# ---- 2. behaviour on the tiny generator ------------------------------------------------------


# The same bound is a far tighter one in l2 (relative distance) than in cosine (1 - cos):
# 1 - cos = 0.05 is an 18 degree turn, a relative distance of about 0.3. And on this tiny
# generator a 0.3 relative move gains ~0.02 nats, less than an l2 penalty of weight 1 costs,
# so l2 runs with the bound alone.
@pytest.mark.parametrize(
    ("measure", "bound", "weight"), [("cosine", 0.05, 1.0), ("l2", 0.3, 0.0)]
)
def test_ascent_raises_utility_within_the_drift_bound(
    generator: BuiltinDiffusionGenerator,
    model: TaskModel,
    measure: str,
    bound: float,
    weight: float,
) -> None:
    sampler, utility = BuiltinSampler(generator), LogProbUtility(model)
    requests = requests_of_every_class(1)
    cfg = _cfg(regulariser=measure, max_drift=bound, regulariser_weight=weight)
    result = ascend_prompts(sampler, utility, requests, cfg, progress=False)
    before, after = np.array(result.utility_before), np.array(result.utility_after)
    assert after.mean() > before.mean() + 0.005, (before, after)
    assert (after >= before).all()  # best iterate: never worse than the start
    assert sum(step > 0 for step in result.best_step) >= 2
    assert max(result.drift) <= bound + TOL
    e0, _ = sampler.conditioning(requests)
    got = torch.cat([r.prompt_embeds for r in result.requests if r.prompt_embeds is not None])
    torch.testing.assert_close(
        embedding_drift(got, e0, measure),  # type: ignore[arg-type]
        torch.tensor(result.drift),
    )
    # Without the bound the same steps go further: the projection is what held them in.
    free = ascend_prompts(
        sampler, utility, requests, _cfg(regulariser=measure, max_drift=2.0, regulariser_weight=0),
        progress=False,
    )
    assert max(free.drift) > bound + TOL


def test_regulariser_weight_changes_the_result(
    generator: BuiltinDiffusionGenerator, model: TaskModel
) -> None:
    sampler, utility = BuiltinSampler(generator), LogProbUtility(model)
    requests = requests_of_every_class(1)
    loose = ascend_prompts(
        sampler, utility, requests, _cfg(regulariser="l2", max_drift=2.0, regulariser_weight=0),
        progress=False,
    )
    tight = ascend_prompts(
        sampler, utility, requests, _cfg(regulariser="l2", max_drift=2.0, regulariser_weight=50),
        progress=False,
    )
    assert sum(tight.drift) < sum(loose.drift)


def test_zero_steps_return_the_original_embeddings(
    generator: BuiltinDiffusionGenerator, model: TaskModel
) -> None:
    sampler = BuiltinSampler(generator)
    requests = requests_of_every_class(1)
    result = ascend_prompts(sampler, LogProbUtility(model), requests, _cfg(steps=0), progress=False)
    # Exact by construction: the embeddings are copies of the class rows (no step, no float
    # arithmetic), the utility is the one evaluation at the start, and the drift of a request
    # returned at step 0 is 0 without computing 1 - cos(e0, e0).
    for r, label in zip(result.requests, (0, 1, 2), strict=True):
        assert r.prompt_embeds is not None
        assert torch.equal(r.prompt_embeds[0], generator.class_embedding(label))
    assert result.utility_after == result.utility_before
    assert result.drift == (0.0, 0.0, 0.0) and result.best_step == (0, 0, 0)


def test_batching_does_not_change_the_result(
    generator: BuiltinDiffusionGenerator, model: TaskModel
) -> None:
    sampler, utility = BuiltinSampler(generator), LogProbUtility(model)
    requests = [request(0, 3, num_outputs=2), request(1, 4), request(2, 5)]
    cfg = _cfg(steps=2)
    together = ascend_prompts(
        sampler, utility, requests, cfg.model_copy(update={"batch_size": 3}), progress=False
    )
    apart = ascend_prompts(
        sampler, utility, requests, cfg.model_copy(update={"batch_size": 1}), progress=False
    )
    for a, b in zip(together.requests, apart.requests, strict=True):
        assert a.prompt_embeds is not None and b.prompt_embeds is not None
        torch.testing.assert_close(a.prompt_embeds, b.prompt_embeds, atol=1e-4, rtol=1e-4)


def test_no_weight_collects_a_gradient(
    generator: BuiltinDiffusionGenerator, model: TaskModel
) -> None:
    clear_grads(generator.model, model.module())  # training left its last gradients there
    ascend_prompts(
        BuiltinSampler(generator), LogProbUtility(model), requests_of_every_class(1), _cfg(),
        progress=False,
    )
    assert no_weight_has_grad(generator.model, model.module())


# ---- 3. the optimised requests regenerate the optimised samples -----------------------------


def test_generate_reproduces_the_optimised_sample_and_records_the_ascent(
    generator: BuiltinDiffusionGenerator, model: TaskModel
) -> None:
    sampler, utility = BuiltinSampler(generator), LogProbUtility(model)
    requests = [request(0, 7, num_outputs=2), request(2, 8, guidance_scale=2.0)]
    cfg = _cfg(gradient_checkpointing=True)
    result = ascend_prompts(sampler, utility, requests, cfg, progress=False)
    assert any(s > 0 for s in result.best_step)
    images = pngs(generator, list(result.requests))
    decoded = []
    for r in result.requests:
        assert r.prompt_embeds is not None and r.guidance_scale is not None
        noise = sampler.initial_noise(r)
        n = len(noise)
        _, null = sampler.conditioning([r])
        with torch.no_grad():
            clean = sampler.denoise(
                noise, r.prompt_embeds.expand(n, -1), null.expand(n, -1),
                guidance=torch.full((n,), r.guidance_scale), steps=sampler.steps,
            )
        decoded.append(sampler.decode(clean))
        with torch.no_grad():
            logp = utility(decoded[-1], torch.full((n,), r.label)).mean().item()
        assert logp == pytest.approx(r.metadata["prompt_ascent"]["utility_after"], abs=1e-4)
    ours = as_uint8(torch.cat(decoded))
    assert np.abs(ours.astype(int) - images.astype(int)).max() <= 1
    assert [r.guidance_scale for r in result.requests] == [generator.guidance_scale, 2.0]
    sample = next(iter(generator.generate([result.requests[1]], progress=False)))
    record = json.loads(sample.details)["request"]["metadata"]["prompt_ascent"]
    assert record["regulariser"] == "cosine" and record["max_drift"] == 0.05
    assert record["drift"] == pytest.approx(result.drift[1])
    assert json.loads(sample.details)["conditioning"] == "prompt_embeds"


def test_ascent_through_a_stable_diffusion_pipeline() -> None:
    """The same optimiser on token embeddings (T, D): the tiny SD pipeline, cosine per token."""
    generator = tiny_sd_generator()
    sampler = DiffusersSampler(generator)
    cat = GenerationRequest(label=0, class_name="cat", seed=3, prompt="a photo of a cat",
                            num_outputs=2)
    cfg = _cfg(steps=3, max_drift=0.02, regulariser_weight=0.0)
    result = ascend_prompts(sampler, LogProbUtility(rgb_judge()), [cat], cfg, progress=False)
    (out,) = result.requests
    e0, _ = sampler.conditioning([cat])
    assert out.prompt_embeds is not None and out.prompt_embeds.shape == e0.shape  # (1, T, D)
    assert e0.dim() == 3 and result.best_step[0] > 0
    assert result.drift[0] <= 0.02 + TOL and result.utility_after[0] > result.utility_before[0]
    assert embedding_drift(out.prompt_embeds, e0, "cosine").item() == pytest.approx(
        result.drift[0], abs=1e-6
    )
    # generate (the pipeline itself, prompt_embeds in place of the prompt) gives the sample
    n = 2
    _, null = sampler.conditioning([out])
    with torch.no_grad():
        clean = sampler.denoise(
            sampler.initial_noise(out), out.prompt_embeds.expand(n, -1, -1),
            null.expand(n, -1, -1), guidance=torch.full((n,), 3.0), steps=3,
        )
    ours = as_uint8(sampler.decode(clean))
    assert np.abs(ours.astype(int) - pngs(generator, [out]).astype(int)).max() <= 1


# ---- 4. bad input ----------------------------------------------------------------------------


def test_img2img_request_is_refused_in_one_line(
    generator: BuiltinDiffusionGenerator, model: TaskModel
) -> None:
    init = np.zeros((8, 8, 1), dtype=np.uint8)
    bad = request(1, 0, init_image=init, strength=0.5)
    with pytest.raises(FeedbackError) as err:
        ascend_prompts(
            BuiltinSampler(generator), LogProbUtility(model), [request(0, 0), bad], _cfg(),
            progress=False,
        )
    message = str(err.value)
    assert "\n" not in message and "init_image" in message and "prompt_ascent" in message


def test_negative_steps_are_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({"feedback": {"prompt_ascent": {"steps": -1}}})
    assert "feedback.prompt_ascent.steps" in str(err.value) and "\n" not in str(err.value)


def test_cli_exits_2_with_one_line_for_negative_steps(
    tmp_path: Path, cli_error: Callable[[list[str]], str]
) -> None:
    run = tmp_path / "run"
    sets = ("feedback.components=[prompt_ascent]", "feedback.prompt_ascent.steps=-3")
    line = cli_error(
        ["run", "digits-static", "--out", str(run)]
        + [arg for item in sets for arg in ("--set", item)]
    )
    assert "feedback.prompt_ascent.steps" in line
    assert not run.exists()
