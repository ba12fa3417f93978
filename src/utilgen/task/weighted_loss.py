"""Per-sample weighted cross-entropy, the loss every training round minimises.

    loss = sum_i w_i * CE(logits_i, y_i) / sum_i w_i        (over the mini-batch)

Why normalise by the batch's weight sum rather than by the batch size:

* with all weights equal it *is* the usual mean cross-entropy, whatever their value, so the
  learning rate means the same thing with and without weights;
* scaling every weight by a constant changes nothing (weights are relative importances;
  a valuator's scale does not leak into the step size);
* a weight of 0 multiplies the sample's loss and hence its gradient by exactly 0.

The price is that a batch's step size does not grow with its total weight: a batch of
low-weight samples moves the model as far as a batch of high-weight ones. Within a batch,
weights act exactly as relative importances.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Weighted mean cross-entropy of a batch (a scalar; 0 when every weight is 0).

    Args:
        logits: (n, num_classes).
        labels: (n,) class indices.
        weights: (n,) non-negative per-sample weights.
    """
    per_sample = F.cross_entropy(logits, labels, reduction="none")
    weights = weights.to(per_sample.dtype)
    # clamp: an all-zero batch gives 0 / tiny = 0, not NaN.
    return (per_sample * weights).sum() / weights.sum().clamp(min=torch.finfo(weights.dtype).tiny)
