"""Test helpers: a tiny small-cnn, and a linear TaskModel for known-answer tests,
logits = W x + b on the 64 digit pixels.

Its input gradient is known in closed form: d z_y / d x = W[y], whatever x is, so VoG can be
computed from the checkpoint weights alone and compared with what the valuator measures.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from utilgen.config import TaskConfig
from utilgen.data.labelled import Item, LabelledData
from utilgen.task import TaskModel, build_task_model
from utilgen.task.base import Batch
from utilgen.task.classifier_module import ClassifierModule, tensor_batch
from utilgen.task.torch_task_model import TorchTaskModel

SIDE = 8
TINY_CNN = TaskConfig(model="small-cnn", image_size=8, epochs=3, batch_size=32)


def cnn(data: LabelledData, seed: int = 0) -> TaskModel:
    """A fresh small-cnn on 8x8 inputs."""
    return build_task_model(TINY_CNN, "image", 10, data.items[:1], "cpu", seed)


class LinearPixels(ClassifierModule):
    """Flatten (n, 1, 8, 8) pixels and apply one affine map."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(SIDE * SIDE, num_classes)

    def features(self, batch: Batch) -> torch.Tensor:
        return tensor_batch(batch).flatten(1)

    def forward(self, batch: Batch) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(batch))
        return out


class LinearModel(TorchTaskModel):
    """A :class:`~utilgen.task.TaskModel` over 8x8 grey digits scaled to [0, 1]."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(
            LinearPixels(num_classes),
            kind="linear-test",
            modality="image",
            num_classes=num_classes,
            device=torch.device("cpu"),
        )

    def prepare(self, items: Sequence[Item]) -> torch.Tensor:
        pixels = np.stack([np.asarray(i, dtype=np.float32).reshape(SIDE, SIDE) for i in items])
        return torch.from_numpy(pixels / 16.0)[:, None]
