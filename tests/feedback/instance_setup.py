"""A tiny trained built-in generator and a trained small-cnn on the digits 0-2, for the
instance-level optimisers' tests (prompt ascent, noise optimisation); and the tiny Stable
Diffusion pipeline with an RGB small-cnn, to run the same optimisers through diffusers.

Both digit models train in a few seconds on one thread: the generator is the ~40k-parameter
UNet of tests/generate/test_builtin_differentiable.py (its samples are rough digits), the
classifier a small-cnn trained on 40 real digits per class, so log p(y|x) of a generated image
responds to its pixels the way a real judge's does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from utilgen.config import BuiltinDiffusionConfig, TaskConfig
from utilgen.data import LabelledData
from utilgen.data.bundled import load_digits
from utilgen.generate import GenerationRequest, Generator
from utilgen.generate.builtin import BuiltinDiffusionGenerator, train_builtin_generator
from utilgen.generate.diffusers_backend import DiffusersGenerator
from utilgen.pool.payload import decode_image
from utilgen.task import TaskModel, build_task_model, train

sys.path.insert(0, str(Path(__file__).parents[1] / "generate"))
from tiny_sd import real_data, tiny_sd_pipeline

STEPS = 8


def digits3(per_class: int, offset: int = 0) -> LabelledData:
    """``per_class`` digits of each of the classes 0, 1, 2 from the ``offset``-th on."""
    digits = load_digits()
    idx = np.concatenate(
        [np.flatnonzero(digits.labels == c)[offset : offset + per_class] for c in range(3)]
    )
    part = digits.subset(np.sort(idx))
    return LabelledData(
        modality="image", items=part.items, labels=part.labels, class_names=("0", "1", "2"),
        ids=part.ids, name="digits3",
    )


def tiny_generator() -> BuiltinDiffusionGenerator:
    """The built-in generator trained 60 steps on 8 digits per class, sampling in STEPS steps."""
    cfg = BuiltinDiffusionConfig(
        block_out_channels=[8, 16], norm_num_groups=4, train_steps=60, train_batch_size=16,
        warmup_steps=5, adapt_steps=0, steps=STEPS,
    )
    return train_builtin_generator(
        cfg, task_train=digits3(8), broad=None, device=torch.device("cpu"), seed=0,
        batch_size=4, progress=False,
    )


def judge(seed: int = 0) -> TaskModel:
    """A small-cnn trained 8 epochs on 40 real digits per class (0-2)."""
    data = digits3(40, offset=8)
    cfg = TaskConfig(model="small-cnn", image_size=8, epochs=8, batch_size=16, lr=3e-3)
    model = build_task_model(cfg, "image", data.num_classes, data.items[:1], "cpu", seed)
    train(model, data, cfg, seed=seed, progress=lambda n: None)
    return model


def tiny_sd_generator() -> DiffusersGenerator:
    """The tiny SD 1.x pipeline (32 px, DDIM) as a generator: 3 steps at guidance 3."""
    return DiffusersGenerator(
        tiny_sd_pipeline(), model="tiny-sd", batch_size=4, steps=3, guidance_scale=3.0,
        scheduler="ddim",
    )


def rgb_judge() -> TaskModel:
    """A small-cnn for 32 px RGB images of the classes cat and dog, trained one epoch on
    random images (its log p(y|x) only has to be differentiable in the pixels)."""
    data = real_data(("cat", "dog"), per_class=4)
    cfg = TaskConfig(model="small-cnn", image_size=32, epochs=1, batch_size=8)
    model = build_task_model(cfg, "image", 2, data.items[:1], "cpu", 0)
    train(model, data, cfg, seed=0, progress=lambda n: None)
    return model


def request(label: int, seed: int, **fields: object) -> GenerationRequest:
    return GenerationRequest(label=label, class_name=str(label), seed=seed, **fields)  # type: ignore[arg-type]


def requests_of_every_class(n_per_class: int = 2, num_outputs: int = 1) -> list[GenerationRequest]:
    return [
        request(label, seed=100 * label + i, num_outputs=num_outputs)
        for label in range(3)
        for i in range(n_per_class)
    ]


def pngs(generator: Generator, requests: list[GenerationRequest]) -> np.ndarray:
    """The uint8 images (n, H, W, C) ``generate`` writes for ``requests``."""
    return np.stack([decode_image(s.payload) for s in generator.generate(requests, progress=False)])


def as_uint8(pixels: torch.Tensor) -> np.ndarray:
    """Float images (n, C, H, W) in [0, 1] rounded as the PNG path rounds them, (n, H, W, C)."""
    return (pixels.detach() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def clear_grads(*modules: torch.nn.Module) -> None:
    for module in modules:
        for p in module.parameters():
            p.grad = None


def no_weight_has_grad(*modules: torch.nn.Module) -> bool:
    return all(p.grad is None for m in modules for p in m.parameters())
