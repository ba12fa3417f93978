"""``feedback`` and ``loop``: how utility feeds back into generation, and the rounds."""

from __future__ import annotations

from pydantic import Field, model_validator

from utilgen.config.section import Section


class FeedbackConfig(Section):
    """How utility is fed back into generation (feedback issues)."""

    components: list[str] = Field(
        default_factory=list, description="Feedback components switched on (none yet)."
    )

    @model_validator(mode="after")
    def _known(self) -> FeedbackConfig:
        if self.components:
            raise ValueError(
                f"feedback.components {self.components} are not available in this version; "
                "leave the list empty"
            )
        return self


class LoopConfig(Section):
    """The round engine."""

    rounds: int = Field(
        0, ge=0, le=1, description="Generation rounds after the real-only stage 1 (0 or 1 today)."
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")
