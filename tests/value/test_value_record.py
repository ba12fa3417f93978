"""Recording: scores.parquet and manifest columns, selections, and nothing written on bad
input; plus score_samples end to end on a tiny model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from value_helpers import cnn

from utilgen.config.valuation import MetaWeightConfig, SelectionRule, ValuationConfig
from utilgen.data.labelled import LabelledData
from utilgen.pool import PoolStore, samples_from_labelled
from utilgen.pool.layout import manifest_path
from utilgen.task import TaskModel
from utilgen.value import (
    ValuationError,
    apply_selection,
    build_selector,
    read_scores,
    record_scores,
    score_samples,
    scored_samples,
    scores_path,
)


@pytest.fixture
def store(tmp_path: Path, digits_small: LabelledData) -> Iterator[PoolStore]:
    """A writable pool holding ``digits_small`` as synthetic round-1 samples."""
    with PoolStore.open(tmp_path / "run", writable=True) as opened:
        opened.append(samples_from_labelled(digits_small, "", source="synthetic", round=1))
        yield opened


def _scores(data: LabelledData) -> pd.DataFrame:
    n = len(data)
    return pd.DataFrame(
        {"id": list(data.ids), "margin": np.linspace(-1, 1, n), "vog": np.arange(n) % 7 - 3.0}
    )


def test_record_writes_parquet_and_manifest_columns(
    store: PoolStore, digits_small: LabelledData
) -> None:
    frame = _scores(digits_small)
    path = record_scores(store, 1, frame)
    assert path == scores_path(store.run_dir, 1) == store.run_dir / "rounds/001/scores.parquet"
    back = read_scores(store.run_dir, 1)
    pd.testing.assert_frame_equal(back, frame)
    manifest = PoolStore(store.run_dir).manifest().set_index("id")
    np.testing.assert_allclose(
        manifest.loc[list(frame["id"]), "utility_r001_margin"], frame["margin"]
    )
    np.testing.assert_allclose(manifest.loc[list(frame["id"]), "utility_r001_vog"], frame["vog"])


def test_scores_for_ids_missing_from_the_pool_write_nothing(
    store: PoolStore, digits_small: LabelledData
) -> None:
    frame = _scores(digits_small)
    frame.loc[3, "id"] = "synthetic/never-stored"
    before = manifest_path(store.run_dir).read_bytes()
    with pytest.raises(ValuationError, match="missing from the pool") as err:
        record_scores(store, 1, frame)
    assert "\n" not in str(err.value) and "never-stored" in str(err.value)
    assert not scores_path(store.run_dir, 1).exists()
    assert manifest_path(store.run_dir).read_bytes() == before


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"margin": [0.1]}), "'id' column"),
        (pd.DataFrame({"id": ["a", "a"], "margin": [0.1, 0.2]}), "scored twice"),
        (pd.DataFrame({"id": ["a"], "Bad Name": [0.1]}), "not a valid column name"),
        (pd.DataFrame({"id": ["a"], "margin": ["high"]}), "non-numeric"),
    ],
)
def test_malformed_score_tables_are_rejected(
    store: PoolStore, frame: pd.DataFrame, message: str
) -> None:
    with pytest.raises(ValuationError, match=message):
        record_scores(store, 1, frame)
    assert not scores_path(store.run_dir, 1).exists()


def test_read_only_pool_is_rejected(store: PoolStore, digits_small: LabelledData) -> None:
    with pytest.raises(ValuationError, match="read-only"):
        record_scores(PoolStore(store.run_dir), 1, _scores(digits_small))


def test_selection_is_recorded_with_reasons_and_weights(
    store: PoolStore, digits_small: LabelledData
) -> None:
    frame = _scores(digits_small)
    selector = build_selector(
        [
            SelectionRule(rule="drop_lowest", score="vog", fraction=0.25),
            SelectionRule(rule="weight", score="margin", normalize=True),
        ]
    )
    selection = selector.select(scored_samples(digits_small, frame))
    apply_selection(store, 1, selection)
    manifest = PoolStore(store.run_dir).manifest().set_index("id")
    for sample_id, decision in selection.decisions.items():
        assert manifest.loc[sample_id, "kept"] == decision.kept
        assert manifest.loc[sample_id, "reason"] == decision.reason
        expected = decision.weight if decision.kept else 0.0
        assert manifest.loc[sample_id, "utility_r001_weight"] == pytest.approx(expected)
    assert 0 < len(selection.kept_ids()) < len(digits_small)


def test_selection_for_unknown_ids_writes_nothing(
    store: PoolStore, digits_small: LabelledData
) -> None:
    other = LabelledData(
        "image", (digits_small.items[0],), np.array([0]), digits_small.class_names, ("x/1",)
    )
    frame = pd.DataFrame({"id": ["x/1"], "margin": [0.5]})
    selection = build_selector([]).select(scored_samples(other, frame))
    before = manifest_path(store.run_dir).read_bytes()
    with pytest.raises(ValuationError, match="missing from the pool"):
        apply_selection(store, 1, selection)
    assert manifest_path(store.run_dir).read_bytes() == before


def test_score_samples_end_to_end(
    trained_cnn: tuple[TaskModel, list[Path]],
    digits_small: LabelledData,
    digits_other: LabelledData,
) -> None:
    model, checkpoints = trained_cnn
    cfg = ValuationConfig(
        scores=[
            "marginal",
            "margin",
            "entropy",
            "loss",
            "vog",
            "similarity",
            "composite",
            "meta_weight",
        ],
        meta_weight=MetaWeightConfig(epochs=1, meta_per_class=2, batch_size=64),
    )
    before = {k: v.clone() for k, v in model.module().state_dict().items()}
    frame = score_samples(
        cfg, model, digits_other, checkpoints=checkpoints, real_train=digits_small, seed=0
    )
    assert list(frame.columns) == ["id", *cfg.scores]
    assert list(frame["id"]) == list(digits_other.ids)
    assert frame.drop(columns="id").notna().all().all()
    assert frame["marginal"].between(0, 1).all() and frame["margin"].between(-1, 1).all()
    assert frame["meta_weight"].between(0, 1).all() and frame["composite"].between(0, 1).all()
    np.testing.assert_allclose(frame["loss"], -np.log(frame["marginal"]), rtol=1e-9)
    after = model.module().state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_score_samples_checks_inputs_before_scoring(
    trained_cnn: tuple[TaskModel, list[Path]], digits_small: LabelledData
) -> None:
    model, checkpoints = trained_cnn
    # one checkpoint (epoch 1) holds no 3 evenly spaced points (the default)
    with pytest.raises(ValuationError, match=r"vog_checkpoints=3 .* task\.epochs=1"):
        score_samples(
            ValuationConfig(scores=["vog"]), model, digits_small, checkpoints=checkpoints[:1]
        )
    with pytest.raises(ValuationError, match="needs the real training samples"):
        score_samples(ValuationConfig(scores=["similarity"]), model, digits_small)
    texts = LabelledData("text", ("a b",), np.array([0]), digits_small.class_names, ("t/0",))
    with pytest.raises(ValuationError, match="classifies images"):
        score_samples(ValuationConfig(scores=["margin"]), cnn(digits_small), texts)
