"""Metrics against answers worked out by hand, and against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from task_helpers import Build

from utilgen.data.labelled import LabelledData
from utilgen.task import (
    compute_metrics,
    evaluate,
    expected_calibration_error,
    macro_f1,
    train_val_gap,
    worst_class_ratio,
)
from utilgen.task.metrics import confusion_matrix


def _proba(predicted: list[int], confidence: list[float], k: int) -> np.ndarray:
    """Rows with ``confidence`` on the predicted class, the rest shared equally."""
    rows = np.empty((len(predicted), k))
    for i, (p, c) in enumerate(zip(predicted, confidence, strict=True)):
        rows[i] = (1 - c) / (k - 1)
        rows[i, p] = c
    return rows


# Ten samples, three classes a, b, c.
#   i:     0    1    2    3    4    5    6    7    8    9
#   true:  a    a    a    a    b    b    b    c    c    c
#   pred:  a    a    a    b    b    b    c    c    c    a
#   conf: .90  .90  .85  .50  .90  .62  .90  .85  .62  .42
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 0, 1, 1, 1, 2, 2, 2, 0]
CONF = [0.90, 0.90, 0.85, 0.50, 0.90, 0.62, 0.90, 0.85, 0.62, 0.42]


def test_known_answers_on_a_hand_computed_example() -> None:
    m = compute_metrics(np.array(Y_TRUE), _proba(Y_PRED, CONF, 3), ("a", "b", "c"))
    # Confusion matrix (rows true, columns predicted):
    #        a  b  c
    #   a  [ 3, 1, 0 ]
    #   b  [ 0, 2, 1 ]
    #   c  [ 1, 0, 2 ]
    assert m["confusion_matrix"] == [[3, 1, 0], [0, 2, 1], [1, 0, 2]]
    assert m["n"] == 10
    # accuracy = (3 + 2 + 2) / 10
    assert m["accuracy"] == pytest.approx(0.7)
    # per class: a 3/4, b 2/3, c 2/3; worst is b (first of the tied), ratio (2/3) / (3/4) = 8/9
    assert m["per_class_accuracy"] == pytest.approx({"a": 0.75, "b": 2 / 3, "c": 2 / 3})
    assert m["worst_class_accuracy"] == pytest.approx(2 / 3)
    assert m["worst_class"] == "b"
    assert m["worst_class_ratio"] == pytest.approx(8 / 9)
    # F1 = 2TP / (2TP + FP + FN):
    #   a: TP 3, FP 1 (c->a), FN 1 (a->b): 6/8 = 3/4
    #   b: TP 2, FP 1 (a->b), FN 1 (b->c): 4/6 = 2/3
    #   c: TP 2, FP 1 (b->c), FN 1 (c->a): 4/6 = 2/3
    #   macro = (27/36 + 24/36 + 24/36) / 3 = 25/36
    assert m["macro_f1"] == pytest.approx(25 / 36)
    # ECE, 15 bins of width 1/15 (0.0667), right-closed:
    #   .90 -> bin 13 (.867, .933]: samples 0 1 4 6, accuracy 3/4, confidence .90 -> |.75-.90| = .15
    #   .85 -> bin 12 (.800, .867]: samples 2 7, accuracy 1, confidence .85 -> .15
    #   .62 -> bin  9 (.600, .667]: samples 5 8, accuracy 1, confidence .62 -> .38
    #   .50 -> bin  7 (.467, .533]: sample 3, accuracy 0 -> .50
    #   .42 -> bin  6 (.400, .467]: sample 9, accuracy 0 -> .42
    #   ECE = .4*.15 + .2*.15 + .2*.38 + .1*.50 + .1*.42 = .06 + .03 + .076 + .05 + .042 = .258
    assert m["ece"] == pytest.approx(0.258)


def test_macro_f1_and_confusion_matrix_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    for k in (2, 3, 7):
        y_true = rng.integers(0, k, 200)
        proba = rng.dirichlet(np.ones(k), 200)
        y_pred = proba.argmax(1)
        m = compute_metrics(y_true, proba, tuple(str(c) for c in range(k)))
        assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
        assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
        expected_cm = sk_confusion_matrix(y_true, y_pred, labels=list(range(k)))
        assert m["confusion_matrix"] == expected_cm.tolist()


def test_class_absent_from_the_labels() -> None:
    # true [a, a, b], predicted [a, c, b]: c has no samples -> accuracy None, left out of the
    # worst-class figures; F1 over a, b, c (c is predicted): a 2/3, b 1, c 0 -> 5/9, as sklearn.
    proba = _proba([0, 2, 1], [0.9, 0.9, 0.9], 3)
    m = compute_metrics(np.array([0, 0, 1]), proba, ("a", "b", "c"))
    assert m["per_class_accuracy"] == {"a": 0.5, "b": 1.0, "c": None}
    assert m["worst_class_accuracy"] == 0.5 and m["worst_class_ratio"] == 0.5
    assert m["macro_f1"] == pytest.approx(5 / 9)
    assert m["macro_f1"] == pytest.approx(f1_score([0, 0, 1], [0, 2, 1], average="macro"))


def test_zero_over_zero_worst_class_ratio_is_zero() -> None:
    # Every class wrong: min = max = 0. A model that serves no class is not "balanced".
    assert worst_class_ratio([0.0, 0.0]) == 0.0
    assert worst_class_ratio([None, 0.0]) == 0.0
    assert worst_class_ratio([0.5, 1.0, None]) == 0.5
    assert worst_class_ratio([1.0, 1.0]) == 1.0
    m = compute_metrics(np.array([0, 1]), _proba([1, 0], [0.8, 0.8], 2), ("x", "y"))
    assert m["worst_class_ratio"] == 0.0 and m["accuracy"] == 0.0


def test_ece_known_cases() -> None:
    # perfectly confident and right, or as confident as accurate: 0
    assert expected_calibration_error(np.ones(5), np.ones(5, dtype=bool)) == 0.0
    conf = np.full(4, 0.75)
    assert expected_calibration_error(conf, np.array([1, 1, 1, 0], dtype=bool)) == pytest.approx(0)
    # always 0.95 confident, right half the time: |0.5 - 0.95|
    assert expected_calibration_error(np.full(4, 0.95), np.array([1, 0, 1, 0])) == pytest.approx(
        0.45
    )
    # a confidence on a bin edge (0.4 = 6/15) goes to the bin it closes, (1/3, 0.4]
    edge = np.linspace(0, 1, 16)[6]
    inside = 0.35
    ece = expected_calibration_error(np.array([edge, inside]), np.array([1, 1]))
    assert ece == pytest.approx(1 - (edge + inside) / 2)  # one bin holding both


def test_macro_f1_and_gap_helpers() -> None:
    assert macro_f1(confusion_matrix(np.array([0, 1]), np.array([0, 1]), 3)) == 1.0
    assert train_val_gap(0.9, 0.85) == pytest.approx(0.05)


def test_bad_metric_inputs() -> None:
    with pytest.raises(ValueError, match="at least one"):
        compute_metrics(np.array([], dtype=np.int64), np.zeros((0, 2)), ("a", "b"))
    with pytest.raises(ValueError, match="shape"):
        compute_metrics(np.array([0]), np.ones((1, 3)) / 3, ("a", "b"))
    with pytest.raises(ValueError, match="labels"):
        compute_metrics(np.array([2]), np.ones((1, 2)) / 2, ("a", "b"))


def test_evaluate_uses_predict_proba(build: Build, digits_small: LabelledData) -> None:
    model = build("small-cnn", digits_small)
    m = evaluate(model, digits_small)
    proba = model.predict_proba(digits_small.items)
    assert m["accuracy"] == pytest.approx(float(np.mean(proba.argmax(1) == digits_small.labels)))
    assert m["n"] == len(digits_small) and len(m["per_class_accuracy"]) == 10
