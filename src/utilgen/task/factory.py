"""``build_task_model``: the configured classifier, ready to train.

``task.model=auto`` picks ``small-cnn`` for images and ``minilm`` for texts: both train in
seconds on a CPU and reach >= 0.95 test accuracy on the bundled demos. ``task.head`` applies
to the models with a head of ours (small-cnn, efficientnet-lite0, minilm); ``hf-image`` and
``hf-text`` keep the classification head transformers gives them. ``task.model`` names a
:class:`~utilgen.task.kinds.TaskModelKind` in :data:`utilgen.registry.TASK_MODELS`. Every
failure that a user can fix (wrong modality, missing model path, image size too small, a
model id that is not on disk, a missing asset package) is a one-line ``UtilgenError``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from utilgen.config import TaskConfig
from utilgen.data.labelled import Item, Modality
from utilgen.errors import ConfigError
from utilgen.registry import TASK_MODELS
from utilgen.task.base import TaskModel

log = logging.getLogger(__name__)

# What ``task.model=auto`` means for each modality.
AUTO_MODEL = {"image": "small-cnn", "text": "minilm"}


def resolve_model_kind(model: str, modality: Modality) -> str:
    """The concrete ``task.model`` for ``modality`` (``auto`` resolved).

    Raises:
        ConfigError: the model does not classify this modality, or is not registered.
    """
    if model == "auto":
        return AUTO_MODEL[modality]
    kind = TASK_MODELS.get(model)
    if kind.modality != modality:
        allowed = [n for n, k in TASK_MODELS.entries() if k.modality == modality]
        raise ConfigError(
            f"task.model={model} does not classify {modality}s; for {modality} data use "
            f"{', '.join(('auto', *allowed))}"
        )
    return model


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
        model = TASK_MODELS.get(kind).build(
            cfg, num_classes=num_classes, example_items=example_items, device=torch.device(device)
        )
    log.info("task model: %s (%d classes) on %s", kind, num_classes, model.device)
    return model
