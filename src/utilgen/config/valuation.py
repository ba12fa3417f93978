"""``valuation``: how sample utility is measured and which samples are kept.

Scores (all float64, one value per sample, written to ``rounds/NNN/scores.parquet`` and into
the manifest as ``utility_rNNN_<score>``):

* ``marginal``: p(y|x) of the labelled class (GenDataAgent Eq. 1);
* ``margin``: p_y - max_{j != y} p_j (U-DPO Eq. 2/3, r_ext);
* ``entropy``: predictive entropy in nats; ``loss``: cross-entropy -log p_y in nats;
* ``vog``: variance of gradients across stage-1 checkpoints taken during training (by default
  3, evenly spaced: ``vog_checkpoints``), normalised per class (GenDataAgent Sec. 2.4,
  Agarwal et al. 2022);
* ``similarity``: cosine to the class's real-data embedding centroid (U-DPO r_int);
* ``composite``: lambda * r_int + (1 - lambda) * r_ext, each term normalised per class
  (U-DPO Eq. 4);
* ``meta_weight``: the weight a Meta-Weight-Net, trained bi-level on a small clean meta set,
  gives the sample (UtilGen; Shu et al. 2019).
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from fractions import Fraction
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from utilgen.config.section import Section

ScoreName = Literal[
    "marginal", "margin", "entropy", "loss", "vog", "similarity", "composite", "meta_weight"
]
Normalization = Literal["minmax", "zscore"]
MetaGradient = Literal["forward", "double_backward"]
MetaSet = Literal["validation", "train"]
SelectionRuleKind = Literal[
    "top_k", "bottom_k", "threshold", "keep_ratio", "drop_lowest", "hard_real", "weight"
]


def rounded_share(fraction: float, total: int) -> int:
    """``fraction * total`` rounded to the nearest integer, halves up, computed exactly on
    the fraction as written in decimal: 0.29 of 50 is 14.5 and gives 15 (in floating point
    0.29 * 50 is 14.499999999999998, which would give 14). The count every fraction of the
    config stands for: a selection rule's share of a class, a VoG checkpoint's epoch."""
    exact = Fraction(repr(float(fraction))) * total
    return int((exact + Fraction(1, 2)) // 1)


class VoGEpochs(Section):
    """VoG checkpoints given as stage-1 epochs."""

    epochs: list[int] = Field(
        ..., description="Stage-1 epochs, each in 1..task.epochs, at least 2, no repeats."
    )


class VoGFractions(Section):
    """VoG checkpoints given as shares of the stage-1 run."""

    fractions: list[float] = Field(
        ...,
        description="Shares of task.epochs, each in (0, 1], at least 2; a share f reads "
        "epoch round_half_up(f * task.epochs) (1.0: the last epoch).",
    )


VoGCheckpoints = int | VoGEpochs | VoGFractions
VOG_FORMS = "a count (3: evenly spaced), {epochs: [10, 20, 30]} or {fractions: [0.5, 1.0]}"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole_number(value: Any) -> bool:
    return _number(value) and float(value).is_integer()


def _vog_form(value: Any) -> Any:
    """The typed form of a raw ``valuation.vog_checkpoints``, or ValueError naming the
    problem (the checks that need task.epochs are :func:`vog_epochs`')."""
    key = "valuation.vog_checkpoints"
    if isinstance(value, (VoGEpochs, VoGFractions)):
        return value
    if _whole_number(value):
        if value < 2:
            raise ValueError(
                f"{key}={value}: VoG is a variance across checkpoints and needs at least 2; "
                "set 2 or more"
            )
        return int(value)
    if not (
        isinstance(value, Mapping) and len(value) == 1 and set(value) & {"epochs", "fractions"}
    ):
        raise ValueError(f"{key} is {VOG_FORMS}; got {reprlib.repr(value)}")
    ((unit, points),) = value.items()
    if not isinstance(points, list) or len(points) < 2:
        raise ValueError(
            f"{key}.{unit} lists the checkpoints VoG reads, at least 2 (a variance across "
            f"checkpoints); got {reprlib.repr(points)}"
        )
    if unit == "epochs":
        bad = [e for e in points if not _whole_number(e) or e < 1]
        if bad:
            raise ValueError(
                f"{key}.epochs: {reprlib.repr(bad[0])} is not a stage-1 epoch; list whole "
                "epochs >= 1 (or {fractions: [...]} for shares of the run)"
            )
        typed: list[Any] = [int(e) for e in points]
    else:
        bad = [f for f in points if not _number(f) or not 0.0 < f <= 1.0]
        if bad:
            raise ValueError(
                f"{key}.fractions: {reprlib.repr(bad[0])} is not a share of the run; list "
                "fractions in (0, 1] (or {epochs: [...]} for whole epochs)"
            )
        typed = [float(f) for f in points]
    seen: set[Any] = set()
    for point in typed:
        if point in seen:
            raise ValueError(f"{key}.{unit}: {point} is listed twice; list each once")
        seen.add(point)
    return VoGEpochs(epochs=typed) if unit == "epochs" else VoGFractions(fractions=typed)


def vog_epochs(spec: VoGCheckpoints, total_epochs: int) -> tuple[int, ...]:
    """The stage-1 epochs VoG reads, ascending, for a run of ``total_epochs`` epochs.

    * a count n: the n evenly spaced epochs round_half_up(i * E / n), i = 1..n (the last
      is E; GenDataAgent's 3 of 30 epochs: 10, 20, 30; 3 of 40: 13, 27, 40);
    * ``{fractions: [...]}``: round_half_up(f * E) for each f (see :func:`rounded_share`);
    * ``{epochs: [...]}``: those epochs.

    Raises:
        ValueError: one line naming ``valuation.vog_checkpoints`` and the fix: an epoch
            outside 1..E, two points on the same epoch, or fewer than 2 distinct epochs.
    """
    key = "valuation.vog_checkpoints"
    if isinstance(spec, int):
        if spec > total_epochs:
            raise ValueError(
                f"{key}={spec} asks for {spec} evenly spaced stage-1 checkpoints but stage 1 "
                f"runs task.epochs={total_epochs}; set {key} to at most {total_epochs} or raise "
                "task.epochs"
            )
        # exact: round_half_up(i * E / n) = floor((2 i E + n) / 2n)
        return tuple((2 * i * total_epochs + spec) // (2 * spec) for i in range(1, spec + 1))
    if isinstance(spec, VoGFractions):
        picked = [(f, rounded_share(f, total_epochs)) for f in spec.fractions]
        early = [f for f, e in picked if e < 1]
        if early:
            raise ValueError(
                f"{key}.fractions: {early[0]} of task.epochs={total_epochs} rounds to epoch 0, "
                "before stage 1's first checkpoint; use a larger fraction or {epochs: [...]}"
            )
        seen: dict[int, float] = {}
        for f, e in picked:
            if e in seen:
                raise ValueError(
                    f"{key}.fractions: {seen[e]} and {f} of task.epochs={total_epochs} both "
                    f"round to epoch {e}; choose fractions at least 1/{total_epochs} apart "
                    "or raise task.epochs"
                )
            seen[e] = f
        return tuple(sorted(seen))
    outside = [e for e in spec.epochs if not 1 <= e <= total_epochs]
    if outside:
        raise ValueError(
            f"{key}.epochs: epoch {outside[0]} is outside stage 1's epochs 1..{total_epochs} "
            f"(task.epochs); list epochs in 1..{total_epochs}"
        )
    if len(set(spec.epochs)) < len(spec.epochs):
        raise ValueError(f"{key}.epochs: an epoch is listed twice; list each once")
    return tuple(sorted(spec.epochs))


class MetaWeightConfig(Section):
    """Meta-Weight-Net (Shu et al., NeurIPS 2019) as UtilGen uses it; defaults are the
    paper's CIFAR settings where they carry over (hidden 100, classifier SGD lr 0.1 with
    momentum 0.9 and weight decay 5e-4, weight net Adam lr 1e-3 with weight decay 1e-4,
    batch 100)."""

    hidden: int = Field(100, ge=1, description="Hidden units of the 1 -> hidden -> 1 weight net.")
    meta_set: MetaSet = Field(
        "validation",
        description="Where the clean meta set comes from. validation (the paper's held-out "
        "meta set): meta_per_class real samples per class are reserved from the validation "
        "split before the run uses it, so the weighted model was never fitted on them and "
        "validation accuracy never sees them (pool split 'meta'). train: drawn from the real "
        "training split the stage-1 classifier was fitted on (all utilgen did before this "
        "option); leaky (the meta loss is on memorised samples), kept to reproduce older runs.",
    )
    meta_per_class: int = Field(
        10,
        ge=1,
        description="Clean real samples per class in the meta set (meta_set validation: "
        "reserved from each class's validation samples, which must keep at least one; train: "
        "fewer if a class has fewer).",
    )
    epochs: int = Field(10, ge=1, description="Epochs of bi-level training.")
    batch_size: int = Field(100, ge=1, description="Training mini-batch size.")
    meta_batch_size: int = Field(100, ge=1, description="Meta-set mini-batch size.")
    lr: float = Field(
        0.1, gt=0.0, description="Task model SGD learning rate (also the virtual step's)."
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="Task model SGD momentum.")
    weight_decay: float = Field(5e-4, ge=0.0, description="Task model SGD weight decay.")
    meta_lr: float = Field(1e-3, gt=0.0, description="Weight net Adam learning rate.")
    meta_weight_decay: float = Field(1e-4, ge=0.0, description="Weight net Adam weight decay.")
    meta_gradient: MetaGradient = Field(
        "forward",
        description="How the weight net's gradient through the virtual step is computed; both "
        "are exact: forward (first-order backward + one forward-mode pass; about 3.8x a plain "
        "step on small-cnn) or double_backward (second-order backward, about 4.8x; for models "
        "with an operation that lacks forward-mode AD).",
    )
    meta_interval: int = Field(
        1,
        ge=1,
        description="Training steps per weight-net update (1: every step, the paper; 2 halves "
        "the bi-level overhead); the steps between are plain steps weighted by the current "
        "weight net.",
    )
    train_on_real: bool = Field(
        True,
        description="Train on the scored samples plus the real training samples outside the "
        "meta set (UtilGen trains on real + synthetic); false: on the scored samples alone.",
    )


class SelectionRule(Section):
    """One selection step; ``valuation.selection`` chains them in order."""

    rule: SelectionRuleKind = Field(
        ...,
        description="top_k / bottom_k (k highest / lowest per class), threshold (keep score >= "
        "threshold), keep_ratio (highest fraction per class), drop_lowest (drop the lowest "
        "fraction per class, GenDataAgent VoG filtering), hard_real (k lowest per class, "
        "GenDataAgent marginal samples), weight (keep all, weighted by the score).",
    )
    score: ScoreName = Field(..., description="The score the rule reads.")
    k: int | None = Field(None, ge=1, description="Samples per class (top_k, bottom_k, hard_real).")
    fraction: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Share per class (keep_ratio keeps, drop_lowest drops): a class of n "
        "samples keeps or drops round_half_up(fraction * n), exact in decimal (0.25 of 6: 2; "
        "0.25 of 2: 1; 0.25 of 1: 0).",
    )
    threshold: float | None = Field(None, description="Minimum score kept (threshold).")
    per_class: bool = Field(
        True, description="Rank within each class (false: over all samples at once)."
    )
    normalize: bool = Field(
        False,
        description="weight rule only: weight = per-class min-max of the score (false: the raw "
        "score, which must be non-negative).",
    )

    @model_validator(mode="after")
    def _parameters_present(self) -> SelectionRule:
        needs = {
            "top_k": "k",
            "bottom_k": "k",
            "hard_real": "k",
            "keep_ratio": "fraction",
            "drop_lowest": "fraction",
            "threshold": "threshold",
        }
        field = needs.get(self.rule)
        if field is not None and getattr(self, field) is None:
            raise ValueError(f"selection rule {self.rule} needs {field}; set it")
        return self


class ValuationConfig(Section):
    """Utility scores computed each round (written to ``rounds/NNN/scores.parquet``)."""

    scores: list[ScoreName] = Field(
        default_factory=list, description="Utility scores computed each round."
    )
    composite_lambda: float = Field(
        0.5,
        description="lambda in r_util = lambda * r_int + (1 - lambda) * r_ext, in [0, 1]. U-DPO "
        "does not state its value; 0.5 weighs both terms equally.",
    )
    normalization: Normalization = Field(
        "minmax", description="Per-class normalisation of each composite term: minmax | zscore."
    )
    vog_checkpoints: VoGCheckpoints = Field(
        3,
        description="Stage-1 checkpoints VoG reads, at points during training: a count n (n "
        "evenly spaced epochs round_half_up(i * task.epochs / n), i = 1..n, the last being "
        "the final epoch; GenDataAgent: 3), {epochs: [e1, e2, ...]} (those epochs, in "
        "1..task.epochs) or {fractions: [f1, f2, ...]} (epoch round_half_up(f * task.epochs) "
        "for each f in (0, 1]); at least 2 distinct epochs.",
    )
    batch_size: int = Field(256, ge=1, description="Samples per scoring batch (VoG, gradients).")
    meta_weight: MetaWeightConfig = Field(default_factory=MetaWeightConfig)
    selection: list[SelectionRule] = Field(
        default_factory=list, description="Selection rules applied in order (empty: keep all)."
    )

    @field_validator("composite_lambda")
    @classmethod
    def _lambda_in_unit_interval(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError(
                f"valuation.composite_lambda={value} is outside [0, 1]; choose a value in [0, 1]"
            )
        return value

    @field_validator("vog_checkpoints", mode="before")
    @classmethod
    def _checkpoint_form(cls, value: Any) -> Any:
        return _vog_form(value)

    def vog_epochs(self, total_epochs: int) -> tuple[int, ...]:
        """The stage-1 epochs VoG reads in a run of ``total_epochs`` (see
        :func:`vog_epochs`); ValueError when they do not fit it."""
        return vog_epochs(self.vog_checkpoints, total_epochs)
