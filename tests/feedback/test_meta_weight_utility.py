"""The meta-weight utility u(x, y) = V(CE(f(x), y); Theta) of the instance level: its value
against a hand computation, its pixel gradient, the saved weight net it reads, and the
config and run-time refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
import torch
import torch.nn.functional as F

from utilgen.config import TaskConfig, resolve_config
from utilgen.data.bundled import load_digits
from utilgen.errors import ConfigError, UtilgenError
from utilgen.feedback.component import RoundContext
from utilgen.feedback.utility import LogProbUtility, MetaWeightUtility, round_utility
from utilgen.pool import RoundLayout
from utilgen.task import PixelTaskModel, TaskModel, build_task_model
from utilgen.value.meta_weight import WeightNet
from utilgen.value.weight_net_file import load_weight_net, save_weight_net


def classifier() -> TaskModel:
    """An untrained small-cnn on 8x8 grey digits (seeded)."""
    digits = load_digits()
    cfg = TaskConfig(model="small-cnn", image_size=8)
    return build_task_model(cfg, "image", 10, digits.items[:1], "cpu", 0)


def hand_weight_net() -> WeightNet:
    """V(l) = sigmoid(-1.5 * relu(2 l - 0.5) + 0.5 * relu(l + 1) + 0.25), hidden 2."""
    net = WeightNet(hidden=2)
    with torch.no_grad():
        net.hidden.weight.copy_(torch.tensor([[2.0], [1.0]]))
        net.hidden.bias.copy_(torch.tensor([-0.5, 1.0]))
        net.output.weight.copy_(torch.tensor([[-1.5, 0.5]]))
        net.output.bias.copy_(torch.tensor([0.25]))
    return net


def by_hand(loss: torch.Tensor) -> torch.Tensor:
    h1, h2 = torch.relu(2 * loss - 0.5), torch.relu(loss + 1)
    return torch.sigmoid(-1.5 * h1 + 0.5 * h2 + 0.25)


def test_value_is_v_of_the_cross_entropy_and_has_a_pixel_gradient() -> None:
    model = classifier()
    utility = MetaWeightUtility(model, hand_weight_net())
    torch.manual_seed(0)
    pixels = torch.rand(4, 1, 8, 8, requires_grad=True)
    labels = torch.tensor([0, 3, 7, 9])
    got = utility(pixels, labels)
    pixel_model = cast(PixelTaskModel, model)
    with torch.no_grad():
        logits = pixel_model.module().eval()(pixel_model.prepare_pixels(pixels)).float()
    ce = -F.log_softmax(logits, dim=-1)[torch.arange(4), labels]
    torch.testing.assert_close(got.detach(), by_hand(ce))
    # the same CE as log_prob's utility, through V
    torch.testing.assert_close(
        got.detach(), by_hand(-LogProbUtility(model)(pixels, labels).detach())
    )
    (grad,) = torch.autograd.grad(got.sum(), pixels)
    assert grad.abs().sum() > 0
    assert all(p.grad is None for p in model.module().parameters())
    assert all(p.grad is None for p in utility.weight_net.parameters())
    assert utility.name == "meta_weight"


def test_weight_net_is_written_once_and_read_back_bit_equal(tmp_path: Path) -> None:
    path = RoundLayout(tmp_path / "rounds/001").meta_weight_net
    torch.manual_seed(1)
    net = WeightNet(hidden=7)
    assert save_weight_net(net, path)
    first = path.read_bytes()
    assert not save_weight_net(WeightNet(hidden=7), path)  # resume: kept as written
    assert path.read_bytes() == first
    back = load_weight_net(path)
    assert back.hidden.out_features == 7
    for (name, a), (_, b) in zip(net.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    losses = torch.linspace(0, 5, 11)
    # exact: the same tensors through the same module in this process (safetensors stores
    # the bits), so the same kernels compute the same numbers
    assert torch.equal(net(losses), back(losses))


def test_a_file_that_is_no_weight_net_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from utilgen.value.base import ValuationError

    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(3)}, str(path))
    with pytest.raises(ValuationError, match="no meta-weight net"):
        load_weight_net(path)


def test_meta_weight_utility_without_the_meta_weight_score_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"feedback.instance.utility=meta_weight needs"):
        resolve_config("digits-instance", ["feedback.instance.utility=meta_weight"])
    cfg = resolve_config(
        "digits-instance",
        ["feedback.instance.utility=meta_weight", "valuation.scores=[marginal,meta_weight]"],
    )
    assert cfg.feedback.instance.utility == "meta_weight"
    assert resolve_config("digits-instance", []).feedback.instance.utility == "log_prob"


def _context(tmp_path: Path, *overrides: str) -> RoundContext:
    cfg = resolve_config("digits-utilgen", list(overrides))
    model = classifier()
    none = cast(Any, None)
    return RoundContext(
        config=cfg,
        splits=none,
        generator=none,
        round_index=2,
        out=tmp_path / "rounds/002",
        previous=tmp_path / "rounds/001",
        judge=model,
        new_model=classifier,
    )


def test_round_utility_reads_the_previous_rounds_weight_net(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    with pytest.raises(UtilgenError, match=r"did not save.*delete .*001/metrics.json"):
        round_utility(ctx)
    save_weight_net(hand_weight_net(), RoundLayout(ctx.previous).meta_weight_net)
    utility = round_utility(ctx)
    assert isinstance(utility, MetaWeightUtility) and utility.model is ctx.judge
    losses = torch.tensor([0.1, 1.0, 3.0])
    torch.testing.assert_close(utility.weight_net(losses), by_hand(losses))
    assert isinstance(
        round_utility(
            _context(
                tmp_path,
                "feedback.instance.utility=log_prob",
                "valuation.scores=[marginal]",
                "valuation.selection=[]",
                "feedback.pairs.score=marginal",
            )
        ),
        LogProbUtility,
    )
