"""Offline mode: a pre-generated pool is valued and selected; nothing is generated.

``loop.offline_pool`` is read once, in ``prepare`` (so a bad path or a class the real data
does not have fails before the run directory is touched), into samples of round 1:

* a utilgen run directory: its synthetic samples with their provenance (generator, prompt,
  seed, parent ...) and ids, labels re-indexed by class name;
* an image folder (``DIR/<class>/<image>``), or a ``.jsonl`` / ``.csv`` / ``.parquet`` file
  of texts in ``data.text_column`` / ``data.label_column``: ids ``offline/<class>/<key>``,
  the file name as generator.

Round 1 then appends them to the pool (idempotently) and values, selects and trains on
them exactly as an on-the-fly round does with the samples it generated.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from utilgen.config import DataConfig, RunConfig
from utilgen.data import LabelledData, load_data
from utilgen.errors import ConfigError
from utilgen.pool import PoolStore, Sample, samples_from_labelled
from utilgen.pool.layout import RunLayout

FILE_SOURCES = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def _from_run(path: Path) -> list[Sample]:
    store = PoolStore(path)
    frame = store.manifest()
    ids = [str(i) for i in frame.loc[frame["source"] == "synthetic", "id"]]
    if not ids:
        raise ConfigError(
            f"loop.offline_pool {path} holds no synthetic samples; point it at a run that "
            "generated some"
        )
    return store.samples(ids)


def _from_files(path: Path, config: RunConfig) -> list[Sample]:
    if path.is_dir():
        source = "imagefolder"
    elif path.suffix.lower() in FILE_SOURCES:
        source = FILE_SOURCES[path.suffix.lower()]
    else:
        raise ConfigError(
            f"loop.offline_pool {path} is neither a run directory, an image folder nor a "
            f"{', '.join(FILE_SOURCES)} file; convert it to one of those"
        )
    data: LabelledData = load_data(
        DataConfig(
            source=source,
            path=path,
            text_column=config.data.text_column,
            image_column=config.data.image_column,
            label_column=config.data.label_column,
        )
    )
    samples = samples_from_labelled(data, split="", source="synthetic", round=1)
    return [
        dataclasses.replace(s, id=f"offline/{s.class_name}/{s.id.rsplit('/', 1)[-1]}")
        for s in samples
    ]


def offline_samples(config: RunConfig, real: LabelledData) -> list[Sample]:
    """The samples of ``loop.offline_pool`` as round-1 synthetic samples of this run.

    Raises:
        ConfigError: the path is missing, unreadable, empty, of the other modality, or holds
            classes the real data does not have.
    """
    path = config.loop.offline_pool
    if path is None:
        raise ConfigError("loop.mode=offline needs loop.offline_pool")
    if not path.exists():
        raise ConfigError(f"loop.offline_pool {path} not found; pass an existing path")
    is_run = path.is_dir() and RunLayout(path).manifest.is_file()
    found = _from_run(path) if is_run else _from_files(path, config)
    return relabel(found, real.class_names, real.modality, source=str(path))


def relabel(
    samples: Sequence[Sample], class_names: Sequence[str], modality: str, source: str
) -> list[Sample]:
    """``samples`` as round-1 synthetic samples labelled by this run's class indices."""
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({s.class_name for s in samples} - set(index))
    if unknown:
        raise ConfigError(
            f"loop.offline_pool {source} has classes {unknown[:5]} that the real data does "
            f"not ({list(class_names)[:10]}); drop them or fix the class names"
        )
    wrong = [s for s in samples if s.modality != modality]
    if wrong:
        raise ConfigError(
            f"loop.offline_pool {source} holds {wrong[0].modality}s but the real data "
            f"{modality}s; point it at {modality} samples"
        )
    out = []
    for s in samples:
        details = json.loads(s.details) if s.details else {}
        details["offline_from"] = source
        out.append(
            dataclasses.replace(
                s,
                label=index[s.class_name],
                source="synthetic",
                split="",
                round=1,
                generator=s.generator or f"offline:{Path(source).name}",
                kept=True,
                reason="",
                details=json.dumps(details, sort_keys=True),
            )
        )
    return out
