"""What the transformers-backed models (``hf-image``, ``hf-text``) share.

A transformers ``...ForImageClassification`` / ``...ForSequenceClassification`` model gets a
new ``num_classes``-way head on loading. Its features are the input of that final linear
layer, caught by a forward pre-hook, which works for every architecture without knowing
its pooling (ResNet's pooled map, ViT's and BERT's [CLS] vector, DistilBERT's pre-classifier
output). Freezing the backbone freezes the transformers ``base_model``, everything but the
classification head.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from utilgen.task.base import Batch
from utilgen.task.classifier_module import ClassifierModule
from utilgen.task.model_sources import load_pretrained

log = logging.getLogger(__name__)


def final_linear_name(model: nn.Module, num_labels: int) -> str:
    """Dotted name of the classification layer: the last ``nn.Linear`` with ``num_labels``
    outputs (the last ``nn.Linear`` at all when none has)."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear classification layer")
    matching = [name for name, m in linears if m.out_features == num_labels]
    return matching[-1] if matching else linears[-1][0]


def label_maps(num_classes: int) -> dict[str, Any]:
    """``num_labels`` plus matching id/label maps for ``from_pretrained``; ``num_labels``
    alone makes transformers warn that it disagrees with the checkpoint's own map."""
    id2label = {i: str(i) for i in range(num_classes)}
    return {
        "num_labels": num_classes,
        "id2label": id2label,
        "label2id": {v: k for k, v in id2label.items()},
    }


def load_classification_model(
    loader: Callable[..., Any], model_path: str, num_classes: int, *, trust_remote_code: bool
) -> Any:
    """``loader`` (an ``AutoModelFor...Classification.from_pretrained``) on ``model_path``
    with a new ``num_classes``-way head (``ignore_mismatched_sizes``: a pretrained head of
    another width is replaced, the rest is kept).

    Raises:
        ModelNotFoundError: as :func:`~utilgen.task.model_sources.load_pretrained`.
    """
    return load_pretrained(
        loader,
        model_path,
        trust_remote_code=trust_remote_code,
        ignore_mismatched_sizes=True,
        **label_maps(num_classes),
    )


class HFClassifier(ClassifierModule):
    """A transformers classification model with its head input captured.

    Args:
        model: the transformers model (its head already ``num_classes`` wide).
        num_classes: output classes.
        freeze_backbone: freeze ``model.base_model``.
    """

    def __init__(self, model: nn.Module, num_classes: int, freeze_backbone: bool) -> None:
        super().__init__()
        self.model = model
        self.head_name = final_linear_name(model, num_classes)
        self._head_input: torch.Tensor | None = None
        model.get_submodule(self.head_name).register_forward_pre_hook(self._capture_head_input)
        if freeze_backbone:
            self._freeze_base_model()

    def _capture_head_input(self, _module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self._head_input = args[0]

    def _freeze_base_model(self) -> None:
        prefix = str(getattr(self.model, "base_model_prefix", ""))
        base = getattr(self.model, prefix, None) if prefix else None
        if isinstance(base, nn.Module) and not self.head_name.startswith(prefix + "."):
            self.freeze(f"model.{prefix}")
        else:
            log.warning(
                "%s keeps its classifier inside its base model; task.freeze_backbone is "
                "ignored and the whole model trains",
                type(self.model).__name__,
            )

    def head_input(self) -> torch.Tensor:
        """The classification layer's input in the last forward pass, flattened to (n, d)."""
        if self._head_input is None:
            raise RuntimeError(f"the classification layer {self.head_name!r} was not called")
        return self._head_input.flatten(1)

    def features(self, batch: Batch) -> torch.Tensor:
        """The classification layer's input for ``batch`` (n, d), caught during a forward."""
        self.forward(batch)
        return self.head_input()
