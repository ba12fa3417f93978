"""The ``Valuator`` protocol: one utility score per sample from the current task model.

A valuator reads a :class:`~utilgen.task.TaskModel` and labelled samples (images or texts)
and returns one float64 per sample, in the samples' order. What the score means (higher is
easier, harder, more useful) is each valuator's documented convention; selectors decide what
to keep from it. Valuators that need more than the current model (VoG: the saved
checkpoints; similarity: the real data; meta weights: a clean meta set) take it when they are
built, so every valuator is called the same way.

Valuators work batched, on the task model's device, and leave the model's weights and
train/eval mode as they found them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from utilgen.data.labelled import LabelledData
from utilgen.errors import UtilgenError
from utilgen.task.base import TaskModel


class ValuationError(UtilgenError):
    """Scores cannot be computed or recorded as asked (bad input to a valuator or selector)."""


@runtime_checkable
class Valuator(Protocol):
    """Scores samples for one task model.

    Attributes:
        name: the score's name (``marginal``, ``vog``, ...): the column it is written under.
    """

    name: str

    def score(self, model: TaskModel, data: LabelledData) -> np.ndarray:
        """One score per sample of ``data``, float64 (n,), in ``data``'s order."""
        ...


def check_data(model: TaskModel, data: LabelledData, what: str) -> None:
    """Raise ValuationError when ``data`` does not fit ``model`` (modality, label range)."""
    if data.modality != model.modality:
        raise ValuationError(
            f"{what}: the {model.kind} task model classifies {model.modality}s but the samples "
            f"are {data.modality}s; score samples of the model's modality"
        )
    if len(data) and (data.labels.min() < 0 or data.labels.max() >= model.num_classes):
        raise ValuationError(
            f"{what}: labels must lie in [0, {model.num_classes}) for this {model.kind} model; "
            "score samples with the task's classes"
        )


@contextmanager
def preserved_state(module: torch.nn.Module) -> Iterator[None]:
    """Run a block that may change ``module``'s weights or mode, then restore both.

    Used by valuators that load checkpoints (VoG) or train (meta weights): scoring must not
    change the model the loop goes on to use.
    """
    saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
    modes = {name: sub.training for name, sub in module.named_modules()}
    try:
        yield
    finally:
        module.load_state_dict(saved)
        for name, sub in module.named_modules():
            sub.training = modes[name]
