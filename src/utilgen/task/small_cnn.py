"""``small-cnn``: a three-block CNN trained from scratch, for small images (digits, MNIST).

Architecture (S = image side, 16 or 32 by default):

    [conv3x3 -> BN -> ReLU] x 32ch -> maxpool   (S   -> S/2)
    [conv3x3 -> BN -> ReLU] x 64ch -> maxpool   (S/2 -> S/4)
    [conv3x3 -> BN -> ReLU] x 128ch -> global average pool -> 128-d features -> head

About 93k parameters: it trains on the full digits set in seconds on a CPU. Inputs are
resized to S x S, scaled to [0, 1] and normalised to [-1, 1] by (x - 0.5) / 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from utilgen.data.labelled import Item
from utilgen.task.base import Batch
from utilgen.task.classifier_module import ClassifierModule, tensor_batch
from utilgen.task.heads import HeadKind, make_head
from utilgen.task.image_batch import as_hwc, images_to_tensor, pixels_to_tensor
from utilgen.task.torch_task_model import TorchTaskModel

FEATURES = 128
MIN_IMAGE_SIZE = 8


def default_image_size(example_items: Sequence[Item]) -> int:
    """16 for inputs of at most 16 px a side (digits), else 32 (MNIST, CIFAR-sized)."""
    sides = [max(as_hwc(item).shape[:2]) for item in example_items]
    return 16 if sides and max(sides) <= 16 else 32


def default_channels(example_items: Sequence[Item]) -> int:
    """1 when the examples are grey, else 3 (other images are converted to this)."""
    shapes = [as_hwc(item).shape[2] for item in example_items]
    return 1 if shapes and all(c == 1 for c in shapes) else 3


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(ClassifierModule):
    """The network; ``forward(pixels)`` with pixels (n, C, S, S) returns logits."""

    def __init__(self, channels: int, num_classes: int, head: HeadKind = "linear") -> None:
        super().__init__()
        self.body = nn.Sequential(
            _block(channels, 32),
            nn.MaxPool2d(2),
            _block(32, 64),
            nn.MaxPool2d(2),
            _block(64, FEATURES),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = make_head(FEATURES, num_classes, head)

    def features(self, batch: Batch) -> torch.Tensor:
        out: torch.Tensor = self.body(tensor_batch(batch))
        return out

    def forward(self, batch: Batch) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(batch))
        return out


class SmallCNNModel(TorchTaskModel):
    """``small-cnn`` as a :class:`~utilgen.task.base.TaskModel`.

    Args:
        num_classes: output classes.
        channels: 1 (grey) or 3 (RGB); images of the other kind are converted.
        image_size: side the images are resized to (at least 8).
        head: ``linear`` or ``mlp`` on the 128-d features.
        device: where it runs.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        channels: int,
        image_size: int,
        head: HeadKind = "linear",
        device: torch.device | str = "cpu",
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if image_size < MIN_IMAGE_SIZE:
            raise ValueError(f"small-cnn needs image_size >= {MIN_IMAGE_SIZE}, got {image_size}")
        super().__init__(
            SmallCNN(channels, num_classes, head),
            kind="small-cnn",
            modality="image",
            num_classes=num_classes,
            device=torch.device(device),
        )
        self.channels = channels
        self.image_size = image_size

    def prepare(self, items: Sequence[Item]) -> torch.Tensor:
        return images_to_tensor(items, self.image_size, self.channels, device=self.device)

    def prepare_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels_to_tensor(pixels.to(self.device), self.image_size, self.channels)
