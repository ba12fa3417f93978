"""Cost of each utility score, and of a Meta-Weight-Net step (issue 6 acceptance).

Recipe: 1,000 digits from the default split's training part (seed 0), the default task model
for images (small-cnn, 16 px, batch 64), trained 3 epochs with a checkpoint each (VoG reads
those three). Each score is computed for the 1,000 samples and its wall time divided by
one training epoch on the same 1,000 samples (``utilgen.task.train``, epochs=1). Similarity
and composite use the rest of the split (val + test, 628 images) as the real reference;
meta_weight runs its default 10 bi-level epochs with 10 clean samples per class.

The Meta-Weight-Net step (default settings: a weight-net update every step, forward-mode
meta-gradient) is timed against a plain step on the same batch of 100 and the same SGD
optimiser (forward, cross-entropy, backward, step), both on prepared tensors: the ratio
isolates what the bi-level update adds (virtual step, meta batch of 100, meta-gradient).
Median over repeated, interleaved steps. Also shown: the double-backward meta-gradient and the
mean step cost with ``meta_interval=2``. Target: meta_step_ratio (the default) <= 3.

    .venv/bin/python benchmarks/valuation.py [--steps 30] [--threads 1]

Last line ``meta_step_ratio=<x>``; exit 1 when it exceeds 3. Torch and NumPy's BLAS run on
``--threads`` threads (default 1; see benchmarks/noisy_labels.py for why).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from utilgen.config import DataConfig, TaskConfig
from utilgen.config.valuation import MetaGradient, MetaWeightConfig, ValuationConfig
from utilgen.data import load_digits, split_for_config
from utilgen.progress import set_quiet
from utilgen.task import TaskModel, build_task_model, train
from utilgen.value import WeightNet, build_valuators, meta_weight_step
from utilgen.value.meta_weight import build_optimizers, weighted_step

TARGET = 3.0
SEED = 0
N = 1000
SCORES = ["marginal", "margin", "entropy", "loss", "vog", "similarity", "composite", "meta_weight"]


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def step_times(model_factory: Callable[[], TaskModel], steps: int) -> dict[str, float]:
    """Median seconds of a plain step and of the Meta-Weight-Net steps, batches of 100."""
    data = load_digits()
    model = model_factory()
    net = model.module()
    x = model.prepare(data.items[:100])
    y = torch.as_tensor(data.labels[:100])
    xm = model.prepare(data.items[100:200])
    ym = torch.as_tensor(data.labels[100:200])
    cfg = MetaWeightConfig()
    weight_net = WeightNet(cfg.hidden)
    optimizer, meta_optimizer = build_optimizers(model, weight_net, cfg)
    net.train()

    def plain() -> None:
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def meta(mode: MetaGradient) -> Callable[[], None]:
        def run() -> None:
            meta_weight_step(
                net,
                weight_net,
                x,
                y,
                xm,
                ym,
                optimizer=optimizer,
                meta_optimizer=meta_optimizer,
                virtual_lr=cfg.lr,
                meta_gradient=mode,
            )

        return run

    def weighted() -> None:
        weighted_step(net, weight_net, x, y, optimizer=optimizer)

    runs: dict[str, Callable[[], None]] = {
        "plain": plain,
        "forward": meta("forward"),
        "double_backward": meta("double_backward"),
        "weighted": weighted,
    }
    for run in runs.values():  # warm-up (allocator, first-call overheads)
        for _ in range(3):
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(steps):  # interleaved, so that machine load hits all alike
        for name, run in runs.items():
            times[name].append(timed(run))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    set_quiet(True)
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)

    splits = split_for_config(load_digits(), DataConfig(), SEED)
    data = splits.train.subset(np.arange(N))
    reference = splits.val.concat(splits.test)
    task_cfg = TaskConfig(model="small-cnn", batch_size=64)

    def fresh() -> TaskModel:
        return build_task_model(task_cfg, "image", data.num_classes, data.items[:1], "cpu", SEED)

    # 1. the task model and its three checkpoints; one epoch's cost
    model = fresh()
    with tempfile.TemporaryDirectory() as tmp:
        result = train(
            model,
            data,
            task_cfg.model_copy(update={"epochs": 3}),
            checkpoint_dir=Path(tmp),
            seed=SEED,
        )
        one_epoch = task_cfg.model_copy(update={"epochs": 1})
        epoch = statistics.median(
            timed(lambda: train(fresh(), data, one_epoch, seed=SEED)) for _ in range(3)
        )
        print(f"{N} digits, small-cnn 16 px; one training epoch: {epoch:.2f} s")

        # 2. each score on the same 1,000 samples
        cfg = ValuationConfig(scores=SCORES)
        valuators = build_valuators(
            cfg, checkpoints=result.checkpoints, real_train=reference, seed=SEED
        )
        print(f"{'score':<12} {'seconds':>8} {'x epoch':>8}")
        for name, valuator in valuators.items():
            seconds = timed(lambda v=valuator: v.score(model, data))  # type: ignore[misc]
            print(f"{name:<12} {seconds:8.2f} {seconds / epoch:8.2f}", flush=True)

    # 3. one Meta-Weight-Net step vs one plain step
    t = step_times(fresh, args.steps)
    plain = t["plain"]
    print(f"{'step (batch 100)':<44} {'ms':>7} {'x plain':>8}")
    rows = [
        ("plain (forward, backward, SGD)", plain),
        ("meta-weight, meta_gradient=forward (default)", t["forward"]),
        ("meta-weight, meta_gradient=double_backward", t["double_backward"]),
        ("meta-weight, meta_interval=2 (mean per step)", (t["forward"] + t["weighted"]) / 2),
    ]
    for label, seconds in rows:
        print(f"{label:<44} {seconds * 1000:7.1f} {seconds / plain:8.2f}")
    ratio = t["forward"] / plain
    if ratio > TARGET:
        print(f"TARGET MISSED: meta step costs {ratio:.2f}x a plain step (> {TARGET})")
    print(f"meta_step_ratio={ratio:.2f}")
    return 1 if ratio > TARGET else 0


if __name__ == "__main__":
    sys.exit(main())
