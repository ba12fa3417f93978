"""Labelled datasets: loading (ImageFolder, ``datasets``, Parquet, CSV/JSONL, bundled demos)
and reproducible stratified / k-shot splits.

Everything produces or consumes :class:`LabelledData`; :func:`load_data` and
:func:`split_for_config` (with :func:`reserve_meta_set` for a held-out meta set) are what
the run engine calls.
"""

from utilgen.data.bundled import load_bbc_news, load_digits
from utilgen.data.hf import load_hf_disk
from utilgen.data.imagefolder import load_image_folder
from utilgen.data.labelled import Item, LabelledData, Modality
from utilgen.data.parquet import load_parquet
from utilgen.data.sources import cap_per_class, load_data
from utilgen.data.splits import (
    Splits,
    check_meta_set,
    k_shot,
    reserve_meta_set,
    split_for_config,
    stratified_split,
)
from utilgen.data.tables import load_table

__all__ = [
    "Item",
    "LabelledData",
    "Modality",
    "Splits",
    "cap_per_class",
    "check_meta_set",
    "k_shot",
    "load_bbc_news",
    "load_data",
    "load_digits",
    "load_hf_disk",
    "load_image_folder",
    "load_parquet",
    "load_table",
    "reserve_meta_set",
    "split_for_config",
    "stratified_split",
]
