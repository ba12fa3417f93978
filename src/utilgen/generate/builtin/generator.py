"""``BuiltinDiffusionGenerator``: the trained built-in model behind the ``Generator`` protocol.

A request conditions on its label's row of the class-embedding table, or on its
``prompt_embeds`` in place of that row; ``negative_prompt_embeds`` likewise replace the
null-class row that guidance pushes away from. Output ``i`` of a request starts from its
own noise, drawn by a ``torch.Generator`` seeded with ``request.seed + i`` (or taken from
``request.latents``), and DDIM with eta 0 adds no noise after that: an output does not
depend on which other outputs share its batch.

On disk (``save_pretrained``)::

    DIR/builtin_generator.json        class names, image format, sampling defaults, training
    DIR/class_embeddings.safetensors  the class-embedding table ("weight": (classes + 1, d))
    DIR/unet/                         UNet2DModel.save_pretrained (config.json + safetensors)
    DIR/scheduler/                    DDIMScheduler.save_pretrained
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.models.unets.unet_2d import UNet2DModel
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from utilgen.atomic import write_json_atomic
from utilgen.data.labelled import Modality
from utilgen.errors import ModelNotFoundError
from utilgen.generate.base import make_sample
from utilgen.generate.builtin.model import ClassConditionalUNet, ImageFormat
from utilgen.generate.builtin.pixels import to_images, to_model_space, to_output_format
from utilgen.generate.builtin.sampling import ddim_sample, noised_init, sampling_timesteps
from utilgen.generate.request import GenerationError, GenerationRequest
from utilgen.pool.payload import encode_image
from utilgen.pool.sample import Sample
from utilgen.progress import progress_or_nothing

log = logging.getLogger(__name__)

CONFIG_NAME = "builtin_generator.json"
EMBEDDINGS_NAME = "class_embeddings.safetensors"
FORMAT_VERSION = 1


def weights_fingerprint(model: ClassConditionalUNet) -> str:
    """SHA-256 (12 hex) of every weight's name, shape and bytes: identifies the model in
    provenance whether it was just trained or loaded from disk."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().float().contiguous().numpy()
        h.update(f"{name}{tuple(array.shape)}".encode())
        h.update(array.tobytes())
    return h.hexdigest()[:12]


def _as_rows(value: torch.Tensor, dim: int, what: str) -> torch.Tensor:
    """An embedding given as (d,) or (1, d), as a (1, d) float tensor."""
    if value.dim() == 1:
        value = value[None]
    if value.dim() != 2 or value.shape != (1, dim):
        raise GenerationError(
            f"{what} must have shape ({dim},) or (1, {dim}) for this built-in generator, got "
            f"{tuple(value.shape)}; pass one embedding like generator.class_embedding(label)"
        )
    return value.float()


class BuiltinDiffusionGenerator:
    """The built-in class-conditional diffusion model, ready to generate.

    Attributes:
        modality: always ``"image"``.
        name: ``builtin-diffusion:<weights fingerprint>`` (provenance of every sample).
        class_names: class index -> name; labels index this.
        image_format: training images' size and channels, and the UNet working size.
        guidance_scale, steps: defaults for requests that leave them unset.
        batch_size: outputs denoised together.
        training: how the model was trained (phases, data sizes, cache key); {} if unknown.
        from_cache: True when :func:`prepare_builtin_generator` loaded it from its cache.
    """

    modality: Modality = "image"

    def __init__(
        self,
        model: ClassConditionalUNet,
        scheduler: DDIMScheduler,
        *,
        class_names: Sequence[str],
        image_format: ImageFormat,
        guidance_scale: float = 1.5,
        steps: int = 25,
        batch_size: int = 16,
        device: torch.device | str = "cpu",
        training: dict[str, Any] | None = None,
    ) -> None:
        if len(class_names) != model.num_classes:
            raise ValueError(f"{len(class_names)} class names for {model.num_classes} classes")
        if guidance_scale < 0 or steps < 1 or batch_size < 1:
            raise GenerationError(
                f"built-in generator needs guidance_scale >= 0, steps >= 1 and batch_size >= 1, "
                f"got {guidance_scale}, {steps}, {batch_size}"
            )
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.scheduler = scheduler
        self.class_names = tuple(class_names)
        self.image_format = image_format
        self.guidance_scale = float(guidance_scale)
        self.steps = int(steps)
        self.batch_size = int(batch_size)
        self.training = dict(training or {})
        self.from_cache = False
        self.name = f"builtin-diffusion:{weights_fingerprint(self.model)}"

    # ---- class embeddings: the built-in model's prompt embeddings ----

    @property
    def embedding_dim(self) -> int:
        """Width d of a class embedding (a request's ``prompt_embeds`` is (d,) or (1, d))."""
        return self.model.embedding_dim

    def class_embedding(self, label: int) -> torch.Tensor:
        """A copy of ``label``'s class-embedding row, float32 (d,) on the CPU."""
        self._check_label(label)
        return self.model.class_embeddings.weight[label].detach().cpu().clone()

    def null_embedding(self) -> torch.Tensor:
        """A copy of the null class's embedding row, float32 (d,) on the CPU."""
        return self.model.class_embeddings.weight[self.model.null_label].detach().cpu().clone()

    def _check_label(self, label: int) -> None:
        if not 0 <= label < len(self.class_names):
            raise GenerationError(
                f"request label {label} is out of range: this built-in generator knows "
                f"{len(self.class_names)} classes (0..{len(self.class_names) - 1})"
            )

    # ---- checking requests (all of them, before anything is generated) ----

    def _check(self, request: GenerationRequest) -> None:
        self._check_label(request.label)
        expected = self.class_names[request.label]
        if request.class_name != expected:
            raise GenerationError(
                f"request class_name {request.class_name!r} does not match label "
                f"{request.label} ({expected!r}); use the generator's class_names"
            )
        if request.prompt_embeds is not None:
            _as_rows(request.prompt_embeds, self.embedding_dim, "prompt_embeds")
        if request.negative_prompt_embeds is not None:
            _as_rows(request.negative_prompt_embeds, self.embedding_dim, "negative_prompt_embeds")
        if request.strength is not None and request.init_image is None:
            raise GenerationError(
                "a request with strength needs an init_image (img2img); leave strength unset "
                "for text-to-image"
            )
        if request.init_image is not None:
            image = np.asarray(request.init_image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
                raise GenerationError(
                    f"init_image must be a uint8 (H, W, 1) or (H, W, 3) array, got "
                    f"{image.dtype} {image.shape}"
                )
        if request.latents is not None:
            self._latents(request)

    def _latents(self, request: GenerationRequest) -> torch.Tensor:
        """``request.latents`` as (num_outputs, C, S, S) float32 on the CPU."""
        assert request.latents is not None
        shape = self.image_format.sample_shape
        latents = request.latents.detach().float().cpu()
        n = request.num_outputs
        if latents.dim() == 3 and n == 1:
            latents = latents[None]
        if tuple(latents.shape) != (n, *shape):
            one = f"{shape} or " if n == 1 else ""
            raise GenerationError(
                f"latents of shape {tuple(latents.shape)} do not fit this built-in generator: "
                f"expected {one}{(n, *shape)} (num_outputs, channels, size, size)"
            )
        return latents

    # ---- generation ----

    def initial_noise(self, request: GenerationRequest, index: int) -> torch.Tensor:
        """Output ``index``'s initial noise, (C, S, S) on the CPU: from ``request.latents``
        when set, else drawn from ``request.seed + index``."""
        if request.latents is not None:
            return self._latents(request)[index]
        # Drawn on the CPU so that a seed gives the same noise on every device.
        rng = torch.Generator().manual_seed(request.seed + index)
        return torch.randn(self.image_format.sample_shape, generator=rng)

    def embeddings(self, request: GenerationRequest) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, d) conditional and unconditional embeddings of a request, on the CPU."""
        table = self.model.class_embeddings.weight.detach().cpu()
        dim = self.embedding_dim
        if request.prompt_embeds is not None:
            cond = _as_rows(request.prompt_embeds.detach().cpu(), dim, "prompt_embeds")
        else:
            cond = table[request.label][None]
        if request.negative_prompt_embeds is not None:
            negative = request.negative_prompt_embeds.detach().cpu()
            null = _as_rows(negative, dim, "negative_prompt_embeds")
        else:
            null = table[self.model.null_label][None]
        return cond, null

    def _settings(self, request: GenerationRequest) -> tuple[float, int, float | None]:
        """(guidance, steps, strength) of a request, defaults filled in; strength is None
        for text-to-image."""
        guidance = self.guidance_scale if request.guidance_scale is None else request.guidance_scale
        steps = self.steps if request.num_inference_steps is None else request.num_inference_steps
        strength = request.strength if request.init_image is not None else None
        return float(guidance), int(steps), strength

    def _batches(
        self, requests: Sequence[GenerationRequest]
    ) -> Iterator[list[tuple[GenerationRequest, int]]]:
        """Outputs in request order, cut into batches of consecutive outputs that share
        steps and strength (one timestep schedule per batch)."""
        batch: list[tuple[GenerationRequest, int]] = []
        key: tuple[int, float | None] | None = None
        for request in requests:
            _, steps, strength = self._settings(request)
            for i in range(request.num_outputs):
                if batch and ((steps, strength) != key or len(batch) == self.batch_size):
                    yield batch
                    batch = []
                key = (steps, strength)
                batch.append((request, i))
        if batch:
            yield batch

    def _details(self, request: GenerationRequest, timesteps: torch.Tensor) -> dict[str, Any]:
        return {
            "scheduler": type(self.scheduler).__name__,
            "eta": 0.0,
            "image_size": self.image_format.size,
            "conditioning": "prompt_embeds" if request.prompt_embeds is not None else "class",
            "unconditional": (
                "negative_prompt_embeds"
                if request.negative_prompt_embeds is not None
                else "null_class"
            ),
            "initial_noise": "latents" if request.latents is not None else "seed",
            "start_timestep": int(timesteps[0]) if len(timesteps) else None,
            "denoising_steps": len(timesteps),
        }

    def sample(
        self,
        noise: torch.Tensor,
        cond: torch.Tensor,
        *,
        null: torch.Tensor | None = None,
        guidance: float | torch.Tensor | None = None,
        steps: int | None = None,
        init: torch.Tensor | None = None,
        strength: float | None = None,
    ) -> torch.Tensor:
        """Denoise a batch in model space; differentiable in ``noise``, ``cond`` and ``null``.

        This is what :meth:`generate` runs (under ``torch.no_grad``); called directly with
        gradients on, it lets UtilGen's instance-level optimisation backpropagate a utility
        into prompt embeddings or initial noise.

        Args:
            noise: (n, C, S, S) initial noise (``image_format.sample_shape`` per row).
            cond: (n, d) class embeddings (table rows or optimised vectors).
            null: (n, d) unconditional embeddings; None uses the null-class row.
            guidance: scale, scalar or (n,); None uses :attr:`guidance_scale`.
            steps: DDIM steps; None uses :attr:`steps`.
            init, strength: img2img: (n, C, S, S) images in [-1, 1] and the strength.

        Returns:
            Clean samples (n, C, S, S) in [-1, 1] on :attr:`device` (``init`` itself when no
            denoising step remains).
        """
        n = len(noise)
        steps = self.steps if steps is None else steps
        guidance = self.guidance_scale if guidance is None else guidance
        scales = torch.as_tensor(guidance, dtype=torch.float32, device=self.device).expand(n)
        if null is None:
            null = self.model.class_embeddings.weight[self.model.null_label].expand(n, -1)
        timesteps = sampling_timesteps(
            self.scheduler, steps, strength if init is not None else None
        )
        if init is None:
            start = noise.to(self.device) * self.scheduler.init_noise_sigma
        elif len(timesteps) == 0:
            return init.to(self.device)
        else:
            start = noised_init(
                self.scheduler, init.to(self.device), noise.to(self.device), timesteps
            )
        return ddim_sample(
            self.model,
            self.scheduler,
            start,
            timesteps,
            cond.to(self.device),
            null.to(self.device),
            scales,
        )

    @torch.no_grad()
    def _generate_batch(
        self, batch: list[tuple[GenerationRequest, int]]
    ) -> tuple[list[np.ndarray], torch.Tensor]:
        """uint8 images of one batch, and the timesteps they were denoised along."""
        _, steps, strength = self._settings(batch[0][0])
        timesteps = sampling_timesteps(self.scheduler, steps, strength)
        if strength is not None and len(timesteps) == 0:
            # No denoising step remains (strength * steps < 1): the init image is the output,
            # unchanged (no round trip through a resize).
            images = [
                to_output_format(np.asarray(r.init_image), self.image_format) for r, _ in batch
            ]
            return images, timesteps
        conds, nulls = zip(*(self.embeddings(r) for r, _ in batch), strict=True)
        init = (
            None
            if strength is None
            else to_model_space([np.asarray(r.init_image) for r, _ in batch], self.image_format)
        )
        clean = self.sample(
            torch.stack([self.initial_noise(r, i) for r, i in batch]),
            torch.cat(conds),
            null=torch.cat(nulls),
            guidance=torch.tensor([self._settings(r)[0] for r, _ in batch]),
            steps=steps,
            init=init,
            strength=strength,
        )
        return to_images(clean, self.image_format), timesteps

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        round_index: int = 1,
        progress: bool = True,
    ) -> Iterator[Sample]:
        """Yield ``num_outputs`` PNG samples per request, in request order.

        Every request is checked before the first sample is made, so bad input raises a
        one-line :class:`GenerationError` and yields nothing.
        """
        requests = list(requests)
        for request in requests:
            self._check(request)
        texts = sum(1 for r in requests if r.negative_prompt or r.prompt not in ("", r.class_name))
        if texts:
            log.warning(
                "built-in generator: %d request(s) carry prompt or negative-prompt text, which "
                "this class-conditional model cannot read; it is kept as provenance only "
                "(condition with the label, prompt_embeds or negative_prompt_embeds)",
                texts,
            )
        return self._generate(requests, round_index=round_index, progress=progress)

    def _generate(
        self, requests: list[GenerationRequest], *, round_index: int, progress: bool
    ) -> Iterator[Sample]:
        total = sum(r.num_outputs for r in requests)
        with progress_or_nothing("built-in diffusion: generate", total, progress) as advance:
            for batch in self._batches(requests):
                images, timesteps = self._generate_batch(batch)
                for (request, i), image in zip(batch, images, strict=True):
                    guidance, steps, _ = self._settings(request)
                    yield make_sample(
                        request,
                        i,
                        encode_image(image),
                        modality="image",
                        generator=self.name,
                        round_index=round_index,
                        guidance=guidance,
                        steps=steps,
                        details=self._details(request, timesteps),
                    )
                advance(len(batch))

    # ---- save / load ----

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the generator to ``directory`` (layout in the module docstring); returns it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.unet.save_pretrained(directory / "unet", safe_serialization=True)
        self.scheduler.save_pretrained(directory / "scheduler")
        weight = self.model.class_embeddings.weight.detach().cpu().contiguous()
        save_file({"weight": weight}, str(directory / EMBEDDINGS_NAME))
        fmt = self.image_format
        write_json_atomic(
            directory / CONFIG_NAME,
            {
                "format_version": FORMAT_VERSION,
                "class_names": list(self.class_names),
                "image_format": {
                    "height": fmt.height,
                    "width": fmt.width,
                    "channels": fmt.channels,
                    "size": fmt.size,
                },
                "guidance_scale": self.guidance_scale,
                "steps": self.steps,
                "training": self.training,
            },
        )
        return directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        device: torch.device | str = "cpu",
        batch_size: int = 16,
        guidance_scale: float | None = None,
        steps: int | None = None,
    ) -> BuiltinDiffusionGenerator:
        """Load a generator written by :meth:`save_pretrained` (safetensors only).

        ``guidance_scale`` and ``steps`` override the saved sampling defaults.

        Raises:
            ModelNotFoundError: ``directory`` holds no built-in generator.
        """
        directory = Path(directory)
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            raise ModelNotFoundError(
                f"{directory} holds no built-in generator ({CONFIG_NAME} missing); pass a "
                "directory written by BuiltinDiffusionGenerator.save_pretrained"
            )
        try:
            meta = json.loads(config_path.read_text(encoding="utf-8"))
            unet = UNet2DModel.from_pretrained(directory / "unet", local_files_only=True)
            scheduler = DDIMScheduler.from_pretrained(
                directory / "scheduler", local_files_only=True
            )
            weight = load_file(str(directory / EMBEDDINGS_NAME))["weight"]
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as error:
            raise ModelNotFoundError(
                f"{directory} is not a complete built-in generator ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}); rewrite it with "
                "save_pretrained or delete it"
            ) from error
        model = ClassConditionalUNet(unet, len(meta["class_names"]))
        model.class_embeddings.weight.data.copy_(weight)
        return cls(
            model,
            scheduler,
            class_names=meta["class_names"],
            image_format=ImageFormat(**meta["image_format"]),
            guidance_scale=meta["guidance_scale"] if guidance_scale is None else guidance_scale,
            steps=meta["steps"] if steps is None else steps,
            batch_size=batch_size,
            device=device,
            training=meta.get("training", {}),
        )
