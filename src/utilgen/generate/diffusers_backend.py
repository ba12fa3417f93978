"""``DiffusersGenerator``: any diffusers text-to-image pipeline as a utilgen ``Generator``.

Stable Diffusion 1.x/2.x and SDXL load through ``AutoPipelineForText2Image``; img2img reuses
the same weights through ``AutoPipelineForImage2Image.from_pipe``. A request's prompt (or
precomputed ``prompt_embeds``), negative prompt, guidance, steps, initial ``latents`` and
init image + strength go to the pipeline unchanged; outputs become PNG pool samples whose
provenance names the model, scheduler, dtype and adapter. Loading the pipeline and LoRA
files is :mod:`utilgen.generate.diffusers_loading`; adapting the generator to a task
(textual inversion, LoRA training, their cache) is :mod:`utilgen.generate.diffusers_prepare`.

Determinism: output ``i`` of a request draws its noise from its own CPU ``torch.Generator``
seeded with ``request.seed + i``, so it does not depend on which other requests share its
batch, and the same seed gives the same noise on CPU and GPU. Requests with the same
settings (mode, guidance, steps, strength, tensor shapes) are batched together, wherever
they are in the list; samples are still yielded in request order.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from utilgen.config.diffusion import DiffusersConfig
from utilgen.data.labelled import Modality
from utilgen.errors import ConfigError
from utilgen.generate.base import make_sample
from utilgen.generate.diffusers_loading import file_sha256, load_text2image_pipeline, lora_file
from utilgen.generate.dtypes import diffusion_dtype
from utilgen.generate.request import GenerationError, GenerationRequest
from utilgen.generate.schedulers import make_scheduler
from utilgen.pool.payload import encode_image
from utilgen.pool.sample import Sample
from utilgen.progress import progress_or_nothing

logger = logging.getLogger(__name__)

ADAPTER_NAME = "utilgen"


# 1. batching ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    """Output ``output`` of request ``index``."""

    index: int
    output: int


def _per_output(
    tensor: torch.Tensor | None, request: GenerationRequest, rank: int, what: str
) -> list[torch.Tensor] | None:
    """Split a request tensor into one (1, ...) tensor per output.

    A tensor of rank ``rank`` or with a leading 1 is shared by every output; a leading
    ``num_outputs`` gives one slice per output.
    """
    if tensor is None:
        return None
    t = tensor.detach()
    if t.dim() == rank:
        t = t.unsqueeze(0)
    if t.dim() != rank + 1 or t.shape[0] not in (1, request.num_outputs):
        raise GenerationError(
            f"request {request.class_name!r}: {what} must have shape {rank}-D, (1, ...) or "
            f"(num_outputs={request.num_outputs}, ...), got {tuple(tensor.shape)}"
        )
    if t.shape[0] == 1:
        return [t] * request.num_outputs
    return [t[i : i + 1] for i in range(request.num_outputs)]


def _pil_rgb(image: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """A uint8 (H, W, C) image as RGB PIL, resized (bicubic) to ``size`` = (width, height)."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise GenerationError(f"init_image must be a uint8 array, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise GenerationError(f"init_image must be (H, W), (H, W, 1) or (H, W, 3), got {arr.shape}")
    pil = Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")
    return pil if pil.size == size else pil.resize(size, Image.Resampling.BICUBIC)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] (B, H, W, C) -> uint8, rounded as diffusers' ``numpy_to_pil``."""
    return (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)


# 2. the generator -----------------------------------------------------------------------


class DiffusersGenerator:
    """A diffusers text-to-image pipeline (and its img2img twin) behind ``Generator``.

    Attributes:
        modality: always ``"image"``.
        name: model id or path, plus ``+ti:<hash16>`` / ``+lora:<hash16>`` for loaded class
            tokens and LoRA adapter (SHA-256 prefixes); every sample's ``generator``.
        pipeline: the text-to-image pipeline (its components are shared with img2img).
        model: model id or path, as given.
    """

    modality: Modality = "image"
    name: str

    def __init__(
        self,
        pipeline: Any,
        *,
        model: str,
        batch_size: int = 8,
        guidance_scale: float = 7.5,
        steps: int = 50,
        image_size: int | None = None,
        scheduler: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        attention_slicing: bool = False,
        compile_unet: bool = False,
        seed: int = 0,
    ) -> None:
        """Wrap an already-built pipeline.

        Args:
            pipeline: a diffusers text-to-image pipeline (e.g. ``StableDiffusionPipeline``).
            model: its id or path, recorded in every sample's ``generator``.
            batch_size: images per pipeline call at most.
            guidance_scale, steps: defaults for requests that leave them None.
            image_size: side of generated images in pixels (None: the model's default).
            scheduler: a scheduler name (see ``utilgen.generate.schedulers``) replacing the
                pipeline's, or None to keep it.
            device, dtype: where and in what precision to run (None: leave as is).
            attention_slicing: compute attention in slices (saves memory).
            compile_unet: ``torch.compile`` the U-Net in place.
            seed: the run seed, recorded; every request carries its own seed.
        """
        if batch_size < 1:
            raise GenerationError(f"batch_size must be >= 1, got {batch_size}")
        if guidance_scale < 0:
            raise GenerationError(f"guidance scale must be >= 0, got {guidance_scale}")
        if image_size is not None and image_size % 8:
            raise GenerationError(f"image_size must be a multiple of 8, got {image_size}")
        self.pipeline = pipeline
        self.model = model
        self.batch_size = batch_size
        self.guidance_scale = guidance_scale
        self.steps = steps
        self.seed = seed
        if scheduler is not None:
            self.pipeline.scheduler = make_scheduler(scheduler, self.pipeline.scheduler.config)
        if device is not None or dtype is not None:
            self.pipeline.to(device=device, dtype=dtype)
        if attention_slicing:
            self.pipeline.enable_attention_slicing()
        if compile_unet:
            # In place (nn.Module.compile): the U-Net keeps its class, so LoRA loading and
            # from_pipe still see a UNet2DConditionModel.
            self.pipeline.unet.compile()
        self.pipeline.set_progress_bar_config(disable=True)
        default = getattr(pipeline, "default_sample_size", None) or pipeline.unet.config.sample_size
        self.image_size = image_size or int(default) * int(pipeline.vae_scale_factor)
        self._img2img: Any = None
        self.lora_sha256: str | None = None
        self.lora_scale = 1.0
        self.textual_inversion_sha256: str | None = None
        self.name = model

    @classmethod
    def from_config(
        cls, cfg: DiffusersConfig, *, device: torch.device, batch_size: int, seed: int
    ) -> DiffusersGenerator:
        """Load ``cfg.model`` from disk and apply every setting of ``cfg`` (scheduler, dtype,
        slicing, compile, textual-inversion embeddings and LoRA adapter to load).

        Raises:
            ConfigError: no model is set.
            ModelNotFoundError: the model, adapter or embeddings are not on disk.
        """
        if cfg.model is None:
            raise ConfigError(
                "generator.kind=diffusers needs generator.diffusers.model: a local diffusers "
                "pipeline directory or a hub id in the offline cache"
            )
        dtype = diffusion_dtype(cfg.dtype, device)
        pipeline = load_text2image_pipeline(cfg.model, dtype=dtype, variant=cfg.variant)
        generator = cls(
            pipeline,
            model=cfg.model,
            batch_size=batch_size,
            guidance_scale=cfg.guidance_scale,
            steps=cfg.steps,
            image_size=cfg.image_size,
            scheduler=cfg.scheduler,
            device=device,
            attention_slicing=cfg.attention_slicing,
            seed=seed,
        )
        if cfg.textual_inversion.path is not None:
            generator.load_textual_inversion(cfg.textual_inversion.path)
        if cfg.lora.path is not None:
            generator.load_lora(cfg.lora.path, scale=cfg.lora.scale)
        if cfg.compile:
            generator.pipeline.unet.compile()
        return generator

    # -- adapters --------------------------------------------------------------------

    def _update_name(self) -> None:
        """``name`` = model id/path, plus ``+ti:<hash16>`` and ``+lora:<hash16>`` for the
        loaded class tokens and adapter."""
        name = self.model
        if self.textual_inversion_sha256:
            name += f"+ti:{self.textual_inversion_sha256[:16]}"
        if self.lora_sha256:
            name += f"+lora:{self.lora_sha256[:16]}"
        self.name = name

    def unload_lora(self) -> None:
        """Remove the loaded LoRA adapter (if any)."""
        if self.lora_sha256 is not None:
            self.pipeline.unload_lora_weights()
            self.lora_sha256 = None
            self._update_name()

    def record_textual_inversion(self, sha256: str) -> None:
        """Record class tokens put into the pipeline directly (trained in place)."""
        self.textual_inversion_sha256 = sha256
        self._update_name()

    def load_lora(self, path: str | Path, *, scale: float = 1.0) -> str:
        """Load a LoRA adapter (replacing any loaded one) and return its file's SHA-256.

        ``path`` is a ``.safetensors`` file written by ``save_lora_weights`` or its directory.
        """
        file = lora_file(path)
        self.unload_lora()
        self.pipeline.load_lora_weights(
            str(file.parent), weight_name=file.name, adapter_name=ADAPTER_NAME
        )
        self.pipeline.set_adapters([ADAPTER_NAME], adapter_weights=[scale])
        self.lora_sha256 = file_sha256(file)
        self.lora_scale = scale
        self._update_name()
        logger.info("loaded LoRA adapter %s (sha256 %s)", file, self.lora_sha256[:16])
        return self.lora_sha256

    def load_textual_inversion(self, directory: str | Path) -> str:
        """Load learned class tokens (one ``<token>.safetensors`` per class, diffusers'
        format) into the tokenizer and text encoder; returns the SHA-256 over the files."""
        from utilgen.generate.textual_inversion import load_class_tokens

        sha256 = load_class_tokens(self.pipeline, directory)
        self.record_textual_inversion(sha256)
        return sha256

    # -- generation ------------------------------------------------------------------

    @property
    def img2img(self) -> Any:
        """The img2img pipeline sharing this pipeline's components (built on first use)."""
        if self._img2img is None:
            from diffusers import AutoPipelineForImage2Image

            self._img2img = AutoPipelineForImage2Image.from_pipe(self.pipeline)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img

    def details(self, mode: str) -> dict[str, Any]:
        """Backend facts recorded in each sample's ``details`` JSON."""
        pipe = self.img2img if mode == "img2img" else self.pipeline
        return {
            "backend": "diffusers",
            "model": self.model,
            "pipeline": type(pipe).__name__,
            "mode": mode,
            "scheduler": type(pipe.scheduler).__name__,
            "dtype": str(pipe.unet.dtype).removeprefix("torch."),
            "device": pipe.unet.device.type,
            "image_size": self.image_size,
            "lora_sha256": self.lora_sha256,
            "lora_scale": self.lora_scale if self.lora_sha256 else None,
            "textual_inversion_sha256": self.textual_inversion_sha256,
        }

    def _check(self, request: GenerationRequest) -> None:
        """Reject what the pipeline cannot honour before any image is made."""
        latent_shape = (
            int(self.pipeline.unet.config.in_channels),
            self.image_size // int(self.pipeline.vae_scale_factor),
            self.image_size // int(self.pipeline.vae_scale_factor),
        )
        if request.init_image is not None and request.latents is not None:
            raise GenerationError(
                f"request {request.class_name!r}: diffusers img2img draws its own noise from "
                "the seed; pass either init_image or latents, not both"
            )
        if request.init_image is not None:
            steps = request.num_inference_steps or self.steps
            # diffusers img2img runs int(steps * strength) of the steps; zero would crash it.
            if int(steps * float(request.strength or 0.0)) < 1:
                raise GenerationError(
                    f"request {request.class_name!r}: img2img with strength {request.strength} "
                    f"and {steps} steps runs no denoising step (int(steps * strength) = 0); "
                    "raise the strength or the steps"
                )
        if request.latents is not None:
            for t in _per_output(request.latents, request, 3, "latents") or []:
                if tuple(t.shape[1:]) != latent_shape:
                    raise GenerationError(
                        f"request {request.class_name!r}: latents must be {latent_shape} per "
                        f"image for {self.image_size}px images, got {tuple(t.shape[1:])}"
                    )
        call = inspect.signature(self.pipeline.__call__).parameters
        if request.prompt_embeds is not None:
            _per_output(request.prompt_embeds, request, 2, "prompt_embeds")
            if "pooled_prompt_embeds" in call:
                raise GenerationError(
                    f"request {request.class_name!r}: {type(self.pipeline).__name__} also needs "
                    "pooled prompt embeddings; pass a prompt instead of prompt_embeds"
                )
        if request.negative_prompt_embeds is not None:
            _per_output(request.negative_prompt_embeds, request, 2, "negative_prompt_embeds")

    def _key(self, request: GenerationRequest) -> tuple[Any, ...]:
        """Requests with equal keys can share one pipeline call."""

        def shape(t: torch.Tensor | None) -> tuple[int, ...] | None:
            return None if t is None else tuple(t.shape[-2:])

        return (
            request.init_image is not None,
            request.guidance_scale if request.guidance_scale is not None else self.guidance_scale,
            request.num_inference_steps or self.steps,
            request.strength if request.init_image is not None else None,
            shape(request.prompt_embeds),
            shape(request.negative_prompt_embeds),
            request.latents is not None,
        )

    def _batches(self, requests: Sequence[GenerationRequest]) -> list[list[_Item]]:
        """Outputs grouped by settings key, in chunks of ``batch_size``, ordered by their
        first output's position."""
        groups: dict[tuple[Any, ...], list[_Item]] = {}
        for index, request in enumerate(requests):
            key = self._key(request)
            groups.setdefault(key, []).extend(_Item(index, i) for i in range(request.num_outputs))
        batches = [
            items[start : start + self.batch_size]
            for items in groups.values()
            for start in range(0, len(items), self.batch_size)
        ]
        return sorted(batches, key=lambda b: (b[0].index, b[0].output))

    def _run(self, requests: Sequence[GenerationRequest], batch: list[_Item]) -> np.ndarray:
        """One pipeline call for ``batch``; uint8 images (B, H, W, 3)."""
        first = requests[batch[0].index]
        img2img = first.init_image is not None
        pipe = self.img2img if img2img else self.pipeline
        device = pipe._execution_device
        dtype = pipe.unet.dtype
        kwargs: dict[str, Any] = {
            "guidance_scale": self._key(first)[1],
            "num_inference_steps": self._key(first)[2],
            "output_type": "np",
            # CPU generators: the same seed gives the same noise on every device.
            "generator": [
                torch.Generator("cpu").manual_seed(requests[it.index].seed + it.output)
                for it in batch
            ],
        }

        def stacked(name: str, rank: int) -> torch.Tensor:
            parts = [
                (
                    _per_output(getattr(requests[it.index], name), requests[it.index], rank, name)
                    or []
                )[it.output]
                for it in batch
            ]
            return torch.cat(parts).to(device=device, dtype=dtype)

        if first.prompt_embeds is not None:
            kwargs["prompt_embeds"] = stacked("prompt_embeds", 2)
        else:
            kwargs["prompt"] = [requests[it.index].prompt for it in batch]
        if first.negative_prompt_embeds is not None:
            kwargs["negative_prompt_embeds"] = stacked("negative_prompt_embeds", 2)
        else:
            kwargs["negative_prompt"] = [requests[it.index].negative_prompt for it in batch]
        if first.latents is not None:
            kwargs["latents"] = stacked("latents", 3)
        if img2img:
            size = (self.image_size, self.image_size)
            kwargs["image"] = [
                _pil_rgb(np.asarray(requests[it.index].init_image), size) for it in batch
            ]
            kwargs["strength"] = first.strength
        else:
            kwargs["height"] = kwargs["width"] = self.image_size
        out = pipe(**kwargs)
        return to_uint8(np.asarray(out.images))

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        round_index: int = 1,
        progress: bool = True,
    ) -> Iterator[Sample]:
        """Yield ``num_outputs`` PNG samples per request, in request order.

        Every request is checked before the first image is made, so a bad request costs
        nothing. Raises:
            GenerationError: a request the pipeline cannot honour (img2img with latents,
                tensors of the wrong shape, bare prompt embeddings for SDXL).
        """
        for request in requests:
            self._check(request)
        order = [(i, j) for i, r in enumerate(requests) for j in range(r.num_outputs)]
        done: dict[tuple[int, int], bytes] = {}
        facts: dict[str, dict[str, Any]] = {}
        emitted = 0
        bar = progress_or_nothing("generating images", len(order), progress)
        with bar as advance:
            for batch in self._batches(requests):
                images = self._run(requests, batch)
                for item, image in zip(batch, images, strict=True):
                    done[(item.index, item.output)] = encode_image(image)
                advance(len(batch))
                # Yield every finished output whose predecessors are all finished.
                while emitted < len(order) and order[emitted] in done:
                    index, output = order[emitted]
                    request = requests[index]
                    mode = "img2img" if request.init_image is not None else "text2img"
                    if mode not in facts:
                        facts[mode] = self.details(mode)
                    guidance, steps = self._key(request)[1:3]
                    yield make_sample(
                        request,
                        output,
                        done.pop(order[emitted]),
                        modality="image",
                        generator=self.name,
                        round_index=round_index,
                        guidance=guidance,
                        steps=steps,
                        details=facts[mode],
                    )
                    emitted += 1
