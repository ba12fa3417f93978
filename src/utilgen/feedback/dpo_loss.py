"""Weighted sigmoid DPO loss (U-DPO) on per-sequence log-probabilities.

Standard DPO (Rafailov et al. 2023) with a reference model: for a pair (x+, x-) with
policy log-probs p+, p- and reference log-probs r+, r- (sums over completion tokens, nats),

    delta = (p+ - r+) - (p- - r-)
    loss  = -log sigmoid(beta * delta)

U-DPO (Sec. 3.4, Eq. 6) multiplies each pair's loss by w = tanh(|r_util(x+) - r_util(x-)|);
the batch loss here is the mean over pairs of ``w_i * loss_i`` (not divided by the sum of the
weights, so a batch of weak pairs moves the model less, as Eq. 6 reads). With all w = 1 it is
exactly TRL's ``loss_type="sigmoid"`` DPO loss.

Departure from the paper as printed: its Eq. 1, ``-log sigmoid(beta log pi(x+) - (1 - beta)
log pi(x-))``, has no reference model and is not the DPO objective the paper cites and
trains with (TRL's DPO, beta = 1.0); we implement the standard reference-model form above.

Rewards are the implicit DPO rewards beta * (p - r); a pair is "accurate" when the chosen
reward is higher than the rejected one (the paper's "DPO reward accuracy", Fig. 2).

:func:`weighted_sft_loss` is the optional negative log-likelihood of the preferred
completions (RPO, Pang et al. 2024; TRL's ``loss_type=["sigmoid", "sft"]``): summed over the
chosen completions' tokens, each pair's share times its weight, divided by the number of
chosen tokens in the batch. With all w = 1 it is TRL's ``sft`` loss. Plain DPO can satisfy
its objective by pushing the dispreferred likelihood down alone; the NLL term also holds the
preferred texts' likelihood up (the paper's Eq. 1 at its beta = 1 is, taken literally, this
term alone: -log sigmoid(log pi(x+)) ~ -log pi(x+)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DPOLossOutput:
    """The weighted DPO loss of a batch of pairs and its per-pair parts.

    Attributes:
        loss: scalar, differentiable: mean over pairs of ``weight * -log sigmoid(beta delta)``.
        losses: per-pair weighted losses (nats), differentiable, shape ``(pairs,)``.
        chosen_rewards: beta * (p+ - r+), detached, shape ``(pairs,)``.
        rejected_rewards: beta * (p- - r-), detached.
        margins: chosen_rewards - rejected_rewards, detached.
        accuracies: 1.0 where the chosen reward is higher, else 0.0.
        weights: the pair weights used (ones when none were given).
    """

    loss: torch.Tensor
    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    margins: torch.Tensor
    accuracies: torch.Tensor
    weights: torch.Tensor

    def metrics(self) -> dict[str, float]:
        """Batch means under TRL's metric names (``rewards/...``) plus ``loss`` and ``weight``."""
        return {
            "loss": float(self.loss.detach()),
            "rewards/chosen": float(self.chosen_rewards.mean()),
            "rewards/rejected": float(self.rejected_rewards.mean()),
            "rewards/accuracies": float(self.accuracies.mean()),
            "rewards/margins": float(self.margins.mean()),
            "weight": float(self.weights.mean()),
        }


def weighted_dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    weights: torch.Tensor | None = None,
) -> DPOLossOutput:
    """Weighted sigmoid DPO loss of a batch of pairs (see the module docstring).

    Args:
        policy_chosen_logps: log pi(x+ | prompt) per pair, summed over completion tokens.
        policy_rejected_logps: log pi(x- | prompt) per pair.
        ref_chosen_logps: the same under the reference model (no gradient needed).
        ref_rejected_logps: the same under the reference model.
        beta: DPO temperature, > 0.
        weights: per-pair weights (U-DPO: tanh(|delta r|)); None: all 1.

    Returns:
        :class:`DPOLossOutput`; ``loss`` is in nats per pair.

    Raises:
        ValueError: beta <= 0, or the four inputs (and weights) differ in shape.
    """
    if not beta > 0:
        raise ValueError(f"DPO beta must be > 0, got {beta}")
    shape = policy_chosen_logps.shape
    others = (policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    if len(shape) != 1 or any(t.shape != shape for t in others):
        raise ValueError(
            "the four log-prob tensors must be 1-D and of one shape, got "
            f"{[tuple(t.shape) for t in (policy_chosen_logps, *others)]}"
        )
    if weights is None:
        weights = torch.ones_like(policy_chosen_logps)
    elif weights.shape != shape:
        raise ValueError(f"weights of shape {tuple(weights.shape)} for {shape[0]} pairs")
    weights = weights.to(policy_chosen_logps)
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    losses = weights * -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return DPOLossOutput(
        loss=losses.mean(),
        losses=losses,
        chosen_rewards=chosen_rewards,
        rejected_rewards=rejected_rewards,
        margins=chosen_rewards - rejected_rewards,
        accuracies=(chosen_rewards > rejected_rewards).float(),
        weights=weights.detach(),
    )


def weighted_sft_loss(
    policy_chosen_logps: torch.Tensor,
    chosen_tokens: torch.Tensor,
    *,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted negative log-likelihood of the preferred completions, per token (nats).

    Args:
        policy_chosen_logps: log pi(x+ | prompt) per pair, summed over its scored tokens.
        chosen_tokens: how many tokens each of those sums covers.
        weights: per-pair weights; None: all 1 (then this is TRL's ``sft`` loss: the mean
            token NLL over every chosen token of the batch).

    Returns:
        scalar ``-sum_i w_i logp_i / sum_i n_i``, differentiable in ``policy_chosen_logps``.

    Raises:
        ValueError: shapes differ, or the batch has no chosen token.
    """
    shape = policy_chosen_logps.shape
    if len(shape) != 1 or chosen_tokens.shape != shape:
        raise ValueError(
            f"chosen log-probs {tuple(shape)} and token counts {tuple(chosen_tokens.shape)} "
            "must be 1-D and of one shape"
        )
    if weights is None:
        weights = torch.ones_like(policy_chosen_logps)
    elif weights.shape != shape:
        raise ValueError(f"weights of shape {tuple(weights.shape)} for {shape[0]} pairs")
    total = chosen_tokens.sum()
    if not total > 0:
        raise ValueError("the batch has no chosen completion token to take the NLL of")
    weights = weights.to(policy_chosen_logps)
    return -(weights * policy_chosen_logps).sum() / total.to(policy_chosen_logps)


def sequence_logps(
    logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor
) -> torch.Tensor:
    """Sum of the log-probabilities of each row's completion tokens.

    ``logits[:, t]`` predicts ``input_ids[:, t + 1]`` (causal shift); token t + 1 counts when
    ``completion_mask[:, t + 1]`` is 1, so the first token of a row is never scored. The
    three inputs are aligned on their last axis (they may be the last K positions of longer
    sequences, as with ``logits_to_keep``).

    Args:
        logits: ``(rows, length, vocab)`` next-token logits.
        input_ids: ``(rows, length)`` token ids.
        completion_mask: ``(rows, length)``, 1 on completion tokens, 0 on prompt and padding.

    Returns:
        ``(rows,)`` float32 log-probabilities (nats), differentiable in ``logits``.
    """
    if logits.shape[:2] != input_ids.shape or input_ids.shape != completion_mask.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)}, input_ids {tuple(input_ids.shape)} and "
            f"completion_mask {tuple(completion_mask.shape)} are not aligned"
        )
    # float32: log-softmax over a large vocabulary loses too much in bfloat16.
    shifted = logits[:, :-1].float()
    targets = input_ids[:, 1:].unsqueeze(-1)
    token_logps = shifted.gather(-1, targets).squeeze(-1) - shifted.logsumexp(-1)
    # where, not a product: a padded position's log-prob may be -inf (masked vocabulary).
    mask = completion_mask[:, 1:].bool()
    return torch.where(mask, token_logps, torch.zeros_like(token_logps)).sum(-1)
