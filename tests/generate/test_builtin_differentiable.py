"""The built-in generator as a DifferentiableSampler: the protocol's contract with
``generate``, where gradients flow, and DDIM inversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from digits3 import digits_of_three_classes

from utilgen.config import BuiltinDiffusionConfig
from utilgen.data.bundled import load_digits
from utilgen.generate import GenerationRequest
from utilgen.generate.builtin import BuiltinDiffusionGenerator, train_builtin_generator
from utilgen.generate.builtin.differentiable import BuiltinSampler
from utilgen.generate.differentiable import DifferentiableSampler
from utilgen.pool.payload import decode_image

STEPS = 10


@pytest.fixture(scope="module")
def generator() -> BuiltinDiffusionGenerator:
    digits = load_digits()
    idx = np.concatenate([np.flatnonzero(digits.labels == c)[:8] for c in range(3)])
    cfg = BuiltinDiffusionConfig(
        block_out_channels=[8, 16], norm_num_groups=4, train_steps=60, train_batch_size=16,
        warmup_steps=5, adapt_steps=0, steps=STEPS,
    )
    return train_builtin_generator(
        cfg, task_train=digits_of_three_classes(digits, idx), broad=None,
        device=torch.device("cpu"), seed=0, batch_size=4, progress=False,
    )


def req(label: int = 0, seed: int = 0, **fields: object) -> GenerationRequest:
    return GenerationRequest(label=label, class_name=str(label), seed=seed, **fields)  # type: ignore[arg-type]


def sampled(sampler: BuiltinSampler, request: GenerationRequest) -> np.ndarray:
    """The sampler's uint8 image of ``request``'s outputs, (n, H, W, C)."""
    cond, null = sampler.conditioning([request])
    noise = sampler.initial_noise(request)
    n = len(noise)
    g = request.guidance_scale if request.guidance_scale is not None else sampler.guidance_scale
    with torch.no_grad():
        clean = sampler.denoise(
            noise, cond.expand(n, -1), null.expand(n, -1), guidance=torch.full((n,), g),
            steps=sampler.steps,
        )
    pixels = sampler.decode(clean)
    return (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def generated(gen: BuiltinDiffusionGenerator, request: GenerationRequest) -> np.ndarray:
    return np.stack([decode_image(s.payload) for s in gen.generate([request], progress=False)])


def test_is_a_differentiable_sampler(generator: BuiltinDiffusionGenerator) -> None:
    sampler = BuiltinSampler(generator)
    assert isinstance(sampler, DifferentiableSampler)
    assert sampler.noise_shape == generator.image_format.sample_shape


@pytest.mark.parametrize(
    "fields",
    [
        {"num_outputs": 2},
        {"prompt_embeds": "shifted"},
        {"latents": "given", "guidance_scale": 3.0},
    ],
)
def test_denoise_and_decode_reproduce_generate(
    generator: BuiltinDiffusionGenerator, fields: dict[str, object]
) -> None:
    sampler = BuiltinSampler(generator)
    if fields.get("prompt_embeds") == "shifted":
        fields = {"prompt_embeds": generator.class_embedding(2) * 1.5}
    elif fields.get("latents") == "given":
        fields = {**fields, "latents": torch.randn(1, *sampler.noise_shape)}
    request = req(1, seed=5, **fields)
    ours, theirs = sampled(sampler, request), generated(generator, request)
    # uint8 rounding of the same float image: at most one level apart.
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1
    assert (ours == theirs).mean() > 0.95


def _grads(
    sampler: BuiltinSampler, *, backprop_steps: int | None = None, checkpointing: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    request = req(0, seed=1, num_outputs=2)
    cond, null = sampler.conditioning([request])
    cond = cond.expand(2, -1).clone().requires_grad_(True)
    noise = sampler.initial_noise(request).requires_grad_(True)
    clean = sampler.denoise(
        noise, cond, null.expand(2, -1), guidance=torch.full((2,), 2.0), steps=STEPS,
        backprop_steps=backprop_steps, checkpointing=checkpointing,
    )
    loss = sampler.decode(clean).square().sum()
    g_cond, g_noise = torch.autograd.grad(loss, [cond, noise], allow_unused=True)
    return clean.detach(), g_cond, g_noise, loss.detach()


def test_gradients_reach_embeddings_and_noise_not_weights(
    generator: BuiltinDiffusionGenerator,
) -> None:
    sampler = BuiltinSampler(generator)
    before = [None if p.grad is None else p.grad.clone() for p in generator.model.parameters()]
    _, g_cond, g_noise, _ = _grads(sampler)
    assert g_noise is not None and torch.isfinite(g_noise).all() and g_noise.abs().sum() > 0
    assert torch.isfinite(g_cond).all() and g_cond.abs().sum() > 0
    after = [p.grad for p in generator.model.parameters()]
    assert all(
        (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
        for a, b in zip(before, after, strict=True)
    )


def test_truncated_backprop_keeps_the_output_and_cuts_the_noise_off(
    generator: BuiltinDiffusionGenerator,
) -> None:
    sampler = BuiltinSampler(generator)
    full, g_full, _, _ = _grads(sampler)
    cut, g_cut, g_noise, _ = _grads(sampler, backprop_steps=3)
    torch.testing.assert_close(cut, full)
    assert g_noise is None  # no graph reaches the noise through the untracked steps
    assert g_cut.abs().sum() > 0
    assert not torch.allclose(g_cut, g_full)  # only the last 3 steps' share


def test_checkpointing_gives_the_same_gradients(generator: BuiltinDiffusionGenerator) -> None:
    sampler = BuiltinSampler(generator)
    _, g_cond, g_noise, _ = _grads(sampler)
    _, g_cond_ck, g_noise_ck, _ = _grads(sampler, checkpointing=True)
    torch.testing.assert_close(g_cond_ck, g_cond)
    assert g_noise is not None and g_noise_ck is not None
    torch.testing.assert_close(g_noise_ck, g_noise)


def _unclipped(generator: BuiltinDiffusionGenerator) -> BuiltinSampler:
    """A sampler over the same weights whose DDIM step does not clip its x0 prediction."""
    copy = BuiltinDiffusionGenerator(
        generator.model, DDIMScheduler.from_config(generator.scheduler.config, clip_sample=False),
        class_names=generator.class_names, image_format=generator.image_format,
        guidance_scale=generator.guidance_scale, steps=generator.steps,
    )
    return BuiltinSampler(copy)


def _real_digits(sampler: BuiltinSampler) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    digits = load_digits()
    images = torch.from_numpy(np.stack(digits.items[:6])).permute(0, 3, 1, 2).float() / 255.0
    cond, null = sampler.conditioning([req(int(y) % 3) for y in digits.labels[:6]])
    return sampler.encode(images), cond, null


def test_ddim_inversion_with_symmetric_guidance_reconstructs_real_digits(
    generator: BuiltinDiffusionGenerator,
) -> None:
    """Without x0 clipping, fixed-point inversion is the exact inverse of the sampler."""
    sampler = _unclipped(generator)
    clean, cond, null = _real_digits(sampler)
    one = torch.ones(len(clean))

    def reconstruction_mse(noise: torch.Tensor) -> float:
        with torch.no_grad():
            again = sampler.denoise(noise, cond, null, guidance=one, steps=STEPS)
        return (again - clean).square().mean().item()

    exact = reconstruction_mse(
        sampler.invert(clean, cond, null, guidance=one, steps=STEPS, fixed_point=3)
    )
    plain = reconstruction_mse(sampler.invert(clean, cond, null, guidance=one, steps=STEPS))
    unrelated = reconstruction_mse(torch.randn(len(clean), *sampler.noise_shape))
    # Model space is [-1, 1]: an MSE of 1e-3 is an RMS error of 1.6% of the range.
    assert exact < 1e-3, (exact, plain, unrelated)
    assert exact < plain / 10 and plain < unrelated
    # Asymmetric guidance (invert at 1, regenerate at 3) moves the result away.
    noise = sampler.invert(clean, cond, null, guidance=one, steps=STEPS, fixed_point=3)
    with torch.no_grad():
        guided = sampler.denoise(noise, cond, null, guidance=one * 3, steps=STEPS)
    assert (guided - clean).square().mean().item() > 10 * exact


def test_ddim_inversion_of_generated_samples_with_the_default_clipping(
    generator: BuiltinDiffusionGenerator,
) -> None:
    """The generator's own sampler clips x0 (many-to-one at high noise), so inversion is
    approximate there; a generated sample still comes back close."""
    sampler = BuiltinSampler(generator)
    assert generator.scheduler.config.clip_sample
    cond, null = sampler.conditioning([req(y) for y in (0, 1, 2, 0, 1, 2)])
    one = torch.ones(6)
    seeds = torch.Generator().manual_seed(0)
    with torch.no_grad():
        clean = sampler.denoise(
            torch.randn(6, *sampler.noise_shape, generator=seeds), cond, null, guidance=one,
            steps=STEPS,
        )
        noise = sampler.invert(clean, cond, null, guidance=one, steps=STEPS, fixed_point=3)
        again = sampler.denoise(noise, cond, null, guidance=one, steps=STEPS)
        unrelated = sampler.denoise(
            torch.randn(6, *sampler.noise_shape, generator=seeds), cond, null, guidance=one,
            steps=STEPS,
        )
    mse = (again - clean).square().mean().item()
    assert mse < 0.05, mse
    assert mse < (unrelated - clean).square().mean().item() / 5
