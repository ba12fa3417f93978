"""``valuation``: how sample utility is measured and which samples are kept.

Scores (all float64, one value per sample, written to ``rounds/NNN/scores.parquet`` and into
the manifest as ``utility_rNNN_<score>``):

* ``marginal``: p(y|x) of the labelled class (GenDataAgent Eq. 1);
* ``margin``: p_y - max_{j != y} p_j (U-DPO Eq. 2/3, r_ext);
* ``entropy``: predictive entropy in nats; ``loss``: cross-entropy -log p_y in nats;
* ``vog``: variance of gradients across the last training checkpoints, normalised per class
  (GenDataAgent Sec. 2.4, Agarwal et al. 2022);
* ``similarity``: cosine to the class's real-data embedding centroid (U-DPO r_int);
* ``composite``: lambda * r_int + (1 - lambda) * r_ext, each term normalised per class
  (U-DPO Eq. 4);
* ``meta_weight``: the weight a Meta-Weight-Net, trained bi-level on a small clean meta set,
  gives the sample (UtilGen; Shu et al. 2019).
"""

from __future__ import annotations

from typing import Literal

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
        None, ge=0.0, le=1.0, description="Share per class (keep_ratio, drop_lowest)."
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
    vog_checkpoints: int = Field(
        3, description="Last training checkpoints VoG reads (GenDataAgent uses 3; at least 2)."
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

    @field_validator("vog_checkpoints")
    @classmethod
    def _enough_checkpoints(cls, value: int) -> int:
        if value < 2:
            raise ValueError(
                f"valuation.vog_checkpoints={value}: VoG is a variance across checkpoints and "
                "needs at least 2; set 2 or more"
            )
        return value
