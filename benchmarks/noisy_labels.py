"""Noisy-label check of the Meta-Weight-Net valuator (issue 6 acceptance).

Recipe, per seed (default seeds 0, 1, 2): digits, the default 65/15/20 stratified split;
40% of the training labels flipped uniformly to a *different* class. The clean meta set is
10 samples per class (100 images) drawn from the validation split, which no other model here
trains on. All models are small-cnn on the native 8x8 pixels, 10 epochs, built from the same
seed:

* unweighted:  ``utilgen.task.train`` on the noisy labels (AdamW, batch 64);
* meta-weight: ``train_meta_weighted`` on the noisy labels with the meta set (paper
  settings: SGD lr 0.1 momentum 0.9, weight net Adam 1e-3, batch 100); its per-sample
  utilities are the weights, and the model it co-trains is reported as ``mwn_acc``;
* weighted:    ``utilgen.task.train`` exactly as unweighted, with the utilities as the
  per-sample weights (what the round engine does with them).

Reported, means over the seeds: the mean utility of noisy and of clean samples, the AUROC of
the utilities for telling clean (positive) from noisy samples, and test accuracies. As a
reference, cleanlab's confident-learning label-quality score (self-confidence) on the same
noisy labels, with out-of-fold probabilities of a 5-fold logistic regression on the pixels
(cleanlab's documented recipe), gets the same AUROC treatment.

Targets: noisy mean weight < 0.5 x clean mean weight, AUROC >= 0.85, weighted_acc >
unweighted_acc. Last line ``noisy_auroc=<x> weighted_acc=<x> unweighted_acc=<x>
cleanlab_auroc=<x>``; exit 1 when a target is missed.

    .venv/bin/python benchmarks/noisy_labels.py [--seeds 0 1 2] [--epochs 10]

Torch and NumPy's BLAS run on one thread (``--threads``): these models are far too small to
gain from a second one, and on a shared machine the second thread's spin-waiting slows every
step several-fold (scikit-learn's solver by 1000x).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict
from threadpoolctl import threadpool_limits

from utilgen.config import TaskConfig
from utilgen.config.valuation import MetaWeightConfig
from utilgen.data import LabelledData, k_shot, load_digits, stratified_split
from utilgen.progress import set_quiet
from utilgen.task import TaskModel, build_task_model, train
from utilgen.value import train_meta_weighted

NOISE = 0.4
META_PER_CLASS = 10
WEIGHT_RATIO_TARGET = 0.5
AUROC_TARGET = 0.85


@dataclass(frozen=True)
class SeedResult:
    seed: int
    clean_weight: float
    noisy_weight: float
    auroc: float
    unweighted_acc: float
    weighted_acc: float
    mwn_acc: float
    cleanlab_auroc: float
    seconds: float


def flip_labels(
    labels: np.ndarray, num_classes: int, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(noisy labels, noisy mask): ``fraction`` of the samples get a uniformly drawn other class."""
    n = len(labels)
    noisy = np.zeros(n, dtype=bool)
    noisy[rng.choice(n, round(fraction * n), replace=False)] = True
    out = labels.copy()
    out[noisy] = (labels[noisy] + rng.integers(1, num_classes, noisy.sum())) % num_classes
    return out, noisy


def accuracy(model: TaskModel, data: LabelledData) -> float:
    return float(np.mean(model.logits(data.items).argmax(axis=1) == data.labels))


def cleanlab_scores(data: LabelledData, labels: np.ndarray, seed: int) -> np.ndarray:
    """cleanlab self-confidence label quality from 5-fold logistic-regression probabilities."""
    from cleanlab.rank import get_label_quality_scores

    x = np.stack([np.asarray(i, dtype=np.float64).ravel() / 16.0 for i in data.items])
    classifier = LogisticRegression(max_iter=2000, random_state=seed)
    probs = cross_val_predict(classifier, x, labels, cv=5, method="predict_proba")
    return np.asarray(get_label_quality_scores(labels, probs, method="self_confidence"))


def run_seed(seed: int, epochs: int, meta_cfg: MetaWeightConfig) -> SeedResult:
    started = time.perf_counter()
    splits = stratified_split(load_digits(), 0.15, 0.2, seed)
    clean = splits.train
    labels, noisy = flip_labels(clean.labels, clean.num_classes, NOISE, np.random.default_rng(seed))
    noisy_train = LabelledData(
        clean.modality, clean.items, labels, clean.class_names, clean.ids, clean.name
    )
    meta = k_shot(splits.val, META_PER_CLASS, seed)
    task_cfg = TaskConfig(model="small-cnn", image_size=8, epochs=epochs, batch_size=64)

    def fresh() -> TaskModel:
        return build_task_model(task_cfg, "image", clean.num_classes, clean.items[:1], "cpu", seed)

    unweighted = fresh()
    train(unweighted, noisy_train, task_cfg, seed=seed)

    co_trained = fresh()
    result = train_meta_weighted(co_trained, noisy_train, meta, meta_cfg, seed=seed)
    utilities = result.utilities

    weighted = fresh()
    train(weighted, noisy_train, task_cfg, weights=utilities, seed=seed)

    return SeedResult(
        seed=seed,
        clean_weight=float(utilities[~noisy].mean()),
        noisy_weight=float(utilities[noisy].mean()),
        auroc=float(roc_auc_score(~noisy, utilities)),
        unweighted_acc=accuracy(unweighted, splits.test),
        weighted_acc=accuracy(weighted, splits.test),
        mwn_acc=accuracy(co_trained, splits.test),
        cleanlab_auroc=float(roc_auc_score(~noisy, cleanlab_scores(noisy_train, labels, seed))),
        seconds=time.perf_counter() - started,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--set", action="append", default=[], help="valuation.meta_weight key=value override"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    set_quiet(True)
    torch.set_num_threads(args.threads)
    # NumPy's BLAS too: scikit-learn's solver with two spinning OpenBLAS threads on a busy
    # 2-core machine takes minutes for what one thread does in 50 ms.
    threadpool_limits(args.threads)

    overrides = {k: yaml.safe_load(v) for k, _, v in (p.partition("=") for p in args.set)}
    meta_cfg = MetaWeightConfig(epochs=args.epochs, **overrides)
    print(
        f"digits, {NOISE:.0%} labels flipped, meta set {META_PER_CLASS}/class from val, "
        f"small-cnn 8x8, {args.epochs} epochs"
    )
    header = (
        "seed  clean_w  noisy_w  ratio  auroc   unweighted  weighted  mwn_acc  "
        "cleanlab_auroc  seconds"
    )
    print(header)
    results = []
    for seed in args.seeds:
        r = run_seed(seed, args.epochs, meta_cfg)
        results.append(r)
        print(
            f"{r.seed:>4}  {r.clean_weight:7.3f}  {r.noisy_weight:7.3f}  "
            f"{r.noisy_weight / r.clean_weight:5.3f}  {r.auroc:6.4f}  {r.unweighted_acc:10.4f}  "
            f"{r.weighted_acc:8.4f}  {r.mwn_acc:7.4f}  {r.cleanlab_auroc:14.4f}  {r.seconds:7.1f}",
            flush=True,
        )

    def mean(field: str) -> float:
        return float(np.mean([getattr(r, field) for r in results]))

    clean_w, noisy_w = mean("clean_weight"), mean("noisy_weight")
    auroc, weighted_acc, unweighted_acc = (
        mean("auroc"),
        mean("weighted_acc"),
        mean("unweighted_acc"),
    )
    missed = []
    if not noisy_w < WEIGHT_RATIO_TARGET * clean_w:
        missed.append(f"noisy mean weight {noisy_w:.3f} >= 0.5 x clean {clean_w:.3f}")
    if not auroc >= AUROC_TARGET:
        missed.append(f"AUROC {auroc:.4f} < {AUROC_TARGET}")
    if not weighted_acc > unweighted_acc:
        missed.append(f"weighted accuracy {weighted_acc:.4f} <= unweighted {unweighted_acc:.4f}")
    for problem in missed:
        print(f"TARGET MISSED: {problem}")
    print(
        f"clean_mean_weight={clean_w:.4f} noisy_mean_weight={noisy_w:.4f} "
        f"weight_ratio={noisy_w / clean_w:.4f} mwn_acc={mean('mwn_acc'):.4f} "
        f"seconds={sum(r.seconds for r in results):.1f}"
    )
    print(
        f"noisy_auroc={auroc:.4f} weighted_acc={weighted_acc:.4f} "
        f"unweighted_acc={unweighted_acc:.4f} cleanlab_auroc={mean('cleanlab_auroc'):.4f}"
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
