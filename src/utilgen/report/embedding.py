"""Real and synthetic samples as the run's final task model sees them, mapped by t-SNE.

The task model of the last round is rebuilt from ``RUN/config.yaml`` and its last
checkpoint; :meth:`~utilgen.task.TaskModel.embed` gives the features its head reads (the
penultimate layer; MiniLM's sentence embedding). A few hundred samples are drawn from the
pool, half real and half kept synthetic, with a fixed seed, and sklearn's t-SNE maps them to
2-d. The caps keep t-SNE (whose cost grows with the number of points and iterations) near
two seconds per run on one core.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import torch

from utilgen.data.labelled import Modality
from utilgen.errors import UtilgenError
from utilgen.pool import PoolStore, class_names_from_manifest, decode_item
from utilgen.report.runs import MissingData, ReportRun
from utilgen.task import build_task_model, list_checkpoints, load_checkpoint

MAX_POINTS = 400
TSNE_ITERATIONS = 300  # sklearn's minimum is 250; the layout is settled well before 1000
TSNE_PERPLEXITY = 20.0


@dataclass(frozen=True)
class Embedded:
    """Samples in 2-d: ``coords`` (n, 2), class ``labels`` (n,), ``synthetic`` mask (n,)."""

    coords: np.ndarray
    labels: np.ndarray
    synthetic: np.ndarray
    class_names: tuple[str, ...]
    checkpoint: Path


def last_checkpoint(run: ReportRun) -> Path:
    """The last checkpoint of the run's last round that kept checkpoints."""
    for round_index in sorted(run.round_metrics, reverse=True):
        found = list_checkpoints(run.layout.round(round_index).checkpoints)
        if found:
            return found[-1]
    raise MissingData("the run kept no task-model checkpoint")


def pick_samples(
    manifest: pd.DataFrame, max_points: int = MAX_POINTS, seed: int = 0
) -> pd.DataFrame:
    """Up to ``max_points // 2`` real and as many kept synthetic rows of ``manifest``,
    drawn without replacement under ``seed``, real rows first."""
    rng = np.random.default_rng(seed)
    half = max_points // 2
    parts = []
    for rows in (
        manifest[manifest["source"] == "real"],
        manifest[(manifest["source"] == "synthetic") & manifest["kept"].astype(bool)],
    ):
        take = min(half, len(rows))
        parts.append(rows.iloc[np.sort(rng.choice(len(rows), size=take, replace=False))])
    return pd.concat(parts)


def tsne_2d(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """t-SNE of ``features`` (n, d) to (n, 2); perplexity capped below n / 3 as small
    samples need."""
    from sklearn.manifold import TSNE

    n = len(features)
    if n < 5:
        raise MissingData(f"{n} samples are too few for t-SNE")
    perplexity = min(TSNE_PERPLEXITY, (n - 1) / 3)
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        random_state=seed,
        max_iter=TSNE_ITERATIONS,
    )
    coords: np.ndarray = tsne.fit_transform(features.astype(np.float32))
    return coords


def embed_run(run: ReportRun, max_points: int = MAX_POINTS) -> Embedded:
    """Features of real and kept synthetic samples under the run's final task model, mapped
    to 2-d.

    Raises:
        MissingData: no kept synthetic sample, no checkpoint or config, or the task model
            cannot be built here (its message, e.g. a model that is not on this machine).
    """
    from utilgen.config.load import config_from_dict

    if not run.config:
        raise MissingData("the run has no config.yaml to rebuild its task model from")
    store = PoolStore(run.run_dir)
    manifest = store.manifest()
    chosen = pick_samples(manifest, max_points, seed=run.seed)
    synthetic = (chosen["source"] == "synthetic").to_numpy()
    if not synthetic.any():
        raise MissingData("the run kept no synthetic sample")
    checkpoint = last_checkpoint(run)
    modality = cast(Modality, str(manifest["modality"].iloc[0]))
    items = [decode_item(store.read_payload(b), modality) for b in chosen["blob"]]
    class_names = class_names_from_manifest(manifest)
    # small-cnn sizes its input from a real training item, as the run did
    first_real = int(np.argmax(~synthetic))
    try:
        config = config_from_dict(run.config)
        model = build_task_model(
            config.task,
            modality=modality,
            num_classes=len(class_names),
            example_items=items[first_real : first_real + 1],
            device=torch.device("cpu"),
            seed=config.seed,
        )
        load_checkpoint(model, checkpoint)
    except UtilgenError as err:
        raise MissingData(f"cannot rebuild the task model: {err}") from None
    features = model.embed(items)
    return Embedded(
        coords=tsne_2d(features, seed=run.seed),
        labels=chosen["label"].to_numpy(dtype=np.int64),
        synthetic=synthetic,
        class_names=tuple(class_names),
        checkpoint=checkpoint,
    )
