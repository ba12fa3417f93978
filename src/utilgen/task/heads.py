"""Classification heads on top of a feature extractor (``task.head``)."""

from __future__ import annotations

from typing import Literal

from torch import nn

HeadKind = Literal["linear", "mlp"]

MLP_HIDDEN = 256


def make_head(in_features: int, num_classes: int, kind: HeadKind) -> nn.Module:
    """``linear``: one affine map. ``mlp``: Linear -> GELU -> Linear with 256 hidden units.

    The MLP has no dropout, so the head's output depends on nothing but its input: a sample
    of weight 0 stays without influence, and eval and train modes agree.
    """
    if kind == "linear":
        return nn.Linear(in_features, num_classes)
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(in_features, MLP_HIDDEN), nn.GELU(), nn.Linear(MLP_HIDDEN, num_classes)
        )
    raise ValueError(f"unknown head {kind!r}; use linear or mlp")
