"""Preference pairs from utility: the data of model-level feedback.

Within each group of generated samples (a class, or a class and prompt so that both texts
of a pair answer the same prompt), samples are ranked by a utility score, best first (ties
broken by id, so the ranking is deterministic). With k = max(1, floor(rho * n)):

* ``top-mid`` (U-DPO, Sec. 3.3): the top k are preferred, the k around the median
  dispreferred: "high-scoring samples as x+ and mid-scoring samples as x-";
* ``top-bottom`` (UtilGen): the top k preferred, the bottom k dispreferred.

The i-th preferred sample is paired with the i-th dispreferred one (both in ranked order),
so every pair spans about the same rank gap. A pair's weight is tanh(|r(x+) - r(x-)|)
(U-DPO Eq. 5) or 1 when unweighted; pairs whose gap is not above ``min_gap`` are dropped (a
tie carries no preference). Pairs are written to ``RUN/rounds/NNN/pairs.parquet``.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from utilgen.atomic import write_bytes_atomic
from utilgen.config.feedback import PreferencePairConfig
from utilgen.errors import UtilgenError

PAIR_COLUMNS = [
    "class_name",
    "label",
    "group",
    "prompt",
    "chosen_id",
    "rejected_id",
    "chosen_utility",
    "rejected_utility",
    "gap",
    "weight",
]
INPUT_COLUMNS = ["id", "label", "class_name", "prompt", "utility"]


class PairError(UtilgenError):
    """Preference pairs cannot be built from the given scores."""


def pair_slots(n: int, ratio: float, scheme: str) -> list[tuple[int, int]]:
    """(preferred rank, dispreferred rank) pairs for a group of ``n`` ranked samples (rank 0
    is the best); empty when ``n < 2``."""
    if n < 2:
        return []
    k = max(1, math.floor(ratio * n))
    if scheme == "top-bottom":
        k = min(k, n // 2)
        return [(i, n - k + i) for i in range(k)]
    # top-mid: the k samples centred on the median, never overlapping the top k
    start = max(k, (n - k) // 2)
    k = min(k, n - start)
    return [(i, start + i) for i in range(k)]


def _grouping(cfg: PreferencePairConfig, modality: str) -> str:
    if cfg.group_by != "auto":
        return cfg.group_by
    return "prompt" if modality == "text" else "class"


def build_pairs(table: pd.DataFrame, cfg: PreferencePairConfig, *, modality: str) -> pd.DataFrame:
    """Preference pairs from a table of scored samples.

    Args:
        table: one row per sample with columns ``id``, ``label`` (int), ``class_name``,
            ``prompt`` and ``utility`` (float, higher is better).
        cfg: scheme, ratio rho, weighting, grouping and minimum gap.
        modality: ``image`` or ``text`` (picks the grouping when ``cfg.group_by`` is auto).

    Returns:
        one row per pair, columns :data:`PAIR_COLUMNS`, ordered by label, group and rank.

    Raises:
        PairError: a missing column, a non-finite utility, a class with fewer than two
            samples, or no pair left after dropping ties.
    """
    missing = [c for c in INPUT_COLUMNS if c not in table.columns]
    if missing:
        raise PairError(
            f"preference pairs need columns {INPUT_COLUMNS}; missing {missing}: score the "
            "samples first"
        )
    if table.empty:
        raise PairError("no scored samples to build preference pairs from; generate and score")
    utility = table["utility"].to_numpy(dtype=np.float64)
    if not np.isfinite(utility).all():
        bad = table.loc[~np.isfinite(utility), "id"].iloc[0]
        raise PairError(
            f"sample {bad!r} has a non-finite utility ({cfg.score}); preference pairs need "
            "a finite score for every sample"
        )
    counts = table.groupby("class_name", sort=True).size()
    lonely = counts[counts < 2]
    if len(lonely):
        raise PairError(
            f"class {lonely.index[0]!r} has {int(lonely.iloc[0])} scored sample(s); preference "
            "pairs need at least 2 per class: raise generator.per_class"
        )
    grouping = _grouping(cfg, modality)
    keys = ["label", "prompt"] if grouping == "prompt" else ["label"]
    rows: list[dict[str, object]] = []
    for group_index, (_, group) in enumerate(table.groupby(keys, sort=True)):
        ranked = group.sort_values(["utility", "id"], ascending=[False, True], kind="mergesort")
        for top, low in pair_slots(len(ranked), cfg.ratio, cfg.scheme):
            chosen, rejected = ranked.iloc[top], ranked.iloc[low]
            gap = float(chosen["utility"]) - float(rejected["utility"])
            if gap <= cfg.min_gap:
                continue
            rows.append(
                {
                    "class_name": str(chosen["class_name"]),
                    "label": int(chosen["label"]),
                    "group": group_index,
                    "prompt": str(chosen["prompt"]),
                    "chosen_id": str(chosen["id"]),
                    "rejected_id": str(rejected["id"]),
                    "chosen_utility": float(chosen["utility"]),
                    "rejected_utility": float(rejected["utility"]),
                    "gap": gap,
                    "weight": math.tanh(abs(gap)) if cfg.weighted else 1.0,
                }
            )
    if not rows:
        raise PairError(
            f"every candidate pair has a utility gap <= {cfg.min_gap} ({cfg.score}); no "
            "preference to learn: lower feedback.pairs.min_gap or generate more samples"
        )
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def write_pairs(pairs: pd.DataFrame, path: Path) -> None:
    """Write a pairs table atomically as Parquet."""
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(pairs[PAIR_COLUMNS], preserve_index=False), buffer)
    write_bytes_atomic(path, buffer.getvalue())


def read_pairs(path: Path) -> pd.DataFrame:
    """A pairs table written by :func:`write_pairs`."""
    return pq.read_table(path).to_pandas()[PAIR_COLUMNS]
