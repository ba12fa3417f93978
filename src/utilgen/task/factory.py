"""``build_task_model``: the configured classifier, ready to train.

``task.model=auto`` picks ``small-cnn`` for images and ``minilm`` for texts: both train in
seconds on a CPU and reach >= 0.95 test accuracy on the bundled demos. ``task.head`` applies
to the models with a head of ours (small-cnn, efficientnet-lite0, minilm); ``hf-image`` and
``hf-text`` keep the classification head transformers gives them. Every failure that a
user can fix (wrong modality, missing model path, image size too small, a model id that is
not on disk, a missing asset package) is a one-line ``UtilgenError``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from utilgen.config import TaskConfig
from utilgen.data.labelled import Item, Modality
from utilgen.errors import ConfigError
from utilgen.task.base import TaskModel

log = logging.getLogger(__name__)

IMAGE_MODELS = ("small-cnn", "efficientnet-lite0", "hf-image")
TEXT_MODELS = ("minilm", "hf-text")
AUTO_MODEL = {"image": "small-cnn", "text": "minilm"}


def resolve_model_kind(model: str, modality: Modality) -> str:
    """The concrete ``task.model`` for ``modality`` (``auto`` resolved).

    Raises:
        ConfigError: the model does not classify this modality.
    """
    if model == "auto":
        return AUTO_MODEL[modality]
    allowed = IMAGE_MODELS if modality == "image" else TEXT_MODELS
    if model not in allowed:
        raise ConfigError(
            f"task.model={model} does not classify {modality}s; for {modality} data use "
            f"{', '.join(('auto', *allowed))}"
        )
    return model


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


def _build(
    cfg: TaskConfig,
    kind: str,
    num_classes: int,
    example_items: Sequence[Item],
    device: torch.device,
) -> TaskModel:
    # Imports are local so that a text run never imports the image stacks and vice versa.
    if kind == "small-cnn":
        from utilgen.task.small_cnn import (
            MIN_IMAGE_SIZE,
            SmallCNNModel,
            default_channels,
            default_image_size,
        )

        size = _image_size(cfg, kind, MIN_IMAGE_SIZE) or default_image_size(example_items)
        return SmallCNNModel(
            num_classes,
            channels=default_channels(example_items),
            image_size=size,
            head=cfg.head,
            device=device,
        )
    if kind == "efficientnet-lite0":
        from utilgen.task.efficientnet import (
            DEFAULT_IMAGE_SIZE,
            MIN_IMAGE_SIZE,
            EfficientNetModel,
        )

        return EfficientNetModel(
            num_classes,
            image_size=_image_size(cfg, kind, MIN_IMAGE_SIZE) or DEFAULT_IMAGE_SIZE,
            head=cfg.head,
            freeze_backbone=cfg.freeze_backbone,
            device=device,
        )
    if kind == "hf-image":
        from utilgen.task.hf_image import HFImageModel

        return HFImageModel(
            num_classes,
            _model_path(cfg, kind),
            image_size=_image_size(cfg, kind, 8),
            freeze_backbone=cfg.freeze_backbone,
            trust_remote_code=cfg.trust_remote_code,
            device=device,
        )
    if kind == "minilm":
        from utilgen.task.text_minilm import MiniLMModel

        return MiniLMModel(
            num_classes,
            head=cfg.head,
            max_length=cfg.max_length,
            model_path=cfg.model_path,
            device=device,
        )
    if kind == "hf-text":
        from utilgen.task.hf_text import HFTextModel

        return HFTextModel(
            num_classes,
            _model_path(cfg, kind),
            max_length=cfg.max_length,
            freeze_backbone=cfg.freeze_backbone,
            trust_remote_code=cfg.trust_remote_code,
            device=device,
        )
    raise ConfigError(f"unknown task.model {kind!r}")


def build_task_model(
    cfg: TaskConfig,
    modality: Modality,
    num_classes: int,
    example_items: Sequence[Item],
    device: torch.device | str,
    seed: int,
) -> TaskModel:
    """Build the task model ``cfg`` describes, its new layers initialised from ``seed``.

    Args:
        cfg: the ``task`` config section.
        modality: the data's modality.
        num_classes: number of classes.
        example_items: a few training items; ``small-cnn`` takes its default image size and
            channel count from them (16 px for inputs up to 16 px, else 32; grey if all grey).
        device: where the model runs.
        seed: initialises the new layers; the global torch RNG is left as it was.

    Raises:
        ConfigError: the model does not fit the data or the config.
        ModelNotFoundError: the model or its asset package is not on this machine.
    """
    if num_classes < 1:
        raise ConfigError("the task model needs at least one class")
    kind = resolve_model_kind(cfg.model, modality)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _build(cfg, kind, num_classes, example_items, torch.device(device))
    log.info("task model: %s (%d classes) on %s", kind, num_classes, model.device)
    return model
