"""Throughput of generation and valuation on the local backend and on Ray with 1 and 2 CPU
actors, side by side in one run (issue 10 acceptance).

Workloads, each repeated for ``--rounds`` rounds (a run's rounds reuse one executor, as
``utilgen run`` does):

- generation: the built-in diffusion generator on digits (the demo's settings; taken from
  the utilgen cache, or trained once before any timing), ``--per-class`` images per class
  and round, each round with its own seeds;
- valuation: the forward pass behind the output scores (``ray_logits`` / ``model.logits``)
  of an EfficientNet-Lite0 task model over ``--items`` digit images per round.

Every configuration runs one torch thread per worker: the local backend in this process,
each Ray actor in its own (``ray.num_cpus_per_actor=1``). One local Ray with 2 CPUs serves
all Ray configurations; its ``ray.init`` time is printed but not counted, since a run pays
it once and a cluster user not at all. Everything else is counted: starting the actor pool,
shipping the model, and streaming the results back.

Targets (per workload): 2 actors >= 1.6x the throughput of 1 actor, and 1 actor at most 15 %
slower than local (overhead = local throughput / Ray throughput - 1). The headline takes the
worst workload:

    .venv/bin/python benchmarks/scaling.py [--rounds 3] [--per-class 60] [--items 256]

Last line ``ray_speedup_2=<x> ray_overhead_1=<x>``; exit 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from utilgen.config import BuiltinDiffusionConfig, DataConfig, RayConfig, TaskConfig
from utilgen.data import load_data, split_for_config
from utilgen.data.labelled import Item
from utilgen.generate import GenerationRequest, Generator
from utilgen.generate.builtin import builtin_class_requests, prepare_builtin_generator
from utilgen.progress import set_quiet
from utilgen.scale import RayExecutor
from utilgen.scale.valuation import ray_logits
from utilgen.task import TaskModel, build_task_model

SPEEDUP_TARGET = 1.6
OVERHEAD_TARGET = 0.15
SEED = 0
# The demo's digits generator (src/utilgen/loop/demo.py): same cache entry.
BUILTIN = BuiltinDiffusionConfig(train_batch_size=32)


@dataclass(frozen=True)
class Timing:
    """One configuration's run of one workload."""

    workload: str
    backend: str  # "local", "ray-1", "ray-2"
    samples: int
    seconds: float

    @property
    def throughput(self) -> float:
        return self.samples / self.seconds


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


def _task_model(data_cfg: DataConfig) -> tuple[TaskModel, list[Item]]:
    data = load_data(data_cfg)
    model = build_task_model(
        TaskConfig(model="efficientnet-lite0"),
        "image",
        data.num_classes,
        data.items[:4],
        "cpu",
        seed=SEED,
    )
    return model, list(data.items)


def _rounds_of_requests(
    class_names: Sequence[str], per_class: int, rounds: int
) -> list[list[GenerationRequest]]:
    return [
        builtin_class_requests(
            class_names, per_class=per_class, seed=SEED, round_index=r, cfg=BUILTIN
        )
        for r in range(1, rounds + 1)
    ]


def _time(fn: Callable[[], int]) -> tuple[int, float]:
    started = time.perf_counter()
    n = fn()
    return n, time.perf_counter() - started


def run_generation(
    generator: Generator, rounds: list[list[GenerationRequest]], executor: RayExecutor | None
) -> int:
    n = 0
    for r, requests in enumerate(rounds, start=1):
        if executor is None:
            made = generator.generate(requests, round_index=r, progress=False)
        else:
            made = executor.generate(generator, requests, r)
        n += sum(1 for _ in made)
    return n


def run_valuation(model: TaskModel, rounds: list[list[Item]], executor: RayExecutor | None) -> int:
    n = 0
    for items in rounds:
        logits = model.logits(items) if executor is None else ray_logits(executor, model, items)
        n += len(logits)
    return n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=60, help="images per class and round")
    parser.add_argument("--items", type=int, default=256, help="images valued per round")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    set_quiet(True)
    torch.set_num_threads(1)

    import ray

    data_cfg = DataConfig(source="digits", k_shot=10)
    generator, class_names = _generator(data_cfg)
    gen_rounds = _rounds_of_requests(class_names, args.per_class, args.rounds)
    model, items = _task_model(data_cfg)
    rng = np.random.default_rng(SEED)
    val_rounds = [
        [items[i] for i in rng.choice(len(items), size=args.items, replace=False)]
        for _ in range(args.rounds)
    ]
    print(
        f"rounds={args.rounds} generation={sum(len(r) for r in gen_rounds)} requests "
        f"({args.per_class}/class/round) valuation={args.items}/round "
        f"load_average={os.getloadavg()[0]:.1f}"
    )

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"ray_init_seconds={time.perf_counter() - started:.1f}")

    workloads: dict[str, Callable[[RayExecutor | None], int]] = {
        "generation": lambda ex: run_generation(generator, gen_rounds, ex),
        "valuation": lambda ex: run_valuation(model, val_rounds, ex),
    }
    timings: list[Timing] = []
    try:
        for workload, fn in workloads.items():
            for backend, actors in (("local", 0), ("ray-1", 1), ("ray-2", 2)):
                startup = ""
                if actors:
                    with RayExecutor(RayConfig(actors=actors)) as executor:
                        n, seconds = _time(lambda: fn(executor))  # noqa: B023
                        startup = f" (actors started in {executor.actor_startup_seconds:.1f} s)"
                else:
                    n, seconds = _time(lambda: fn(None))  # noqa: B023
                timing = Timing(workload, backend, n, seconds)
                timings.append(timing)
                print(
                    f"{workload:<10} {backend:<6} {n:>5} samples {seconds:7.1f} s "
                    f"{timing.throughput:8.2f}/s  load_average={os.getloadavg()[0]:.1f}{startup}"
                )
    finally:
        ray.shutdown()

    by = {(t.workload, t.backend): t for t in timings}
    speedups, overheads = [], []
    for workload in workloads:
        local, one, two = (by[(workload, b)].throughput for b in ("local", "ray-1", "ray-2"))
        speedup, overhead = two / one, local / one - 1
        speedups.append(speedup)
        overheads.append(overhead)
        print(f"{workload}_speedup_2={speedup:.2f} {workload}_overhead_1={overhead:.3f}")
    speedup, overhead = min(speedups), max(overheads)
    print(f"ray_speedup_2={speedup:.2f} ray_overhead_1={overhead:.3f}")
    return 0 if speedup >= SPEEDUP_TARGET and overhead <= OVERHEAD_TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
