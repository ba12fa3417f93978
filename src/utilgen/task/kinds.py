"""Task model kinds: what a ``task.model`` name stands for.

A :class:`TaskModelKind` says which modality its classifier reads and builds it, untrained,
for a number of classes. The built-in kinds are below; they are registered by name in
:data:`utilgen.registry.TASK_MODELS`, where a user registers a classifier of their own
(``TASK_MODELS.register("my-model", MyModelKind())``; it must implement
:class:`utilgen.task.base.TaskModel`). Models are imported inside ``build``, so that a text
run never imports the image stacks and vice versa.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from utilgen.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from utilgen.config import TaskConfig
    from utilgen.data.labelled import Item
    from utilgen.task.base import TaskModel


@runtime_checkable
class TaskModelKind(Protocol):
    """One ``task.model``: the modality it classifies and how to build it."""

    modality: Literal["image", "text"]

    def build(
        self,
        cfg: TaskConfig,
        *,
        num_classes: int,
        example_items: Sequence[Item],
        device: torch.device,
    ) -> TaskModel:
        """A freshly initialised classifier for ``num_classes`` classes. The caller seeds
        torch's RNG around this call, so new layers draw from it."""
        ...


def _image_size(cfg: TaskConfig, kind: str, minimum: int) -> int:
    if cfg.image_size and cfg.image_size < minimum:
        raise ConfigError(
            f"task.image_size={cfg.image_size} is too small for {kind}; use at least {minimum} "
            "(or 0 for the model's default)"
        )
    return cfg.image_size


def _model_path(cfg: TaskConfig, kind: str) -> str:
    if not cfg.model_path:
        raise ConfigError(
            f"task.model={kind} needs task.model_path: a hub id already in the local cache, or "
            "a directory written by save_pretrained"
        )
    return cfg.model_path


class SmallCNNKind:
    """``small-cnn``: a small convolutional network trained from scratch; its image size
    and channels follow the data unless ``task.image_size`` sets them."""

    modality: Literal["image", "text"] = "image"

    def build(
        self,
        cfg: TaskConfig,
        *,
        num_classes: int,
        example_items: Sequence[Item],
        device: torch.device,
    ) -> TaskModel:
        from utilgen.task.small_cnn import (
            MIN_IMAGE_SIZE,
            SmallCNNModel,
            default_channels,
            default_image_size,
        )

        size = _image_size(cfg, "small-cnn", MIN_IMAGE_SIZE) or default_image_size(example_items)
        return SmallCNNModel(
            num_classes,
            channels=default_channels(example_items),
            image_size=size,
            head=cfg.head,
            device=device,
        )


class EfficientNetLite0Kind:
    """``efficientnet-lite0``: the pretrained EfficientNet-Lite0 with a head of ours."""

    modality: Literal["image", "text"] = "image"

    def build(
        self,
        cfg: TaskConfig,
        *,
        num_classes: int,
        example_items: Sequence[Item],
        device: torch.device,
    ) -> TaskModel:
        from utilgen.task.efficientnet import (
            DEFAULT_IMAGE_SIZE,
            MIN_IMAGE_SIZE,
            EfficientNetModel,
        )

        return EfficientNetModel(
            num_classes,
            image_size=_image_size(cfg, "efficientnet-lite0", MIN_IMAGE_SIZE) or DEFAULT_IMAGE_SIZE,
            head=cfg.head,
            freeze_backbone=cfg.freeze_backbone,
            device=device,
        )


class HFImageKind:
    """``hf-image``: a transformers image classifier from ``task.model_path``."""

    modality: Literal["image", "text"] = "image"

    def build(
        self,
        cfg: TaskConfig,
        *,
        num_classes: int,
        example_items: Sequence[Item],
        device: torch.device,
    ) -> TaskModel:
        from utilgen.task.hf_image import HFImageModel

        return HFImageModel(
            num_classes,
            _model_path(cfg, "hf-image"),
            image_size=_image_size(cfg, "hf-image", 8),
            freeze_backbone=cfg.freeze_backbone,
            trust_remote_code=cfg.trust_remote_code,
            device=device,
        )


class MiniLMKind:
    """``minilm``: MiniLM sentence embeddings with a head of ours."""

    modality: Literal["image", "text"] = "text"

    def build(
        self,
        cfg: TaskConfig,
        *,
        num_classes: int,
        example_items: Sequence[Item],
        device: torch.device,
    ) -> TaskModel:
        from utilgen.task.text_minilm import MiniLMModel

        return MiniLMModel(
            num_classes,
            head=cfg.head,
            max_length=cfg.max_length,
            model_path=cfg.model_path,
            device=device,
        )


class HFTextKind:
    """``hf-text``: a transformers sequence classifier from ``task.model_path``."""

    modality: Literal["image", "text"] = "text"

    def build(
        self,
        cfg: TaskConfig,
        *,
        num_classes: int,
        example_items: Sequence[Item],
        device: torch.device,
    ) -> TaskModel:
        from utilgen.task.hf_text import HFTextModel

        return HFTextModel(
            num_classes,
            _model_path(cfg, "hf-text"),
            max_length=cfg.max_length,
            freeze_backbone=cfg.freeze_backbone,
            trust_remote_code=cfg.trust_remote_code,
            device=device,
        )


SMALL_CNN = SmallCNNKind()
EFFICIENTNET_LITE0 = EfficientNetLite0Kind()
HF_IMAGE = HFImageKind()
MINILM = MiniLMKind()
HF_TEXT = HFTextKind()
