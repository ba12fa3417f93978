"""DiffusersSampler on the tiny Stable Diffusion pipeline: the real pipeline's parts on CPU.

The contract with ``DiffusersGenerator.generate`` (seeds, prompt embeddings, latents, three
samplers), gradients into prompt embeddings and noise (and none into weights), truncated
backpropagation, checkpointing (same gradients, far fewer saved activations), DDIM
inversion with symmetric and asymmetric guidance, encode/decode, and the one-line errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_sd import IMAGE_SIZE, one_thread, random_images, save_tiny_sdxl, tiny_sd_pipeline

from utilgen.config import DiffusersConfig
from utilgen.generate import GenerationError, GenerationRequest
from utilgen.generate.differentiable import DifferentiableSampler
from utilgen.generate.diffusers_backend import DiffusersGenerator
from utilgen.generate.diffusers_differentiable import DiffusersSampler
from utilgen.pool.payload import decode_image

CPU = torch.device("cpu")
STEPS = 4
GUIDANCE = 3.0
# The PNG is the [0, 1] image rounded to uint8: at most half a grey level apart, plus float
# noise between batched and unbatched kernels.
PNG_TOLERANCE = 0.5 / 255 + 1e-4


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def _generator(scheduler: str | None = None) -> DiffusersGenerator:
    return DiffusersGenerator(
        tiny_sd_pipeline(),
        model="tiny-sd",
        batch_size=4,
        steps=STEPS,
        guidance_scale=GUIDANCE,
        scheduler=scheduler,
    )


@pytest.fixture(scope="module")
def sampler() -> DiffusersSampler:
    with one_thread():
        return DiffusersSampler(_generator())


def _request(seed: int = 0, **kwargs: object) -> GenerationRequest:
    fields: dict[str, object] = {"prompt": "a photo of a cat", "negative_prompt": "blurry"}
    fields.update(kwargs)
    return GenerationRequest(label=0, class_name="cat", seed=seed, **fields)  # type: ignore[arg-type]


def _generated(sampler: DiffusersSampler, request: GenerationRequest) -> np.ndarray:
    """``generate``'s PNGs as (n, H, W, 3) floats in [0, 1]."""
    samples = sampler.generator.generate([request], progress=False)
    return np.stack([decode_image(s.payload) for s in samples]).astype(np.float64) / 255


def _sampled(sampler: DiffusersSampler, request: GenerationRequest) -> np.ndarray:
    """The sampler's images for ``request`` as (n, H, W, 3) floats in [0, 1]."""
    cond, null = sampler.conditioning([request])
    noise = sampler.initial_noise(request)
    n = noise.shape[0]
    guidance = sampler.guidance_scale if request.guidance_scale is None else request.guidance_scale
    with torch.no_grad():
        clean = sampler.denoise(
            noise,
            cond.expand(n, -1, -1),
            null.expand(n, -1, -1),
            guidance=torch.full((n,), guidance),
            steps=request.num_inference_steps or sampler.steps,
        )
        images = sampler.decode(clean)
    return images.permute(0, 2, 3, 1).numpy().astype(np.float64)


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean())


# -- the contract with generate ------------------------------------------------------------


def test_is_a_differentiable_sampler(sampler: DiffusersSampler) -> None:
    assert isinstance(sampler, DifferentiableSampler)
    assert sampler.noise_shape == (4, IMAGE_SIZE // 2, IMAGE_SIZE // 2)
    assert (sampler.guidance_scale, sampler.steps) == (GUIDANCE, STEPS)


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpm++"])
def test_denoise_and_decode_reproduce_generate_from_seeds(scheduler: str) -> None:
    # Euler scales the noise by init_noise_sigma != 1; DPM-Solver++ is multistep (state).
    sampler = DiffusersSampler(_generator(scheduler))
    request = _request(5, num_outputs=2)
    expected = _generated(sampler, request)
    got = _sampled(sampler, request)
    assert np.abs(got - expected).max() <= PNG_TOLERANCE
    # Not a vacuous match: the two outputs (seeds 5 and 6) differ by far more.
    assert np.abs(expected[0] - expected[1]).mean() > 20 * PNG_TOLERANCE


def test_contract_with_prompt_embeds_and_guidance_at_most_one(
    sampler: DiffusersSampler,
) -> None:
    cond, null = sampler.conditioning([_request()])
    g = torch.Generator().manual_seed(0)
    embeds = cond + 0.5 * torch.randn(cond.shape, generator=g)
    negative = null + 0.5 * torch.randn(null.shape, generator=g)
    for guidance in (GUIDANCE, 1.0, 0.0):  # the pipeline skips guidance for g <= 1
        request = _request(
            9,
            prompt="",
            prompt_embeds=embeds[0],
            negative_prompt_embeds=negative,
            guidance_scale=guidance,
        )
        got_cond, got_null = sampler.conditioning([request])
        # exact: the request's own tensors come back, copied, not recomputed
        assert torch.equal(got_cond, embeds) and torch.equal(got_null, negative)
        assert np.abs(_sampled(sampler, request) - _generated(sampler, request)).max() <= (
            PNG_TOLERANCE
        )


def test_guidance_is_per_row(sampler: DiffusersSampler) -> None:
    # A batch mixing g > 1 with g <= 1 (here 0, where uncond + g (cond - uncond) would be the
    # unconditional output) gives each row what it gets alone, as generate does.
    noise, cond, null = _leaves(sampler)
    with torch.no_grad():
        mixed = sampler.denoise(noise, cond, null, guidance=torch.tensor([GUIDANCE, 0.0]), steps=2)
        for row, g in enumerate((GUIDANCE, 0.0)):
            alone = sampler.denoise(
                noise[row : row + 1],
                cond[row : row + 1],
                null[row : row + 1],
                guidance=torch.tensor([g]),
                steps=2,
            )
            torch.testing.assert_close(mixed[row : row + 1], alone, rtol=1e-4, atol=1e-5)


def test_contract_with_latents_one_per_output(sampler: DiffusersSampler) -> None:
    latents = torch.randn(3, *sampler.noise_shape, generator=torch.Generator().manual_seed(1))
    request = _request(0, latents=latents, num_outputs=3, num_inference_steps=3)
    assert torch.equal(sampler.initial_noise(request), latents)  # copied, not recomputed
    expected = _generated(sampler, request)
    assert np.abs(_sampled(sampler, request) - expected).max() <= PNG_TOLERANCE
    # The seed is ignored when latents are given: another seed, the same images.
    again = _request(77, latents=latents, num_outputs=3, num_inference_steps=3)
    assert np.array_equal(_generated(sampler, again), expected)  # exact: the same call


def test_initial_noise_is_per_output_seed(sampler: DiffusersSampler) -> None:
    two = sampler.initial_noise(_request(10, num_outputs=2))
    assert two.shape == (2, *sampler.noise_shape) and two.dtype == torch.float32
    assert torch.equal(two[1:], sampler.initial_noise(_request(11)))  # the same seeded draw
    assert not torch.equal(two[0], two[1])


def test_conditioning_stacks_requests_and_encodes_negative_prompt(
    sampler: DiffusersSampler,
) -> None:
    a, b = _request(prompt="a photo of a cat"), _request(prompt="a photo of a dog")
    cond, null = sampler.conditioning([a, b])
    assert cond.shape == null.shape == (2, 77, 32)
    assert not cond.requires_grad and cond.dtype == torch.float32
    assert not torch.equal(cond[0], cond[1])
    plain, other_null = sampler.conditioning([_request(negative_prompt="")])
    # exact: each request's prompt is encoded on its own, so the same call for "a cat"
    assert torch.equal(plain[0], cond[0]) and not torch.equal(other_null[0], null[0])


# -- gradients -------------------------------------------------------------------------------


def _leaves(
    sampler: DiffusersSampler, n: int = 2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    request = _request(3, num_outputs=n)
    cond, null = sampler.conditioning([request])
    noise = sampler.initial_noise(request).requires_grad_(True)
    return noise, cond.expand(n, -1, -1).clone().requires_grad_(True), null.expand(n, -1, -1)


def _loss(images: torch.Tensor) -> torch.Tensor:
    # Something a classifier could ask for: bright centre, dark red channel.
    return images[:, :, 8:24, 8:24].mean() - images[:, 0].mean()


def test_gradient_reaches_prompt_embeds_and_noise_but_no_weight(
    sampler: DiffusersSampler,
) -> None:
    noise, cond, null = _leaves(sampler)
    null = null.clone().requires_grad_(True)
    clean = sampler.denoise(noise, cond, null, guidance=torch.full((2,), GUIDANCE), steps=STEPS)
    _loss(sampler.decode(clean)).backward()
    for leaf in (noise, cond, null):
        assert leaf.grad is not None
        assert torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0
    modules = (sampler.pipeline.unet, sampler.pipeline.vae, sampler.pipeline.text_encoder)
    assert all(p.grad is None and not p.requires_grad for m in modules for p in m.parameters())


def test_backprop_steps_truncates_the_graph(sampler: DiffusersSampler) -> None:
    guidance = torch.full((2,), GUIDANCE)
    noise, cond, null = _leaves(sampler)
    full = sampler.denoise(noise, cond, null, guidance=guidance, steps=STEPS)
    _loss(sampler.decode(full)).backward()
    full_grad = cond.grad
    noise_t, cond_t, _ = _leaves(sampler)
    last = sampler.denoise(noise_t, cond_t, null, guidance=guidance, steps=STEPS, backprop_steps=2)
    # The same forward pass, its first steps without a graph (where kernels may differ).
    torch.testing.assert_close(last, full)
    _loss(sampler.decode(last)).backward()
    assert noise_t.grad is None  # the first steps ran without a graph
    assert cond_t.grad is not None and cond_t.grad.abs().sum() > 0
    assert full_grad is not None and not torch.allclose(cond_t.grad, full_grad)
    # K at least the loop length is the full graph.
    noise_k, cond_k, _ = _leaves(sampler)
    whole = sampler.denoise(noise_k, cond_k, null, guidance=guidance, steps=STEPS, backprop_steps=9)
    _loss(sampler.decode(whole)).backward()
    assert noise_k.grad is not None and torch.allclose(cond_k.grad, full_grad)  # type: ignore[arg-type]


def test_checkpointing_same_gradients_fewer_saved_activations(
    sampler: DiffusersSampler,
) -> None:
    grads, saved = [], []
    for checkpointing in (False, True):
        noise, cond, null = _leaves(sampler)
        stored = [0]

        def pack(t: torch.Tensor, stored: list[int] = stored) -> torch.Tensor:
            stored[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            clean = sampler.denoise(
                noise,
                cond,
                null,
                guidance=torch.full((2,), GUIDANCE),
                steps=STEPS,
                checkpointing=checkpointing,
            )
        clean.square().mean().backward()
        grads.append((cond.grad, noise.grad))
        saved.append(stored[0])
    (cond_a, noise_a), (cond_b, noise_b) = grads
    assert cond_a is not None and cond_b is not None and noise_a is not None
    assert noise_b is not None
    torch.testing.assert_close(cond_b, cond_a, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(noise_b, noise_a, rtol=1e-4, atol=1e-6)
    # Only each step's inputs are kept (measured: about 140x fewer bytes).
    assert saved[1] * 20 < saved[0]
    # The U-Net's block checkpointing was on only while the sampler's U-Net calls ran.
    assert not sampler.pipeline.unet.is_gradient_checkpointing


# -- DDIM inversion --------------------------------------------------------------------------

INVERSION_STEPS = 20
# Symmetric guidance 1.0 on both sides, 20 DDIM steps: pixel MSE of the regenerated sample
# against the input, in [0, 1] units (measured 3.8e-5; a sample from unrelated noise is 0.03).
RECONSTRUCTION_MSE = 5e-4


def _invert_and_regenerate(
    sampler: DiffusersSampler, clean: torch.Tensor, inversion: float, regeneration: float
) -> tuple[torch.Tensor, torch.Tensor]:
    n = clean.shape[0]
    cond, null = sampler.conditioning([_request()])
    cond, null = cond.expand(n, -1, -1), null.expand(n, -1, -1)
    noise = sampler.invert(
        clean, cond, null, guidance=torch.full((n,), inversion), steps=INVERSION_STEPS
    )
    with torch.no_grad():
        again = sampler.denoise(
            noise, cond, null, guidance=torch.full((n,), regeneration), steps=INVERSION_STEPS
        )
    return noise, sampler.decode(again)


def test_ddim_inversion_reconstructs_a_generated_sample(sampler: DiffusersSampler) -> None:
    request = _request(4, num_outputs=2)
    cond, null = sampler.conditioning([request])
    ones = torch.ones(2)
    with torch.no_grad():
        x = sampler.denoise(
            sampler.initial_noise(request),
            cond.expand(2, -1, -1),
            null.expand(2, -1, -1),
            guidance=ones,
            steps=INVERSION_STEPS,
        )
        unrelated = sampler.denoise(
            torch.randn(2, *sampler.noise_shape, generator=torch.Generator().manual_seed(9)),
            cond.expand(2, -1, -1),
            null.expand(2, -1, -1),
            guidance=ones,
            steps=INVERSION_STEPS,
        )
        images, other = sampler.decode(x), sampler.decode(unrelated)
    noise, rebuilt = _invert_and_regenerate(sampler, x, 1.0, 1.0)
    assert not noise.requires_grad
    error = _mse(rebuilt, images)
    assert error < RECONSTRUCTION_MSE
    assert error * 100 < _mse(other, images)
    # The inverted noise is close to the noise the sample came from.
    assert _mse(noise, sampler.initial_noise(request)) < 0.01


def test_encode_resizes_and_is_differentiable(sampler: DiffusersSampler) -> None:
    pixels = np.stack(random_images(2, size=24, seed=3))
    images = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255).requires_grad_(True)
    latents = sampler.encode(images)
    assert latents.shape == (2, *sampler.noise_shape) and latents.dtype == torch.float32
    latents.square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    with torch.no_grad():
        # The posterior mean (no sampling: a sample would move it by the posterior's std),
        # here without a graph; the VAE's decoder maps it back to 32 px.
        torch.testing.assert_close(sampler.encode(images), latents.detach())
        assert sampler.decode(latents).shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
        # One channel is replicated to RGB; a 32 px RGB image is not resized.
        gray = images[:, :1].detach()
        torch.testing.assert_close(sampler.encode(gray), sampler.encode(gray.expand(-1, 3, -1, -1)))
        full = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
        vae = sampler.pipeline.vae
        direct = vae.encode(full * 2 - 1).latent_dist.mean * vae.config.scaling_factor
        torch.testing.assert_close(sampler.encode(full), direct)


def test_fixed_point_inversion_reconstructs_an_encoded_image(sampler: DiffusersSampler) -> None:
    # A real image through the (random) VAE, judged against the VAE's own reconstruction.
    # Off the random U-Net's own samples plain DDIM inversion is poor (measured pixel MSE
    # 0.012 at 10 steps); three fixed-point refinements per step make it 3.3e-4.
    pixels = np.stack(random_images(2, size=24, seed=3))
    latents = sampler.encode(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255)
    cond, null = sampler.conditioning([_request()])
    cond, null, ones = cond.expand(2, -1, -1), null.expand(2, -1, -1), torch.ones(2)
    errors = []
    with torch.no_grad():
        target = sampler.decode(latents)
        for fixed_point in (0, 3):
            noise = sampler.invert(
                latents, cond, null, guidance=ones, steps=10, fixed_point=fixed_point
            )
            again = sampler.denoise(noise, cond, null, guidance=ones, steps=10)
            errors.append(_mse(sampler.decode(again), target))
    assert errors[1] < 2e-3 < _mse(target[0], target[1])
    assert errors[1] * 10 < errors[0]


def test_asymmetric_guidance_inverts_to_other_noise(sampler: DiffusersSampler) -> None:
    request = _request(4, num_outputs=2)
    cond, null = sampler.conditioning([request])
    with torch.no_grad():
        x = sampler.denoise(
            sampler.initial_noise(request),
            cond.expand(2, -1, -1),
            null.expand(2, -1, -1),
            guidance=torch.ones(2),
            steps=INVERSION_STEPS,
        )
    symmetric, same = _invert_and_regenerate(sampler, x, 1.0, 1.0)
    asymmetric, other = _invert_and_regenerate(sampler, x, 7.5, 1.0)
    # Guidance at inversion moves the noise, and so the regenerated sample, by far more than
    # float noise (1e-12): measured MSE 0.007 and 2.3e-4 (the random U-Net's guidance is weak).
    assert _mse(asymmetric, symmetric) > 1e-3
    assert _mse(other, same) > 2e-5
    # Per-sample guidance: a row at 1.0 beside a row at 7.5 inverts as it would alone.
    cond2, null2 = cond.expand(2, -1, -1), null.expand(2, -1, -1)
    mixed = sampler.invert(
        x, cond2, null2, guidance=torch.tensor([1.0, 7.5]), steps=INVERSION_STEPS
    )
    torch.testing.assert_close(mixed[0], symmetric[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mixed[1], asymmetric[1], rtol=1e-4, atol=1e-5)


def test_inversion_needs_a_ddim_sampler() -> None:
    sampler = DiffusersSampler(_generator("euler"))
    clean = torch.zeros(1, *sampler.noise_shape)
    cond, null = sampler.conditioning([_request()])
    with pytest.raises(GenerationError, match=r"DDIM sampler.*scheduler=ddim"):
        sampler.invert(clean, cond, null, guidance=torch.ones(1), steps=3)


# -- errors ----------------------------------------------------------------------------------


def test_stochastic_sampler_is_refused() -> None:
    for name in ("euler-a", "ddpm"):
        with pytest.raises(GenerationError, match="adds fresh noise"):
            DiffusersSampler(_generator(name))


def test_sdxl_is_refused(tmp_path: Path) -> None:
    model = save_tiny_sdxl(tmp_path / "tiny-sdxl")
    cfg = DiffusersConfig(model=str(model), steps=2, image_size=IMAGE_SIZE)
    generator = DiffusersGenerator.from_config(cfg, device=CPU, batch_size=2, seed=0)
    with pytest.raises(GenerationError, match="pooled prompt embeddings") as err:
        DiffusersSampler(generator)
    assert "\n" not in str(err.value)


def test_bad_requests_are_refused(sampler: DiffusersSampler) -> None:
    init = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    img2img = _request(init_image=init, strength=0.5)
    with pytest.raises(GenerationError, match="img2img"):
        sampler.conditioning([img2img])
    with pytest.raises(GenerationError, match="img2img"):
        sampler.initial_noise(img2img)
    per_output = _request(num_outputs=2, prompt_embeds=torch.randn(2, 77, 32))
    with pytest.raises(GenerationError, match="differs between outputs"):
        sampler.conditioning([per_output])
    with pytest.raises(GenerationError, match="latents must be"):
        sampler.initial_noise(_request(latents=torch.zeros(4, 8, 8)))
    noise = torch.zeros(2, *sampler.noise_shape)
    cond = torch.zeros(1, 77, 32)
    with pytest.raises(GenerationError, match="n rows"):
        sampler.denoise(noise, cond, cond, guidance=torch.ones(2), steps=2)
