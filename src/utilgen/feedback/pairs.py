"""Preference pairs from utility: the data of model-level feedback.

Within each group of generated samples (a class, or a class and prompt so that both texts
of a pair answer the same prompt), samples are ranked by the ranking score
(``feedback.pairs.score``), best first (ties broken by id, so the ranking is deterministic).
With k = max(1, floor(rho * n)):

* ``top-mid`` (U-DPO, Sec. 3.3): the top k are preferred, the k around the median
  dispreferred: "high-scoring samples as x+ and mid-scoring samples as x-";
* ``top-bottom`` (UtilGen): the top k preferred, the bottom k dispreferred.

The i-th preferred sample is paired with the i-th dispreferred one (both in ranked order),
so every pair spans about the same rank gap. A pair's weight is tanh(|w(x+) - w(x-)|) (U-DPO
Eq. 5) or 1 when unweighted, where w is the weight score (``feedback.pairs.weight_score``;
unset: the ranking score). U-DPO ranks by the classifier margin and weighs by the composite
r_util (Sec. 3.3-3.4), so the two can differ, and then a pair's weight gap may even be
negative (x+ has the higher margin but the lower r_util): Eq. 5 takes its absolute value.

Columns of a pair: ``chosen_utility``/``rejected_utility`` and ``gap`` are the ranking
score and its difference (always > 0 after the tie filter); ``weight_gap`` is w(x+) - w(x-)
(equal to ``gap`` when the weight score is the ranking score); ``weight`` is the weight.
Pairs whose ranking gap is not above ``min_gap`` are dropped (a tie carries no preference).
Pairs are written to ``RUN/rounds/NNN/pairs.parquet``.
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
    "weight_gap",
    "weight",
]
INPUT_COLUMNS = ["id", "label", "class_name", "prompt", "utility"]
# The weight score's column, needed when cfg.weight_score names a score other than cfg.score.
WEIGHT_COLUMN = "weight_utility"


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


def weight_column(cfg: PreferencePairConfig) -> str:
    """The input column whose gap weighs a pair: ``utility`` when the ranking score is also
    the weight score, :data:`WEIGHT_COLUMN` otherwise."""
    if cfg.weight_score is None or cfg.weight_score == cfg.score:
        return "utility"
    return WEIGHT_COLUMN


def describe_pairs(cfg: PreferencePairConfig) -> str:
    """How pairs are ranked and weighed, for ``--dry-run`` and logs."""
    if not cfg.weighted:
        weight = "each weighing 1"
    else:
        weight = f"weighted by tanh(|delta {cfg.weight_score or cfg.score}|)"
    return f"pairs ranked by {cfg.score} ({cfg.scheme}, rho {cfg.ratio}), {weight}"


def _check_finite(table: pd.DataFrame, column: str, score: str) -> None:
    values = table[column].to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        bad = table.loc[~np.isfinite(values), "id"].iloc[0]
        raise PairError(
            f"sample {bad!r} has a non-finite {score}; preference pairs need a finite score "
            "for every sample"
        )


def build_pairs(table: pd.DataFrame, cfg: PreferencePairConfig, *, modality: str) -> pd.DataFrame:
    """Preference pairs from a table of scored samples.

    Args:
        table: one row per sample with columns ``id``, ``label`` (int), ``class_name``,
            ``prompt`` and ``utility`` (the ranking score ``cfg.score``, float, higher is
            better); also ``weight_utility`` (the weight score) when ``cfg.weight_score``
            names another score.
        cfg: ranking and weight scores, scheme, ratio rho, weighting, grouping, minimum gap.
        modality: ``image`` or ``text`` (picks the grouping when ``cfg.group_by`` is auto).

    Returns:
        one row per pair, columns :data:`PAIR_COLUMNS`, ordered by label, group and rank.

    Raises:
        PairError: a missing column, a non-finite score, a class with fewer than two
            samples, or no pair left after dropping ties.
    """
    weight_col = weight_column(cfg)
    needed = INPUT_COLUMNS if weight_col == "utility" else [*INPUT_COLUMNS, weight_col]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise PairError(
            f"preference pairs need columns {needed}; missing {missing}: score the samples first"
        )
    if table.empty:
        raise PairError("no scored samples to build preference pairs from; generate and score")
    _check_finite(table, "utility", cfg.score)
    if weight_col != "utility":
        _check_finite(table, weight_col, str(cfg.weight_score))
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
            weight_gap = float(chosen[weight_col]) - float(rejected[weight_col])
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
                    "weight_gap": weight_gap,
                    "weight": math.tanh(abs(weight_gap)) if cfg.weighted else 1.0,
                }
            )
    if not rows:
        raise PairError(
            f"every candidate pair has a {cfg.score} gap <= {cfg.min_gap}; no preference to "
            "learn: lower feedback.pairs.min_gap or generate more samples"
        )
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def write_pairs(pairs: pd.DataFrame, path: Path) -> None:
    """Write a pairs table atomically as Parquet."""
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(pairs[PAIR_COLUMNS], preserve_index=False), buffer)
    write_bytes_atomic(path, buffer.getvalue())


def read_pairs(path: Path) -> pd.DataFrame:
    """A pairs table written by :func:`write_pairs`."""
    pairs = pq.read_table(path).to_pandas()
    if "weight_gap" not in pairs.columns:
        # written before weight_score existed, when the ranking score also weighed the pairs
        pairs["weight_gap"] = pairs["gap"]
    return pairs[PAIR_COLUMNS]
