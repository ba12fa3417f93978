"""``ClassifierModule``: the torch module behind every task model.

It gives the trainer and the checkpoint code one shape to rely on: ``forward(batch)`` returns
logits, ``features(batch)`` the vector the head reads, and frozen parts (a pretrained
backbone) are known by name, so that they

* get no gradients and stay in eval mode under ``train()`` (their batch-norm statistics and
  dropout must not change while only the head learns), and
* are left out of checkpoints (they never change, and a 17 MB backbone per epoch adds up).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from utilgen.task.base import Batch


def tensor_batch(batch: Batch) -> torch.Tensor:
    """``batch`` itself, checked to be a tensor (for modules that take one tensor)."""
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"this module takes a tensor batch, got {type(batch).__name__}")
    return batch


class ClassifierModule(nn.Module):
    """A classifier ``batch -> logits`` with optionally frozen submodules."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen_prefixes: tuple[str, ...] = ()

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits, (n, num_classes)."""
        raise NotImplementedError

    def features(self, batch: Batch) -> torch.Tensor:
        """The features the head reads, (n, d)."""
        raise NotImplementedError

    def freeze(self, prefix: str) -> None:
        """Freeze the submodule at ``prefix`` (dotted name): no gradients, always eval mode."""
        sub = self.get_submodule(prefix)
        for param in sub.parameters():
            param.requires_grad_(False)
        sub.eval()
        self.frozen_prefixes = (*self.frozen_prefixes, prefix)

    def train(self, mode: bool = True) -> ClassifierModule:
        super().train(mode)
        for prefix in self.frozen_prefixes:
            self.get_submodule(prefix).eval()
        return self

    def is_frozen_key(self, key: str) -> bool:
        """Whether a ``state_dict`` key belongs to a frozen submodule."""
        return any(key.startswith(prefix + ".") for prefix in self.frozen_prefixes)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """``state_dict`` without frozen submodules: what training can change."""
        return {k: v for k, v in self.state_dict().items() if not self.is_frozen_key(k)}

    def extra_repr(self) -> str:
        return f"frozen={list(self.frozen_prefixes)}" if self.frozen_prefixes else ""

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        # Typed override: nn.Module.__call__ returns Any.
        out: torch.Tensor = super().__call__(*args, **kwargs)
        return out
