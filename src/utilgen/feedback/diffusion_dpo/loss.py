"""The Diffusion-DPO loss (Wallace et al. 2024) of a batch of preference pairs.

For a pair (x_w preferred, x_l dispreferred) both images are noised with the SAME noise eps
and timestep t, and the trained denoiser eps_theta and the frozen reference eps_ref predict
the noise of both. With per-image errors (mean over the C*H*W elements)

    model_err_w = mean (eps - eps_theta(x_w_t, t))^2    ref_err_w = mean (eps - eps_ref(x_w_t, t))^2
    model_err_l = mean (eps - eps_theta(x_l_t, t))^2    ref_err_l = mean (eps - eps_ref(x_l_t, t))^2

the loss of a pair is

    inside    = -0.5 * beta_dpo * ((model_err_w - model_err_l) - (ref_err_w - ref_err_l))
    loss_pair = -log sigmoid(inside)

and the batch loss is ``mean_i(w_i * loss_pair_i)`` with the pair weights w_i of
``feedback.pairs`` (1 when unweighted; not divided by their sum, as in ``dpo_loss``).

Which form this is. The paper's Eq. 14 reads

    -log sigmoid(-beta T omega(lambda_t) (  ||eps_w - eps_theta(x_w_t)||^2
                                          - ||eps_w - eps_ref(x_w_t)||^2
                                          - ||eps_l - eps_theta(x_l_t)||^2
                                          + ||eps_l - eps_ref(x_l_t)||^2))

with squared L2 norms (sums over elements). The authors' code (SalesforceAIResearch/
DiffusionDPO), which this follows, uses one noise for both images, means instead of sums,
and folds T * omega(lambda_t) (constant for the epsilon objective) and the 0.5 into
``beta_dpo``: it is Eq. 14 with ``beta T omega(lambda_t) = 0.5 beta_dpo / (C*H*W)``, so
beta_dpo = 5000 (SD 1.5) keeps the paper's meaning. The diffusers port
(``train_diffusion_dpo.py``) drops the 0.5, so its beta_dpo is half of ours for the same
objective. For v-prediction models the target is the velocity of each image instead of
eps, as in the reference code.

Implicit rewards: ``reward_w = -0.5 beta_dpo (model_err_w - ref_err_w)`` (likewise l), so
``inside = reward_w - reward_l`` is the reward margin; a pair is "accurate" when
``inside > 0`` (ties, e.g. at step 0, count as not accurate).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from utilgen.feedback.errors import FeedbackError


@dataclass(frozen=True)
class DiffusionDPOLoss:
    """The Diffusion-DPO loss of a batch of pairs and its per-pair parts.

    Attributes:
        loss: scalar, differentiable: mean over pairs of ``weight * -log sigmoid(inside)``.
        losses: per-pair weighted losses (nats), differentiable, shape ``(pairs,)``.
        inside: the sigmoid's argument, ``reward_w - reward_l`` (detached, ``(pairs,)``).
        model_err_w, model_err_l: the trained model's per-image MSE (detached).
        ref_err_w, ref_err_l: the reference's per-image MSE (detached).
        rewards_w, rewards_l: implicit rewards ``-0.5 beta_dpo (model_err - ref_err)``.
        weights: the pair weights used (ones when none were given).
    """

    loss: torch.Tensor
    losses: torch.Tensor
    inside: torch.Tensor
    model_err_w: torch.Tensor
    model_err_l: torch.Tensor
    ref_err_w: torch.Tensor
    ref_err_l: torch.Tensor
    rewards_w: torch.Tensor
    rewards_l: torch.Tensor
    weights: torch.Tensor

    def metrics(self) -> dict[str, float]:
        """Batch means: ``loss``, ``implicit_acc`` (share of pairs with inside > 0),
        ``rewards/chosen|rejected|margins``, ``model_err/w|l``, ``ref_err/w|l``, ``weight``."""
        return {
            "loss": float(self.loss.detach()),
            "implicit_acc": float((self.inside > 0).float().mean()),
            "rewards/chosen": float(self.rewards_w.mean()),
            "rewards/rejected": float(self.rewards_l.mean()),
            "rewards/margins": float(self.inside.mean()),
            "model_err/w": float(self.model_err_w.mean()),
            "model_err/l": float(self.model_err_l.mean()),
            "ref_err/w": float(self.ref_err_w.mean()),
            "ref_err/l": float(self.ref_err_l.mean()),
            "weight": float(self.weights.mean()),
        }


def per_image_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each image over all its elements, float32, shape ``(n,)``."""
    errors = F.mse_loss(pred.float(), target.float(), reduction="none")
    return errors.mean(dim=tuple(range(1, errors.dim())))


def diffusion_dpo_loss(
    model_pred_w: torch.Tensor,
    model_pred_l: torch.Tensor,
    ref_pred_w: torch.Tensor,
    ref_pred_l: torch.Tensor,
    target_w: torch.Tensor,
    target_l: torch.Tensor,
    *,
    beta_dpo: float,
    weights: torch.Tensor | None = None,
) -> DiffusionDPOLoss:
    """The Diffusion-DPO loss (module docstring) of ``n`` pairs.

    Args:
        model_pred_w, model_pred_l: the trained model's predictions for the noised
            preferred / dispreferred images, ``(n, ...)``; gradients flow through them.
        ref_pred_w, ref_pred_l: the reference's predictions (treated as constants).
        target_w, target_l: the regression targets (the shared noise for epsilon models).
        beta_dpo: the KL-regularisation strength (> 0).
        weights: per-pair weights ``(n,)``; None means 1 for every pair.

    Returns:
        The loss and its parts; the loss is the mean over pairs of ``w_i * loss_pair_i``.
    """
    if beta_dpo <= 0:
        raise FeedbackError(f"beta_dpo must be > 0, got {beta_dpo}; set a positive beta_dpo")
    model_err_w = per_image_mse(model_pred_w, target_w)
    model_err_l = per_image_mse(model_pred_l, target_l)
    with torch.no_grad():
        ref_err_w = per_image_mse(ref_pred_w, target_w)
        ref_err_l = per_image_mse(ref_pred_l, target_l)
    scale = -0.5 * beta_dpo
    inside = scale * ((model_err_w - model_err_l) - (ref_err_w - ref_err_l))
    if weights is None:
        weights = torch.ones_like(inside)
    weights = weights.to(device=inside.device, dtype=inside.dtype)
    losses = -F.logsigmoid(inside) * weights
    rewards_w = (scale * (model_err_w - ref_err_w)).detach()
    rewards_l = (scale * (model_err_l - ref_err_l)).detach()
    return DiffusionDPOLoss(
        loss=losses.mean(),
        losses=losses,
        inside=inside.detach(),
        model_err_w=model_err_w.detach(),
        model_err_l=model_err_l.detach(),
        ref_err_w=ref_err_w,
        ref_err_l=ref_err_l,
        rewards_w=rewards_w,
        rewards_l=rewards_l,
        weights=weights.detach(),
    )
