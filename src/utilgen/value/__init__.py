"""Utility valuation: per-sample scores from the task model, and the rules that select.

Scores (one float64 per sample; see each module): ``marginal``, ``margin``, ``entropy`` and
``loss`` (:mod:`~utilgen.value.logit_scores`), ``vog`` (:mod:`~utilgen.value.vog`), ``similarity``
(:mod:`~utilgen.value.similarity`), ``composite`` (:mod:`~utilgen.value.composite`) and
``meta_weight`` (:mod:`~utilgen.value.meta_weight`). :func:`score_samples` computes the
configured ones as a table, :func:`record_scores` writes it to the run directory and the
manifest, a :class:`Selector` decides what is kept and :func:`apply_selection` records why.
"""

from utilgen.value.base import ValuationError, Valuator
from utilgen.value.composite import Composite, composite_utility, normalize_per_class
from utilgen.value.logit_scores import OutputScore, entropy, loss, margin, marginal
from utilgen.value.meta_weight import (
    MetaWeight,
    MetaWeightResult,
    WeightNet,
    meta_weight_step,
    train_meta_weighted,
)
from utilgen.value.record import (
    apply_selection,
    read_scores,
    record_scores,
    scores_path,
    selection_candidates,
)
from utilgen.value.scoring import build_valuators, score_samples, scored_samples
from utilgen.value.selectors import (
    BottomK,
    Chain,
    Decision,
    DropLowest,
    HardReal,
    KeepAll,
    KeepRatio,
    ScoredSamples,
    Selection,
    SelectionError,
    Selector,
    Threshold,
    TopK,
    Weighting,
    build_selector,
)
from utilgen.value.similarity import Similarity, class_centroids, cosine_to_centroid
from utilgen.value.vog import VoG, class_normalize, variance_of_gradients

__all__ = [
    "BottomK",
    "Chain",
    "Composite",
    "Decision",
    "DropLowest",
    "HardReal",
    "KeepAll",
    "KeepRatio",
    "MetaWeight",
    "MetaWeightResult",
    "OutputScore",
    "ScoredSamples",
    "Selection",
    "SelectionError",
    "Selector",
    "Similarity",
    "Threshold",
    "TopK",
    "ValuationError",
    "Valuator",
    "VoG",
    "WeightNet",
    "Weighting",
    "apply_selection",
    "build_selector",
    "build_valuators",
    "class_centroids",
    "class_normalize",
    "composite_utility",
    "cosine_to_centroid",
    "entropy",
    "loss",
    "margin",
    "marginal",
    "meta_weight_step",
    "normalize_per_class",
    "read_scores",
    "record_scores",
    "score_samples",
    "scored_samples",
    "scores_path",
    "selection_candidates",
    "train_meta_weighted",
    "variance_of_gradients",
]
