"""Throughput of generation and valuation on the local backend and on Ray with 1 and 2 CPU
actors, side by side in one run (issue 10 acceptance).

Each of ``--rounds`` rounds does what a round of ``utilgen run`` does, on every backend:

- generation: the built-in diffusion generator on digits (the demo's settings; taken from
  the utilgen cache, or trained once before any timing), ``--per-class`` images per class
  and round, each round with its own seeds;
- valuation: GenDataAgent's scores, the marginal p(y|x) and VoG over the task model's last
  3 checkpoints (``score_samples`` / ``score_samples_on_ray``), of an EfficientNet-Lite0
  task model (ImageNet weights, 64 px inputs to fit a CPU budget, head trained 3 epochs on
  64 digits) over ``--items`` digit images per round.

Every backend runs one torch thread per worker: the local backend in this process, each Ray
actor in its own (``ray.num_cpus_per_actor=1``). Each Ray backend keeps one executor for all
its rounds and both workloads, as a run does. ``ray.init`` of the local Ray is printed but
not counted (a run pays it once, a cluster user not at all). The backends take turns round
by round, in alternating order, so a change in the machine's load falls on all of them.

Each Ray actor pays a one-time cost: about 3 s to start and 5 s to unpickle its first
generator (importing diffusers' U-Net modules). ``utilgen run`` pays it while stage 1's
task model trains (``RayExecutor.warm``, called before stage 1), so that it does not land in
round 1. The benchmark does the same warm-up before the timed rounds and prints its
duration (``ray-N_warm_seconds``) without counting it. ``--cold`` starts the actors lazily
inside round 1's generation instead, and that time counts. A round here is small: 1,000
images, where a GenDataAgent round at 1:1 on ImageNet-100 generates 127k, so a cold start
weighs on 3 such rounds far more than on a real run. The rates from round 2 on are printed
too.

Targets (per workload): 2 actors >= 1.6x the throughput of 1 actor, and 1 actor at most 15 %
slower than local (overhead = local throughput / Ray throughput - 1). The headline takes the
worst workload:

    .venv/bin/python benchmarks/scaling.py [--rounds 3] [--per-class 100] [--items 512] [--cold]

Last line ``ray_speedup_2=<x> ray_overhead_1=<x>``; exit 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from utilgen.config import BuiltinDiffusionConfig, DataConfig, RayConfig, TaskConfig
from utilgen.config.valuation import ValuationConfig
from utilgen.data import load_data, split_for_config
from utilgen.data.labelled import LabelledData
from utilgen.generate import GenerationRequest, Generator
from utilgen.generate.builtin import builtin_class_requests, prepare_builtin_generator
from utilgen.progress import set_quiet
from utilgen.scale import RayExecutor
from utilgen.scale.valuation import score_samples_on_ray
from utilgen.task import TaskModel, build_task_model, train
from utilgen.value import score_samples

WORKLOADS = ("generation", "valuation")
SPEEDUP_TARGET = 1.6
OVERHEAD_TARGET = 0.15
SEED = 0
# The demo's digits generator (src/utilgen/commands/demo.py): same cache entry.
BUILTIN = BuiltinDiffusionConfig(train_batch_size=32)
TASK = TaskConfig(model="efficientnet-lite0", image_size=64, epochs=3)
SCORES = ValuationConfig(scores=["marginal", "vog"])


BACKENDS = ("local", "ray-1", "ray-2")


@dataclass
class Totals:
    """One backend's samples and seconds per workload, summed over the rounds."""

    samples: dict[str, list[int]] = field(default_factory=lambda: {w: [] for w in WORKLOADS})
    seconds: dict[str, list[float]] = field(default_factory=lambda: {w: [] for w in WORKLOADS})

    def throughput(self, workload: str, first: int = 0) -> float:
        """Samples per second over the rounds from index ``first`` on."""
        return sum(self.samples[workload][first:]) / sum(self.seconds[workload][first:])


def _generator(data_cfg: DataConfig) -> tuple[Generator, list[str]]:
    data = load_data(data_cfg)
    splits = split_for_config(data, data_cfg, seed=SEED)
    generator = prepare_builtin_generator(
        BUILTIN,
        task_train=splits.train,
        broad=splits.unused_train,
        device=torch.device("cpu"),
        seed=SEED,
        batch_size=32,
        progress=False,
    )
    return generator, list(splits.train.class_names)


def _task_model(data_cfg: DataConfig, checkpoint_dir: Path) -> tuple[TaskModel, list[Path]]:
    """The valued model and its 3 epoch checkpoints (VoG's inputs)."""
    data = load_data(data_cfg)
    model = build_task_model(TASK, "image", data.num_classes, data.items[:4], "cpu", seed=SEED)
    trained = train(
        model,
        data.subset(range(64)),
        TASK,
        checkpoint_dir=checkpoint_dir,
        seed=SEED,
        progress=lambda n: None,
    )
    return model, list(trained.checkpoints)


def _rounds_of_requests(
    class_names: Sequence[str], per_class: int, rounds: int
) -> list[list[GenerationRequest]]:
    return [
        builtin_class_requests(
            class_names, per_class=per_class, seed=SEED, round_index=r, cfg=BUILTIN
        )
        for r in range(1, rounds + 1)
    ]


def generate_round(
    generator: Generator, requests: list[GenerationRequest], r: int, ex: RayExecutor | None
) -> int:
    made = (
        generator.generate(requests, round_index=r, progress=False)
        if ex is None
        else ex.generate(generator, requests, r)
    )
    return sum(1 for _ in made)


def value_round(
    model: TaskModel, checkpoints: list[Path], data: LabelledData, ex: RayExecutor | None
) -> int:
    if ex is None:
        return len(score_samples(SCORES, model, data, checkpoints=checkpoints))
    return len(score_samples_on_ray(ex, SCORES, model, data, checkpoints=checkpoints))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=100, help="images per class and round")
    parser.add_argument("--items", type=int, default=512, help="images valued per round")
    parser.add_argument(
        "--cold", action="store_true", help="no warm-up: the actors start inside round 1"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    set_quiet(True)
    torch.set_num_threads(1)

    import ray

    data_cfg = DataConfig(source="digits", k_shot=10)
    generator, class_names = _generator(data_cfg)
    gen_rounds = _rounds_of_requests(class_names, args.per_class, args.rounds)
    checkpoint_dir = Path(tempfile.mkdtemp(prefix="utilgen-scaling-"))
    model, checkpoints = _task_model(data_cfg, checkpoint_dir)
    digits = load_data(data_cfg)
    rng = np.random.default_rng(SEED)
    val_rounds = [
        digits.subset(rng.choice(len(digits), size=args.items, replace=False).tolist())
        for _ in range(args.rounds)
    ]
    print(
        f"rounds={args.rounds} generation={sum(len(r) for r in gen_rounds)} requests "
        f"({args.per_class}/class/round) valuation={args.items}/round "
        f"load_average={os.getloadavg()[0]:.1f}"
    )

    started = time.perf_counter()
    # 3 logical CPUs: the 1-actor and the 2-actor pools both stay up, as each would through
    # a run, but only one backend works at a time (2 cores), so their rounds can alternate.
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    print(f"ray_init_seconds={time.perf_counter() - started:.1f}")

    executors = {"local": None, "ray-1": RayExecutor(RayConfig(actors=1))}
    executors["ray-2"] = RayExecutor(RayConfig(actors=2))
    totals = {backend: Totals() for backend in BACKENDS}
    try:
        for backend in ("ray-1", "ray-2"):
            if not args.cold:
                started = time.perf_counter()
                executors[backend].warm(generator, wait=True)  # type: ignore[union-attr]
                print(
                    f"{backend}_warm_seconds={time.perf_counter() - started:.1f} (start-up and "
                    "first generator load, before the rounds, as utilgen run does in stage 1)"
                )
        for r in range(1, args.rounds + 1):
            # Alternate the order (local, 1, 2 / 2, 1, local): a drift in the machine's load
            # falls on every backend alike.
            for backend in BACKENDS if r % 2 else tuple(reversed(BACKENDS)):
                ex = executors[backend]
                # One round of a run: generate, then value (with --cold, the actors start
                # inside the first round's generation and count there).
                steps: dict[str, Callable[[], int]] = {
                    "generation": partial(generate_round, generator, gen_rounds[r - 1], r, ex),
                    "valuation": partial(value_round, model, checkpoints, val_rounds[r - 1], ex),
                }
                for workload, step in steps.items():
                    started = time.perf_counter()
                    n = step()
                    seconds = time.perf_counter() - started
                    totals[backend].samples[workload].append(n)
                    totals[backend].seconds[workload].append(seconds)
                    print(
                        f"round {r} {workload:<10} {backend:<6} {n:>5} samples {seconds:6.1f} s "
                        f"{n / seconds:7.2f}/s  load_average={os.getloadavg()[0]:.1f}"
                    )
        for backend in ("ray-1", "ray-2"):
            started_in = executors[backend].actor_startup_seconds  # type: ignore[union-attr]
            where = "in round 1's generation" if args.cold else "in the warm-up"
            print(f"{backend}_actor_startup_seconds={started_in:.1f} ({where})")
    finally:
        ray.shutdown()
        shutil.rmtree(checkpoint_dir, ignore_errors=True)

    speedups, overheads = [], []
    for workload in WORKLOADS:
        if args.rounds > 1:
            # For information: without round 1 (with --cold, it holds the actors' start-up
            # and their first unpickling of the generator).
            local, one, two = (totals[b].throughput(workload, first=1) for b in BACKENDS)
            print(
                f"{workload}_from_round_2 {workload}_speedup_2={two / one:.2f} "
                f"{workload}_overhead_1={local / one - 1:.3f}"
            )
        local, one, two = (totals[b].throughput(workload) for b in BACKENDS)
        speedup, overhead = two / one, local / one - 1
        speedups.append(speedup)
        overheads.append(overhead)
        print(
            f"{workload}_per_s local={local:.2f} ray_1={one:.2f} ray_2={two:.2f} "
            f"{workload}_speedup_2={speedup:.2f} {workload}_overhead_1={overhead:.3f}"
        )
    speedup, overhead = min(speedups), max(overheads)
    print(f"ray_speedup_2={speedup:.2f} ray_overhead_1={overhead:.3f}")
    return 0 if speedup >= SPEEDUP_TARGET and overhead <= OVERHEAD_TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
