"""The utility instance-level optimisation ascends: the task model's log p(y|x).

UtilGen's instance level (shared/papers/000) raises "the utility of the generated sample";
the issue pins it to the downstream classifier's log-probability of the intended class, a
smooth score whose exponential is the marginal p(y|x) that valuation reports. It is computed
from float pixels through the task model's differentiable input preparation
(``prepare_pixels``), so gradients reach the sampler's inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from utilgen.feedback.errors import FeedbackError
from utilgen.task import PixelTaskModel, TaskModel
from utilgen.task.torch_task_model import eval_mode


class LogProbUtility:
    """u(x, y) = log softmax(f(x))_y of a task model f, differentiable in the pixels x.

    The classifier runs in eval mode (batch-norm statistics frozen, no dropout); its
    weights stay untouched when callers take gradients with ``torch.autograd.grad`` on the
    inputs.
    """

    def __init__(self, model: TaskModel) -> None:
        if not isinstance(model, PixelTaskModel):
            raise FeedbackError(
                f"task model {model.kind!r} cannot take gradients through its input "
                "preparation (no prepare_pixels); instance-level feedback needs an image "
                "classifier such as small-cnn, efficientnet-lite0 or hf-image"
            )
        self.model = model

    def __call__(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p(label | pixels) per row, shape (n,).

        Args:
            pixels: (n, C, H, W) float images in [0, 1].
            labels: (n,) class indices.
        """
        module = self.model.module()
        with eval_mode(module):
            logits = module(self.model.prepare_pixels(pixels))
        rows = torch.arange(len(labels), device=logits.device)
        return F.log_softmax(logits.float(), dim=-1)[rows, labels.to(logits.device)]
