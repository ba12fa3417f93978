"""The built-in offline image generator: a class-conditional diffusers ``UNet2DModel``.

No pretrained diffusion weights can be had offline (docs/assets.md), so utilgen trains a
small pixel-space model itself: DDPM pretraining on the broad split, adaptation to the task's
k shots (LoRA by default), DDIM sampling with classifier-free guidance through a null class,
img2img, user-supplied initial noise, and class embeddings that act as prompt embeddings.
Trained models are cached (see :mod:`~utilgen.generate.builtin.cache`).

Modules: ``model`` (the denoiser), ``pixels`` (images <-> tensors), ``training`` (DDPM
training and adaptation), ``sampling`` (DDIM + guidance), ``generator`` (the ``Generator``),
``cache``, ``prepare`` (train-or-load), ``requests`` (the ``static`` strategy's requests).
"""

from utilgen.generate.builtin.generator import BuiltinDiffusionGenerator
from utilgen.generate.builtin.prepare import prepare_builtin_generator, train_builtin_generator
from utilgen.generate.builtin.requests import builtin_class_requests

__all__ = [
    "BuiltinDiffusionGenerator",
    "builtin_class_requests",
    "prepare_builtin_generator",
    "train_builtin_generator",
]
