"""``loop``: the round engine."""

from __future__ import annotations

from pydantic import Field

from utilgen.config.section import Section


class LoopConfig(Section):
    """The round engine."""

    rounds: int = Field(
        0,
        ge=0,
        le=100,
        description="Generation rounds after the real-only stage 1; feedback runs between "
        "two rounds, so feedback.components need 2 or more.",
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")
