"""Sample efficiency of a finished run: test accuracy against synthetic samples used.

The run's final round trained a fresh task model (with ``loop.continue_training``: the
previous round's classifier) on the real training split plus the synthetic samples its
``rounds/NNN/training_set.parquet`` records, with their selection weights
(``utilgen.loop.training_set``). Here the same model (same config, seed and starting
weights) is retrained on the real split plus
nested, class-stratified subsets of those synthetic samples and evaluated on the test
split, one point per fraction. At fraction 1.0 the training set, weights and seed are the
round's own, so on CPU the point reproduces the run's final test accuracy exactly.

Subsets: within each class the samples are sorted by id and permuted with a generator
seeded by (run seed, class index); fraction f takes the first round-half-up(f * n_c) of the
permutation. A larger fraction therefore contains every smaller one, and the same run gives
the same subsets on any machine.

Resume: each finished point is written to ``RUN/efficiency.partial.json`` (atomically), and
``RUN/efficiency.json`` is written atomically at the end. A later call reuses every point of
either file whose inputs (the run's config and the synthetic ids and weights) are unchanged,
so a killed computation continues with the missing fractions and asking for other fractions
retrains only the new ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utilgen.atomic import write_json_atomic
from utilgen.config import RunConfig, config_to_yaml, load_config
from utilgen.data import LabelledData, Splits
from utilgen.errors import UtilgenError
from utilgen.loop.continued import continue_from_previous, round_task_config
from utilgen.loop.run import build_model, prepare
from utilgen.loop.training_set import read_training_set
from utilgen.pool import PoolStore, RunLayout
from utilgen.pool.lock import RunLock
from utilgen.pool.schema import utility_column
from utilgen.progress import progress_bar
from utilgen.report import load_summary
from utilgen.report.efficiency_curves import DEFAULT_FRACTIONS, check_fractions
from utilgen.task import evaluate, train
from utilgen.task.train import Advance
from utilgen.value.record import WEIGHT_COLUMN
from utilgen.value.selectors import round_half_up

log = logging.getLogger(__name__)

ORDER = "stratified-random"


@dataclass(frozen=True)
class FinalSynthetic:
    """The synthetic samples the final round trained on, with their training weights.

    Attributes:
        data: the kept synthetic samples of the round with a non-zero weight, in pool order.
        weights: their training weights (1 without a selection), aligned with ``data``.
        round_index: the round they come from.
    """

    data: LabelledData
    weights: np.ndarray
    round_index: int


def final_synthetic(
    store: PoolStore, round_index: int, class_names: tuple[str, ...]
) -> FinalSynthetic:
    """What round ``round_index`` trained on besides the real split, with the weights.

    The round records exactly that in ``rounds/NNN/training_set.parquet`` (its kept samples,
    or every round's with ``loop.accumulate``, capped by ``loop.synthetic_ratio``). Runs
    from before that file trained on the round's kept samples weighted by the selection's
    ``utility_rNNN_weight`` (1 without a selection), which is what is read for them.

    Zero-weight samples are left out: training removes them exactly (``utilgen.task.train``),
    so they were never trained on and do not count as samples used.
    """
    recorded = store.layout.round(round_index)
    if recorded.training_set.is_file():
        table = read_training_set(recorded.path)
        every = store.load_labelled(source="synthetic", class_names=class_names, name="synthetic")
        position = {sample_id: i for i, sample_id in enumerate(every.ids)}
        data = every.subset([position[i] for i in table["id"]])
        weights = table["weight"].to_numpy(dtype=np.float64)
    else:
        data = store.load_labelled(
            source="synthetic",
            round=round_index,
            kept_only=True,
            class_names=class_names,
            name="synthetic",
        )
        weights = np.ones(len(data), dtype=np.float64)
        column = utility_column(round_index, WEIGHT_COLUMN)
        frame = store.manifest()
        if column in frame.columns and len(data):
            recorded_weights = frame.set_index("id")[column].loc[list(data.ids)].to_numpy()
            # As the round did: a kept sample the selection did not weigh counts 1.
            weights = np.where(np.isnan(recorded_weights), 1.0, recorded_weights)
    trained = np.flatnonzero(weights > 0)
    return FinalSynthetic(data.subset(trained), weights[trained], round_index)


def nested_subsets(
    labels: np.ndarray, ids: tuple[str, ...], fractions: Iterable[float], seed: int
) -> dict[float, np.ndarray]:
    """Fraction -> sorted indices of a class-stratified subset; subsets are nested.

    Each class's samples are sorted by id and permuted by ``default_rng([seed, class])``;
    fraction f keeps the first round-half-up(f * class size) of them.
    """
    orders = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[np.argsort(np.asarray(ids, dtype=str)[members], kind="stable")]
        rng = np.random.default_rng([seed, int(label)])
        orders.append(members[rng.permutation(len(members))])
    return {
        f: np.sort(
            np.concatenate(
                [order[: round_half_up(f * len(order))] for order in orders]
                or [np.zeros(0, dtype=np.int64)]
            )
        ).astype(np.int64)
        for f in fractions
    }


def _inputs_digest(config: RunConfig, synthetic: FinalSynthetic) -> str:
    """A hash of what a point depends on: the config and the synthetic ids and weights."""
    text = json.dumps(
        {
            "config": config_to_yaml(config),
            "round": synthetic.round_index,
            "order": ORDER,
            "synthetic": [
                [i, float(w)] for i, w in zip(synthetic.data.ids, synthetic.weights, strict=True)
            ],
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _cached_points(run_dir: Path, inputs: str) -> dict[float, dict[str, Any]]:
    """Points already computed for the same inputs, from the final or the partial file."""
    found: dict[float, dict[str, Any]] = {}
    layout = RunLayout(run_dir)
    for path in (layout.efficiency, layout.efficiency_partial):
        if not path.is_file():
            continue
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("%s is unreadable; its points are recomputed", path)
            continue
        if saved.get("inputs") == inputs:
            found.update({float(p["fraction"]): p for p in saved.get("points", [])})
    return found


def train_point(
    config: RunConfig,
    splits: Splits,
    synthetic: FinalSynthetic,
    indices: np.ndarray,
    fraction: float,
    advance: Advance | None = None,
    start: tuple[RunLayout, int] | None = None,
) -> dict[str, Any]:
    """Retrain the run's task model from its initial weights on real + ``synthetic`` at
    ``indices`` (with their weights) and evaluate it on the test split. ``start``: the run
    and its final round, when that round continued the previous round's classifier
    (``loop.continue_training``): the retraining starts from the same checkpoint.

    Returns the point: ``fraction``, ``n_synthetic``, test ``accuracy`` and
    ``worst_class_ratio``, and ``seconds`` of wall time.
    """
    started = time.perf_counter()
    subset = synthetic.data.subset(indices)
    train_data = splits.train.concat(subset) if len(subset) else splits.train
    weights = np.concatenate([np.ones(len(splits.train)), synthetic.weights[indices]])
    model = build_model(config, splits)
    if start is not None:  # loop.continue_training: the round started from the one before
        continue_from_previous(model, start[0], start[1])
    task = round_task_config(config)
    train(model, train_data, task, weights=weights, seed=config.seed, progress=advance)
    test = evaluate(model, splits.test)
    return {
        "fraction": fraction,
        "n_synthetic": len(subset),
        "accuracy": test["accuracy"],
        "worst_class_ratio": test["worst_class_ratio"],
        "seconds": round(time.perf_counter() - started, 3),
    }


def efficiency_curve(
    run_dir: str | Path, fractions: Iterable[float] = DEFAULT_FRACTIONS
) -> dict[str, Any]:
    """Accuracy against synthetic samples for the finished run in ``run_dir``; writes
    ``RUN/efficiency.json`` and returns its contents.

    Steps:
    1. check inputs: a finished run, valid fractions, a final round with synthetic samples
       — nothing is written if this fails
    2. the run's data splits and its final round's synthetic samples and weights
    3. one retrained model per fraction not computed before, each saved on its own
    4. ``efficiency.json``, atomically

    Raises:
        UtilgenError: the run has not finished, has no synthetic samples, a fraction is
            invalid, or another process holds the run's lock.
    """
    # 1. check inputs
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    summary = load_summary(run_dir).summary
    wanted = check_fractions(fractions)
    config = load_config(layout.config)
    round_index = int(summary["rounds"]) - 1
    if round_index < 1:
        raise UtilgenError(
            f"the run in {run_dir} ({summary.get('strategy')}) generated no synthetic samples; "
            "pass a run with a generator (e.g. static or gendataagent)"
        )

    # 2. the run's splits and the samples its final round trained on
    prepared = prepare(config, with_generator=False)
    splits = prepared.splits
    synthetic = final_synthetic(PoolStore(run_dir), round_index, splits.train.class_names)
    if not len(synthetic.data):
        raise UtilgenError(
            f"round {round_index} of {run_dir} kept no synthetic sample; nothing to subsample"
        )
    inputs = _inputs_digest(config, synthetic)
    subsets = nested_subsets(synthetic.data.labels, synthetic.data.ids, wanted, config.seed)
    header = {
        "run": str(run_dir),
        "strategy": summary.get("strategy"),
        "dataset": summary.get("dataset"),
        "seed": config.seed,
        "order": ORDER,
        "round": round_index,
        "n_real": len(splits.train),
        "run_accuracy": summary["accuracy"],
        "inputs": inputs,
    }

    # 3. retrain per missing fraction; every finished point is saved before the next starts
    with RunLock(run_dir):
        done = _cached_points(run_dir, inputs)
        points = {f: done[f] for f in wanted if f in done}
        todo = [f for f in wanted if f not in points]
        if points:
            log.info("efficiency: reusing %d computed point(s)", len(points))
        start = (layout, round_index) if config.loop.continue_training else None
        epochs = round_task_config(config).epochs
        with progress_bar("efficiency curve", len(todo) * epochs) as advance:
            for fraction in todo:
                points[fraction] = train_point(
                    config, splits, synthetic, subsets[fraction], fraction, advance, start
                )
                log.info(
                    "efficiency: fraction %g (%d synthetic): accuracy %.4f",
                    fraction,
                    points[fraction]["n_synthetic"],
                    points[fraction]["accuracy"],
                )
                partial = {**header, "points": [points[f] for f in sorted(points)]}
                write_json_atomic(layout.efficiency_partial, partial)

        # 4. the curve, written last
        result = {**header, "points": [points[f] for f in wanted]}
        if points[1.0]["accuracy"] != summary["accuracy"]:
            # Expected only off CPU (non-deterministic kernels) or after a code change.
            log.warning(
                "efficiency: fraction 1 gives accuracy %.4f, the run reported %.4f",
                points[1.0]["accuracy"],
                summary["accuracy"],
            )
        write_json_atomic(layout.efficiency, result)
        layout.efficiency_partial.unlink(missing_ok=True)
    return result
