"""Typed views of what a run writes: ``summary.json`` (:class:`Summary`) and each round's
``metrics.json`` (:class:`RoundMetrics`), for users of the Python API.

The files stay the source of truth and keep their JSON layout; a view is built from a file's
mapping and gives it back unchanged with ``to_dict()``. Keys an older utilgen did not write
read as None (or empty), so a view can be taken of any finished run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _float(raw: dict[str, Any], key: str) -> float | None:
    value = raw.get(key)
    return None if value is None else float(value)


@dataclass(frozen=True)
class StopRecord:
    """Why the round loop ended and what it spent (``summary.json``'s ``stop``)."""

    reason: str
    """``max_rounds``, ``plateau`` or ``budget:<name>``."""
    rounds_run: int
    synthetic_samples: int
    generator_calls: int
    best_val_round: int
    """The round (0: stage 1) with the best validation accuracy."""

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> StopRecord:
        return cls(
            reason=str(raw["reason"]),
            rounds_run=int(raw["rounds_run"]),
            synthetic_samples=int(raw["synthetic_samples"]),
            generator_calls=int(raw["generator_calls"]),
            best_val_round=int(raw["best_val_round"]),
        )


@dataclass(frozen=True)
class Summary:
    """A finished run's final metrics: the last round's model on the test split.

    Accuracies and fidelities are fractions in [0, 1]; ``ece`` is the expected calibration
    error; ``worst_class_ratio`` is the worst class's accuracy over the best's.
    """

    name: str
    strategy: str
    dataset: str
    seed: int
    rounds: int
    """Stages run, stage 1 included."""
    accuracy: float
    worst_class_ratio: float | None
    worst_class_accuracy: float | None
    macro_f1: float | None
    ece: float | None
    per_class_accuracy: dict[str, float]
    label_fidelity: float | None
    """Share of the last round's kept samples the stage-1 classifier reads as their class;
    None without generation."""
    label_fidelity_per_class: dict[str, float]
    generator: str
    n_generated: int
    n_train_real: int
    n_train_synthetic: int
    n_test: int | None
    train_val_gap: float | None
    stop: StopRecord | None
    feedback_effect: dict[str, Any] | None
    """``feedback_effect.json``'s contents, with two or more rounds."""
    utilgen_version: str
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Summary:
        """The view of a ``summary.json`` mapping."""
        stop = raw.get("stop")
        return cls(
            name=str(raw["name"]),
            strategy=str(raw["strategy"]),
            dataset=str(raw.get("dataset", "")),
            seed=int(raw["seed"]),
            rounds=int(raw.get("rounds", 1)),
            accuracy=float(raw["accuracy"]),
            worst_class_ratio=_float(raw, "worst_class_ratio"),
            worst_class_accuracy=_float(raw, "worst_class_accuracy"),
            macro_f1=_float(raw, "macro_f1"),
            ece=_float(raw, "ece"),
            per_class_accuracy=dict(raw.get("per_class_accuracy") or {}),
            label_fidelity=_float(raw, "label_fidelity"),
            label_fidelity_per_class=dict(raw.get("label_fidelity_per_class") or {}),
            generator=str(raw.get("generator", "")),
            n_generated=int(raw.get("n_generated", 0)),
            n_train_real=int(raw.get("n_train_real", 0)),
            n_train_synthetic=int(raw.get("n_train_synthetic", 0)),
            n_test=None if raw.get("n_test") is None else int(raw["n_test"]),
            train_val_gap=_float(raw, "train_val_gap"),
            stop=StopRecord.from_dict(stop) if stop else None,
            feedback_effect=raw.get("feedback_effect"),
            utilgen_version=str(raw.get("utilgen_version", "")),
            raw=dict(raw),
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``summary.json`` mapping this view was read from (a copy)."""
        return dict(self.raw)


@dataclass(frozen=True)
class RoundMetrics:
    """One stage's ``rounds/NNN/metrics.json``: round 0 is stage 1 (real data only)."""

    round: int
    n_train_real: int
    n_train_synthetic: int
    n_generated: int
    generator_calls: int
    train_accuracy: float | None
    val_accuracy: float
    test_accuracy: float
    train_val_gap: float | None
    label_fidelity: float | None
    """Overall label fidelity of the round's generated samples; None for stage 1."""
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RoundMetrics:
        """The view of a ``metrics.json`` mapping."""
        fidelity = raw.get("label_fidelity") or {}
        return cls(
            round=int(raw["round"]),
            n_train_real=int(raw.get("n_train_real", 0)),
            n_train_synthetic=int(raw.get("n_train_synthetic", 0)),
            n_generated=int(raw.get("n_generated", 0)),
            generator_calls=int(raw.get("generator_calls", 0)),
            train_accuracy=_float(raw, "train_accuracy"),
            val_accuracy=float(raw["val_accuracy"]),
            test_accuracy=float(raw["test"]["accuracy"]),
            train_val_gap=_float(raw, "train_val_gap"),
            label_fidelity=_float(fidelity, "overall"),
            raw=dict(raw),
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``metrics.json`` mapping this view was read from (a copy)."""
        return dict(self.raw)
