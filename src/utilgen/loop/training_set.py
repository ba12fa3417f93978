"""What a round's student trains on: the real training split plus which synthetic samples.

By default a round trains on its own kept synthetic samples, weighted as its selection
decided. ``loop.accumulate`` adds the kept samples of every earlier round (GenDataAgent's
on-the-fly data, each with the weight its own round's selection gave it), and
``loop.synthetic_ratio`` caps the synthetic samples per class at round(ratio x real
samples of that class), keeping the highest-weighted first and, among equals, the newest
rounds' (the generator improves round by round) in pool order.

The decision is written to ``rounds/NNN/training_set.parquet`` (id, round, label, weight)
so that later tools (sample-efficiency curves, the report) read exactly what was trained
on; the pool's ``kept`` flags are left as the selection set them.
"""

from __future__ import annotations

import io
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from utilgen.atomic import write_bytes_atomic
from utilgen.config import RunConfig
from utilgen.data import LabelledData, Splits
from utilgen.errors import ConfigError
from utilgen.pool import PoolStore
from utilgen.pool.layout import TRAINING_SET_FILE, RoundLayout
from utilgen.pool.schema import utility_column
from utilgen.value.record import WEIGHT_COLUMN

log = logging.getLogger(__name__)

TRAINING_SET = TRAINING_SET_FILE  # kept for its importers


@dataclass(frozen=True)
class TrainingSet:
    """Real + chosen synthetic samples, and the per-sample training weights (None: all 1)."""

    data: LabelledData
    weights: np.ndarray | None
    n_synthetic: int
    n_over_ratio: int


def ratio_caps(config: RunConfig, real: LabelledData) -> dict[int, int] | None:
    """Class index -> most synthetic samples trained on, or None without a ratio.

    Raises:
        ConfigError: the ratio leaves no synthetic sample in any class.
    """
    ratio = config.loop.synthetic_ratio
    if ratio is None:
        return None
    counts = Counter(int(y) for y in real.labels)
    # Round half up: ratio 0.5 of 5 real samples is 3 synthetic ones, not 2.
    caps = {c: math.floor(ratio * n + 0.5) for c, n in counts.items()}
    if not any(caps.values()):
        raise ConfigError(
            f"loop.synthetic_ratio={ratio} x {max(counts.values())} real samples per class "
            "rounds to 0 synthetic samples; raise the ratio"
        )
    return caps


def _candidates(store: PoolStore, config: RunConfig, round_index: int) -> pd.DataFrame:
    """Kept synthetic rows of the rounds this round trains on, with their weights."""
    frame = store.manifest()
    first = 1 if config.loop.accumulate else round_index
    rows = frame[
        (frame["source"] == "synthetic")
        & frame["kept"].astype(bool)
        & (frame["round"] >= first)
        & (frame["round"] <= round_index)
    ].copy()
    rows["order"] = np.arange(len(rows))
    weights = np.ones(len(rows), dtype=np.float64)
    for r in sorted(set(rows["round"])):
        column = utility_column(int(r), WEIGHT_COLUMN)
        if column in rows.columns:
            own = (rows["round"] == r).to_numpy()
            values = rows.loc[own, column].to_numpy(dtype=np.float64)
            weights[own] = np.where(np.isnan(values), 1.0, values)
    rows["weight"] = weights
    return rows


def _cap(rows: pd.DataFrame, caps: dict[int, int]) -> pd.DataFrame:
    ranked = rows.sort_values(
        ["label", "weight", "round", "order"], ascending=[True, False, False, True]
    )
    keep = ranked.groupby("label", sort=False).cumcount() < ranked["label"].map(
        lambda c: caps.get(int(c), 0)
    )
    return ranked[keep].sort_values("order")


def build_training_set(
    store: PoolStore, config: RunConfig, splits: Splits, round_index: int, out: Path
) -> TrainingSet:
    """Real training split + this round's synthetic samples (see the module docstring);
    writes ``out/training_set.parquet``."""
    rows = _candidates(store, config, round_index)
    caps = ratio_caps(config, splits.train)
    chosen = rows if caps is None else _cap(rows, caps)
    over = len(rows) - len(chosen)
    if over:
        log.info(
            "round %d: %d synthetic sample(s) over loop.synthetic_ratio=%s left out",
            round_index,
            over,
            config.loop.synthetic_ratio,
        )
    table = chosen[["id", "round", "label", "weight"]].reset_index(drop=True)
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    write_bytes_atomic(RoundLayout(out).training_set, buffer.getvalue())
    if chosen.empty:
        log.warning("round %d: no synthetic sample to train on; real data only", round_index)
        return TrainingSet(splits.train, None, 0, over)
    synthetic = store.load_labelled(
        source="synthetic", class_names=splits.train.class_names, name="synthetic"
    )
    position = {sample_id: i for i, sample_id in enumerate(synthetic.ids)}
    picked = synthetic.subset([position[i] for i in chosen["id"]])
    data = splits.train.concat(picked)
    weights = None
    if not np.allclose(chosen["weight"].to_numpy(), 1.0):
        weights = np.concatenate([np.ones(len(splits.train)), chosen["weight"].to_numpy()])
    return TrainingSet(data, weights, len(chosen), over)


def read_training_set(round_dir: Path) -> pd.DataFrame:
    """``rounds/NNN/training_set.parquet``: id, round, label, weight of each synthetic sample
    the round trained on."""
    return pd.read_parquet(RoundLayout(round_dir).training_set)
