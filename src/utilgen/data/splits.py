"""Stratified train/val/test splits and k-shot subsampling, reproducible from a seed.

Each class is shuffled by its own generator, seeded from the run's seed and the class's name,
after sorting its samples by id. A class's split therefore depends only on the seed, its name
and its samples: not on the order of the rows, nor on which other classes exist or in what
order (adding a class to a dataset leaves the splits of the others unchanged).
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass, replace

import numpy as np

from utilgen.config import DataConfig
from utilgen.data.labelled import LabelledData
from utilgen.errors import DataError

log = logging.getLogger(__name__)

# Separate random streams for the three uses, so neither the k-shot draw nor the meta set is
# a function of the train/val/test shuffle.
_SPLIT_STREAM = 0
_KSHOT_STREAM = 1
_META_STREAM = 2

MIN_PER_CLASS = 3  # one sample each for train, val and test


@dataclass(frozen=True)
class Splits:
    """The three disjoint parts of a dataset; all share its classes."""

    train: LabelledData
    val: LabelledData
    test: LabelledData
    unused_train: LabelledData | None = None
    """Training-split samples left out by ``k_shot`` (never val or test): the "broad" data a
    generator may be pretrained on, as Stable Diffusion was on LAION. ``None`` without k-shot."""
    meta: LabelledData | None = None
    """The Meta-Weight-Net's clean meta set, reserved from the validation split by
    :func:`reserve_meta_set` (never in train, val or test); ``None`` when none is reserved."""


def class_order(data: LabelledData, class_index: int, seed: int, stream: int) -> np.ndarray:
    """Indices of one class's samples in a random order fixed by (seed, class name, stream)."""
    members = np.flatnonzero(data.labels == class_index)
    members = members[np.argsort([data.ids[i] for i in members], kind="stable")]
    name_key = zlib.crc32(data.class_names[class_index].encode("utf-8"))
    rng = np.random.default_rng([seed, name_key, stream])
    return members[rng.permutation(len(members))]


def _round(x: float) -> int:
    """Round half up (Python's round() rounds half to even, which surprises in counts)."""
    return math.floor(x + 0.5)


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(val, test) counts for a class of ``n >= 3`` samples: each at least 1, train at least 1."""
    n_val = max(1, _round(n * val_fraction))
    n_test = max(1, _round(n * test_fraction))
    while n_val + n_test > n - 1:
        if n_test >= n_val:
            n_test -= 1
        else:
            n_val -= 1
    return n_val, n_test


def stratified_split(
    data: LabelledData, val_fraction: float, test_fraction: float, seed: int
) -> Splits:
    """Split every class into train/val/test by the given fractions (rounded, half up).

    Every class gets at least one sample in val and in test, so every class needs at least 3
    samples. Each part keeps the data's original order.

    Args:
        data: the dataset.
        val_fraction, test_fraction: shares of each class, each in (0, 1), summing below 1.
        seed: a non-negative integer.
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in (0, 1) "
            "and sum below 1"
        )
    counts = data.class_counts()
    small = [
        f"{data.class_names[c]!r} ({counts[c]})"
        for c in range(data.num_classes)
        if counts[c] < MIN_PER_CLASS
    ]
    if small:
        which = f"class {small[0]} has" if len(small) == 1 else f"classes {', '.join(small)} have"
        raise DataError(
            f"{data.name}: {which} fewer than {MIN_PER_CLASS} samples; a train/val/test split "
            "needs at least 3 per class, add samples or remove the class"
        )
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in range(data.num_classes):
        order = class_order(data, c, seed, _SPLIT_STREAM)
        n_val, n_test = split_sizes(len(order), val_fraction, test_fraction)
        parts["test"].append(order[:n_test])
        parts["val"].append(order[n_test : n_test + n_val])
        parts["train"].append(order[n_test + n_val :])
    subsets = {k: data.subset(np.sort(np.concatenate(v))) for k, v in parts.items()}
    return Splits(train=subsets["train"], val=subsets["val"], test=subsets["test"])


def k_shot(data: LabelledData, k: int, seed: int) -> LabelledData:
    """``k`` randomly chosen samples per class (all of a class with fewer, with a warning).

    For a fixed seed the draws are nested: the 5-shot set is contained in the 10-shot set.
    The result keeps the data's original order.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    chosen = []
    for c in range(data.num_classes):
        order = class_order(data, c, seed, _KSHOT_STREAM)
        if len(order) < k:
            log.warning(
                "%s: class %r has %d samples, fewer than k=%d; all are kept",
                data.name,
                data.class_names[c],
                len(order),
                k,
            )
        chosen.append(order[:k])
    return data.subset(np.sort(np.concatenate(chosen)) if chosen else [])


def check_k_shot(train: LabelledData, k: int) -> None:
    """Raise DataError when a class of the training split has fewer than ``k`` samples: a
    k-shot run must not quietly train on whole classes."""
    counts = train.class_counts()
    small = int(np.argmin(counts))
    if counts[small] < k:
        raise DataError(
            f"data.k_shot={k} but class {train.class_names[small]!r} has only "
            f"{counts[small]} training sample(s) after the validation/test split; set "
            f"data.k_shot to at most {counts[small]}, or data.k_shot=all to train on every "
            "sample"
        )


def split_for_config(data: LabelledData, cfg: DataConfig, seed: int) -> Splits:
    """Split by ``cfg``'s fractions, then keep ``cfg.k_shot`` per class of the train part.

    Validation and test keep all their samples, so a k-shot run is scored on the same test
    set as a full-data run with the same seed.
    """
    splits = stratified_split(data, cfg.val_fraction, cfg.test_fraction, seed)
    if cfg.k_shot is None or cfg.k_shot == "all":
        return splits
    check_k_shot(splits.train, cfg.k_shot)
    kept = k_shot(splits.train, cfg.k_shot, seed)
    kept_ids = set(kept.ids)
    unused = splits.train.subset(
        [i for i, sample_id in enumerate(splits.train.ids) if sample_id not in kept_ids]
    )
    return Splits(train=kept, val=splits.val, test=splits.test, unused_train=unused)


def reserve_meta_set(splits: Splits, per_class: int, seed: int) -> Splits:
    """``splits`` with ``per_class`` validation samples of every class moved to ``meta``.

    UtilGen's weight net is trained to lower the loss of a clean meta set the weighted model
    was not fitted on; taking it from validation, before anything else uses validation,
    keeps it out of training, of validation accuracy and of every choice made on it. The
    draw is per class, from its own random stream (seed, class name): the same seed gives
    the same meta set, and for a fixed seed a smaller ``per_class`` gives a subset.

    Raises:
        DataError: a class's validation split cannot spare ``per_class`` samples and keep
            at least one.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    val = splits.val
    counts = val.class_counts()
    short = int(np.argmin(counts))
    if counts[short] < per_class + 1:
        raise DataError(
            f"valuation.meta_weight.meta_per_class={per_class} but class "
            f"{val.class_names[short]!r} has {counts[short]} validation sample(s), and the "
            f"held-out meta set must leave it at least 1; lower "
            f"valuation.meta_weight.meta_per_class to at most {counts[short] - 1} or raise "
            "data.val_fraction"
        )
    chosen = np.sort(
        np.concatenate(
            [class_order(val, c, seed, _META_STREAM)[:per_class] for c in range(val.num_classes)]
        )
    )
    taken = set(chosen.tolist())
    rest = [i for i in range(len(val)) if i not in taken]
    meta = val.subset(chosen)
    return replace(splits, val=val.subset(rest), meta=meta)


def check_meta_set(splits: Splits) -> None:
    """Raise DataError when the meta set shares an id with train (the samples the weighted
    model is fitted on), val or test; a no-op without a meta set."""
    if splits.meta is None:
        return
    meta_ids = set(splits.meta.ids)
    for name, part in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        shared = sorted(meta_ids.intersection(part.ids))
        if shared:
            raise DataError(
                f"the meta-weight meta set shares {len(shared)} sample id(s) with the {name} "
                f"split (first {shared[0]!r}); it must hold real samples the weighted model "
                "was not fitted on and validation does not use: set "
                "valuation.meta_weight.meta_set=validation and give every sample its own id"
            )
