"""DiffusersGenerator on a tiny Stable Diffusion pipeline built from config: the real
``StableDiffusionPipeline`` / ``StableDiffusionImg2ImgPipeline`` code on CPU.

Seeds, batching, prompt embeddings, latents, img2img strength, schedulers, every knob that
must change the output, provenance, and loading a pipeline directory from disk.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_sd import IMAGE_SIZE, one_thread, save_tiny_sd, tiny_sd_pipeline

from utilgen.config import DiffusersConfig
from utilgen.generate import GenerationError, GenerationRequest
from utilgen.generate.diffusers_backend import DiffusersGenerator
from utilgen.pool.payload import decode_image
from utilgen.pool.sample import Sample

CPU = torch.device("cpu")
STEPS = 3


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def generator() -> DiffusersGenerator:
    return DiffusersGenerator(tiny_sd_pipeline(), model="tiny-sd", batch_size=4, steps=STEPS)


def _request(
    seed: int = 0, prompt: str = "a photo of a cat", **kwargs: object
) -> GenerationRequest:
    return GenerationRequest(label=0, class_name="cat", seed=seed, prompt=prompt, **kwargs)  # type: ignore[arg-type]


def _samples(gen: DiffusersGenerator, *requests: GenerationRequest) -> list[Sample]:
    return list(gen.generate(list(requests), progress=False))


def _pixels(sample: Sample) -> np.ndarray:
    return decode_image(sample.payload).astype(np.int64)


def _one(gen: DiffusersGenerator, request: GenerationRequest) -> np.ndarray:
    (sample,) = _samples(gen, request)
    return _pixels(sample)


def _differs(a: np.ndarray, b: np.ndarray) -> bool:
    # Random tiny models give low-contrast images; a mean shift of 1 grey level is far above
    # the at-most-one-level rounding noise of batched kernels.
    return float(np.abs(a - b).mean()) > 1.0


def test_same_seed_same_pixels_and_another_seed_other_pixels(
    generator: DiffusersGenerator,
) -> None:
    first, again = _one(generator, _request(7)), _one(generator, _request(7))
    assert first.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert np.array_equal(first, again)  # exact: the same call on the same inputs
    assert _differs(first, _one(generator, _request(8)))


def test_outputs_of_a_request_are_seeded_one_by_one(generator: DiffusersGenerator) -> None:
    # Output i uses seed + i: output 1 of seed 10 is output 0 of seed 11.
    samples = _samples(generator, _request(10, num_outputs=3))
    assert [s.seed for s in samples] == [10, 11, 12]
    assert len({s.id for s in samples}) == 3
    alone = _one(generator, _request(11))
    assert np.abs(_pixels(samples[1]) - alone).max() <= 1


def test_output_does_not_depend_on_its_batch() -> None:
    requests = [_request(3, num_outputs=2), _request(4, prompt="a photo of a dog")]
    one_by_one = DiffusersGenerator(tiny_sd_pipeline(), model="m", batch_size=1, steps=STEPS)
    batched = DiffusersGenerator(tiny_sd_pipeline(), model="m", batch_size=4, steps=STEPS)
    a, b = _samples(one_by_one, *requests), _samples(batched, *requests)
    assert [s.id for s in a] == [s.id for s in b]
    for x, y in zip(a, b, strict=True):
        # Same noise per output; batched CPU kernels may round one grey level differently.
        assert np.abs(_pixels(x) - _pixels(y)).max() <= 1


def test_requests_sharing_settings_share_a_call_and_order_is_kept(
    generator: DiffusersGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = [_request(i, guidance_scale=[7.5, 1.0][i % 2]) for i in range(4)]
    calls: list[list[int]] = []
    run = generator._run

    def counting(reqs: list[GenerationRequest], batch: list) -> np.ndarray:  # type: ignore[type-arg]
        calls.append([item.index for item in batch])
        return run(reqs, batch)

    monkeypatch.setattr(generator, "_run", counting)
    samples = _samples(generator, *requests)
    assert calls == [[0, 2], [1, 3]]
    assert [s.seed for s in samples] == [0, 1, 2, 3]
    assert [s.guidance for s in samples] == [7.5, 1.0, 7.5, 1.0]


def test_prompt_embeds_stand_in_for_the_prompt(generator: DiffusersGenerator) -> None:
    pipe = generator.pipeline
    embeds, negative = pipe.encode_prompt("a photo of a cat", CPU, 1, True, "")
    by_text = _one(generator, _request(5))
    by_embeds = _one(
        generator,
        _request(5, prompt="", prompt_embeds=embeds, negative_prompt_embeds=negative),
    )
    # The pipeline encodes the text itself in one case: another call, one grey level.
    assert np.abs(by_text - by_embeds).max() <= 1
    # Embeds of another prompt give another image; the negative prompt is encoded from text.
    dog, _ = pipe.encode_prompt("a photo of a dog", CPU, 1, True, "")
    assert _differs(by_text, _one(generator, _request(5, prompt="", prompt_embeds=dog)))


def test_latents_are_the_initial_noise(generator: DiffusersGenerator) -> None:
    shape = (1, 4, IMAGE_SIZE // 2, IMAGE_SIZE // 2)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    other = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    # DDIM (eta 0) draws no noise besides the initial latents: the seed no longer matters.
    a = _one(generator, _request(1, latents=noise))
    assert np.array_equal(a, _one(generator, _request(2, latents=noise)))  # the same call
    assert _differs(a, _one(generator, _request(1, latents=other)))
    assert _differs(a, _one(generator, _request(1)))


def test_img2img_strength_is_respected(generator: DiffusersGenerator) -> None:
    init = np.zeros((20, 20, 3), np.uint8)
    init[4:16, 4:16] = 255
    # The random VAE does not reconstruct images, so "close to the init image" means close
    # to its VAE round trip at the generator's size.
    pipe = generator.pipeline
    resized = Image.fromarray(init).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    x = torch.tensor(np.asarray(resized)).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        recon = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mode()).sample
    recon_u8 = ((recon.clamp(-1, 1) + 1) * 127.5).round()[0].permute(1, 2, 0).numpy()

    def distance(strength: float) -> float:
        request = _request(
            3,
            init_image=init,
            strength=strength,
            num_inference_steps=20,
            guidance_scale=1.0,
            parent_id="toy/cat/0",
        )
        (sample,) = _samples(generator, request)
        assert sample.strength == strength and sample.parent_id == "toy/cat/0"
        details = json.loads(sample.details)
        assert details["mode"] == "img2img"
        assert details["pipeline"] == "StableDiffusionImg2ImgPipeline"
        assert details["request"]["init_image_sha256"]
        return float(np.abs(_pixels(sample) - recon_u8).mean())

    low, mid, high = distance(0.05), distance(0.3), distance(1.0)
    assert low < 5.0
    assert low < mid < high
    # img2img shares the text-to-image weights (from_pipe), it does not copy them.
    assert generator.img2img.unet is generator.pipeline.unet


def test_every_knob_changes_the_output(generator: DiffusersGenerator) -> None:
    base = _one(generator, _request(9))
    assert _differs(base, _one(generator, _request(9, guidance_scale=1.0)))
    assert _differs(base, _one(generator, _request(9, num_inference_steps=STEPS + 2)))
    assert _differs(base, _one(generator, _request(9, negative_prompt="blurry")))
    assert _differs(base, _one(generator, _request(9, prompt="a photo of a dog")))


def test_scheduler_by_name_replaces_the_sampler() -> None:
    ddim = DiffusersGenerator(tiny_sd_pipeline(), model="m", steps=STEPS)
    euler_a = DiffusersGenerator(tiny_sd_pipeline(), model="m", steps=STEPS, scheduler="euler-a")
    dpm = DiffusersGenerator(
        tiny_sd_pipeline(), model="m", steps=STEPS, scheduler="DPMSolverMultistep"
    )
    assert type(dpm.pipeline.scheduler).__name__ == "DPMSolverMultistepScheduler"
    # The noise schedule carries over from the pipeline's own scheduler config.
    assert euler_a.pipeline.scheduler.config.beta_schedule == "scaled_linear"
    (a,) = _samples(ddim, _request(4))
    (b,) = _samples(euler_a, _request(4))
    assert json.loads(b.details)["scheduler"] == "EulerAncestralDiscreteScheduler"
    assert json.loads(a.details)["scheduler"] == "DDIMScheduler"
    assert _differs(_pixels(a), _pixels(b))


def test_samples_carry_full_provenance(generator: DiffusersGenerator) -> None:
    embeds, _ = generator.pipeline.encode_prompt("a photo of a cat", CPU, 1, False)
    request = GenerationRequest(
        label=1,
        class_name="dog",
        seed=42,
        prompt="a photo of a dog",
        negative_prompt="blurry",
        guidance_scale=3.0,
        perturbation="llm",
        metadata={"caption": "on grass"},
    )
    (sample,) = _samples(generator, request)
    (embedded,) = _samples(generator, _request(1, prompt="", prompt_embeds=embeds))
    assert sample.id.startswith("synthetic/r001/dog/")
    assert (sample.label, sample.class_name, sample.source) == (1, "dog", "synthetic")
    assert (sample.generator, sample.prompt, sample.negative_prompt) == (
        "tiny-sd",
        "a photo of a dog",
        "blurry",
    )
    assert (sample.seed, sample.guidance, sample.steps) == (42, 3.0, STEPS)
    assert sample.perturbation == "llm" and sample.modality == "image"
    details = json.loads(sample.details)
    assert details["model"] == "tiny-sd" and details["backend"] == "diffusers"
    assert details["scheduler"] == "DDIMScheduler" and details["dtype"] == "float32"
    assert details["mode"] == "text2img" and details["lora_sha256"] is None
    assert details["request"]["metadata"] == {"caption": "on grass"}
    # Tensors are recorded by digest, and the default guidance is the value used.
    assert json.loads(embedded.details)["request"]["prompt_embeds_sha256"]
    assert embedded.guidance == generator.guidance_scale


def test_from_config_loads_a_pipeline_directory(tmp_path: Path) -> None:
    directory = save_tiny_sd(tmp_path / "tiny-sd")
    cfg = DiffusersConfig(model=str(directory), steps=STEPS, attention_slicing=True)
    loaded = DiffusersGenerator.from_config(cfg, device=CPU, batch_size=2, seed=0)
    in_memory = DiffusersGenerator(tiny_sd_pipeline(), model="m", steps=STEPS)
    assert loaded.name == str(directory)
    assert loaded.pipeline.unet.dtype == torch.float32  # dtype auto on CPU
    assert type(loaded.pipeline).__name__ == "StableDiffusionPipeline"
    a, b = _one(loaded, _request(6)), _one(in_memory, _request(6))
    # Same weights; attention slicing changes only how attention is computed.
    assert np.abs(a - b).max() <= 1


def test_request_checks_happen_before_any_image(generator: DiffusersGenerator) -> None:
    wrong = torch.zeros(1, 4, 3, 3)
    with pytest.raises(GenerationError, match="latents must be"):
        _samples(generator, _request(0), _request(1, latents=wrong))
    init = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(GenerationError, match="init_image or latents"):
        _samples(generator, _request(0, init_image=init, strength=0.5, latents=wrong))
    with pytest.raises(GenerationError, match="no denoising step"):
        _samples(generator, _request(0, init_image=init, strength=0.1, num_inference_steps=5))


@pytest.mark.slow
def test_compiled_unet_gives_the_same_images() -> None:
    eager = DiffusersGenerator(tiny_sd_pipeline(), model="m", steps=STEPS)
    compiled = DiffusersGenerator(tiny_sd_pipeline(), model="m", steps=STEPS, compile_unet=True)
    assert np.abs(_one(eager, _request(2)) - _one(compiled, _request(2))).max() <= 1
