"""``hf-image``: any transformers image classifier (ResNet, ConvNeXt, ViT, ...) by id or path.

The model is loaded with ``AutoModelForImageClassification`` and a new ``num_classes``-way
classifier (``ignore_mismatched_sizes``: a pretrained 1000-class layer is replaced, the rest
is kept). Preprocessing is the checkpoint's own ``AutoImageProcessor`` when it ships one,
else resize to the config's ``image_size`` (224 when it has none) and (x - 0.5) / 0.5. An
explicit ``task.image_size`` resizes to that side, normalising with the processor's mean
and std. ``freeze_backbone`` freezes the transformers ``base_model`` (everything but the
classification head).

Features (:meth:`embed`) are the input of the final linear layer (see ``hf_classifier``):
the pooled features for ResNet/ConvNeXt, the [CLS] token for ViT.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from utilgen.data.labelled import Item
from utilgen.errors import ConfigError
from utilgen.task.base import Batch
from utilgen.task.classifier_module import tensor_batch
from utilgen.task.hf_classifier import HFClassifier, load_classification_model
from utilgen.task.image_batch import as_hwc, images_to_tensor, pixels_to_tensor, to_channels
from utilgen.task.model_sources import load_pretrained
from utilgen.task.torch_task_model import TorchTaskModel

log = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = 224


def image_processor_kwargs() -> dict[str, Any]:
    """Pick the PIL image processors when torchvision is absent (transformers >= 5 warns and
    falls back otherwise); this project does not depend on torchvision."""
    from transformers.utils import is_torchvision_available

    return {} if is_torchvision_available() else {"backend": "pil"}


class HFImageClassifier(HFClassifier):
    """A transformers image classifier; ``forward(pixel_values)`` returns logits."""

    def forward(self, batch: Batch) -> torch.Tensor:
        logits: torch.Tensor = self.model(pixel_values=tensor_batch(batch)).logits
        return logits


class HFImageModel(TorchTaskModel):
    """``hf-image`` as a :class:`~utilgen.task.base.TaskModel`.

    Args:
        num_classes: output classes.
        model_path: hub id (from the local cache) or a directory written by save_pretrained.
        image_size: input side; 0 uses the processor's (or config's) own.
        freeze_backbone: train only the classification head.
        trust_remote_code: allow the checkpoint's own model code.
        device: where it runs.

    Raises:
        ModelNotFoundError: ``model_path`` is not on disk.
    """

    def __init__(
        self,
        num_classes: int,
        model_path: str,
        *,
        image_size: int = 0,
        freeze_backbone: bool = True,
        trust_remote_code: bool = False,
        device: torch.device | str = "cpu",
    ) -> None:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        model = load_classification_model(
            AutoModelForImageClassification.from_pretrained,
            model_path,
            num_classes,
            trust_remote_code=trust_remote_code,
        )
        try:
            self.processor: Any = load_pretrained(
                AutoImageProcessor.from_pretrained,
                model_path,
                trust_remote_code=trust_remote_code,
                **image_processor_kwargs(),
            )
        except Exception as err:  # no processor shipped: fall back to our own preprocessing
            log.info(
                "no image processor for %s (%s); resizing and normalising to [-1, 1]",
                model_path,
                type(err).__name__,
            )
            self.processor = None
        config = model.config
        self.channels = int(getattr(config, "num_channels", 3))
        self.image_size = image_size
        self._fallback_size = int(getattr(config, "image_size", 0) or DEFAULT_IMAGE_SIZE)
        super().__init__(
            HFImageClassifier(model, num_classes, freeze_backbone),
            kind="hf-image",
            modality="image",
            num_classes=num_classes,
            device=torch.device(device),
            eval_batch_size=64,
        )
        self.model_path = model_path

    def _mean_std(self) -> tuple[list[float], list[float]]:
        mean = getattr(self.processor, "image_mean", None) or [0.5]
        std = getattr(self.processor, "image_std", None) or [0.5]
        if len(mean) != self.channels:
            mean = [float(np.mean(mean))] * self.channels
            std = [float(np.mean(std))] * self.channels
        return [float(m) for m in mean], [float(s) for s in std]

    def prepare(self, items: Sequence[Item]) -> torch.Tensor:
        if self.processor is None or self.image_size:
            mean, std = self._mean_std()
            size = self.image_size or self._fallback_size
            return images_to_tensor(items, size, self.channels, mean, std, device=self.device)
        images = [
            np.round(to_channels(as_hwc(item), self.channels) * 255.0).astype(np.uint8)
            for item in items
        ]
        pixels: torch.Tensor = self.processor(
            images=images, return_tensors="pt", input_data_format="channels_last"
        )["pixel_values"]
        return pixels.to(self.device, torch.float32)

    def prepare_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """:meth:`prepare` for float pixels (n, C, H, W) in [0, 1], differentiably.

        Only the torch path of :meth:`prepare` (no image processor, or ``task.image_size``
        set) has a differentiable twin; a processor's own resize and crop do not.
        """
        if self.processor is not None and not self.image_size:
            raise ConfigError(
                f"{self.model_path}'s image processor resizes outside torch, so gradients "
                "cannot reach the pixels; set task.image_size to prepare images with torch"
            )
        mean, std = self._mean_std()
        size = self.image_size or self._fallback_size
        return pixels_to_tensor(pixels.to(self.device), size, self.channels, mean, std)
