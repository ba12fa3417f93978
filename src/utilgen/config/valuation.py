"""``valuation``: how sample utility is measured and which samples are kept."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from utilgen.config.section import Section

ScoreName = Literal["marginal", "margin", "entropy", "loss"]


class ValuationConfig(Section):
    """Utility scores computed each round (written to ``rounds/NNN/scores.parquet``)."""

    scores: list[ScoreName] = Field(
        default_factory=list, description="Utility scores computed each round."
    )
