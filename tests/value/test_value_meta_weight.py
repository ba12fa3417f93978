"""Meta-Weight-Net: the bi-level step against a hand-written reference, parameter updates,
batch-norm buffers, determinism and the valuator's bookkeeping."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from value_helpers import LinearModel, cnn

from utilgen.config.valuation import MetaGradient, MetaWeightConfig
from utilgen.data.labelled import LabelledData
from utilgen.data.splits import k_shot
from utilgen.task import TaskModel
from utilgen.value import MetaWeight, ValuationError, WeightNet, meta_weight_step
from utilgen.value.meta_weight import train_meta_weighted


def _batches(data: LabelledData, model: TaskModel) -> tuple[torch.Tensor, ...]:
    x = model.prepare(data.items[:8])
    y = torch.as_tensor(data.labels[:8])
    xm = model.prepare(data.items[40:46])
    ym = torch.as_tensor(data.labels[40:46])
    assert isinstance(x, torch.Tensor) and isinstance(xm, torch.Tensor)
    return x, y, xm, ym


def test_weight_net_maps_losses_into_unit_interval() -> None:
    torch.manual_seed(0)
    net = WeightNet(100)
    assert net.hidden.in_features == 1 and net.hidden.out_features == 100
    w = net(torch.tensor([0.0, 0.5, 3.0, 50.0]))
    assert w.shape == (4,) and bool(((w > 0) & (w < 1)).all())


@pytest.mark.parametrize("meta_gradient", ["forward", "double_backward"])
def test_bi_level_step_matches_the_meta_weight_net_formula(
    digits_small: LabelledData, meta_gradient: MetaGradient
) -> None:
    """The weight net's gradient is  -alpha/n sum_i (grad L_meta(theta') . grad l_i(theta))
    * dV(l_i)/dTheta  (Shu et al. 2019, Eq. 7-8), computed here by hand with per-sample
    gradients; then both nets take plain SGD steps."""
    torch.manual_seed(0)
    model = LinearModel(num_classes=10)
    net = model.module()
    weight_net = WeightNet(7)
    x, y, xm, ym = _batches(digits_small, model)
    alpha, beta, n = 0.3, 0.05, len(y)
    w0, b0 = net.head.weight.detach().clone(), net.head.bias.detach().clone()
    v0 = copy.deepcopy(weight_net)

    # -- the reference, by hand ------------------------------------------------------------
    def logits(w: torch.Tensor, b: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return F.linear(inputs.flatten(1), w, b)

    wr, br = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    losses = F.cross_entropy(logits(wr, br, x), y, reduction="none")
    per_sample = []
    for i in range(n):
        gw, gb = torch.autograd.grad(losses[i], (wr, br), retain_graph=True)
        per_sample.append(torch.cat([gw.flatten(), gb]))
    g = torch.stack(per_sample)  # (n, P)
    with torch.no_grad():
        weights0 = v0(losses.detach())
        step = (weights0[:, None] * g).mean(0)
        w1 = w0 - alpha * step[: w0.numel()].reshape(w0.shape)
        b1 = b0 - alpha * step[w0.numel() :]
    w1r, b1r = w1.clone().requires_grad_(True), b1.clone().requires_grad_(True)
    meta_loss = F.cross_entropy(logits(w1r, b1r, xm), ym)
    gm = torch.cat([t.flatten() for t in torch.autograd.grad(meta_loss, (w1r, b1r))])
    coefficients = -alpha / n * (g @ gm)  # dL_meta / dw_i
    v_expected = copy.deepcopy(v0)
    surrogate = (coefficients.detach() * v_expected(losses.detach())).sum()
    expected_grads = torch.autograd.grad(surrogate, list(v_expected.parameters()))
    with torch.no_grad():
        for p, grad in zip(v_expected.parameters(), expected_grads, strict=True):
            p -= beta * grad
        new_weights = v_expected(losses.detach())
        real_step = (new_weights[:, None] * g).mean(0)
        w_final = w0 - alpha * real_step[: w0.numel()].reshape(w0.shape)
        b_final = b0 - alpha * real_step[w0.numel() :]

    # -- the implementation ------------------------------------------------------------------
    net.train()
    result = meta_weight_step(
        net,
        weight_net,
        x,
        y,
        xm,
        ym,
        optimizer=torch.optim.SGD(net.parameters(), lr=alpha),
        meta_optimizer=torch.optim.SGD(weight_net.parameters(), lr=beta),
        virtual_lr=alpha,
        meta_gradient=meta_gradient,
    )
    for p, grad in zip(weight_net.parameters(), expected_grads, strict=True):
        assert p.grad is not None
        torch.testing.assert_close(p.grad, grad, rtol=1e-4, atol=1e-7)
    for p, ref in zip(weight_net.parameters(), v_expected.parameters(), strict=True):
        torch.testing.assert_close(p, ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(result.weights, new_weights, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(net.head.weight.detach(), w_final, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net.head.bias.detach(), b_final, rtol=1e-5, atol=1e-6)
    assert result.meta_loss == pytest.approx(float(meta_loss.detach()), rel=1e-5)
    assert float(coefficients.abs().max()) > 0  # the meta gradient is not trivially zero


@pytest.mark.parametrize("meta_gradient", ["forward", "double_backward"])
def test_step_updates_every_parameter_and_batch_norm_only_once(
    digits_small: LabelledData, meta_gradient: MetaGradient
) -> None:
    model = cnn(digits_small)
    net = model.module()
    torch.manual_seed(0)
    weight_net = WeightNet(100)
    x, y, xm, ym = _batches(digits_small, model)
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    before_w = [p.detach().clone() for p in weight_net.parameters()]
    # the running statistics one plain train-mode forward of x gives
    reference = copy.deepcopy(net).train()
    with torch.no_grad():
        reference(x)
    net.train()
    cfg = MetaWeightConfig()
    result = meta_weight_step(
        net,
        weight_net,
        x,
        y,
        xm,
        ym,
        optimizer=torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum),
        meta_optimizer=torch.optim.Adam(weight_net.parameters(), lr=cfg.meta_lr),
        virtual_lr=cfg.lr,
        meta_gradient=meta_gradient,
    )
    for name, p in net.named_parameters():
        assert not torch.equal(p.detach(), before[name]), f"{name} did not change"
    for p, old in zip(weight_net.parameters(), before_w, strict=True):
        assert not torch.equal(p.detach(), old)
    for name, buffer in net.named_buffers():
        torch.testing.assert_close(buffer, reference.state_dict()[name])
    assert bool(((result.weights >= 0) & (result.weights <= 1)).all())
    assert result.weights.shape == (8,) and result.losses.shape == (8,)


def test_forward_mode_and_double_backward_agree_on_a_batch_norm_cnn(
    digits_small: LabelledData,
) -> None:
    """The two exact ways of differentiating through the virtual step give the same weight-net
    gradient on small-cnn (convolutions, batch norm in train mode, every parameter virtual)."""
    x, y, xm, ym = _batches(digits_small, cnn(digits_small))
    grads = {}
    modes: tuple[MetaGradient, ...] = ("forward", "double_backward")
    for mode in modes:
        model = cnn(digits_small)
        net = model.module().train()
        torch.manual_seed(0)
        weight_net = WeightNet(100)
        meta_weight_step(
            net,
            weight_net,
            x,
            y,
            xm,
            ym,
            optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
            meta_optimizer=torch.optim.SGD(weight_net.parameters(), lr=0.0),
            virtual_lr=0.1,
            meta_gradient=mode,
        )
        grads[mode] = [p.grad.clone() for p in weight_net.parameters() if p.grad is not None]
    assert len(grads["forward"]) == 4
    for a, b in zip(grads["forward"], grads["double_backward"], strict=True):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=1e-8)
    assert max(float(g.abs().max()) for g in grads["forward"]) > 0


def test_meta_interval_updates_the_weight_net_every_kth_step(
    digits_small: LabelledData, digits_other: LabelledData
) -> None:
    meta = digits_other.subset(np.arange(0, len(digits_other), 3))
    every = MetaWeightConfig(epochs=1, batch_size=20, meta_batch_size=20)
    sparse = every.model_copy(update={"meta_interval": 2})
    first = train_meta_weighted(cnn(digits_small), digits_small, meta, every, seed=1)
    second = train_meta_weighted(cnn(digits_small), digits_small, meta, sparse, seed=1)
    # 4 steps per epoch: with meta_interval 2, steps 2 and 4 leave the weight net as it is
    assert not np.allclose(first.utilities, second.utilities)
    assert np.isfinite(second.meta_loss[0])


def test_training_gives_utilities_in_unit_interval_deterministically(
    digits_small: LabelledData, digits_other: LabelledData
) -> None:
    cfg = MetaWeightConfig(epochs=2, batch_size=32, meta_batch_size=20)
    meta = digits_other.subset(np.arange(0, len(digits_other), 3))
    first = train_meta_weighted(cnn(digits_small), digits_small, meta, cfg, seed=3)
    again = train_meta_weighted(cnn(digits_small), digits_small, meta, cfg, seed=3)
    assert first.utilities.shape == (len(digits_small),)
    assert np.all((first.utilities >= 0) & (first.utilities <= 1))
    assert first.weight_history.shape == first.loss_history.shape == (2, len(digits_small))
    assert np.all(first.loss_history > 0)  # every sample was visited in every epoch
    # exact: the same training call on the same inputs, in this process on its threads
    np.testing.assert_array_equal(first.utilities, again.utilities)
    assert len(first.train_loss) == len(first.meta_loss) == 2


def test_valuator_restores_the_model_and_builds_its_sets(
    digits_small: LabelledData, digits_other: LabelledData
) -> None:
    cfg = MetaWeightConfig(epochs=1, meta_per_class=2, batch_size=64)
    valuator = MetaWeight(digits_other, cfg, seed=0)
    assert len(valuator.meta) == 20 and len(valuator.real_rest) == len(digits_other) - 20
    assert not set(valuator.meta.ids) & set(valuator.real_rest.ids)
    assert len(valuator.training_set(digits_small)) == len(digits_small) + len(digits_other) - 20
    model = cnn(digits_small)
    before = {k: v.clone() for k, v in model.module().state_dict().items()}
    scores = valuator.score(model, digits_small)
    assert scores.shape == (len(digits_small),) and np.all((scores >= 0) & (scores <= 1))
    after = model.module().state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    alone = MetaWeight(digits_other, cfg.model_copy(update={"train_on_real": False}))
    assert len(alone.training_set(digits_small)) == len(digits_small)


def test_empty_meta_set_is_an_error(digits_small: LabelledData) -> None:
    with pytest.raises(ValuationError, match="meta set"):
        MetaWeight(digits_small.subset([]))


def test_a_given_meta_set_is_used_as_is_and_real_samples_are_all_extras(
    digits_small: LabelledData, digits_other: LabelledData
) -> None:
    """The run's held-out meta set: not drawn from the real training samples, which all
    stay training extras; nothing the weight net trains on is in the meta set."""
    cfg = MetaWeightConfig(epochs=1, batch_size=64)
    meta = digits_other.subset(range(0, 20))
    valuator = MetaWeight(digits_small, cfg, meta=meta, fitted=digits_small.ids)
    assert valuator.meta.ids == meta.ids
    assert valuator.real_rest.ids == digits_small.ids
    scored = digits_other.subset(range(20, len(digits_other)))
    training = valuator.training_set(scored)
    assert not set(valuator.meta.ids) & set(training.ids)
    scores = valuator.score(cnn(digits_small), scored)
    assert scores.shape == (len(scored),)


def test_a_meta_set_the_model_was_fitted_on_is_refused(
    digits_small: LabelledData, digits_other: LabelledData
) -> None:
    """The guard: a meta set sharing ids with the samples the starting model was fitted on
    (the judge's real training split) is refused in one line naming the fix."""
    leaky = digits_small.subset(range(0, 10))
    with pytest.raises(ValuationError) as err:
        MetaWeight(digits_small, MetaWeightConfig(), meta=leaky, fitted=digits_small.ids)
    message = str(err.value)
    assert "\n" not in message and "shares 10 sample(s)" in message
    assert "valuation.meta_weight.meta_set=validation" in message
    # without a meta set the valuator draws it from real: the same refusal
    with pytest.raises(ValuationError, match="fitted on"):
        MetaWeight(digits_small, MetaWeightConfig(meta_per_class=2), fitted=digits_small.ids)


def test_scoring_samples_of_the_meta_set_is_refused(
    digits_small: LabelledData, digits_other: LabelledData
) -> None:
    cfg = MetaWeightConfig(epochs=1, batch_size=64)
    valuator = MetaWeight(digits_small, cfg, meta=digits_other, fitted=digits_small.ids)
    with pytest.raises(ValuationError, match="in its meta set"):
        valuator.score(cnn(digits_small), digits_other.subset(range(0, 5)))


def test_meta_set_train_reproduces_the_old_meta_set_with_a_warning(
    digits_small: LabelledData, caplog: pytest.LogCaptureFixture
) -> None:
    """``meta_set: train`` (leaky, explicit): the meta set is ``meta_per_class`` per class of
    the real training samples, as before the option existed; a warning, no error."""
    cfg = MetaWeightConfig(meta_set="train", meta_per_class=3)
    with caplog.at_level("WARNING"):
        valuator = MetaWeight(digits_small, cfg, seed=4, fitted=digits_small.ids)
    assert valuator.meta.ids == k_shot(digits_small, 3, 4).ids
    assert "memorised" in caplog.text
