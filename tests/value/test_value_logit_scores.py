"""Known answers for marginal, margin, entropy and loss on hand-written logits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from value_helpers import LinearModel

from utilgen.data.labelled import LabelledData
from utilgen.value import OutputScore, ValuationError, entropy, loss, margin, marginal

# log-probabilities as logits: softmax gives back exactly these probabilities (+ a constant
# shift in the second row, which softmax ignores).
P = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]])
LOGITS = np.log(P) + np.array([[0.0], [7.0], [-3.0]])
LABELS = np.array([0, 1, 2])


def test_marginal_is_the_labelled_probability() -> None:
    np.testing.assert_allclose(marginal(LOGITS, LABELS), [0.5, 0.1, 1 / 3], rtol=1e-12)


def test_margin_is_own_minus_best_other() -> None:
    # 0.5 - 0.3; 0.1 - 0.8; 1/3 - 1/3 (a tie with another class gives 0)
    np.testing.assert_allclose(margin(LOGITS, LABELS), [0.2, -0.7, 0.0], atol=1e-12)


def test_entropy_in_nats() -> None:
    expected = [-sum(p * math.log(p) for p in row) for row in P]
    np.testing.assert_allclose(entropy(LOGITS), expected, rtol=1e-12)
    assert entropy(LOGITS)[2] == pytest.approx(math.log(3))


def test_loss_is_minus_log_marginal() -> None:
    np.testing.assert_allclose(
        loss(LOGITS, LABELS), [math.log(2), math.log(10), math.log(3)], rtol=1e-12
    )


def test_extreme_logits_stay_finite_and_exact() -> None:
    logits = np.array([[1000.0, 0.0], [0.0, 1000.0]])
    labels = np.array([1, 1])
    np.testing.assert_allclose(loss(logits, labels), [1000.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(margin(logits, labels), [-1.0, 1.0])
    assert np.all(np.isfinite(entropy(logits)))
    assert marginal(logits, labels).dtype == np.float64


def test_label_out_of_range_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        marginal(LOGITS, np.array([0, 1, 3]))


def test_output_score_uses_the_model_logits(digits_small: LabelledData) -> None:
    model = LinearModel(num_classes=10)
    logits = model.logits(digits_small.items)
    for name, fn in [("marginal", marginal), ("margin", margin), ("loss", loss)]:
        got = OutputScore(name).score(model, digits_small)
        np.testing.assert_allclose(got, fn(logits, digits_small.labels), rtol=1e-12)
    np.testing.assert_allclose(
        OutputScore("entropy").score(model, digits_small), entropy(logits), rtol=1e-12
    )
    # marginal agrees with the model's own predict_proba (float32)
    proba = model.predict_proba(digits_small.items)
    np.testing.assert_allclose(
        OutputScore("marginal").score(model, digits_small),
        proba[np.arange(len(digits_small)), digits_small.labels],
        rtol=1e-5,
    )


def test_unknown_score_and_wrong_modality_are_one_line_errors() -> None:
    with pytest.raises(ValuationError, match="unknown output score") as err:
        OutputScore("accuracy")
    assert "\n" not in str(err.value)
    texts = LabelledData("text", ("a b c",), np.array([0]), ("x", "y"), ("t/0",))
    with pytest.raises(ValuationError, match="classifies images but the samples are texts"):
        OutputScore("margin").score(LinearModel(num_classes=2), texts)
