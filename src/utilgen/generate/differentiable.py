"""``DifferentiableSampler``: an image generator opened up for instance-level optimisation.

UtilGen's instance-level feedback (shared/papers/000) backpropagates a utility through the
sampler into a request's prompt embeddings or its initial noise, and finds a sample's
initial noise by DDIM inversion. This protocol is what those optimisers need of a
generator; the built-in generator and diffusers pipelines implement it
(``generate.builtin.differentiable``, ``generate.diffusers_differentiable``).

Contract: for a request r, ``denoise(initial_noise(r), *conditioning([r]), guidance,
steps)`` followed by ``decode`` gives the image that ``generator.generate([r])`` writes,
up to the uint8 rounding of the PNG. So a request rebuilt with optimised ``prompt_embeds``
or ``latents`` (and its guidance) regenerates exactly the optimised sample through the
ordinary ``Generator.generate`` path, with full provenance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from utilgen.generate.request import GenerationError, GenerationRequest


@runtime_checkable
class DifferentiableSampler(Protocol):
    """Differentiable text-to-image sampling, DDIM inversion and decoding of one generator.

    Attributes:
        guidance_scale: the generator's default guidance (a request's None means this).
        steps: the generator's default number of denoising steps.
        noise_shape: shape of one output's initial noise (pixels for the built-in model,
            VAE latents for Stable Diffusion).
        device: where tensors are computed.
    """

    guidance_scale: float
    steps: int
    noise_shape: tuple[int, ...]
    device: torch.device

    def conditioning(
        self, requests: Sequence[GenerationRequest]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, null): one row of prompt embeddings per request, shapes (R, *E), float32 on
        :attr:`device`, no graph. ``cond`` is the request's ``prompt_embeds`` when set, else
        the encoding of its prompt (the class-embedding row for the built-in model); ``null``
        likewise from ``negative_prompt_embeds`` / the negative prompt / the null class.
        These are exactly what :meth:`denoise` needs to reproduce ``generate``."""
        ...

    def initial_noise(self, request: GenerationRequest) -> torch.Tensor:
        """The noise ``generate`` starts ``request``'s outputs from: (num_outputs,
        *noise_shape), ``request.latents`` when set, else drawn from ``request.seed + i``."""
        ...

    def denoise(
        self,
        noise: torch.Tensor,
        cond: torch.Tensor,
        null: torch.Tensor,
        *,
        guidance: torch.Tensor,
        steps: int,
        backprop_steps: int | None = None,
        checkpointing: bool = False,
    ) -> torch.Tensor:
        """Text-to-image sampling from ``noise`` (n, *noise_shape) with classifier-free
        guidance ``guidance`` (n,); returns the clean output (n, *noise_shape) in generator
        space, differentiable in ``noise``, ``cond`` and ``null`` (each (n, *E)).

        ``backprop_steps`` K keeps a graph for the last K steps only (the earlier ones run
        under ``no_grad``, so no gradient reaches ``noise``); ``checkpointing`` recomputes
        denoiser activations in the backward pass instead of storing them."""
        ...

    def decode(self, clean: torch.Tensor) -> torch.Tensor:
        """Generator-space outputs (n, *noise_shape) as images (n, C, H, W) in [0, 1] at the
        generator's output size, differentiably (the PNG is this, rounded to uint8)."""
        ...

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (n, C, H, W) in [0, 1] (any size) into generator space (n, *noise_shape):
        the inverse of :meth:`decode` up to resizing (and the VAE's reconstruction error)."""
        ...

    def invert(
        self,
        clean: torch.Tensor,
        cond: torch.Tensor,
        null: torch.Tensor,
        *,
        guidance: torch.Tensor,
        steps: int,
        fixed_point: int = 0,
    ) -> torch.Tensor:
        """DDIM inversion: the initial noise (n, *noise_shape) from which :meth:`denoise`
        with the same conditioning, guidance (n,) and steps regenerates ``clean``. No graph
        is kept.

        Plain DDIM inversion (``fixed_point`` 0) predicts each step's noise at the point it
        starts from rather than the one it reaches, which is exact only in the limit of
        many steps; ``fixed_point`` n > 0 re-predicts it n times at the point reached (a
        fixed-point iteration, as in ReNoise / AIDI), which makes each step the exact
        inverse of the sampler's step when the sampler does not clip its x0 prediction."""
        ...


def resize_bicubic(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Images (n, C, H, W) in [0, 1] resized to ``size`` (height, width), differentiably:
    bicubic with antialiasing (torch's counterpart of the PNG path's PIL bicubic), clamped
    back into [0, 1] where the bicubic kernel overshoots."""
    resized = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)
    return resized.clamp(0.0, 1.0)


def differentiable_sampler(generator: object) -> DifferentiableSampler:
    """The :class:`DifferentiableSampler` of an image generator built by utilgen.

    Raises:
        GenerationError: the generator cannot be opened up (a text generator).
    """
    from utilgen.generate.builtin.generator import BuiltinDiffusionGenerator

    if isinstance(generator, BuiltinDiffusionGenerator):
        from utilgen.generate.builtin.differentiable import BuiltinSampler

        return BuiltinSampler(generator)
    from utilgen.generate.diffusers_backend import DiffusersGenerator

    if isinstance(generator, DiffusersGenerator):
        from utilgen.generate.diffusers_differentiable import DiffusersSampler

        return DiffusersSampler(generator)
    raise GenerationError(
        f"{type(generator).__name__} cannot be optimised instance by instance; prompt "
        "ascent and noise optimisation need the built-in or a diffusers image generator"
    )
