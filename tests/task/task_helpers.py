"""Helpers shared by the task-model tests."""

from __future__ import annotations

from collections.abc import Callable

import torch

from utilgen.task import TaskModel

Build = Callable[..., TaskModel]
"""``build(name, data, seed=0, **task_config)`` (the ``build`` fixture)."""

def trainable_params(model: TaskModel) -> dict[str, torch.Tensor]:
    """Copies of the trainable parameters, by name."""
    return {
        name: p.detach().clone()
        for name, p in model.module().named_parameters()
        if p.requires_grad
    }


def all_params(model: TaskModel) -> dict[str, torch.Tensor]:
    """Copies of every parameter and buffer, by name."""
    return {name: t.detach().clone() for name, t in model.module().state_dict().items()}


def identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two parameter dicts have the same names and bit-identical tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
