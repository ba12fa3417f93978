"""A round's trained Meta-Weight-Net weight net V(l; Theta_E), kept as safetensors.

The round engine saves the weight net its ``meta_weight`` valuation ended with to
``rounds/NNN/meta_weight_net.safetensors`` (:attr:`~utilgen.pool.RoundLayout.meta_weight_net`);
the next round's instance level reads it back for the meta-weight utility
(:class:`~utilgen.feedback.utility.MetaWeightUtility`). Only tensors are stored and read
(no pickle), and the hidden width is taken from the stored shapes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save

from utilgen.atomic import write_bytes_atomic
from utilgen.value.base import ValuationError
from utilgen.value.meta_weight import WeightNet


def save_weight_net(weight_net: WeightNet, path: Path) -> bool:
    """Write ``weight_net``'s tensors to ``path`` atomically, unless ``path`` exists (a
    resumed round keeps what it saved first); returns whether it wrote."""
    if path.exists():
        return False
    tensors = {k: v.detach().cpu().contiguous() for k, v in weight_net.state_dict().items()}
    write_bytes_atomic(path, save(tensors))
    return True


def load_weight_net(path: Path, device: str | torch.device = "cpu") -> WeightNet:
    """The weight net saved at ``path`` (see :func:`save_weight_net`), in eval mode.

    Raises:
        ValuationError: the file does not hold a weight net's tensors.
    """
    tensors = load_file(str(path), device=str(device))
    shape = tensors.get("hidden.weight", torch.empty(0)).shape
    if len(shape) != 2 or shape[1] != 1:
        raise ValuationError(
            f"{path} holds no meta-weight net (tensors {sorted(tensors)}); delete it and "
            "rescore its round"
        )
    weight_net = WeightNet(hidden=int(shape[0])).to(device)
    try:
        weight_net.load_state_dict(tensors)
    except RuntimeError as err:
        raise ValuationError(f"{path}: {str(err).splitlines()[0]}; delete it and rescore") from None
    return weight_net.eval()
