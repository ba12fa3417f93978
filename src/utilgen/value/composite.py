"""The composite utility r_util (U-DPO Eq. 4).

    r_util = lambda * N(r_int) + (1 - lambda) * N(r_ext)

r_int is the embedding similarity (``similarity``), r_ext the classifier margin
(``margin``), and N a per-class normalisation of each term, so that neither term dominates
by its scale alone and classes of different difficulty are ranked on the same footing:

* ``minmax``: (v - min_c) / (max_c - min_c), in [0, 1]; a class whose values are all equal
  gets 0.5 (the middle of the range);
* ``zscore``: (v - mean_c) / std_c (population std); a constant class gets 0 (its mean).

U-DPO combines the raw terms and does not state lambda; the per-class normalisation is the
issue's addition (both raw terms are bounded, but on different scales), and lambda defaults
to 0.5.
"""

from __future__ import annotations

import numpy as np

from utilgen.config.valuation import Normalization
from utilgen.data.labelled import LabelledData
from utilgen.task.base import TaskModel
from utilgen.value.base import ValuationError, check_data
from utilgen.value.logit_scores import margin
from utilgen.value.similarity import Similarity

NORMALIZATIONS: tuple[str, ...] = ("minmax", "zscore")
DEFAULT_LAMBDA = 0.5


def check_lambda(lam: float) -> float:
    """``lam`` as a float, checked to lie in [0, 1] (ValuationError otherwise)."""
    value = float(lam)
    if not 0.0 <= value <= 1.0:
        raise ValuationError(
            f"composite lambda {lam} is outside [0, 1]; set valuation.composite_lambda in [0, 1]"
        )
    return value


def normalize_per_class(
    values: np.ndarray, labels: np.ndarray, method: Normalization = "minmax"
) -> np.ndarray:
    """``values`` normalised within each label's class, float64 (n,) (see module docstring).

    Raises:
        ValuationError: unknown method or non-finite values.
    """
    if method not in NORMALIZATIONS:
        raise ValuationError(
            f"unknown normalisation {method!r}; set valuation.normalization to minmax or zscore"
        )
    v = np.asarray(values, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if v.shape != y.shape:
        raise ValueError(f"got {len(y)} labels for {len(v)} values")
    if not np.all(np.isfinite(v)):
        raise ValuationError("cannot normalise scores that are NaN or infinite")
    out = np.empty_like(v)
    for c in np.unique(y):
        members = y == c
        part = v[members]
        if method == "minmax":
            spread = part.max() - part.min()
            out[members] = (part - part.min()) / spread if spread > 0 else 0.5
        else:
            # exact test for a constant class: see vog.class_normalize
            out[members] = (part - part.mean()) / part.std() if np.ptp(part) > 0 else 0.0
    return out


def composite_utility(
    r_int: np.ndarray,
    r_ext: np.ndarray,
    labels: np.ndarray,
    lam: float = DEFAULT_LAMBDA,
    normalization: Normalization = "minmax",
) -> np.ndarray:
    """lambda * N(r_int) + (1 - lambda) * N(r_ext), float64 (n,), N per class."""
    lam = check_lambda(lam)
    a = normalize_per_class(r_int, labels, normalization)
    b = normalize_per_class(r_ext, labels, normalization)
    return lam * a + (1.0 - lam) * b


class Composite:
    """The r_util :class:`~utilgen.value.base.Valuator` (similarity + margin).

    Args:
        reference: real labelled samples for the similarity centroids.
        lam: weight of r_int, in [0, 1].
        normalization: ``minmax`` or ``zscore``, per class and per term.
    """

    name = "composite"

    def __init__(
        self,
        reference: LabelledData,
        *,
        lam: float = DEFAULT_LAMBDA,
        normalization: Normalization = "minmax",
    ) -> None:
        self.lam = check_lambda(lam)
        if normalization not in NORMALIZATIONS:
            raise ValuationError(
                f"unknown normalisation {normalization!r}; set valuation.normalization to "
                "minmax or zscore"
            )
        self.normalization: Normalization = normalization
        self.similarity = Similarity(reference)

    def __repr__(self) -> str:
        return f"Composite(lam={self.lam}, normalization={self.normalization!r})"

    def score(self, model: TaskModel, data: LabelledData) -> np.ndarray:
        """r_util of every sample, float64 (n,)."""
        check_data(model, data, self.name)
        if not len(data):
            return np.zeros(0, dtype=np.float64)
        r_int = self.similarity.score(model, data)
        r_ext = margin(model.logits(data.items), data.labels)
        return composite_utility(r_int, r_ext, data.labels, self.lam, self.normalization)
