"""DDIM sampling with classifier-free guidance, text-to-image and img2img.

Guidance follows Ho & Salimans (2022): eps = eps_null + g (eps_cond - eps_null), both
noises from one forward pass over the doubled batch. img2img follows diffusers'
``StableDiffusionImg2ImgPipeline``: of ``steps`` DDIM timesteps the last
``int(steps * strength)`` are kept, the init image is noised with ``scheduler.add_noise`` to
the first kept timestep and denoised from there, so strength 0 keeps the image and
strength 1 starts from (almost) pure noise.

Nothing here disables gradients: :func:`ddim_sample` is differentiable in the class
embeddings and the initial noise, for UtilGen's instance-level optimisation.
"""

from __future__ import annotations

import torch
from diffusers.schedulers.scheduling_ddim import DDIMScheduler

from utilgen.generate.builtin.model import ClassConditionalUNet


def guided_noise(
    model: ClassConditionalUNet,
    sample: torch.Tensor,
    timestep: torch.Tensor | int,
    cond: torch.Tensor,
    null: torch.Tensor,
    guidance: torch.Tensor,
) -> torch.Tensor:
    """Classifier-free guided noise prediction for ``sample`` (n, C, H, W).

    Args:
        cond, null: (n, d) conditional and unconditional class embeddings.
        guidance: (n,) guidance scale per row.
    """
    n = len(sample)
    both = model(torch.cat([sample, sample]), timestep, torch.cat([cond, null]))
    eps_cond, eps_null = both[:n], both[n:]
    g = guidance.to(sample.dtype).reshape(n, 1, 1, 1)
    return eps_null + g * (eps_cond - eps_null)


def sampling_timesteps(
    scheduler: DDIMScheduler, steps: int, strength: float | None
) -> torch.Tensor:
    """The DDIM timesteps to run, in descending order: all ``steps`` of them for
    text-to-image (``strength`` None), the last ``int(steps * strength)`` for img2img
    (possibly none). Sets ``scheduler``'s timesteps as a side effect."""
    scheduler.set_timesteps(steps)
    if strength is None:
        return scheduler.timesteps
    kept = min(int(steps * strength), steps)
    return scheduler.timesteps[steps - kept :]


def ddim_sample(
    model: ClassConditionalUNet,
    scheduler: DDIMScheduler,
    start: torch.Tensor,
    timesteps: torch.Tensor,
    cond: torch.Tensor,
    null: torch.Tensor,
    guidance: torch.Tensor,
) -> torch.Tensor:
    """Denoise ``start`` (the noisy sample at ``timesteps[0]``) along ``timesteps`` with
    deterministic DDIM (eta 0); returns the clean sample, (n, C, H, W) in [-1, 1].

    ``scheduler.set_timesteps`` must have been called (see :func:`sampling_timesteps`).
    """
    sample = start
    for t in timesteps:
        eps = guided_noise(model, sample, t, cond, null, guidance)
        sample = scheduler.step(eps, t, sample, eta=0.0, return_dict=False)[0]
    return sample


def noised_init(
    scheduler: DDIMScheduler, init: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """The img2img start: ``init`` (n, C, H, W) in [-1, 1] noised to ``timesteps[0]``."""
    first = timesteps[:1].repeat(len(init))
    return scheduler.add_noise(init, noise, first)  # type: ignore[arg-type]
