"""The utilities instance-level optimisation ascends (``feedback.instance.utility``).

UtilGen's instance level (shared/papers/000) raises "the utility of the generated sample",
the meta-learned utility its valuation computes. Two choices:

* ``log_prob`` (:class:`LogProbUtility`): the classifier's log p(y|x) of the intended
  class, a smooth score whose exponential is the marginal p(y|x) that valuation reports;
* ``meta_weight`` (:class:`MetaWeightUtility`): the paper's utility, V(CE(f(x), y); Theta)
  with Theta the weight net the previous round's Meta-Weight-Net valuation trained
  (``rounds/NNN/meta_weight_net.safetensors``).

Both are computed from float pixels through the task model's differentiable input
preparation (``prepare_pixels``), so gradients reach the sampler's inputs; both take
``(pixels, labels)`` and return one value per row (the :class:`Utility` protocol).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

from utilgen.feedback.errors import FeedbackError
from utilgen.task import PixelTaskModel, TaskModel
from utilgen.task.torch_task_model import eval_mode

if TYPE_CHECKING:
    from utilgen.feedback.component import RoundContext
    from utilgen.value.meta_weight import WeightNet


class Utility(Protocol):
    """A differentiable per-sample utility u(x, y): (n, C, H, W) pixels in [0, 1] and (n,)
    labels -> (n,) values, higher is better. ``name`` is the config value that picks it."""

    name: str

    def __call__(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...


def _pixel_model(model: TaskModel) -> PixelTaskModel:
    if not isinstance(model, PixelTaskModel):
        raise FeedbackError(
            f"task model {model.kind!r} cannot take gradients through its input "
            "preparation (no prepare_pixels); instance-level feedback needs an image "
            "classifier such as small-cnn, efficientnet-lite0 or hf-image"
        )
    return model


def _logits(model: PixelTaskModel, pixels: torch.Tensor) -> torch.Tensor:
    module = model.module()
    with eval_mode(module):
        return module(model.prepare_pixels(pixels)).float()


class LogProbUtility:
    """u(x, y) = log softmax(f(x))_y of a task model f, differentiable in the pixels x.

    The classifier runs in eval mode (batch-norm statistics frozen, no dropout); its
    weights stay untouched when callers take gradients with ``torch.autograd.grad`` on the
    inputs.
    """

    name = "log_prob"

    def __init__(self, model: TaskModel) -> None:
        self.model = _pixel_model(model)

    def __call__(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p(label | pixels) per row, shape (n,).

        Args:
            pixels: (n, C, H, W) float images in [0, 1].
            labels: (n,) class indices.
        """
        logits = _logits(self.model, pixels)
        rows = torch.arange(len(labels), device=logits.device)
        return F.log_softmax(logits, dim=-1)[rows, labels.to(logits.device)]


class MetaWeightUtility:
    """u(x, y) = V(CE(f(x), y); Theta): UtilGen's meta-learned utility, differentiable in x.

    f is ``feedback.instance.utility_model``'s classifier, by default the judge (the stage-1
    real-data classifier): the Meta-Weight-Net valuation trains Theta on the losses of a
    model that starts from the judge's weights, so the judge's cross-entropies lie in the
    range V was fitted on; the student (the previous round's classifier) is the option for a
    utility that follows the model being trained. Theta is the weight net the previous
    round's valuation ended with (Theta_E), frozen. f runs in eval mode; neither f's nor V's
    weights collect gradients. V is in (0, 1): its gradient is V'(l) dl/dx, so ascent lowers
    the loss where V falls with the loss (the usual clean-sample verdict), raises it where V
    rises, and stalls where V is flat.
    """

    name = "meta_weight"

    def __init__(self, model: TaskModel, weight_net: WeightNet) -> None:
        self.model = _pixel_model(model)
        self.weight_net = weight_net.to(model.device).eval().requires_grad_(False)

    def __call__(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """V(CE(f(pixels), label)) per row, shape (n,), in (0, 1).

        Args:
            pixels: (n, C, H, W) float images in [0, 1].
            labels: (n,) class indices.
        """
        logits = _logits(self.model, pixels)
        losses = F.cross_entropy(logits, labels.to(logits.device), reduction="none")
        weights: torch.Tensor = self.weight_net(losses)
        return weights


def round_utility(ctx: RoundContext) -> Utility:
    """The utility ``ctx.config.feedback.instance`` picks for round ``ctx.round_index``.

    Raises:
        UtilgenError: ``meta_weight`` and the previous round saved no weight net.
    """
    from utilgen.errors import UtilgenError
    from utilgen.pool import RoundLayout
    from utilgen.value.weight_net_file import load_weight_net

    cfg = ctx.config.feedback.instance
    model = ctx.scorer(cfg.utility_model)
    if cfg.utility == "log_prob":
        return LogProbUtility(model)
    previous = RoundLayout(ctx.previous)
    if not previous.meta_weight_net.is_file():
        raise UtilgenError(
            f"feedback.instance.utility=meta_weight needs {previous.meta_weight_net}, which "
            f"round {ctx.round_index - 1} did not save; delete {previous.metrics} and re-run "
            "to rescore that round"
        )
    return MetaWeightUtility(model, load_weight_net(previous.meta_weight_net))
