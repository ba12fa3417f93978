"""Recording scores and selections in the run directory.

* ``RUN/rounds/NNN/scores.parquet``: one row per scored sample, column ``id`` then one
  float64 column per score, written atomically;
* the pool manifest: per score a column ``utility_rNNN_<score>`` (``PoolStore.set_column``),
  and for a selection the ``kept`` / ``reason`` columns (``PoolStore.set_kept``) plus the
  training weights as ``utility_rNNN_weight``.

Everything is checked before anything is written: scores for an id the pool does not hold,
a duplicate id, a non-numeric score or a read-only pool raise a one-line
:class:`~utilgen.value.base.ValuationError` and leave the run directory unchanged.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from utilgen.atomic import write_bytes_atomic
from utilgen.data.labelled import LabelledData
from utilgen.pool.layout import RunLayout
from utilgen.pool.schema import EXTRA_COLUMN_PATTERN, utility_column
from utilgen.pool.store import PoolStore, filter_manifest
from utilgen.value.base import ValuationError
from utilgen.value.selectors import Selection

WEIGHT_COLUMN = "weight"


def scores_path(run_dir: str | Path, round_index: int) -> Path:
    """``RUN/rounds/NNN/scores.parquet``."""
    return RunLayout(run_dir).round(round_index).scores


def _check_writable(store: PoolStore) -> None:
    if not store.writable:
        raise ValuationError(
            f"the pool of {store.run_dir} is open read-only; record scores through "
            "PoolStore.open(run_dir, writable=True)"
        )


def _check_known(store: PoolStore, ids: list[str], what: str) -> None:
    known = set(store.ids())
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise ValuationError(
            f"{what} for {len(unknown)} sample(s) missing from the pool of {store.run_dir} "
            f"(e.g. {unknown[0]!r}); append the samples to the pool before scoring them"
        )


def check_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """``scores`` with column ``id`` (str) first and every other column as float64.

    Raises:
        ValuationError: no ``id`` column, duplicate ids, an invalid score name or a
            non-numeric score.
    """
    if "id" not in scores.columns:
        raise ValuationError("scores need an 'id' column naming each sample; add it")
    ids = scores["id"].astype(str)
    if ids.duplicated().any():
        raise ValuationError(
            f"sample {ids[ids.duplicated()].iloc[0]!r} is scored twice; give each id one row"
        )
    out = pd.DataFrame({"id": ids.to_numpy()})
    for name in scores.columns:
        if name == "id":
            continue
        if not isinstance(name, str) or not EXTRA_COLUMN_PATTERN.match(name):
            raise ValuationError(
                f"score name {name!r} is not a valid column name; use lower-case letters, "
                "digits and underscores"
            )
        try:
            out[name] = pd.to_numeric(scores[name], errors="raise").astype(np.float64).to_numpy()
        except (TypeError, ValueError):
            raise ValuationError(
                f"score {name!r} holds non-numeric values; scores are floats"
            ) from None
    return out


def record_scores(store: PoolStore, round_index: int, scores: pd.DataFrame) -> Path:
    """Write ``scores`` (``id`` + one column per score) for round ``round_index``.

    Writes ``RUN/rounds/NNN/scores.parquet`` atomically, then joins each score into the
    manifest as ``utility_rNNN_<score>``. Returns the Parquet path.

    Raises:
        ValuationError: see the module docstring; nothing is written then.
    """
    # 1. check everything before touching the run directory
    _check_writable(store)
    frame = check_scores(scores)
    ids = frame["id"].tolist()
    _check_known(store, ids, "scores")
    columns = {name: utility_column(round_index, name) for name in frame.columns if name != "id"}
    # 2. the round's score table
    table = pa.Table.from_pandas(frame, preserve_index=False)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    path = write_bytes_atomic(scores_path(store.run_dir, round_index), buffer.getvalue())
    # 3. the manifest's utility columns
    for name, column in columns.items():
        store.set_column(column, dict(zip(ids, frame[name].tolist(), strict=True)))
    return path


def read_scores(run_dir: str | Path, round_index: int) -> pd.DataFrame:
    """The scores recorded for round ``round_index`` (ValuationError if there are none)."""
    path = scores_path(run_dir, round_index)
    if not path.is_file():
        raise ValuationError(
            f"{path} not found: round {round_index} has no recorded scores; score it first"
        )
    return pq.read_table(path).to_pandas()


def apply_selection(store: PoolStore, round_index: int, selection: Selection) -> None:
    """Record ``selection`` in the manifest: ``kept`` and ``reason`` of every decided sample,
    and its training weight as ``utility_rNNN_weight``.

    Raises:
        ValuationError: a decided id is not in the pool, or the pool is read-only; nothing is
            written then.
    """
    _check_writable(store)
    ids = list(selection.decisions)
    _check_known(store, ids, "selection decisions")
    if not ids:
        return
    store.set_kept(selection.kept_and_reasons())
    store.set_column(utility_column(round_index, WEIGHT_COLUMN), selection.weights())


def selection_candidates(
    store: PoolStore, round_index: int, class_names: Sequence[str]
) -> LabelledData:
    """The synthetic samples of round ``round_index`` that valuation scores and selection
    decides on: those the filters kept, in append order.

    :func:`apply_selection` overwrites ``kept``, so the samples this round's selection
    dropped (recognised by their ``utility_rNNN_weight``) are candidates too. Without them, a
    round resumed after its selection was recorded would value and select only what the
    first attempt kept: other scores, other preference pairs, another run.
    """
    generated = store.load_labelled(
        source="synthetic", round=round_index, class_names=class_names, name="synthetic"
    )
    rows = filter_manifest(store.manifest(), source="synthetic", round=round_index)
    candidate = np.array(rows["kept"], dtype=bool)
    weight = utility_column(round_index, WEIGHT_COLUMN)
    if weight in rows.columns:
        candidate |= rows[weight].notna().to_numpy()
    return generated.subset(np.flatnonzero(candidate))
