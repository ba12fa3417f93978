"""Similarity (r_int) and the composite r_util on hand-made tables; lambda's bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from value_helpers import LinearModel

from utilgen.config import load_config
from utilgen.data.labelled import LabelledData
from utilgen.errors import ConfigError
from utilgen.value import (
    Composite,
    Similarity,
    ValuationError,
    class_centroids,
    composite_utility,
    cosine_to_centroid,
    margin,
    normalize_per_class,
)

# Two classes; class 0 has three samples, class 1 two (one of them constant in r_ext).
LABELS = np.array([0, 0, 0, 1, 1])
R_INT = np.array([0.2, 0.6, 1.0, -0.5, 0.5])
R_EXT = np.array([-1.0, 0.0, 2.0, 0.3, 0.3])


def test_minmax_per_class_by_hand() -> None:
    np.testing.assert_allclose(
        normalize_per_class(R_INT, LABELS, "minmax"), [0.0, 0.5, 1.0, 0.0, 1.0]
    )
    # a constant class sits in the middle of the range
    np.testing.assert_allclose(
        normalize_per_class(R_EXT, LABELS, "minmax"), [0.0, 1 / 3, 1.0, 0.5, 0.5]
    )


def test_zscore_per_class_by_hand() -> None:
    # class 0 of R_EXT: mean 1/3, population std sqrt(14/9)
    std = np.sqrt(((-4 / 3) ** 2 + (1 / 3) ** 2 + (5 / 3) ** 2) / 3)
    expected = [(-1 - 1 / 3) / std, (0 - 1 / 3) / std, (2 - 1 / 3) / std, 0.0, 0.0]
    np.testing.assert_allclose(normalize_per_class(R_EXT, LABELS, "zscore"), expected)


def test_composite_by_hand() -> None:
    lam = 0.25
    got = composite_utility(R_INT, R_EXT, LABELS, lam, "minmax")
    expected = lam * np.array([0, 0.5, 1, 0, 1]) + (1 - lam) * np.array([0, 1 / 3, 1, 0.5, 0.5])
    np.testing.assert_allclose(got, expected)
    # the ends of lambda pick one term
    np.testing.assert_allclose(
        composite_utility(R_INT, R_EXT, LABELS, 1.0), normalize_per_class(R_INT, LABELS)
    )
    np.testing.assert_allclose(
        composite_utility(R_INT, R_EXT, LABELS, 0.0), normalize_per_class(R_EXT, LABELS)
    )


@pytest.mark.parametrize("lam", [-0.1, 1.5])
def test_lambda_outside_unit_interval_is_rejected(lam: float) -> None:
    with pytest.raises(ValuationError, match=r"outside \[0, 1\]") as err:
        composite_utility(R_INT, R_EXT, LABELS, lam)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("valuation.composite_lambda=1.5", "valuation.composite_lambda"),
        ("valuation.vog_checkpoints=1", "valuation.vog_checkpoints"),
    ],
)
def test_config_rejects_bad_lambda_and_vog_checkpoints(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        load_config(None, [override])
    assert "\n" not in str(err.value)


def test_config_round_trips_valuation_settings(tmp_path: Path) -> None:
    raw = {
        "valuation": {
            "scores": ["vog", "composite", "meta_weight"],
            "composite_lambda": 0.3,
            "normalization": "zscore",
            "meta_weight": {"epochs": 2, "meta_per_class": 5},
            "selection": [{"rule": "drop_lowest", "score": "vog", "fraction": 0.25}],
        }
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path).valuation
    assert cfg.composite_lambda == 0.3 and cfg.meta_weight.meta_per_class == 5
    assert cfg.selection[0].fraction == 0.25 and cfg.vog_checkpoints == 3
    with pytest.raises(ConfigError, match="needs k"):
        load_config(None, ["valuation.selection=[{rule: top_k, score: margin}]"])


def test_centroids_and_cosine_by_hand() -> None:
    emb = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    labels = np.array([0, 0, 1])
    centroids = class_centroids(emb, labels, 2)
    # mean of the unit vectors (1, 0) and (0, 1)
    np.testing.assert_allclose(centroids, [[0.5, 0.5], [1 / np.sqrt(2), 1 / np.sqrt(2)]])
    np.testing.assert_allclose(
        cosine_to_centroid(emb, labels, centroids), [1 / np.sqrt(2), 1 / np.sqrt(2), 1.0]
    )


def test_similarity_valuator_uses_the_model_embedding(digits_small: LabelledData) -> None:
    model = LinearModel(num_classes=10)
    reference = digits_small.subset(np.arange(0, len(digits_small), 2))
    scores = Similarity(reference).score(model, digits_small)
    embeddings = model.embed(digits_small.items).astype(np.float64)
    ref_emb = model.embed(reference.items).astype(np.float64)
    centroids = np.stack(
        [
            (
                ref_emb[reference.labels == c]
                / np.linalg.norm(ref_emb[reference.labels == c], axis=1, keepdims=True)
            ).mean(0)
            for c in range(10)
        ]
    )
    chosen = centroids[digits_small.labels]
    expected = (embeddings * chosen).sum(1) / (
        np.linalg.norm(embeddings, axis=1) * np.linalg.norm(chosen, axis=1)
    )
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert scores.max() <= 1 + 1e-12


def test_composite_valuator_combines_similarity_and_margin(digits_small: LabelledData) -> None:
    model = LinearModel(num_classes=10)
    got = Composite(digits_small, lam=0.7, normalization="zscore").score(model, digits_small)
    r_int = Similarity(digits_small).score(model, digits_small)
    r_ext = margin(model.logits(digits_small.items), digits_small.labels)
    np.testing.assert_allclose(
        got, composite_utility(r_int, r_ext, digits_small.labels, 0.7, "zscore")
    )


def test_similarity_needs_every_class_in_the_reference(digits_small: LabelledData) -> None:
    without_class_3 = digits_small.subset(np.flatnonzero(digits_small.labels != 3))
    with pytest.raises(ValuationError, match="class '3' has no real reference sample"):
        Similarity(without_class_3)
