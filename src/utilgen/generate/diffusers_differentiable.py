"""``DiffusersSampler``: a Stable Diffusion pipeline opened up as a ``DifferentiableSampler``.

UtilGen's instance-level feedback (shared/papers/000) backpropagates a classifier's utility
through the sampler into a request's prompt embeddings or initial noise, and finds a sample's
initial noise by DDIM inversion with asymmetric classifier-free guidance. This module gives a
:class:`~utilgen.generate.diffusers_backend.DiffusersGenerator` those operations with the
pipeline's own parts, through their public APIs: ``encode_prompt``, the U-Net, the scheduler
(rebuilt from the pipeline's scheduler config), ``diffusers.DDIMInverseScheduler`` and the VAE.

Contract (``utilgen.generate.differentiable``): ``decode(denoise(initial_noise(r),
*conditioning([r]), guidance, steps))`` is the image ``generator.generate([r])`` writes for a
text-to-image request, up to uint8 rounding. So the denoising loop here is the one of
``StableDiffusionPipeline.__call__``: initial noise times ``init_noise_sigma``,
``scale_model_input``, one U-Net call on [negative; positive] embeddings, guidance
``uncond + g (cond - uncond)`` only where g > 1 (diffusers' ``do_classifier_free_guidance``),
``scheduler.step`` with ``eta = 0``, and ``vae.decode(latents / scaling_factor)``.

Memory: ``backprop_steps`` K runs all but the last K denoising iterations without a graph
(truncated backpropagation). ``checkpointing`` wraps each U-Net call in
``torch.utils.checkpoint`` (non-reentrant), one checkpoint per guidance half, so a step keeps
only its inputs; the backward pass recomputes one half-batch U-Net forward at a time, and
with diffusers' own per-block checkpointing switched on during that recomputation (and only
then: the U-Net is shared with generation and the trainers), so even the recomputed graph
keeps only block boundaries. Measured on the tiny pipeline (benchmarks/RESULTS.md): the
graph of 10 steps drops from about 2 GiB to the size of its steps' inputs, and prompt
ascent's peak memory above the loaded models is 1.5x generation's (1.9-2.2x on the first
call, which also pays one-time kernel caches).

Limits, each a one-line :class:`~utilgen.generate.request.GenerationError`:

* only ``StableDiffusionPipeline`` (SD 1.x/2.x); SDXL also needs pooled embeddings and
  micro-conditioning, LCM-style U-Nets a guidance embedding;
* a stochastic sampler (DDPM, ancestral, SDE) draws fresh noise at every step from the
  request's generator, so no noise tensor determines its output;
* :meth:`DiffusersSampler.invert` needs a DDIM sampler (``generator.diffusers.scheduler=ddim``):
  DDIM inversion runs DDIM's deterministic update backwards, and its noise regenerates the
  input only under the same DDIM update. Under another sampler it raises instead of
  returning a noise that the generator would not map back.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from utilgen.generate.differentiable import resize_bicubic
from utilgen.generate.diffusers_backend import DiffusersGenerator
from utilgen.generate.request import GenerationError, GenerationRequest

# Samplers whose step adds fresh noise drawn from the pipeline's torch generator: their
# output is not a function of the initial noise alone (DPM-Solver's "sde-*" algorithm types
# are checked apart, by config).
STOCHASTIC_SCHEDULERS = frozenset(
    {
        "DDPMScheduler",
        "EulerAncestralDiscreteScheduler",
        "KDPM2AncestralDiscreteScheduler",
        "DPMSolverSDEScheduler",
        "LCMScheduler",
        "TCDScheduler",
        "CMStochasticIterativeScheduler",
    }
)


# 1. pure helpers --------------------------------------------------------------------------


def _one_row(tensor: torch.Tensor, request: GenerationRequest, what: str) -> torch.Tensor:
    """A request's ``prompt_embeds`` / ``negative_prompt_embeds`` as one (1, T, D) row.

    The backend accepts (T, D), (1, T, D) or one row per output; the sampler conditions a
    request with one row, so per-output rows must all be equal.
    """
    t = tensor.detach()
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or t.shape[0] not in (1, request.num_outputs):
        raise GenerationError(
            f"request {request.class_name!r}: {what} must have shape (T, D), (1, T, D) or "
            f"(num_outputs={request.num_outputs}, T, D), got {tuple(tensor.shape)}"
        )
    if t.shape[0] > 1 and not bool((t == t[:1]).all()):
        raise GenerationError(
            f"request {request.class_name!r}: {what} differs between outputs; the "
            "differentiable sampler conditions a request with one row, so split it into one "
            "request per output"
        )
    return t[:1]


def _stochastic(scheduler: Any) -> bool:
    """Whether ``scheduler.step`` draws fresh noise (so sampling is not a function of the
    initial noise)."""
    algorithm = str(getattr(scheduler.config, "algorithm_type", ""))
    return type(scheduler).__name__ in STOCHASTIC_SCHEDULERS or algorithm.startswith("sde")


def _pipeline_problem(pipeline: Any) -> str | None:
    """Why ``pipeline`` cannot be opened up here, or None when it can."""
    from diffusers import StableDiffusionPipeline

    name = type(pipeline).__name__
    unet: Any = getattr(pipeline, "unet", None)  # read before isinstance narrows the type
    if "pooled_prompt_embeds" in inspect.signature(pipeline.__call__).parameters:
        return (
            f"{name} conditions on pooled prompt embeddings and micro-conditioning, which the "
            "differentiable sampler does not drive; use a Stable Diffusion 1.x/2.x pipeline "
            "for prompt_ascent / noise_opt or switch those components off"
        )
    if not isinstance(pipeline, StableDiffusionPipeline):
        return (
            f"{name} is not a StableDiffusionPipeline, whose denoising loop the differentiable "
            "sampler reproduces; use a Stable Diffusion 1.x/2.x pipeline for prompt_ascent / "
            "noise_opt or switch those components off"
        )
    if unet.config.time_cond_proj_dim is not None:
        return (
            f"{name}'s U-Net takes a guidance embedding (time_cond_proj_dim, LCM-style), which "
            "the differentiable sampler does not drive; use an undistilled SD 1.x/2.x model"
        )
    return None


def _scheduler_problem(scheduler: Any) -> str | None:
    """Why sampling with ``scheduler`` is not differentiable in the initial noise, or None."""
    if _stochastic(scheduler):
        return (
            f"sampler {type(scheduler).__name__} adds fresh noise at every step, so no initial "
            "noise determines its samples; set generator.diffusers.scheduler to a "
            "deterministic one (ddim, euler, dpm++, unipc, ...)"
        )
    return None


@contextlib.contextmanager
def block_checkpointing(unet: Any) -> Iterator[None]:
    """diffusers' per-block gradient checkpointing of ``unet`` switched on inside the block
    (public ``enable_gradient_checkpointing``) and back off after, unless it was on."""
    was_on = bool(unet.is_gradient_checkpointing)
    if not was_on:
        unet.enable_gradient_checkpointing()
    try:
        yield
    finally:
        if not was_on:
            unet.disable_gradient_checkpointing()


# 2. the sampler ---------------------------------------------------------------------------


class DiffusersSampler:
    """Differentiable sampling, DDIM inversion, encoding and decoding of a Stable Diffusion
    ``DiffusersGenerator`` (implements ``DifferentiableSampler``).

    Generator space is the VAE's scaled latent space: ``noise_shape`` is (C, H/f, W/f) for the
    generator's ``image_size`` and VAE scale factor f. Tensors given to and returned by the
    methods are float32 on :attr:`device`; the U-Net, VAE and text encoder run in the
    pipeline's dtype.

    The pipeline's U-Net, VAE and text encoder are frozen (``requires_grad_(False)``) before
    every graph is built, so no gradient reaches a weight. Generation runs under ``no_grad``
    and utilgen's trainers (LoRA, textual inversion, Diffusion-DPO) set ``requires_grad``
    themselves, so freezing changes nothing else.

    Attributes:
        generator: the wrapped generator (its pipeline and scheduler are read at each call,
            so a LoRA adapter or textual-inversion tokens loaded later are used).
        guidance_scale: the generator's default guidance.
        steps: the generator's default number of denoising steps.
        noise_shape: (C, H/f, W/f), one output's latents.
        device: the pipeline's execution device.
    """

    def __init__(self, generator: DiffusersGenerator) -> None:
        """Open up ``generator``'s pipeline.

        Raises:
            GenerationError: the pipeline is not a Stable Diffusion 1.x/2.x pipeline (SDXL,
                LCM), or its sampler is stochastic.
        """
        pipeline = generator.pipeline
        problem = _pipeline_problem(pipeline) or _scheduler_problem(pipeline.scheduler)
        if problem is not None:
            raise GenerationError(problem)
        self.generator = generator
        self.guidance_scale = float(generator.guidance_scale)
        self.steps = int(generator.steps)
        factor = int(pipeline.vae_scale_factor)
        side = generator.image_size // factor
        self.noise_shape: tuple[int, ...] = (int(pipeline.unet.config.in_channels), side, side)
        device = getattr(pipeline, "_execution_device", None) or pipeline.device
        self.device = torch.device(device)

    # -- parts ---------------------------------------------------------------------------

    @property
    def pipeline(self) -> Any:
        """The generator's text-to-image pipeline."""
        return self.generator.pipeline

    def _freeze(self) -> None:
        """No gradient may reach the pipeline's weights (see the class docstring)."""
        for name in ("unet", "vae", "text_encoder"):
            module = getattr(self.pipeline, name, None)
            if module is not None:
                module.requires_grad_(False)

    def _sampling_scheduler(self, steps: int) -> Any:
        """A fresh copy of the generator's scheduler (same class and config) with ``steps``
        timesteps set: generation's sampler, without touching the shared instance."""
        scheduler = self.pipeline.scheduler
        problem = _scheduler_problem(scheduler)
        if problem is not None:
            raise GenerationError(problem)
        fresh = type(scheduler).from_config(scheduler.config)
        fresh.set_timesteps(steps, device=self.device)
        return fresh

    def _step_kwargs(self, scheduler: Any) -> dict[str, Any]:
        """What ``StableDiffusionPipeline.prepare_extra_step_kwargs`` passes with the
        backend's defaults: ``eta = 0`` where the step accepts it (no generator: the
        sampler is deterministic)."""
        accepted = inspect.signature(scheduler.step).parameters
        return {"eta": 0.0} if "eta" in accepted else {}

    def _guided_noise(
        self,
        scheduler: Any,
        latents: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        null: torch.Tensor,
        guidance: torch.Tensor,
        checkpointing: bool,
    ) -> torch.Tensor:
        """The guided model output at ``t`` (n, C, h, w), float32.

        As diffusers: one U-Net call on [null; cond] when any row has g > 1, and
        ``uncond + g (cond - uncond)`` for those rows; rows with g <= 1 get the conditional
        output alone (the pipeline skips guidance there), and a batch without g > 1 skips
        the unconditional half.
        """
        unet = self.pipeline.unet
        guided = bool((guidance > 1.0).any())
        model_input = torch.cat([latents, latents]) if guided else latents
        model_input = scheduler.scale_model_input(model_input, t).to(unet.dtype)
        embeds = (torch.cat([null, cond]) if guided else cond).to(unet.dtype)

        def call(sample: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
            return unet(sample, t, encoder_hidden_states=hidden, return_dict=False)[0]

        def call_by_blocks(sample: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
            # Runs again in the backward pass (the outer checkpoint's recomputation): the
            # U-Net's own block checkpointing is on exactly while it runs, so the recomputed
            # graph keeps only block boundaries and the shared U-Net is left as it was.
            with block_checkpointing(unet):
                return call(sample, hidden)

        if checkpointing and torch.is_grad_enabled():
            # One checkpoint per guidance half: the backward pass recomputes and frees them one
            # after the other, so at most half the batch's U-Net graph is alive at a time.
            halves = 2 if guided else 1
            out = torch.cat(
                [
                    checkpoint(call_by_blocks, sample, hidden, use_reentrant=False)
                    for sample, hidden in zip(
                        model_input.chunk(halves), embeds.chunk(halves), strict=True
                    )
                ]
            )
        else:
            out = call(model_input, embeds)
        out = out.float()
        if not guided:
            return out
        uncond, text = out.chunk(2)
        g = guidance.to(out).view(-1, *([1] * (out.dim() - 1)))
        return torch.where(g > 1.0, uncond + g * (text - uncond), text)

    # -- DifferentiableSampler -----------------------------------------------------------

    def conditioning(
        self, requests: Sequence[GenerationRequest]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, null), each (R, T, D) float32 on :attr:`device`, no graph.

        Per request, what the pipeline's ``encode_prompt`` gives ``generate``: the request's
        ``prompt_embeds`` when set, else its encoded prompt (textual-inversion tokens loaded
        in the pipeline apply); ``negative_prompt_embeds`` when set, else its encoded
        negative prompt, padded to the prompt embeddings' length as the pipeline does.

        Raises:
            GenerationError: an img2img request, embeddings of a bad shape or that differ
                between a request's outputs, or requests whose embedding lengths differ.
        """
        if not requests:
            raise GenerationError("conditioning needs at least one request")
        conds, nulls = [], []
        with torch.no_grad():
            for request in requests:
                self._check_text2img(request)
                pe = request.prompt_embeds
                ne = request.negative_prompt_embeds
                dtype = self.pipeline.unet.dtype
                cond, null = self.pipeline.encode_prompt(
                    None if pe is not None else [request.prompt],
                    self.device,
                    1,
                    True,
                    [request.negative_prompt] if ne is None else None,
                    prompt_embeds=(
                        None
                        if pe is None
                        else _one_row(pe, request, "prompt_embeds").to(self.device, dtype)
                    ),
                    negative_prompt_embeds=(
                        None
                        if ne is None
                        else _one_row(ne, request, "negative_prompt_embeds").to(self.device, dtype)
                    ),
                )
                if cond.shape != null.shape:
                    raise GenerationError(
                        f"request {request.class_name!r}: prompt embeddings {tuple(cond.shape)} "
                        f"and negative ones {tuple(null.shape)} must have the same shape"
                    )
                conds.append(cond.float())
                nulls.append(null.float())
        shapes = {tuple(c.shape[1:]) for c in conds}
        if len(shapes) > 1:
            raise GenerationError(
                f"requests' prompt embeddings have different shapes {sorted(shapes)}; "
                "condition requests with equal embedding lengths together"
            )
        return torch.cat(conds), torch.cat(nulls)

    def _check_text2img(self, request: GenerationRequest) -> None:
        if request.init_image is not None:
            raise GenerationError(
                f"request {request.class_name!r} is img2img (init_image set); the "
                "differentiable sampler runs text-to-image requests only"
            )

    def initial_noise(self, request: GenerationRequest) -> torch.Tensor:
        """The unit-variance latents ``generate`` starts ``request``'s outputs from:
        (num_outputs, *noise_shape) float32, no graph.

        ``request.latents`` (shared by every output or one per output) when set, rounded to
        the U-Net's dtype as the backend passes them; else output i's noise from a CPU
        ``torch.Generator`` seeded with ``request.seed + i``, drawn by ``randn_tensor`` in
        the prompt embeddings' dtype, exactly as the pipeline draws a batch from a list of
        generators. (``denoise`` multiplies by the scheduler's ``init_noise_sigma``.)

        Raises:
            GenerationError: an img2img request, or latents of the wrong shape.
        """
        from diffusers.utils.torch_utils import randn_tensor

        self._check_text2img(request)
        n = request.num_outputs
        if request.latents is not None:
            latents = request.latents.detach()
            if latents.dim() == len(self.noise_shape):
                latents = latents.unsqueeze(0)
            if tuple(latents.shape[1:]) != self.noise_shape or latents.shape[0] not in (1, n):
                raise GenerationError(
                    f"request {request.class_name!r}: latents must be {self.noise_shape}, "
                    f"(1, ...) or (num_outputs={n}, ...) for {self.generator.image_size}px "
                    f"images, got {tuple(request.latents.shape)}"
                )
            latents = latents.expand(n, *self.noise_shape)
            return latents.to(self.device, self.pipeline.unet.dtype).float()
        encoder = getattr(self.pipeline, "text_encoder", None)
        dtype = encoder.dtype if encoder is not None else self.pipeline.unet.dtype
        draws = [
            randn_tensor(
                (1, *self.noise_shape),
                generator=torch.Generator("cpu").manual_seed(request.seed + i),
                device=self.device,
                dtype=dtype,
            )
            for i in range(n)
        ]
        return torch.cat(draws).float()

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
        """Text-to-image sampling with the generator's sampler; returns the final latents
        (n, *noise_shape) float32, differentiable in ``noise``, ``cond`` and ``null``.

        ``backprop_steps`` K counts denoising-loop iterations (U-Net calls; the steps of a
        first-order sampler): the earlier ones run under ``no_grad``, so with K smaller
        than the loop no gradient reaches ``noise``. ``checkpointing`` recomputes each
        U-Net forward in the backward pass, one guidance half at a time and block by block
        (module docstring); the forward values are those of one batched call up to float
        rounding.

        Raises:
            GenerationError: mismatched batch sizes, steps < 1, or a stochastic sampler.
        """
        n = noise.shape[0]
        if steps < 1:
            raise GenerationError(f"steps must be >= 1, got {steps}")
        if backprop_steps is not None and backprop_steps < 1:
            raise GenerationError(f"backprop_steps must be >= 1 or None, got {backprop_steps}")
        if cond.shape[0] != n or null.shape[0] != n or guidance.shape != (n,):
            raise GenerationError(
                f"denoise needs n rows of everything: noise {tuple(noise.shape)}, cond "
                f"{tuple(cond.shape)}, null {tuple(null.shape)}, guidance {tuple(guidance.shape)}"
            )
        self._freeze()
        scheduler = self._sampling_scheduler(steps)
        step_kwargs = self._step_kwargs(scheduler)
        timesteps = scheduler.timesteps
        graph_from = 0 if backprop_steps is None else max(0, len(timesteps) - backprop_steps)
        cond, null = cond.to(self.device), null.to(self.device)
        guidance = guidance.to(self.device)
        latents = noise.to(self.device, torch.float32) * scheduler.init_noise_sigma
        grad = torch.is_grad_enabled()
        for i, t in enumerate(timesteps):
            with torch.set_grad_enabled(grad and i >= graph_from):
                eps = self._guided_noise(scheduler, latents, t, cond, null, guidance, checkpointing)
                latents = scheduler.step(eps, t, latents, **step_kwargs, return_dict=False)[0]
        return latents

    def decode(self, clean: torch.Tensor) -> torch.Tensor:
        """Latents (n, *noise_shape) as images (n, 3, H, W) in [0, 1], float32,
        differentiably: ``vae.decode(latents / scaling_factor)`` then the image processor's
        denormalisation ``(x / 2 + 0.5).clamp(0, 1)`` (the PNG is this, rounded to uint8)."""
        self._freeze()
        vae = self.pipeline.vae
        scaled = (clean.to(self.device) / vae.config.scaling_factor).to(vae.dtype)
        # With a graph, the decoder checkpoints block by block (diffusers' own, on for this
        # call only): its activations at full resolution would otherwise be the largest
        # part of a backward pass that checkpoints the U-Net.
        checkpointing = block_checkpointing(vae) if torch.is_grad_enabled() else nullcontext()
        with checkpointing:
            image = vae.decode(scaled, return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0.0, 1.0)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (n, C, H, W) in [0, 1] (C = 1 or 3, any size) as latents (n, *noise_shape)
        float32: resized (bicubic, antialiased) to the generator's image size, the VAE
        posterior mean times ``scaling_factor``. Differentiable in ``images``.

        Raises:
            GenerationError: not a (n, 1 or 3, H, W) tensor.
        """
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise GenerationError(
                f"encode needs images (n, 1 or 3, H, W) in [0, 1], got {tuple(images.shape)}"
            )
        self._freeze()
        vae = self.pipeline.vae
        pixels = images.to(self.device, torch.float32)
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        size = self.generator.image_size
        if tuple(pixels.shape[-2:]) != (size, size):
            pixels = resize_bicubic(pixels, (size, size))
        posterior = vae.encode((pixels * 2 - 1).to(vae.dtype)).latent_dist
        return posterior.mean.float() * vae.config.scaling_factor

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
        """DDIM inversion of latents ``clean`` (n, *noise_shape): the unit-variance initial
        noise from which :meth:`denoise` with this conditioning, guidance and steps
        regenerates them (approximately; exact as steps grow). Float32, no graph.

        ``diffusers.DDIMInverseScheduler`` is built from the generator's DDIM config, so its
        timesteps are DDIM's in reverse and its first step starts from DDIM's final alpha;
        the model is evaluated at each target timestep, as diffusers' inversion pipelines do.
        ``fixed_point`` n > 0 then re-predicts the noise n times at the point the step
        reached and redoes the step from where it started (ReNoise / AIDI's fixed-point
        iteration), which makes each step the exact inverse of DDIM's as n grows. Asymmetric
        CFG is the caller passing a ``guidance`` different from regeneration's. The inverse
        scheduler does not clip x0 (a clipped step cannot be inverted).

        Raises:
            GenerationError: the generator's sampler is not DDIM, or its timestep spacing has
                no inverse (only "leading" and "trailing" do).
        """
        from diffusers import DDIMInverseScheduler, DDIMScheduler

        n = clean.shape[0]
        if cond.shape[0] != n or null.shape[0] != n or guidance.shape != (n,):
            raise GenerationError(
                f"invert needs n rows of everything: clean {tuple(clean.shape)}, cond "
                f"{tuple(cond.shape)}, null {tuple(null.shape)}, guidance {tuple(guidance.shape)}"
            )
        base = self.pipeline.scheduler
        config = base.config
        if not isinstance(base, DDIMScheduler):
            raise GenerationError(
                f"DDIM inversion needs a DDIM sampler to regenerate from its noise, but the "
                f"generator samples with {type(base).__name__}; set "
                "generator.diffusers.scheduler=ddim"
            )
        spacing = config.timestep_spacing
        if spacing not in ("leading", "trailing"):
            raise GenerationError(
                f"DDIM inversion supports timestep_spacing 'leading' or 'trailing', the "
                f"generator's DDIM uses {spacing!r}; rebuild its scheduler with one of those"
            )
        if fixed_point < 0:
            raise GenerationError(f"fixed_point must be >= 0, got {fixed_point}")
        forward = self._sampling_scheduler(steps)
        inverse = DDIMInverseScheduler.from_config(config, clip_sample=False)
        inverse.set_timesteps(steps, device=self.device)
        if not torch.equal(inverse.timesteps.cpu(), forward.timesteps.cpu().flip(0)):
            raise GenerationError(
                f"DDIMInverseScheduler's timesteps do not mirror the generator's DDIM at "
                f"{steps} steps; use another number of steps"
            )
        self._freeze()
        cond, null = cond.to(self.device), null.to(self.device)
        guidance = guidance.to(self.device)
        latents = clean.detach().to(self.device, torch.float32)
        with torch.no_grad():
            for t in inverse.timesteps:
                eps = self._guided_noise(inverse, latents, t, cond, null, guidance, False)
                reached = inverse.step(eps, t, latents, return_dict=False)[0]
                for _ in range(fixed_point):
                    eps = self._guided_noise(inverse, reached, t, cond, null, guidance, False)
                    reached = inverse.step(eps, t, latents, return_dict=False)[0]
                latents = reached
        return latents / forward.init_noise_sigma
