"""``TorchTaskModel``: the shared half of every task model.

A concrete model supplies its :class:`ClassifierModule` and :meth:`prepare`; this class turns
them into the rest of the :class:`~utilgen.task.base.TaskModel` protocol: batched logits,
probabilities, features, input gradients (for pixel batches) and safetensors checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utilgen.data.labelled import Item, Modality
from utilgen.task.base import Batch
from utilgen.task.checkpoint import load_state, save_state
from utilgen.task.classifier_module import ClassifierModule


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Run a block in eval mode and give the module back in the mode it had."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering ``range(n)``."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class TorchTaskModel:
    """Base of the task models: a :class:`ClassifierModule` plus a :meth:`prepare` step.

    Args:
        net: the classifier module (moved to ``device``).
        kind: the ``task.model`` name.
        modality: ``"image"`` or ``"text"``.
        num_classes: output classes.
        device: where the module runs.
        eval_batch_size: batch size of the inference methods (logits, embed, gradients).
    """

    def __init__(
        self,
        net: ClassifierModule,
        *,
        kind: str,
        modality: Modality,
        num_classes: int,
        device: torch.device,
        eval_batch_size: int = 256,
    ) -> None:
        self.kind = kind
        self.modality: Modality = modality
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.eval_batch_size = eval_batch_size
        self.net = net.to(self.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, num_classes={self.num_classes})"

    # -- to be supplied by each model -----------------------------------------------------

    def prepare(self, items: Sequence[Item]) -> Batch:
        raise NotImplementedError

    # -- the protocol ---------------------------------------------------------------------

    def module(self) -> ClassifierModule:
        return self.net

    def logits(self, items: Sequence[Item]) -> np.ndarray:
        out = [np.zeros((0, self.num_classes), dtype=np.float32)]
        with eval_mode(self.net), torch.no_grad():
            for part in chunks(len(items), self.eval_batch_size):
                out.append(self.net(self.prepare(items[part])).float().cpu().numpy())
        return np.concatenate(out)

    def predict_proba(self, items: Sequence[Item]) -> np.ndarray:
        logits = torch.from_numpy(self.logits(items))
        return torch.softmax(logits, dim=1).numpy().astype(np.float32)

    def embed(self, items: Sequence[Item]) -> np.ndarray:
        out = []
        with eval_mode(self.net), torch.no_grad():
            for part in chunks(len(items), self.eval_batch_size):
                out.append(self.net.features(self.prepare(items[part])).float().cpu().numpy())
        if not out:
            raise ValueError("embed() needs at least one item")
        return np.concatenate(out)

    def input_gradients(self, items: Sequence[Item], labels: np.ndarray) -> np.ndarray:
        """Gradient of each true-class logit w.r.t. the prepared input tensor.

        Valid for models whose :meth:`prepare` returns one tensor (pixels): in eval mode the
        samples of a batch do not interact, so the gradient of the summed logits w.r.t. the
        batch is, row by row, each sample's own gradient. Text models override this.
        """
        labels = check_labels(labels, len(items), self.num_classes)
        out = []
        with eval_mode(self.net), torch.enable_grad():
            for part in chunks(len(items), self.eval_batch_size):
                batch = self.prepare(items[part])
                if not isinstance(batch, torch.Tensor):
                    raise TypeError(f"{type(self).__name__} must override input_gradients")
                x = batch.detach().requires_grad_(True)
                y = torch.as_tensor(labels[part], device=self.device)
                chosen = self.net(x).gather(1, y[:, None]).sum()
                (grad,) = torch.autograd.grad(chosen, x)
                out.append(grad.float().cpu().numpy())
        return np.concatenate(out)

    def save(self, path: Path, metadata: Mapping[str, Any] | None = None) -> Path:
        meta = {"modality": self.modality, **(metadata or {})}
        return save_state(
            self.net, Path(path), kind=self.kind, num_classes=self.num_classes, metadata=meta
        )

    def load(self, path: Path) -> None:
        load_state(self.net, Path(path), kind=self.kind, num_classes=self.num_classes)


def check_labels(labels: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    """``labels`` as int64 (n,), each in [0, num_classes)."""
    arr = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(arr) != n:
        raise ValueError(f"got {len(arr)} labels for {n} items")
    if n and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    return arr
