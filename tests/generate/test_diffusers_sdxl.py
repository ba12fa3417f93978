"""SDXL through the Auto pipelines: a tiny SDXL pipeline saved to disk loads by path,
generates text2img and img2img (StableDiffusionXLImg2ImgPipeline via from_pipe), and bare
prompt embeddings (SDXL also needs pooled ones) are refused before any image is made."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_sd import IMAGE_SIZE, one_thread, save_tiny_sdxl

from utilgen.config import DiffusersConfig
from utilgen.generate import GenerationError, GenerationRequest
from utilgen.generate.diffusers_backend import DiffusersGenerator
from utilgen.pool.payload import decode_image

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def test_sdxl_text2img_and_img2img(tmp_path: Path) -> None:
    model = save_tiny_sdxl(tmp_path / "tiny-sdxl")
    cfg = DiffusersConfig(model=str(model), steps=3, image_size=IMAGE_SIZE, scheduler="dpm++")
    gen = DiffusersGenerator.from_config(cfg, device=CPU, batch_size=2, seed=0)
    assert type(gen.pipeline).__name__ == "StableDiffusionXLPipeline"
    requests = [
        GenerationRequest(label=0, class_name="cat", seed=s, prompt="a photo of a cat")
        for s in (0, 0, 1)
    ]
    a, b, c = gen.generate(requests, progress=False)
    # Two rows of one batch with the same seed: the same image up to a grey level of kernel
    # rounding; another seed moves the mean pixel by more than a level.
    first, again, other = (decode_image(s.payload).astype(int) for s in (a, b, c))
    assert np.abs(first - again).max() <= 1 and np.abs(first - other).mean() > 1.0
    assert decode_image(a.payload).shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert json.loads(a.details)["scheduler"] == "DPMSolverMultistepScheduler"
    init = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 128, np.uint8)
    img2img = GenerationRequest(
        label=0, class_name="cat", seed=0, prompt="a cat", init_image=init, strength=0.5
    )
    (sample,) = gen.generate([img2img], progress=False)
    assert json.loads(sample.details)["pipeline"] == "StableDiffusionXLImg2ImgPipeline"
    embeds = torch.zeros(1, 77, 64)
    with pytest.raises(GenerationError, match="pooled prompt embeddings"):
        list(
            gen.generate(
                [GenerationRequest(label=0, class_name="cat", seed=0, prompt_embeds=embeds)]
            )
        )
