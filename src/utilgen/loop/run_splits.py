"""The run's splits: train/val/test, k-shot, and the meta set held out of validation.

:func:`run_splits` makes them once, when the run is planned, from the seed alone, so a
resumed run gets the same ones. With ``meta_weight`` scored and
``valuation.meta_weight.meta_set: validation`` (UtilGen: the weight net lowers the loss of a
clean set the weighted model was not fitted on), ``meta_per_class`` validation samples per
class become ``Splits.meta`` before anything uses validation. :func:`check_same_splits`
refuses to resume a run directory whose pool put a real sample in another split.
"""

from __future__ import annotations

from pathlib import Path

from utilgen.config import RunConfig
from utilgen.data import (
    LabelledData,
    Splits,
    check_meta_set,
    reserve_meta_set,
    split_for_config,
)
from utilgen.errors import UtilgenError
from utilgen.pool import PoolStore, RunLayout


def reserves_meta_set(config: RunConfig) -> bool:
    """Whether the run holds a meta set out of validation: ``meta_weight`` is scored and
    ``valuation.meta_weight.meta_set`` is ``validation``."""
    valuation = config.valuation
    return "meta_weight" in valuation.scores and valuation.meta_weight.meta_set == "validation"


def run_splits(config: RunConfig, data: LabelledData) -> Splits:
    """The run's splits of ``data``: train/val/test and k-shot (:func:`split_for_config`),
    then, when :func:`reserves_meta_set`, ``meta_per_class`` validation samples per class
    moved to ``Splits.meta`` (seeded: a resumed run reserves the same ones). Everything
    after this (stage 1's validation accuracy, plateau, best round) sees the reduced val.

    Raises:
        DataError: validation cannot spare the meta set, or the meta set shares an id with
            train, val or test.
    """
    splits = split_for_config(data, config.data, config.seed)
    if reserves_meta_set(config):
        per_class = config.valuation.meta_weight.meta_per_class
        splits = reserve_meta_set(splits, per_class, config.seed)
    check_meta_set(splits)
    return splits


def split_parts(splits: Splits) -> list[tuple[str, LabelledData]]:
    """(pool split name, samples) of every real part the run uses, the meta set last."""
    parts = [("train", splits.train), ("val", splits.val), ("test", splits.test)]
    if splits.meta is not None:
        parts.append(("meta", splits.meta))
    return parts


def check_same_splits(run_dir: Path, splits: Splits) -> None:
    """Refuse to resume a run whose pool holds a real sample in another split than this run
    puts it in: its data or seed changed, or it was started without (or with another) meta
    set reserved from validation; its rounds were measured on other splits."""
    if not RunLayout(run_dir).manifest.is_file():
        return
    frame = PoolStore(run_dir).manifest()
    real = frame[frame["source"] == "real"]
    planned = {sample_id: name for name, part in split_parts(splits) for sample_id in part.ids}
    for sample_id, stored in zip(real["id"], real["split"], strict=True):
        wanted = planned.get(str(sample_id))
        if wanted is not None and wanted != stored:
            raise UtilgenError(
                f"run directory {run_dir} holds real sample {sample_id!r} in split {stored!r} "
                f"but this run puts it in {wanted!r} (the data, seed or "
                "valuation.meta_weight.meta_set differ from when it started); re-run with "
                "the settings it was started with or choose a new --out"
            )
