"""Label fidelity of the built-in diffusion generator on digits (issue 4 acceptance).

Recipe: digits, the default 65/15/20 split with seed 0, k_shot=10; the built-in generator
with its default config is pretrained on the unused training digits and adapted to the 10
shots per class (fresh, in a temporary cache, so the training time is measured), then
generates 50 images per class (guidance and steps from the config). A small-cnn trained
on ALL real training digits (no synthetic data) labels them; label fidelity is the share
it assigns to the conditioning class. Target: fidelity >= 0.8; also reported: training
and sampling time (targets ~3 min and ~1 min on 2 CPU cores) and the classifier's real
test accuracy.

    .venv/bin/python benchmarks/builtin_fidelity.py [--per-class 50] [--set adapt_method=full]

Prints per-class fidelity and timings, then ``label_fidelity=<x>`` last; exits 1 below 0.8.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from utilgen.config import BuiltinDiffusionConfig, DataConfig, TaskConfig
from utilgen.data import load_data, split_for_config
from utilgen.data.splits import stratified_split
from utilgen.generate.builtin import builtin_class_requests, prepare_builtin_generator
from utilgen.pool.payload import decode_image
from utilgen.task import build_task_model, evaluate, train
from utilgen.task.fidelity import label_fidelity

TARGET = 0.8
SEED = 0
# The digits settings of tests/task/test_task_accuracy.py (>= 0.95 test accuracy).
CLASSIFIER = TaskConfig(model="small-cnn", epochs=10, batch_size=32, lr=3e-3)


def _overrides(pairs: list[str]) -> dict[str, object]:
    import yaml

    out: dict[str, object] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key] = yaml.safe_load(value)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--k-shot", type=int, default=10)
    parser.add_argument("--set", action="append", default=[], help="builtin config key=value")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="reuse a cache (default: fresh)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    data_cfg = DataConfig(source="digits", k_shot=args.k_shot)
    data = load_data(data_cfg)
    splits = split_for_config(data, data_cfg, seed=SEED)
    full_train = stratified_split(data, data_cfg.val_fraction, data_cfg.test_fraction, SEED).train
    assert splits.unused_train is not None
    print(
        f"task_train={len(splits.train)} broad={len(splits.unused_train)} "
        f"full_train={len(full_train)} torch_threads={torch.get_num_threads()} "
        f"load_average={os.getloadavg()[0]:.1f}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        cfg = BuiltinDiffusionConfig(
            **{"cache_dir": args.cache_dir or Path(tmp), **_overrides(args.set)}
        )
        started = time.perf_counter()
        generator = prepare_builtin_generator(
            cfg,
            task_train=splits.train,
            broad=splits.unused_train,
            device=torch.device("cpu"),
            seed=SEED,
            batch_size=64,
            progress=False,
        )
        train_seconds = time.perf_counter() - started
        requests = builtin_class_requests(
            splits.train.class_names, per_class=args.per_class, seed=SEED, round_index=1, cfg=cfg
        )
        started = time.perf_counter()
        samples = list(generator.generate(requests, progress=False))
        sample_seconds = time.perf_counter() - started

    classifier = build_task_model(
        CLASSIFIER, "image", data.num_classes, full_train.items[:4], "cpu", seed=SEED
    )
    train(classifier, full_train, CLASSIFIER, seed=SEED, progress=lambda n: None)
    test_accuracy = evaluate(classifier, splits.test)["accuracy"]

    images = [decode_image(s.payload) for s in samples]
    labels = np.array([s.label for s in samples])
    fidelity = label_fidelity(classifier, images, labels, data.class_names)
    for name, value in fidelity.per_class.items():
        print(f"fidelity[{name}]={value:.3f}")
    print(f"generator={generator.name} from_cache={generator.from_cache}")
    for phase in generator.training.get("phases", []):
        name = phase["phase"]
        print(f"{name}_seconds={phase['seconds']:.1f} {name}_steps={phase['steps']}")
    print(f"load_average_end={os.getloadavg()[0]:.1f}")
    print(f"train_seconds={train_seconds:.1f}")
    print(f"sample_seconds={sample_seconds:.1f} n_samples={len(samples)}")
    print(f"images_per_second={len(samples) / sample_seconds:.1f}")
    print(f"classifier_test_accuracy={test_accuracy:.4f}")
    print(f"label_fidelity={fidelity.overall:.4f}")
    return 0 if fidelity.overall >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
