"""``loop``: the round engine — how many rounds, what each trains on, and when to stop."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from utilgen.config.device import DEVICE_FORMS, check_device_spelling
from utilgen.config.section import Section

LoopMode = Literal["on-the-fly", "offline"]
Backend = Literal["local", "ray"]


class BudgetConfig(Section):
    """Spending limits; a round starts only if it fits in what is left.

    A budget that cannot pay for round 1 is a config error (nothing is run); one that runs
    out later stops the loop after the last round it paid for (``summary.json`` records
    ``stop.reason``). Unset limits (null) are unlimited.
    """

    synthetic_samples: int | None = Field(
        None, ge=1, description="Synthetic samples generated (or imported offline), all rounds."
    )
    generator_calls: int | None = Field(
        None,
        ge=1,
        description="Sampling passes of the generator, all rounds: one per generated sample, "
        "plus one per request per instance-optimisation step (prompt ascent: its steps; "
        "noise optimisation: its steps + 1 for the inversion).",
    )
    wall_seconds: float | None = Field(
        None,
        gt=0,
        description="Wall-clock seconds, summed over finished stages (stage 1 and rounds, "
        "feedback included) across resumed processes; checked before each round.",
    )


class PlateauConfig(Section):
    """Stop when validation accuracy stops improving."""

    patience: int | None = Field(
        None,
        ge=1,
        description="Stop when the last `patience` rounds have not raised the best "
        "validation accuracy of the rounds before them (stage 1 included) by more than "
        "min_delta; null switches the rule off.",
    )
    min_delta: float = Field(0.0, ge=0.0, le=1.0, description="Smallest improvement that counts.")


class LoopConfig(Section):
    """The round engine."""

    rounds: int = Field(
        0,
        ge=0,
        le=100,
        description="Most generation rounds after the real-only stage 1; feedback runs "
        "between two rounds, so feedback.components need 2 or more.",
    )
    mode: LoopMode = Field(
        "on-the-fly",
        description="on-the-fly: each round generates new samples. offline: round 1 values "
        "and selects the pre-generated samples in offline_pool, nothing is generated.",
    )
    offline_pool: Path | None = Field(
        None,
        description="offline mode's samples: a utilgen run directory (its synthetic "
        "samples, provenance kept), an image folder (DIR/<class>/<image>), or a .jsonl, "
        ".csv or .parquet file of texts with data.text_column and data.label_column.",
    )
    synthetic_ratio: float | None = Field(
        None,
        gt=0,
        description="Synthetic samples trained on per real training sample, per class "
        "(0.1, 0.25, 0.5, 1 ...): a round keeps at most round(ratio x real) per class, the "
        "highest-weighted first (newest round first on ties); null trains on all kept.",
    )
    accumulate: bool = Field(
        False,
        description="Train each round on the kept synthetic samples of every round so far "
        "(GenDataAgent's on-the-fly data), not only the round's own.",
    )
    continue_training: bool = Field(
        False,
        description="Each round fine-tunes the classifier from the previous round's last "
        "checkpoint (round 1 from stage 1's) instead of training a fresh one: GenDataAgent's "
        "on-the-fly training (Algorithm 1, line 16). Off: every round trains from the same "
        "initialisation, so rounds compare like for like.",
    )
    continue_epochs: int | None = Field(
        None,
        ge=1,
        description="Epochs of a continued round (loop.continue_training); null: task.epochs.",
    )
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    plateau: PlateauConfig = Field(default_factory=PlateauConfig)
    device: str = Field(
        "auto",
        description=f"Torch device: {DEVICE_FORMS}; auto takes CUDA when torch sees a GPU. "
        "A device this machine lacks is refused when the config loads.",
    )
    backend: Backend = Field(
        "local",
        description="Where generation and valuation run: local (this process) or ray (a pool "
        'of Ray actors, set up by the ray section; pip install "utilgen[ray]"). Same seeds '
        "give the same samples and scores on both.",
    )

    @field_validator("device")
    @classmethod
    def _device_is_spelled_right(cls, value: str) -> str:
        return check_device_spelling(value)

    @model_validator(mode="after")
    def _continue_epochs_need_continuing(self) -> LoopConfig:
        if self.continue_epochs is not None and not self.continue_training:
            raise ValueError(
                "loop.continue_epochs sets the epochs of a continued round: set "
                "loop.continue_training=true or drop loop.continue_epochs"
            )
        return self

    @model_validator(mode="after")
    def _offline_fits(self) -> LoopConfig:
        if self.mode == "offline":
            if self.offline_pool is None:
                raise ValueError(
                    "loop.mode=offline needs loop.offline_pool (a run directory, image "
                    "folder or text file of pre-generated samples)"
                )
            if self.rounds != 1:
                raise ValueError(
                    f"loop.mode=offline values one pre-generated pool: set loop.rounds=1, "
                    f"not {self.rounds}"
                )
        elif self.offline_pool is not None:
            raise ValueError(
                "loop.offline_pool is read in offline mode only: set loop.mode=offline"
            )
        return self
