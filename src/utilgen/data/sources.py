"""``load_data``: the one entry point from a :class:`DataConfig` to :class:`LabelledData`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from utilgen.config import DataConfig
from utilgen.data.bundled import load_bbc_news, load_digits
from utilgen.data.hf import load_hf_disk
from utilgen.data.imagefolder import load_image_folder
from utilgen.data.labelled import LabelledData
from utilgen.data.parquet import load_parquet
from utilgen.data.tables import load_table
from utilgen.errors import DataError

log = logging.getLogger(__name__)


def cap_per_class(data: LabelledData, max_per_class: int) -> LabelledData:
    """The first ``max_per_class`` samples of each class, in the data's (sorted) order.

    Taking the first rather than a random subset keeps the cap independent of any seed:
    the same files are read whatever the run's seed.
    """
    keep = np.concatenate(
        [np.flatnonzero(data.labels == c)[:max_per_class] for c in range(data.num_classes)]
    )
    return data.subset(np.sort(keep))


def _path(cfg: DataConfig) -> Path:
    if cfg.path is None:
        raise DataError(f"data.path is required when data.source is {cfg.source!r}; set data.path")
    return cfg.path


def load_data(cfg: DataConfig) -> LabelledData:
    """Load the dataset that ``cfg`` describes, capped at ``cfg.max_per_class`` per class."""
    if cfg.source == "digits":
        data = load_digits()
    elif cfg.source == "bbc-news":
        data = load_bbc_news()
    elif cfg.source == "imagefolder":
        data = load_image_folder(_path(cfg))
    elif cfg.source == "hf-disk":
        data = load_hf_disk(
            _path(cfg), cfg.text_column, cfg.image_column, cfg.label_column, cfg.hf_split
        )
    elif cfg.source == "parquet":
        data = load_parquet(_path(cfg), cfg.text_column, cfg.image_column, cfg.label_column)
    elif cfg.source in ("csv", "jsonl"):
        data = load_table(_path(cfg), cfg.text_column, cfg.label_column, fmt=cfg.source)
    else:  # the config's Literal makes this unreachable unless a new source is half-added
        raise DataError(f"unknown data.source {cfg.source!r}")
    if cfg.max_per_class is not None:
        data = cap_per_class(data, cfg.max_per_class)
    log.info(
        "loaded %s: %d %s samples in %d classes",
        data.name,
        len(data),
        data.modality,
        data.num_classes,
    )
    return data
