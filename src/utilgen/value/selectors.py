"""Selection rules: which scored samples to keep, with which training weight, and why.

A :class:`Selector` reads :class:`ScoredSamples` (ids, labels, one array per score) and
returns a frozen :class:`Selection`: for every id a :class:`Decision` (kept, weight, reason).
The reason is a short sentence written into the manifest's ``reason`` column, so that every
sample can be traced to the rule that kept or dropped it.

Rules (``valuation.selection`` builds them, :class:`Chain` composes them):

* :class:`TopK` / :class:`BottomK`: keep the k highest / lowest per class (or overall);
* :class:`HardReal`: GenDataAgent's marginal samples, the k lowest-``marginal`` real samples
  per class, to generate around;
* :class:`Threshold`: keep scores >= a threshold;
* :class:`KeepRatio`: keep the highest fraction per class;
* :class:`DropLowest`: GenDataAgent's VoG filtering, drop the lowest fraction per class;
* :class:`Weighting`: keep everything and weight by the score instead of dropping.

Ranking is deterministic: equal scores are ordered by sample id (lexicographic), so the
sample with the smaller id wins a tie for "highest" and for "lowest" alike. A fraction of a
group (a class, or all samples) of n stands for round_half_up(fraction * n) samples,
computed exactly on the fraction as written in decimal (0.25 of 6 is 2, of 2 is 1, of 1 is
0; 0.29 of 50 is 15), per class when the rule is per class
(:func:`~utilgen.config.valuation.rounded_share`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, runtime_checkable

import numpy as np

from utilgen.config.valuation import SelectionRule, rounded_share
from utilgen.value.base import ValuationError


class SelectionError(ValuationError):
    """A selection rule cannot be applied to the given samples."""


@dataclass(frozen=True)
class Decision:
    """A selector's verdict on one sample.

    Attributes:
        kept: whether the sample stays in the training data.
        weight: its training weight (>= 0; 1 for a plain keep, 0 when dropped).
        reason: why, in a few words (goes into the manifest).
    """

    kept: bool
    weight: float
    reason: str


@dataclass(frozen=True)
class ScoredSamples:
    """Samples with their scores, the input of every selector.

    Attributes:
        ids: unique sample ids.
        labels: class index per sample, int64 (n,).
        scores: score name -> float64 (n,) array aligned with ``ids``.
        class_names: every class of the task (per-class count rules need each to have
            samples; fraction rules take 0 of a class without any).
    """

    ids: tuple[str, ...]
    labels: np.ndarray
    scores: Mapping[str, np.ndarray]
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.ids)
        if len(set(self.ids)) != n:
            raise SelectionError("scored sample ids must be unique; give every sample its own id")
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(labels) != n:
            raise ValueError(f"got {len(labels)} labels for {n} ids")
        if n and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise ValueError(f"labels must lie in [0, {len(self.class_names)})")
        scores = {}
        for name, values in self.scores.items():
            arr = np.asarray(values, dtype=np.float64).reshape(-1)
            if len(arr) != n:
                raise ValueError(f"score {name!r} has {len(arr)} values for {n} ids")
            scores[name] = arr
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "scores", MappingProxyType(scores))
        object.__setattr__(self, "ids", tuple(str(i) for i in self.ids))

    def __len__(self) -> int:
        return len(self.ids)

    def score(self, name: str, rule: str) -> np.ndarray:
        """The values of score ``name``, checked to exist and be finite."""
        if name not in self.scores:
            have = ", ".join(self.scores) or "none"
            raise SelectionError(
                f"selection rule {rule} reads score {name!r} but the samples have {have}; add "
                f"{name} to valuation.scores"
            )
        values = self.scores[name]
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise SelectionError(
                f"selection rule {rule}: score {name!r} of sample {self.ids[bad[0]]!r} is "
                f"{values[bad[0]]}; scores must be finite"
            )
        return values

    def subset(self, indices: np.ndarray) -> ScoredSamples:
        """The samples at ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return ScoredSamples(
            ids=tuple(self.ids[i] for i in idx),
            labels=self.labels[idx],
            scores={k: v[idx] for k, v in self.scores.items()},
            class_names=self.class_names,
        )


@dataclass(frozen=True)
class Selection:
    """The decisions of a selector, one per sample id, in the samples' order."""

    decisions: Mapping[str, Decision] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "decisions", MappingProxyType(dict(self.decisions)))

    def __len__(self) -> int:
        return len(self.decisions)

    def kept_ids(self) -> list[str]:
        """Ids of the kept samples, in order."""
        return [i for i, d in self.decisions.items() if d.kept]

    def weights(self) -> dict[str, float]:
        """Id -> training weight (0 for dropped samples)."""
        return {i: (d.weight if d.kept else 0.0) for i, d in self.decisions.items()}

    def kept_and_reasons(self) -> dict[str, tuple[bool, str]]:
        """Id -> (kept, reason), as :meth:`utilgen.pool.PoolStore.set_kept` takes them."""
        return {i: (d.kept, d.reason) for i, d in self.decisions.items()}


@runtime_checkable
class Selector(Protocol):
    """Decides, for every scored sample, whether to keep it and with which weight."""

    def select(self, samples: ScoredSamples) -> Selection:
        """One decision per sample of ``samples``."""
        ...


# -- ranking helpers --------------------------------------------------------------------------


def rank_order(values: np.ndarray, ids: Sequence[str], *, highest_first: bool) -> np.ndarray:
    """Indices of ``values`` sorted highest (or lowest) first, ties by ascending id."""
    key = -np.asarray(values, dtype=np.float64) if highest_first else np.asarray(values)
    return np.lexsort((np.asarray(ids, dtype=str), key))


def round_half_up(x: float) -> int:
    """Round to the nearest integer, halves up (Python's round() rounds halves to even), on
    the float as it is; the selection rules count with the exact ``rounded_share``."""
    return int(np.floor(x + 0.5))


def groups(samples: ScoredSamples, per_class: bool, rule: str) -> list[tuple[str, np.ndarray]]:
    """(group description, member indices) per class that has samples, or one group of
    every sample.

    A class without samples has nothing to select and forms no group: a round may generate
    none of a class, e.g. when ``feedback.hard_samples.scope=global`` finds no hard real
    sample in it (GenDataAgent ranks the whole training set)."""
    if not per_class:
        return [("all samples", np.arange(len(samples)))]
    out = []
    for c, name in enumerate(samples.class_names):
        members = np.flatnonzero(samples.labels == c)
        if len(members):
            out.append((f"class {name!r}", members))
    return out


def _ranked_selection(
    samples: ScoredSamples,
    score: str,
    rule: str,
    *,
    per_class: bool,
    highest_first: bool,
    count: int | None = None,
    fraction: float | None = None,
    keep_ranked: bool = True,
) -> Selection:
    """Rank each group by ``score``; the first ``count`` (or ``fraction``) of each group are
    kept (``keep_ranked``) or dropped (not ``keep_ranked``)."""
    values = samples.score(score, rule)
    decisions: dict[str, Decision] = {}
    which = "highest" if highest_first else "lowest"
    # A fraction of a class without samples is 0 of 0 (e.g. a round whose global hard-sample
    # parents left a class out); k of it cannot be kept.
    for where, members in groups(samples, per_class, rule):
        order = members[
            rank_order(
                values[members], [samples.ids[i] for i in members], highest_first=highest_first
            )
        ]
        if count is not None:
            n_first = min(count, len(order))
            what = f"{count}"
        else:
            n_first = rounded_share(float(fraction or 0), len(order))
            what = f"{float(fraction or 0):g} ({n_first} of {len(order)})"
        for rank, i in enumerate(order):
            first = rank < n_first
            kept = first if keep_ranked else not first
            inside = "among" if first else "not among"
            reason = (
                f"{'kept' if kept else 'dropped'} by {rule}: {score} {values[i]:.4g} {inside} "
                f"the {which} {what} of {where}"
            )
            decisions[samples.ids[i]] = Decision(kept, 1.0 if kept else 0.0, reason)
    return Selection({i: decisions[i] for i in samples.ids})


# -- the rules --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopK:
    """Keep the ``k`` highest-``score`` samples per class (or overall)."""

    score: str
    k: int
    per_class: bool = True

    def __post_init__(self) -> None:
        _check_count(self.k, "top_k")

    def select(self, samples: ScoredSamples) -> Selection:
        return _ranked_selection(
            samples,
            self.score,
            "top_k",
            per_class=self.per_class,
            highest_first=True,
            count=self.k,
        )


@dataclass(frozen=True)
class BottomK:
    """Keep the ``k`` lowest-``score`` samples per class (or overall)."""

    score: str
    k: int
    per_class: bool = True

    def __post_init__(self) -> None:
        _check_count(self.k, "bottom_k")

    def select(self, samples: ScoredSamples) -> Selection:
        return _ranked_selection(
            samples,
            self.score,
            "bottom_k",
            per_class=self.per_class,
            highest_first=False,
            count=self.k,
        )


@dataclass(frozen=True)
class HardReal:
    """GenDataAgent's feedback: the ``k`` real samples per class with the lowest marginal
    score p(y|x), i.e. those nearest the decision boundary, which the generator works around.
    """

    k: int
    score: str = "marginal"
    per_class: bool = True

    def __post_init__(self) -> None:
        _check_count(self.k, "hard_real")

    def select(self, samples: ScoredSamples) -> Selection:
        return _ranked_selection(
            samples,
            self.score,
            "hard_real",
            per_class=self.per_class,
            highest_first=False,
            count=self.k,
        )


@dataclass(frozen=True)
class Threshold:
    """Keep samples whose ``score`` is at least ``threshold``."""

    score: str
    threshold: float

    def select(self, samples: ScoredSamples) -> Selection:
        values = samples.score(self.score, "threshold")
        decisions = {}
        for i, sample_id in enumerate(samples.ids):
            kept = bool(values[i] >= self.threshold)
            relation = ">=" if kept else "<"
            reason = (
                f"{'kept' if kept else 'dropped'} by threshold: {self.score} {values[i]:.4g} "
                f"{relation} {self.threshold:.4g}"
            )
            decisions[sample_id] = Decision(kept, 1.0 if kept else 0.0, reason)
        return Selection(decisions)


@dataclass(frozen=True)
class KeepRatio:
    """Keep the highest-``score`` ``fraction`` of each class (or of all samples): exactly
    round_half_up(fraction * n) of a class of n, as :class:`DropLowest` counts."""

    score: str
    fraction: float
    per_class: bool = True

    def __post_init__(self) -> None:
        _check_fraction(self.fraction, "keep_ratio")

    def select(self, samples: ScoredSamples) -> Selection:
        return _ranked_selection(
            samples,
            self.score,
            "keep_ratio",
            per_class=self.per_class,
            highest_first=True,
            fraction=self.fraction,
        )


@dataclass(frozen=True)
class DropLowest:
    """GenDataAgent's VoG filtering (Eq. 7): drop the lowest-``score`` ``fraction`` of each
    class (or of all samples); the rest are kept.

    A class of n samples drops exactly round_half_up(fraction * n) of them, exact in
    decimal (:func:`~utilgen.config.valuation.rounded_share`): fraction 0.25 drops 2 of 6,
    1 of 2, 0 of 1 and 0 of a class without samples; ties in the score go by sample id."""

    score: str
    fraction: float
    per_class: bool = True

    def __post_init__(self) -> None:
        _check_fraction(self.fraction, "drop_lowest")

    def select(self, samples: ScoredSamples) -> Selection:
        return _ranked_selection(
            samples,
            self.score,
            "drop_lowest",
            per_class=self.per_class,
            highest_first=False,
            fraction=self.fraction,
            keep_ranked=False,
        )


@dataclass(frozen=True)
class Weighting:
    """Keep every sample and weight it by its ``score`` instead of dropping any.

    With ``normalize`` the weight is the score min-max normalised within the class (the
    lowest gets 0, which training treats as removed; a constant class gets 1); without, the
    raw score, which must then be non-negative (e.g. ``meta_weight`` or ``marginal``).
    """

    score: str
    normalize: bool = False

    def select(self, samples: ScoredSamples) -> Selection:
        values = samples.score(self.score, "weight")
        if self.normalize:
            weights = np.ones_like(values)
            for _, members in groups(samples, True, "weight"):
                part = values[members]
                spread = part.max() - part.min()
                if spread > 0:
                    weights[members] = (part - part.min()) / spread
        else:
            if np.any(values < 0):
                raise SelectionError(
                    f"selection rule weight: score {self.score!r} has negative values, which "
                    "cannot be training weights; set normalize: true"
                )
            weights = values
        how = "per-class min-max " if self.normalize else ""
        return Selection(
            {
                sample_id: Decision(
                    True,
                    float(weights[i]),
                    f"kept by weight: {how}{self.score} {values[i]:.4g} -> weight {weights[i]:.4g}",
                )
                for i, sample_id in enumerate(samples.ids)
            }
        )


@dataclass(frozen=True)
class KeepAll:
    """Keep every sample with weight 1 (no selection configured)."""

    def select(self, samples: ScoredSamples) -> Selection:
        return Selection({i: Decision(True, 1.0, "kept: no selection rule") for i in samples.ids})


@dataclass(frozen=True)
class Chain:
    """Apply selectors in order; each sees only the samples the previous ones kept.

    A dropped sample keeps the reason of the rule that dropped it; a kept sample's weight is
    the product of its weights and its reason lists every rule's, joined by ``"; "``.
    """

    selectors: tuple[Selector, ...]

    def __init__(self, *selectors: Selector) -> None:
        object.__setattr__(self, "selectors", tuple(selectors))

    def select(self, samples: ScoredSamples) -> Selection:
        decisions: dict[str, Decision] = {i: Decision(True, 1.0, "") for i in samples.ids}
        for selector in self.selectors:
            alive = np.array(
                [k for k, i in enumerate(samples.ids) if decisions[i].kept], dtype=np.int64
            )
            if not len(alive):
                break
            step = selector.select(samples.subset(alive))
            for sample_id, new in step.decisions.items():
                old = decisions[sample_id]
                if not new.kept:
                    decisions[sample_id] = new
                else:
                    reason = f"{old.reason}; {new.reason}" if old.reason else new.reason
                    decisions[sample_id] = Decision(True, old.weight * new.weight, reason)
        if not self.selectors:
            return KeepAll().select(samples)
        return Selection({i: decisions[i] for i in samples.ids})


def _check_count(k: int, rule: str) -> None:
    if int(k) != k or k < 1:
        raise SelectionError(f"selection rule {rule} needs k >= 1, got {k}; set k")


def _check_fraction(fraction: float, rule: str) -> None:
    if not 0.0 <= fraction <= 1.0:
        raise SelectionError(
            f"selection rule {rule} needs a fraction in [0, 1], got {fraction}; set fraction"
        )


def build_selector(rules: Sequence[SelectionRule]) -> Selector:
    """The selector ``valuation.selection`` describes: a :class:`Chain` of its rules in order,
    or :class:`KeepAll` when there are none."""
    built: list[Selector] = []
    for rule in rules:
        if rule.rule == "top_k":
            built.append(TopK(rule.score, _need_int(rule.k, rule), rule.per_class))
        elif rule.rule == "bottom_k":
            built.append(BottomK(rule.score, _need_int(rule.k, rule), rule.per_class))
        elif rule.rule == "hard_real":
            built.append(HardReal(_need_int(rule.k, rule), rule.score, rule.per_class))
        elif rule.rule == "threshold":
            built.append(Threshold(rule.score, _need_float(rule.threshold, rule, "threshold")))
        elif rule.rule == "keep_ratio":
            built.append(
                KeepRatio(rule.score, _need_float(rule.fraction, rule, "fraction"), rule.per_class)
            )
        elif rule.rule == "drop_lowest":
            built.append(
                DropLowest(rule.score, _need_float(rule.fraction, rule, "fraction"), rule.per_class)
            )
        elif rule.rule == "weight":
            built.append(Weighting(rule.score, rule.normalize))
        else:  # pragma: no cover - the config's Literal lists every rule
            raise SelectionError(f"unknown selection rule {rule.rule!r}")
    return Chain(*built) if built else KeepAll()


def _need_int(value: int | None, rule: SelectionRule) -> int:
    if value is None:
        raise SelectionError(f"selection rule {rule.rule} needs k; set it")
    return value


def _need_float(value: float | None, rule: SelectionRule, name: str) -> float:
    if value is None:
        raise SelectionError(f"selection rule {rule.rule} needs {name}; set it")
    return value
