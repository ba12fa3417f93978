"""``RunConfig``: a whole run, one section per stage of the loop."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from utilgen.config.data import DataConfig
from utilgen.config.feedback import FeedbackConfig
from utilgen.config.generator import GeneratorConfig
from utilgen.config.loop import LoopConfig
from utilgen.config.scale import RayConfig
from utilgen.config.section import Section
from utilgen.config.task import TaskConfig
from utilgen.config.valuation import ValuationConfig


class RunConfig(Section):
    """A whole run: one section per stage of the loop."""

    name: str = Field(
        "run",
        description="Shown in reports; also the run's folder (runs/<name>, compare's "
        "OUT/<name>/seed-N), so one path component: no '/', '\\', '..', control characters.",
    )
    description: str = Field(
        "",
        max_length=200,
        description="One line on what the config runs; `utilgen presets` lists it.",
    )
    strategy: str = Field("real-only", description="Strategy preset this config implements.")
    seed: int = Field(0, ge=0, description="Fixes splits, generation and training on CPU.")
    data: DataConfig = Field(default_factory=DataConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    valuation: ValuationConfig = Field(default_factory=ValuationConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @field_validator("name")
    @classmethod
    def _name_is_one_folder(cls, value: str) -> str:
        # The name becomes a directory under runs/ or compare's OUT: it must not lead out.
        if (
            not value.strip()
            or value in (".", "..")
            or any(sep in value for sep in ("/", "\\"))
            or not value.isprintable()
        ):
            raise ValueError(
                "name must be one folder name (it becomes runs/<name>): no '/', '\\', '.' "
                "or '..' alone, no control characters, not empty; e.g. name=digits-static"
            )
        return value

    @model_validator(mode="after")
    def _rounds_match_generator(self) -> RunConfig:
        if self.loop.mode == "offline":
            if self.generator.kind != "none":
                raise ValueError(
                    "loop.mode=offline generates nothing: set generator.kind=none (the "
                    "samples come from loop.offline_pool)"
                )
            if self.feedback.components:
                raise ValueError(
                    f"feedback.components {self.feedback.components} update a generator; "
                    "loop.mode=offline has none: drop them"
                )
            return self
        if self.loop.rounds and self.generator.kind == "none":
            raise ValueError("loop.rounds > 0 needs a generator; set generator.kind")
        if self.generator.kind != "none" and not self.loop.rounds:
            raise ValueError(
                f"generator.kind={self.generator.kind} needs loop.rounds=1 to generate"
            )
        return self

    @model_validator(mode="after")
    def _vog_checkpoints_in_stage1(self) -> RunConfig:
        # Stage 1 trains task.epochs epochs and saves a checkpoint after each: VoG's points
        # must be among them (checked only when VoG is scored; the field is unused otherwise).
        if "vog" in self.valuation.scores:
            self.valuation.vog_epochs(self.task.epochs)
        return self

    @model_validator(mode="after")
    def _feedback_fits(self) -> RunConfig:
        from utilgen.feedback.component import active_components

        components = active_components(self)
        if self.feedback.control and not any(c.trains_generator for _, c in components):
            raise ValueError(
                "feedback.control compares the last round with the generator before dpo "
                "feedback: add dpo to feedback.components or set feedback.control=false"
            )
        if not components:
            return self
        if self.loop.rounds < 2:
            raise ValueError(
                f"feedback.components {self.feedback.components} act between rounds; set "
                "loop.rounds to 2 or more"
            )
        makers = [name for name, c in components if c.makes_requests]
        optimisers = [name for name, c in components if c.optimises_requests]
        if len(makers) > 1:
            raise ValueError(
                f"feedback.components: {makers} each make a round's requests; switch on one"
            )
        if makers and optimisers:
            raise ValueError(
                f"feedback.components: {makers[0]} makes the round's requests itself, which "
                f"{optimisers} cannot optimise; switch on one or the other"
            )
        for _, component in components:
            component.check_config(self)
        return self
