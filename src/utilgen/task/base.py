"""The ``TaskModel`` protocol: what every downstream classifier offers the loop.

Valuators (marginal, margin, VoG, embedding similarity, meta weights) and the trainer use
only these methods, so any classifier that implements them plugs into every method.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from utilgen.data.labelled import Item, Modality


@runtime_checkable
class TaskModel(Protocol):
    """A classifier over images or texts, trainable with per-sample weights."""

    modality: Modality
    num_classes: int

    def module(self) -> torch.nn.Module:
        """The trainable torch module (maps a prepared batch to logits)."""
        ...

    def prepare(self, items: Sequence[Item]) -> torch.Tensor | dict[str, torch.Tensor]:
        """Turn raw items into the module's input batch (resized, normalised or tokenised)."""
        ...

    def logits(self, items: Sequence[Item]) -> np.ndarray:
        """Class logits, float32 (n, num_classes), in eval mode, batched."""
        ...

    def predict_proba(self, items: Sequence[Item]) -> np.ndarray:
        """Softmax probabilities, float32 (n, num_classes), rows sum to 1."""
        ...

    def embed(self, items: Sequence[Item]) -> np.ndarray:
        """Penultimate-layer features, float32 (n, d)."""
        ...

    def input_gradients(self, items: Sequence[Item], labels: np.ndarray) -> np.ndarray:
        """Gradient of each sample's true-class logit w.r.t. its input.

        Images: w.r.t. the prepared pixel tensor, shape (n, C, H, W). Texts: w.r.t. the input
        token embeddings, shape (n, T, d) (padding positions are zero).
        """
        ...

    def save(self, path: Path) -> Path:
        """Write the trainable weights as safetensors (plus a JSON sidecar); returns path."""
        ...

    def load(self, path: Path) -> None:
        """Load weights written by :meth:`save` (safetensors only)."""
        ...
