"""The built-in diffusion generator's sampling: seeds, guidance, class embeddings as prompt
embeddings, initial noise, img2img, save/load, provenance and bad input.

One tiny model (8/16 channels, ~40k parameters) is trained for a few steps on 12 digits of
3 classes under a fixed seed: a real UNet2DModel, DDPM training and DDIM sampling, in a few
seconds on a CPU. It is far from a good generator; these tests check that every input
reaches the output, not image quality (tests/generate/test_builtin_fidelity.py does that).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from digits3 import digits_of_three_classes

from utilgen.config import BuiltinDiffusionConfig
from utilgen.data.bundled import load_digits
from utilgen.data.labelled import LabelledData
from utilgen.errors import ModelNotFoundError, UtilgenError
from utilgen.generate import GenerationError, GenerationRequest, Generator
from utilgen.generate.builtin import (
    BuiltinDiffusionGenerator,
    builtin_class_requests,
    train_builtin_generator,
)
from utilgen.generate.builtin.model import ImageFormat
from utilgen.generate.builtin.pixels import image_format, to_images, to_model_space
from utilgen.pool.payload import PNG_SIGNATURE, decode_image
from utilgen.progress import is_quiet, set_quiet

STEPS = 10


def tiny_config(**changes: object) -> BuiltinDiffusionConfig:
    """A ~40k-parameter UNet trained for 30 steps: seconds on a CPU."""
    fields: dict[str, object] = dict(
        block_out_channels=[8, 16],
        norm_num_groups=4,
        train_steps=30,
        train_batch_size=16,
        warmup_steps=5,
        adapt_steps=5,
        steps=STEPS,
    )
    fields.update(changes)
    return BuiltinDiffusionConfig(**fields)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    was = is_quiet()
    set_quiet(True)
    yield
    set_quiet(was)


@pytest.fixture(scope="module")
def digits12() -> LabelledData:
    """Four digits of each of the classes 0, 1, 2 (8x8 grey), with their 3 class names."""
    digits = load_digits()
    idx = np.concatenate([np.flatnonzero(digits.labels == c)[:4] for c in range(3)])
    return digits_of_three_classes(digits, idx)


@pytest.fixture(scope="module")
def generator(digits12: LabelledData) -> BuiltinDiffusionGenerator:
    return train_builtin_generator(
        tiny_config(),
        task_train=digits12,
        broad=None,
        device=torch.device("cpu"),
        seed=0,
        batch_size=4,
        progress=False,
    )


def request(label: int = 0, seed: int = 0, **fields: object) -> GenerationRequest:
    return GenerationRequest(label=label, class_name=str(label), seed=seed, **fields)  # type: ignore[arg-type]


def pixels(gen: BuiltinDiffusionGenerator, *requests: GenerationRequest) -> list[np.ndarray]:
    return [decode_image(s.payload) for s in gen.generate(list(requests), progress=False)]


def one(gen: BuiltinDiffusionGenerator, req: GenerationRequest) -> np.ndarray:
    (image,) = pixels(gen, req)
    return image


def assert_within_one_level(a: np.ndarray, b: np.ndarray) -> None:
    """The same image denoised in other batch shapes or through another call: CPU kernels
    may round a pixel to the neighbouring grey level, nothing more (another seed or class
    moves pixels by tens of levels)."""
    assert a.shape == b.shape
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


# ---- output and provenance ----


def test_generates_png_digits_of_the_training_shape(generator: BuiltinDiffusionGenerator) -> None:
    assert isinstance(generator, Generator)
    samples = list(generator.generate([request(1, seed=3, num_outputs=2)], round_index=2))
    assert len(samples) == 2
    for i, sample in enumerate(samples):
        assert sample.payload.startswith(PNG_SIGNATURE)
        image = decode_image(sample.payload)
        assert image.shape == (8, 8, 1) and image.dtype == np.uint8
        assert sample.label == 1 and sample.class_name == "1" and sample.round == 2
        assert sample.seed == 3 + i
        assert sample.generator == generator.name
        assert sample.generator.startswith("builtin-diffusion:")
        assert sample.guidance == generator.guidance_scale and sample.steps == STEPS
        details = json.loads(sample.details)
        assert details["scheduler"] == "DDIMScheduler"
        assert details["denoising_steps"] == STEPS
        assert details["request"]["seed"] == 3
    assert samples[0].id != samples[1].id


def test_same_seed_same_pixels_different_seed_different(
    generator: BuiltinDiffusionGenerator,
) -> None:
    a = one(generator, request(0, seed=11))
    b = one(generator, request(0, seed=11))
    c = one(generator, request(0, seed=12))
    np.testing.assert_array_equal(a, b)  # exact: the same call on the same inputs
    assert not np.array_equal(a, c)


def test_output_i_uses_seed_plus_i_whatever_the_batching(
    digits12: LabelledData, generator: BuiltinDiffusionGenerator, tmp_path: Path
) -> None:
    together = pixels(generator, request(2, seed=5, num_outputs=3), request(1, seed=9))
    apart = [one(generator, request(2, seed=5 + i)) for i in range(3)]
    # a batch of 4 against batches of 1
    for x, y in zip(together[:3], apart, strict=True):
        assert_within_one_level(x, y)
    assert np.abs(together[0].astype(int) - together[1].astype(int)).max() > 1
    single = BuiltinDiffusionGenerator.from_pretrained(
        generator.save_pretrained(tmp_path / "g"), batch_size=1
    )
    assert_within_one_level(one(single, request(1, seed=9)), together[3])


def test_guidance_changes_the_output(generator: BuiltinDiffusionGenerator) -> None:
    unguided = one(generator, request(1, seed=4, guidance_scale=0.0))
    guided = one(generator, request(1, seed=4, guidance_scale=6.0))
    default = one(generator, request(1, seed=4))
    explicit = one(generator, request(1, seed=4, guidance_scale=generator.guidance_scale))
    assert not np.array_equal(unguided, guided)
    np.testing.assert_array_equal(default, explicit)  # exact: the same scale, the same call


def test_steps_change_the_output(generator: BuiltinDiffusionGenerator) -> None:
    assert not np.array_equal(
        one(generator, request(0, seed=2, num_inference_steps=3)),
        one(generator, request(0, seed=2, num_inference_steps=12)),
    )


# ---- class embeddings are the prompt embeddings ----


def test_class_row_as_prompt_embeds_reproduces_the_label(
    generator: BuiltinDiffusionGenerator,
) -> None:
    by_label = one(generator, request(2, seed=7))
    row = generator.class_embedding(2)
    assert row.shape == (generator.embedding_dim,)
    # exact: a copy of the table row, in the same batch and call as the label's row
    np.testing.assert_array_equal(one(generator, request(2, seed=7, prompt_embeds=row)), by_label)
    np.testing.assert_array_equal(
        one(generator, request(2, seed=7, prompt_embeds=row[None])), by_label
    )
    # The label is only provenance once prompt_embeds are given: the row decides.
    np.testing.assert_array_equal(one(generator, request(0, seed=7, prompt_embeds=row)), by_label)


def test_other_prompt_embeds_change_the_output(generator: BuiltinDiffusionGenerator) -> None:
    by_label = one(generator, request(2, seed=7))
    moved = generator.class_embedding(2) + 0.5 * torch.randn(
        generator.embedding_dim, generator=torch.Generator().manual_seed(0)
    )
    assert not np.array_equal(one(generator, request(2, seed=7, prompt_embeds=moved)), by_label)
    other_class = generator.class_embedding(0)
    assert not np.array_equal(
        one(generator, request(2, seed=7, prompt_embeds=other_class)), by_label
    )


def test_negative_prompt_embeds_replace_the_null_class(
    generator: BuiltinDiffusionGenerator,
) -> None:
    by_label = one(generator, request(1, seed=8))
    null = generator.null_embedding()
    np.testing.assert_array_equal(  # exact: a copy of the null row, the same call
        one(generator, request(1, seed=8, negative_prompt_embeds=null)), by_label
    )
    away_from_2 = one(
        generator, request(1, seed=8, negative_prompt_embeds=generator.class_embedding(2))
    )
    assert not np.array_equal(away_from_2, by_label)


def test_embedding_rows_are_copies(generator: BuiltinDiffusionGenerator) -> None:
    row = generator.class_embedding(0)
    row += 100.0
    assert not torch.equal(row, generator.class_embedding(0))


# ---- initial noise ----


def test_latents_are_the_initial_noise(generator: BuiltinDiffusionGenerator) -> None:
    shape = generator.image_format.sample_shape
    assert shape == (1, 8, 8)
    seeded = torch.randn(shape, generator=torch.Generator().manual_seed(21))
    by_seed = one(generator, request(0, seed=21))
    # exact: the seed's own noise, in the same batch shape and call
    np.testing.assert_array_equal(one(generator, request(0, seed=999, latents=seeded)), by_seed)
    other = one(generator, request(0, seed=21, latents=torch.randn(shape)))
    assert not np.array_equal(other, by_seed)
    two = torch.stack([seeded, torch.randn(shape)])
    first, _ = pixels(generator, request(0, seed=5, latents=two, num_outputs=2))
    assert_within_one_level(first, by_seed)  # a batch of 2 against a batch of 1


def test_sampling_is_differentiable_in_embeddings_and_noise(
    generator: BuiltinDiffusionGenerator,
) -> None:
    """UtilGen's instance-level optimisation backpropagates a utility through sampling into
    the prompt (class) embedding and the initial noise."""
    embeds = generator.class_embedding(1)[None].requires_grad_(True)
    noise = torch.randn(1, *generator.image_format.sample_shape).requires_grad_(True)
    clean = generator.sample(noise, embeds, steps=3)
    assert clean.shape == (1, 1, 8, 8)
    clean.mean().backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0
    assert noise.grad is not None and noise.grad.abs().sum() > 0
    generator.model.zero_grad(set_to_none=True)


def test_sample_matches_generate(generator: BuiltinDiffusionGenerator) -> None:
    from utilgen.generate.builtin.pixels import to_images

    noise = torch.randn(
        generator.image_format.sample_shape, generator=torch.Generator().manual_seed(4)
    )
    with torch.no_grad():
        clean = generator.sample(noise[None], generator.class_embedding(2)[None])
    # generate passes its own null rows and guidance tensor: another call than this one
    assert_within_one_level(
        to_images(clean, generator.image_format)[0], one(generator, request(2, seed=4))
    )


def test_prompt_text_is_provenance_only_and_says_so(
    generator: BuiltinDiffusionGenerator, caplog: pytest.LogCaptureFixture
) -> None:
    plain = one(generator, request(1, seed=6, prompt="1"))
    assert "prompt" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="utilgen.generate.builtin"):
        worded = list(
            generator.generate(
                [request(1, seed=6, prompt="a photo of a 1", negative_prompt="blurry")]
            )
        )
    assert "1 request(s) carry prompt or negative-prompt text" in caplog.text
    np.testing.assert_array_equal(decode_image(worded[0].payload), plain)  # the same call
    assert worded[0].prompt == "a photo of a 1" and worded[0].negative_prompt == "blurry"


# ---- img2img ----


def test_img2img_strength_zero_returns_the_init_image(
    digits12: LabelledData, generator: BuiltinDiffusionGenerator
) -> None:
    init = np.asarray(digits12.items[5])
    sample = next(iter(generator.generate([request(1, init_image=init, strength=0.0)])))
    np.testing.assert_array_equal(decode_image(sample.payload), init)  # no arithmetic at all
    assert json.loads(sample.details)["denoising_steps"] == 0
    assert sample.strength == 0.0


def test_img2img_moves_further_with_higher_strength(
    digits12: LabelledData, generator: BuiltinDiffusionGenerator
) -> None:
    inits = [np.asarray(x) for x in digits12.items]

    def distance(strength: float) -> float:
        reqs = [
            request(int(digits12.labels[i]), seed=i, init_image=x, strength=strength)
            for i, x in enumerate(inits)
        ]
        outs = pixels(generator, *reqs)
        return float(
            np.mean(
                [
                    np.abs(o.astype(float) - x.astype(float)).mean()
                    for o, x in zip(outs, inits, strict=True)
                ]
            )
        )

    low, high = distance(0.3), distance(1.0)
    assert 0 < low < high


def test_img2img_starts_at_the_strength_timestep(
    digits12: LabelledData, generator: BuiltinDiffusionGenerator
) -> None:
    init = np.asarray(digits12.items[0])
    sample = next(iter(generator.generate([request(0, init_image=init, strength=0.5)])))
    details = json.loads(sample.details)
    assert details["denoising_steps"] == STEPS // 2
    assert 400 <= details["start_timestep"] <= 500


# ---- save / load ----


def test_save_and_from_pretrained_round_trip(
    generator: BuiltinDiffusionGenerator, tmp_path: Path
) -> None:
    path = generator.save_pretrained(tmp_path / "builtin")
    assert (path / "unet" / "config.json").is_file()
    assert (path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (path / "scheduler" / "scheduler_config.json").is_file()
    assert not list(path.rglob("*.bin")) and not list(path.rglob("*.pt"))
    loaded = BuiltinDiffusionGenerator.from_pretrained(path, batch_size=3)
    assert loaded.name == generator.name
    assert loaded.class_names == generator.class_names
    assert loaded.image_format == generator.image_format
    reqs = [request(0, seed=1, num_outputs=2), request(2, seed=3, guidance_scale=4.0)]
    # exact: safetensors gives the weights back bit for bit, and one batch of 3 either way
    assert [s.payload for s in loaded.generate(reqs)] == [
        s.payload for s in generator.generate(reqs)
    ]
    assert [s.id for s in loaded.generate(reqs)] == [s.id for s in generator.generate(reqs)]


def test_from_pretrained_overrides_sampling_defaults(
    generator: BuiltinDiffusionGenerator, tmp_path: Path
) -> None:
    path = generator.save_pretrained(tmp_path / "builtin")
    loaded = BuiltinDiffusionGenerator.from_pretrained(path, guidance_scale=0.0, steps=4)
    assert (loaded.guidance_scale, loaded.steps) == (0.0, 4)
    np.testing.assert_array_equal(  # exact: the same weights, settings and batch shape
        one(loaded, request(1, seed=2)),
        one(generator, request(1, seed=2, guidance_scale=0.0, num_inference_steps=4)),
    )


def test_from_pretrained_missing_or_broken_directory(
    generator: BuiltinDiffusionGenerator, tmp_path: Path
) -> None:
    with pytest.raises(ModelNotFoundError) as missing:
        BuiltinDiffusionGenerator.from_pretrained(tmp_path / "nothing")
    assert "\n" not in str(missing.value) and "save_pretrained" in str(missing.value)
    path = generator.save_pretrained(tmp_path / "broken")
    (path / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError) as broken:
        BuiltinDiffusionGenerator.from_pretrained(path)
    assert "\n" not in str(broken.value)


# ---- requests of the static strategy ----


def test_builtin_class_requests() -> None:
    cfg = tiny_config(guidance_scale=3.0)
    reqs = builtin_class_requests(["a", "b"], per_class=3, seed=0, round_index=1, cfg=cfg)
    assert [(r.label, r.class_name, r.prompt) for r in reqs] == [
        *[(0, "a", "a")] * 3,
        *[(1, "b", "b")] * 3,
    ]
    assert all(r.guidance_scale == 3.0 and r.num_inference_steps == STEPS for r in reqs)
    seeds = [r.seed for r in reqs]
    assert len(set(seeds)) == 6 and all(0 <= s < 2**31 for s in seeds)
    again = builtin_class_requests(["a", "b"], per_class=3, seed=0, round_index=1, cfg=cfg)
    assert [r.seed for r in again] == seeds
    next_round = builtin_class_requests(["a", "b"], per_class=3, seed=0, round_index=2, cfg=cfg)
    other_seed = builtin_class_requests(["a", "b"], per_class=3, seed=1, round_index=1, cfg=cfg)
    assert not set(seeds) & {r.seed for r in next_round}
    assert not set(seeds) & {r.seed for r in other_seed}


# ---- pixels ----


def test_pixels_round_trip_and_resize() -> None:
    rng = np.random.default_rng(0)
    grey = [rng.integers(0, 256, (8, 8, 1), dtype=np.uint8) for _ in range(2)]
    fmt = image_format(grey, levels=2)
    assert fmt == ImageFormat(height=8, width=8, channels=1, size=8)
    tensor = to_model_space(grey, fmt)
    assert tensor.shape == (2, 1, 8, 8) and tensor.min() >= -1 and tensor.max() <= 1
    for back, orig in zip(to_images(tensor, fmt), grey, strict=True):
        np.testing.assert_array_equal(back, orig)  # float error << the half level rounding
    odd = [rng.integers(0, 256, (10, 13, 3), dtype=np.uint8), grey[0]]
    fmt = image_format(odd, levels=3)
    assert (fmt.height, fmt.width, fmt.channels, fmt.size) == (10, 13, 3, 16)
    tensor = to_model_space(odd, fmt)
    assert tensor.shape == (2, 3, 16, 16)
    assert [x.shape for x in to_images(tensor, fmt)] == [(10, 13, 3)] * 2


# ---- bad input: one line, nothing generated ----


def _one_line(error: pytest.ExceptionInfo[UtilgenError]) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"strength": 1.5, "init_image": np.zeros((8, 8, 1), np.uint8)}, "strength"),
        ({"strength": -0.1, "init_image": np.zeros((8, 8, 1), np.uint8)}, "strength"),
        ({"guidance_scale": -1.0}, "guidance"),
    ],
)
def test_bad_request_fields(fields: dict[str, object], words: str) -> None:
    with pytest.raises(UtilgenError) as error:
        request(0, **fields)
    assert words in _one_line(error)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: request(3), "out of range"),
        (lambda: GenerationRequest(label=0, class_name="1", seed=0), "class_name"),
        (lambda: request(0, latents=torch.zeros(1, 16, 16)), "latents"),
        (lambda: request(0, latents=torch.zeros(1, 1, 8, 8), num_outputs=2), "latents"),
        (lambda: request(0, prompt_embeds=torch.zeros(7)), "prompt_embeds"),
        (lambda: request(0, negative_prompt_embeds=torch.zeros(2, 7)), "negative_prompt_embeds"),
        (lambda: request(0, strength=0.5), "init_image"),
        (lambda: request(0, init_image=np.zeros((8, 8, 2), np.uint8), strength=0.5), "init_image"),
    ],
)
def test_bad_requests_raise_one_line_before_generating(
    generator: BuiltinDiffusionGenerator, make: object, words: str
) -> None:
    good = request(0, seed=1)
    bad = make()  # type: ignore[operator]
    with pytest.raises(GenerationError) as error:
        generator.generate([good, bad])
    assert words in _one_line(error)
