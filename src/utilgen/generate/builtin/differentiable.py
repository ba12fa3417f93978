"""The built-in generator as a :class:`~utilgen.generate.differentiable.DifferentiableSampler`.

Its prompt embeddings are class-embedding rows (E = (d,)); its noise lives in pixel space
(C, S, S), so :meth:`BuiltinSampler.decode` is only a clamp, a rescale and (when the
training images were not S x S) a resize. Denoising reuses the generator's own guided DDIM
step (:func:`~utilgen.generate.builtin.sampling.guided_noise` and ``scheduler.step``), so the
contract of the protocol holds by construction; inversion runs diffusers'
``DDIMInverseScheduler`` built from the same scheduler config.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.schedulers.scheduling_ddim_inverse import DDIMInverseScheduler
from torch.utils.checkpoint import checkpoint

from utilgen.generate.builtin.generator import BuiltinDiffusionGenerator
from utilgen.generate.builtin.sampling import guided_noise, sampling_timesteps
from utilgen.generate.differentiable import resize_bicubic
from utilgen.generate.request import GenerationRequest


class BuiltinSampler:
    """Differentiable sampling, inversion and decoding of a :class:`BuiltinDiffusionGenerator`.

    Gradients reach the inputs (noise, embeddings) only; callers should take them with
    ``torch.autograd.grad`` so that the generator's weights collect no ``.grad``.
    """

    def __init__(self, generator: BuiltinDiffusionGenerator) -> None:
        self.generator = generator
        self.guidance_scale = generator.guidance_scale
        self.steps = generator.steps
        self.noise_shape: tuple[int, ...] = generator.image_format.sample_shape
        self.device = generator.device

    def conditioning(
        self, requests: Sequence[GenerationRequest]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.generator.embeddings(r) for r in requests]
        cond = torch.cat([c for c, _ in rows]).to(self.device)
        null = torch.cat([n for _, n in rows]).to(self.device)
        return cond, null

    def initial_noise(self, request: GenerationRequest) -> torch.Tensor:
        return torch.stack(
            [self.generator.initial_noise(request, i) for i in range(request.num_outputs)]
        ).to(self.device)

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
        model, scheduler = self.generator.model, self.generator.scheduler
        timesteps = sampling_timesteps(scheduler, steps, None)
        scales = guidance.to(self.device, torch.float32)
        sample = noise.to(self.device) * scheduler.init_noise_sigma
        first_tracked = 0 if backprop_steps is None else max(0, len(timesteps) - backprop_steps)
        for i, t in enumerate(timesteps):
            tracked = i >= first_tracked and torch.is_grad_enabled()
            with torch.set_grad_enabled(tracked):
                if tracked and checkpointing:
                    eps = checkpoint(
                        guided_noise, model, sample, t, cond, null, scales, use_reentrant=False
                    )
                else:
                    eps = guided_noise(model, sample, t, cond, null, scales)
                sample = scheduler.step(eps, t, sample, eta=0.0, return_dict=False)[0]
        return sample

    def decode(self, clean: torch.Tensor) -> torch.Tensor:
        fmt = self.generator.image_format
        pixels = (clean.clamp(-1.0, 1.0) + 1.0) / 2.0
        if (fmt.height, fmt.width) == tuple(pixels.shape[-2:]):
            return pixels
        # The PNG path resizes with PIL bicubic; resize_bicubic is its differentiable
        # counterpart (equal up to resampling differences).
        return resize_bicubic(pixels, (fmt.height, fmt.width))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        fmt = self.generator.image_format
        images = images.to(self.device, torch.float32)
        if images.shape[1] != fmt.channels:
            images = (
                images.expand(-1, 3, -1, -1) if fmt.channels == 3 else images.mean(1, keepdim=True)
            )
        if tuple(images.shape[-2:]) != (fmt.size, fmt.size):
            images = resize_bicubic(images, (fmt.size, fmt.size))
        return images * 2.0 - 1.0

    @torch.no_grad()
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
        model = self.generator.model
        # No x0 clipping: a clipped step is many-to-one and cannot be inverted.
        inverse = DDIMInverseScheduler.from_config(
            self.generator.scheduler.config, clip_sample=False
        )
        inverse.set_timesteps(steps)
        scales = guidance.to(self.device, torch.float32)
        sample = clean.to(self.device, torch.float32)
        for t in inverse.timesteps:
            # The noise is predicted at the level being moved to, as diffusers' inversion
            # pipelines do: the standard first-order DDIM inversion.
            eps = guided_noise(model, sample, t, cond, null, scales)
            moved = inverse.step(eps, t, sample, return_dict=False)[0]
            for _ in range(fixed_point):
                eps = guided_noise(model, moved, t, cond, null, scales)
                moved = inverse.step(eps, t, sample, return_dict=False)[0]
            sample = moved
        return sample / self.generator.scheduler.init_noise_sigma
