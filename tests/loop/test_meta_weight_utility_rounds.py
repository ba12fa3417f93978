"""Two rounds whose instance level ascends the meta-weight utility.

Round 1 scores ``meta_weight`` and saves its trained weight net to
``rounds/001/meta_weight_net.safetensors``; round 2's prompt ascent and noise optimisation
raise V(CE(judge(x), y)) with that net, and each optimised request names the utility. The
tiny untrained built-in generator of tests/loop/tiny_builtin.py stands in for the real one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_builtin import PER_CLASS, prepared

from utilgen.config import resolve_config
from utilgen.errors import UtilgenError
from utilgen.generate.request_io import read_requests
from utilgen.loop.run import run
from utilgen.value.weight_net_file import load_weight_net

pytestmark = pytest.mark.usefixtures("quiet_one_thread")


def test_round_two_ascends_the_weight_net_round_one_saved(tmp_path: Path) -> None:
    cfg = resolve_config(
        "digits-instance",
        [
            "task.epochs=2",
            "data.k_shot=5",
            "data.max_per_class=60",
            f"generator.per_class={PER_CLASS}",
            "valuation.scores=[marginal,meta_weight]",
            "valuation.meta_weight.epochs=1",
            "valuation.meta_weight.batch_size=32",
            "valuation.meta_weight.meta_per_class=2",
            "feedback.instance.utility=meta_weight",
            "feedback.prompt_ascent.steps=1",
            "feedback.noise_opt.steps=1",
            "feedback.noise_opt.inversion_fixed_point=0",
        ],
    )
    run_dir = tmp_path / "run"
    run(cfg, run_dir, prepared=prepared(cfg))
    saved = run_dir / "rounds/001/meta_weight_net.safetensors"
    net = load_weight_net(saved)
    assert net.hidden.out_features == cfg.valuation.meta_weight.hidden
    assert torch.isfinite(net(torch.linspace(0, 5, 6))).all()
    requests = read_requests(run_dir / "rounds/002/instance_requests")
    assert len(requests) == 10 * PER_CLASS
    assert {r.metadata["instance_utility"] for r in requests} == {"meta_weight"}
    for r in requests:
        assert 0.0 < r.metadata["prompt_ascent"]["utility_before"] < 1.0  # a weight, not nats
    assert (run_dir / "rounds/002/meta_weight_net.safetensors").is_file()

    # Round 2's requests replanned without round 1's weight net: refused, with the fix.
    (run_dir / "rounds/002/instance_requests.json").unlink()
    (run_dir / "rounds/002/metrics.json").unlink()
    (run_dir / "summary.json").unlink()
    saved.unlink()
    with pytest.raises(UtilgenError, match=r"did not save.*rounds/001/metrics.json") as info:
        run(cfg, run_dir, prepared=prepared(cfg))
    assert "\n" not in str(info.value)
