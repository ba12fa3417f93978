"""Weighted sigmoid DPO loss: known answers on hand-written log-probs, per-pair weighting,
and the shifted completion log-prob sum against a direct loop."""

from __future__ import annotations

import math

import pytest
import torch

from utilgen.feedback.dpo_loss import sequence_logps, weighted_dpo_loss, weighted_sft_loss


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_known_answer_unweighted() -> None:
    pc, pr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -3.0])
    out = weighted_dpo_loss(pc, pr, rc, rr, beta=0.5)
    # pair 0: (−3+3.5) − (−4+3) = 1.5 ; pair 1: (−5+4) − (−2+3) = −2
    expected = [-_logsig(0.5 * 1.5), -_logsig(0.5 * -2.0)]
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-6)
    assert float(out.loss) == pytest.approx(sum(expected) / 2, abs=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.25, -0.5])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.5, 0.5])
    assert out.margins.tolist() == pytest.approx([0.75, -1.0])
    assert out.accuracies.tolist() == [1.0, 0.0]
    m = out.metrics()
    assert m["rewards/accuracies"] == 0.5
    assert m["weight"] == 1.0


def test_weights_scale_each_pair() -> None:
    g = torch.Generator().manual_seed(0)
    logps = [torch.randn(5, generator=g) * 3 for _ in range(4)]
    weights = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    plain = weighted_dpo_loss(*logps, beta=1.0)
    weighted = weighted_dpo_loss(*logps, beta=1.0, weights=weights)
    torch.testing.assert_close(weighted.losses, plain.losses * weights)
    torch.testing.assert_close(weighted.loss, (plain.losses * weights).mean())
    # Rewards do not depend on the weights; a zero weight removes the pair's loss.
    torch.testing.assert_close(weighted.margins, plain.margins)
    assert float(weighted.losses[0]) == 0.0
    # Hand-written: w = tanh(0.5), delta = 2, beta = 1.
    one = weighted_dpo_loss(
        torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]),
        beta=1.0, weights=torch.tensor([math.tanh(0.5)]),
    )
    assert float(one.loss) == pytest.approx(math.tanh(0.5) * -_logsig(2.0), abs=1e-6)


def test_weighted_gradients_scale_per_pair() -> None:
    base = torch.tensor([-2.0, -1.0, -4.0])
    weights = torch.tensor([0.2, 1.0, 0.7])
    grads = []
    for w in (None, weights):
        pc = base.clone().requires_grad_(True)
        out = weighted_dpo_loss(pc, base - 1, base + 0.5, base, beta=2.0, weights=w)
        out.loss.backward()
        assert pc.grad is not None
        grads.append(pc.grad)
    torch.testing.assert_close(grads[1], grads[0] * weights)


def test_bad_inputs() -> None:
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="beta"):
        weighted_dpo_loss(x, x, x, x, beta=0.0)
    with pytest.raises(ValueError, match="one shape"):
        weighted_dpo_loss(x, torch.zeros(3), x, x, beta=1.0)
    with pytest.raises(ValueError, match="weights"):
        weighted_dpo_loss(x, x, x, x, beta=1.0, weights=torch.ones(3))


def test_sequence_logps_matches_a_loop() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 6, 11, generator=g)
    ids = torch.randint(0, 11, (3, 6), generator=g)
    mask = torch.tensor(
        [[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 0]], dtype=torch.long
    )
    expected = torch.zeros(3)
    for row in range(3):
        for t in range(1, 6):
            if mask[row, t]:
                expected[row] += torch.log_softmax(logits[row, t - 1], -1)[ids[row, t]]
    torch.testing.assert_close(sequence_logps(logits, ids, mask), expected)
    # The last K positions give the same sums when every completion starts at K's second
    # position or later (rows 0 and 2 start at 2 and 4, so K = 5 keeps them).
    rows = [0, 2]
    torch.testing.assert_close(
        sequence_logps(logits[rows, 1:], ids[rows, 1:], mask[rows, 1:]), expected[rows]
    )
    with pytest.raises(ValueError, match="aligned"):
        sequence_logps(logits, ids[:, 1:], mask)


def test_sft_loss_known_answer_and_weights() -> None:
    logps = torch.tensor([-6.0, -2.0, -9.0])
    tokens = torch.tensor([3, 1, 4])
    # Unweighted: every chosen token's NLL, averaged over the batch's 8 tokens.
    assert float(weighted_sft_loss(logps, tokens)) == pytest.approx(17.0 / 8)
    weights = torch.tensor([0.5, 0.0, 1.0])
    assert float(weighted_sft_loss(logps, tokens, weights=weights)) == pytest.approx(12.0 / 8)
    # Each pair's share is scaled by its weight, the denominator is not.
    pc = logps.clone().requires_grad_(True)
    weighted_sft_loss(pc, tokens, weights=weights).backward()
    assert pc.grad is not None
    assert pc.grad.tolist() == pytest.approx([-0.5 / 8, 0.0, -1.0 / 8])
    with pytest.raises(ValueError, match="no chosen completion token"):
        weighted_sft_loss(logps, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="one shape"):
        weighted_sft_loss(logps, tokens[:2])
