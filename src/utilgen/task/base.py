"""The ``TaskModel`` protocol: what every downstream classifier offers the loop.

Valuators (marginal, margin, VoG, embedding similarity, meta weights) and the trainer use
only these methods, so any classifier that implements them plugs into every method.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from utilgen.data.labelled import Item, Modality

Batch = torch.Tensor | dict[str, torch.Tensor]
"""A prepared input batch: a tensor (pixels, cached sentence embeddings) or a dict of tensors
(token ids and attention mask). ``module()(batch)`` maps it to logits."""


@runtime_checkable
class TaskModel(Protocol):
    """A classifier over images or texts, trainable with per-sample weights.

    Attributes:
        kind: the ``task.model`` name it was built from (``small-cnn``, ``minilm``, ...);
            written into every checkpoint so a checkpoint is never loaded into another kind.
        modality: ``"image"`` or ``"text"``.
        num_classes: number of output classes.
        device: where the module lives and where :meth:`prepare` puts its tensors.
    """

    kind: str
    modality: Modality
    num_classes: int
    device: torch.device

    def module(self) -> torch.nn.Module:
        """The trainable torch module: ``module(batch)`` maps a prepared batch to logits.

        Parameters with ``requires_grad=False`` (a frozen backbone) are not trained, and the
        module keeps frozen parts in eval mode even under ``module.train()``.
        """
        ...

    def prepare(self, items: Sequence[Item]) -> Batch:
        """Turn raw items into the module's input batch (resized, normalised or tokenised),
        on :attr:`device`."""
        ...

    def logits(self, items: Sequence[Item]) -> np.ndarray:
        """Class logits, float32 (n, num_classes), in eval mode, batched."""
        ...

    def predict_proba(self, items: Sequence[Item]) -> np.ndarray:
        """Softmax probabilities, float32 (n, num_classes), rows sum to 1."""
        ...

    def embed(self, items: Sequence[Item]) -> np.ndarray:
        """Features the classification head reads, float32 (n, d).

        For a linear head these are the penultimate-layer features; for ``minilm`` the
        384-d normalised sentence embedding.
        """
        ...

    def input_gradients(self, items: Sequence[Item], labels: np.ndarray) -> np.ndarray:
        """Gradient of each sample's true-class logit w.r.t. its input, float32, eval mode.

        Images: w.r.t. the prepared (normalised) pixel tensor, shape (n, C, H, W). Texts:
        w.r.t. the input token embeddings, shape (n, T, d), T the longest tokenised item of
        the call (padding positions are zero).
        """
        ...

    def save(self, path: Path, metadata: Mapping[str, Any] | None = None) -> Path:
        """Write the trainable weights (a frozen backbone is left out) as safetensors, plus a
        JSON sidecar (``path`` with suffix ``.json``) holding the model kind and ``metadata``;
        returns ``path``."""
        ...

    def load(self, path: Path) -> None:
        """Load weights written by :meth:`save` (safetensors only)."""
        ...


@runtime_checkable
class PixelTaskModel(TaskModel, Protocol):
    """An image classifier whose input preparation has a differentiable twin, so a utility
    can be backpropagated into generated pixels (UtilGen's instance-level optimisation)."""

    def prepare_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """:meth:`prepare` for float pixels (n, C, H, W) in [0, 1] (any size, 1 or 3
        channels), as torch operations: the module's input batch on :attr:`device`, with a
        graph back to ``pixels``."""
        ...
