"""LoRA adaptation of a tiny SD U-Net: the Min-SNR loss against known answers, every LoRA
parameter trains, the adapter changes the images, and it round-trips through safetensors."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr
from tiny_sd import one_thread, real_data, save_tiny_sd, tiny_sd_pipeline

import utilgen.generate.lora as lora_module
from utilgen.config import DiffusersConfig
from utilgen.config.diffusion import DiffusersLoraConfig
from utilgen.generate import GenerationRequest
from utilgen.generate.diffusers_backend import DiffusersGenerator
from utilgen.generate.diffusers_prepare import prepare_diffusers_generator
from utilgen.generate.lora import (
    adapt_to_task,
    diffusion_loss,
    min_snr_weights,
    snr,
    train_lora,
    training_prompts,
)
from utilgen.generate.prompts import CaptionEntry, CaptionTable
from utilgen.pool.payload import decode_image

CPU = torch.device("cpu")
STEPS = 3
# A large learning rate so that three steps visibly move a random model's images.
FAST = {"max_steps": 3, "learning_rate": 1e-2, "batch_size": 4}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def _images(gen: DiffusersGenerator) -> list[np.ndarray]:
    requests = [
        GenerationRequest(label=0, class_name="cat", seed=s, prompt="a photo of a cat")
        for s in (0, 1)
    ]
    return [decode_image(s.payload).astype(int) for s in gen.generate(requests, progress=False)]


def _same_images(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    """Within one grey level: an adapter trained in memory and one loaded from its file sit
    in differently built layers, which may round a pixel the other way (the adapter itself
    moves the mean pixel by more than one level)."""
    return len(a) == len(b) and all(np.abs(x - y).max() <= 1 for x, y in zip(a, b, strict=True))


def test_snr_and_min_snr_weights_known_answers() -> None:
    alphas = torch.tensor([0.8, 0.5, 0.2])
    t = torch.tensor([0, 1, 2])
    s = snr(alphas, t)
    assert torch.allclose(s, torch.tensor([4.0, 1.0, 0.25]))
    # Min-SNR-γ, γ = 2: ε target min(SNR, γ)/SNR; v target min(SNR, γ)/(SNR + 1).
    assert torch.allclose(min_snr_weights(s, 2.0, "epsilon"), torch.tensor([0.5, 1.0, 1.0]))
    assert torch.allclose(min_snr_weights(s, 2.0, "v_prediction"), torch.tensor([0.4, 0.5, 0.2]))
    # Parity with diffusers' own SNR on a real schedule.
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    steps = torch.tensor([0, 10, 500, 999])
    assert torch.allclose(snr(scheduler.alphas_cumprod, steps), compute_snr(scheduler, steps))


def test_diffusion_loss_is_the_mse_to_the_drawn_noise() -> None:
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    latents = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(0))

    def zero_unet(noisy: torch.Tensor, t: torch.Tensor, ehs: torch.Tensor, **_: Any) -> tuple:
        return (torch.zeros_like(noisy),)

    loss = diffusion_loss(
        zero_unet,
        scheduler,
        latents,
        torch.zeros(3, 1, 1),
        generator=torch.Generator().manual_seed(5),
        snr_gamma=None,
    )
    # Same generator, same draws: the ε target is the first randn of that shape.
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(5))
    assert torch.isclose(loss, noise.pow(2).mean())
    weighted = diffusion_loss(
        zero_unet,
        scheduler,
        latents,
        torch.zeros(3, 1, 1),
        generator=torch.Generator().manual_seed(5),
        snr_gamma=5.0,
    )
    g = torch.Generator().manual_seed(5)
    noise = torch.randn(latents.shape, generator=g)
    t = torch.randint(0, 1000, (3,), generator=g)
    w = min_snr_weights(snr(scheduler.alphas_cumprod, t), 5.0, "epsilon")
    assert torch.isclose(weighted, (noise.pow(2).mean(dim=(1, 2, 3)) * w).mean())


def test_training_updates_every_lora_parameter_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pipe = tiny_sd_pipeline()
    frozen = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    frozen_text = [p.detach().clone() for p in pipe.text_encoder.parameters()]
    initial: dict[str, torch.Tensor] = {}
    add_lora = lora_module.add_lora

    def recording(unet: Any, settings: Any, **kwargs: Any) -> list[torch.nn.Parameter]:
        params = add_lora(unet, settings, **kwargs)
        initial.update({n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" in n})
        return params

    monkeypatch.setattr(lora_module, "add_lora", recording)
    data = real_data()
    settings = DiffusersLoraConfig(**FAST)
    prompts = training_prompts(data, DiffusersConfig())
    trained = train_lora(
        pipe, data, settings, prompts=prompts, seed=0, image_size=32, progress=False
    )
    assert trained.steps == 3 and len(trained.losses) == 3
    lora = {n: p for n, p in pipe.unet.named_parameters() if "lora_" in n}
    # rank-4 A and B on q, k, v, out of each attention block of the tiny U-Net
    assert len(lora) == len(initial) > 0
    unchanged = [n for n, p in lora.items() if torch.equal(p, initial[n])]
    assert unchanged == []
    assert all(torch.equal(p, frozen[n]) for n, p in pipe.unet.named_parameters() if n in frozen)
    assert all(
        torch.equal(a, b) for a, b in zip(pipe.text_encoder.parameters(), frozen_text, strict=True)
    )


def test_adapter_changes_the_images_and_round_trips(tmp_path: Path) -> None:
    cfg = DiffusersConfig(lora=FAST)
    gen = DiffusersGenerator(tiny_sd_pipeline(), model="tiny-sd", steps=STEPS)
    base = _images(gen)
    result = adapt_to_task(
        gen, real_data(), cfg, out_dir=tmp_path / "adapter", seed=0, progress=False
    )
    assert result.path is not None and result.path.suffix == ".safetensors"
    assert result.sha256 == hashlib.sha256(result.path.read_bytes()).hexdigest()
    assert gen.name == f"tiny-sd+lora:{result.sha256[:16]}"
    adapted = _images(gen)
    assert all(np.abs(a - b).mean() > 1.0 for a, b in zip(base, adapted, strict=True))
    (sample,) = gen.generate([GenerationRequest(label=0, class_name="cat", seed=0)], progress=False)
    assert sample.generator == gen.name
    assert json.loads(sample.details)["lora_sha256"] == result.sha256

    # A fresh pipeline with the saved file makes the same pixels.
    fresh = DiffusersGenerator(tiny_sd_pipeline(), model="tiny-sd", steps=STEPS)
    assert fresh.load_lora(result.path.parent) == result.sha256
    assert _same_images(adapted, _images(fresh))
    # Scale 0 switches the adapter off.
    fresh.load_lora(result.path, scale=0.0)
    assert _same_images(base, _images(fresh))
    # Same seed, same data: the same adapter, byte for byte (exact: the same training
    # call on the same inputs, in this process, on one thread).
    again = adapt_to_task(
        DiffusersGenerator(tiny_sd_pipeline(), model="m", steps=STEPS),
        real_data(),
        cfg,
        out_dir=tmp_path / "again",
        seed=0,
        progress=False,
    )
    assert again.sha256 == result.sha256


def test_training_prompts_use_each_images_own_caption() -> None:
    data = real_data(per_class=2)
    captions = CaptionTable((CaptionEntry("dog", "on grass", data.ids[3]),))
    prompts = training_prompts(data, DiffusersConfig(), captions)
    assert prompts[0] == "a photo of a cat"
    assert prompts[3] == "a photo of a dog, which is on grass"
    assert prompts[2] == "a photo of a dog"


def test_prepare_trains_once_and_then_loads_from_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = save_tiny_sd(tmp_path / "tiny-sd")
    cfg = DiffusersConfig(
        model=str(model), steps=STEPS, cache_dir=tmp_path / "cache", lora={**FAST, "train": True}
    )
    first = prepare_diffusers_generator(
        cfg, task_train=real_data(), device=CPU, batch_size=2, seed=0, progress=False
    )
    assert "+lora:" in first.name
    (entry,) = (tmp_path / "cache" / "lora").iterdir()

    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the cached adapter should have been loaded")

    monkeypatch.setattr(lora_module, "train_lora", no_training)
    second = prepare_diffusers_generator(
        cfg, task_train=real_data(), device=CPU, batch_size=2, seed=0, progress=False
    )
    assert second.name == first.name
    assert _same_images(_images(first), _images(second))
    assert [p.name for p in (tmp_path / "cache" / "lora").iterdir()] == [entry.name]
