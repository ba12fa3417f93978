"""What the Diffusion-DPO loop needs of a model family: the :class:`DiffusionDPOAdapter`
protocol, the :class:`Denoiser` an adapter prepares for the loop and what it reports when
training is done (:class:`Saved`).

One adapter per model family (:mod:`.builtin`: the built-in class-conditional UNet;
:mod:`.stable_diffusion`: a diffusers Stable Diffusion pipeline). The loop
(:func:`~utilgen.feedback.diffusion_dpo.loop.train_diffusion_dpo`) calls them in this order::

    check(cfg)                                  before anything is written
    prepare(pairs, cfg, accelerator, seed)      -> Denoiser: what to train and how to predict
    ... the optimisation ...
    save_trained(out_dir)                       main process, while the trained part is attached
    release()                                   always (finally): the model back to inference
    finish(out_dir, pairs, cfg, seed, main=...) -> Saved: the generator after training
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from utilgen.config.feedback import DiffusionDPOConfig
from utilgen.feedback.diffusion_dpo.data import ImagePair

# The Denoiser's forward passes: (noisy images, timesteps, conditioning) -> the scheduler's
# regression target (noise or velocity), all on the training device.
Predict = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Denoiser:
    """A model made ready for the loop: its trained forward, its frozen reference and its
    training data, on the training device.

    Attributes:
        forward: the trained model's prediction (gradients flow).
        reference: the reference model's prediction (called under ``no_grad``).
        params: the parameters the optimiser trains.
        module: the ``accelerator.prepare``-d module (for ``no_sync`` while accumulating).
        scheduler: the DDPM scheduler whose noise schedule and prediction type are trained.
        clean: pair indices -> the model-space preferred and dispreferred images.
        cond: pair indices -> their conditioning (class embeddings, prompt embeddings).
        null: n -> n rows of the unconditional conditioning (classifier-free guidance).
        weights_dtype: the dtype of the model's weights (half precision autocasts).
    """

    forward: Predict
    reference: Predict
    params: list[nn.Parameter]
    module: Any
    scheduler: Any
    clean: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    cond: Callable[[torch.Tensor], torch.Tensor]
    null: Callable[[int], torch.Tensor]
    weights_dtype: torch.dtype = torch.float32


@dataclass(frozen=True)
class Saved:
    """The generator after Diffusion-DPO.

    Attributes:
        path: the saved generator directory or adapter file.
        generator_name: the generator's provenance name after training.
        result_fields: this family's fields of ``result.json`` (``kind`` and file names).
        lora_sha256: the saved LoRA file's SHA-256, or "".
    """

    path: Path
    generator_name: str
    result_fields: dict[str, Any] = field(default_factory=dict)
    lora_sha256: str = ""


class DiffusionDPOAdapter(Protocol):
    """One model family's side of Diffusion-DPO (the call order is in the module docstring).

    Attributes:
        description: names the run in the progress bar and the log.
        num_classes: the labels a pair may carry (``0..num_classes-1``), None: any >= 0.
    """

    description: str
    num_classes: int | None

    def check(self, cfg: DiffusionDPOConfig) -> None:
        """Raise a one-line ``FeedbackError`` for settings this family cannot train."""

    def prepare(
        self, pairs: Sequence[ImagePair], cfg: DiffusionDPOConfig, accelerator: Any, seed: int
    ) -> Denoiser:
        """Encode ``pairs``, attach what is trained (seeded by ``seed``), set up the
        reference, and hand the trained module to ``accelerator.prepare``."""

    def save_trained(self, out_dir: Path) -> None:
        """Save what was trained while it is still attached (main process only)."""

    def release(self) -> None:
        """Return the model to its generator as a plain inference model, whatever happened."""

    def finish(
        self,
        out_dir: Path,
        pairs: Sequence[ImagePair],
        cfg: DiffusionDPOConfig,
        seed: int,
        *,
        main: bool,
    ) -> Saved:
        """Give the generator its trained weights and new name; save them if not yet done
        (files only when ``main``)."""
