"""``prompt_ascent`` and ``noise_opt``: UtilGen's instance level. From round 2 on, each of a
round's static requests gets its prompt embeddings raised along the utility's gradient
(:mod:`utilgen.feedback.prompt_ascent`) and / or its initial noise optimised
(:mod:`utilgen.feedback.noise_optimisation`), in that order when both are on; the round
engine writes the optimised requests to ``rounds/NNN/instance_requests.*``."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from utilgen.feedback.component import FeedbackComponent, RoundContext
from utilgen.feedback.components._image import require_image_generator, require_text_to_image

if TYPE_CHECKING:
    from utilgen.config import RunConfig
    from utilgen.feedback.utility import Utility
    from utilgen.generate import GenerationRequest
    from utilgen.generate.differentiable import DifferentiableSampler


def require_utility_scores(config: RunConfig, name: str) -> None:
    """Refuse ``feedback.instance.utility=meta_weight`` when no round trains a weight net."""
    if config.feedback.instance.utility == "meta_weight" and (
        "meta_weight" not in config.valuation.scores
    ):
        raise ValueError(
            f"{name}: feedback.instance.utility=meta_weight needs the weight net a round's "
            "meta_weight valuation trains; add meta_weight to valuation.scores or set "
            "feedback.instance.utility=log_prob"
        )


class PromptAscent(FeedbackComponent):
    """Gradient ascent of each request's prompt embeddings on the utility."""

    optimises_requests: ClassVar[bool] = True

    def check_config(self, config: RunConfig) -> None:
        require_image_generator(config, "prompt_ascent")
        require_text_to_image(config, "prompt_ascent")
        require_utility_scores(config, "prompt_ascent")

    def describe(self, config: RunConfig, n_requests: int) -> str:
        return (
            f"prompt_ascent: {config.feedback.prompt_ascent.steps} ascent steps on each of "
            f"{n_requests} requests' prompt embeddings"
        )

    def generator_calls(self, config: RunConfig, n_requests: int) -> int:
        return config.feedback.prompt_ascent.steps * n_requests

    def optimise_requests(
        self,
        ctx: RoundContext,
        requests: list[GenerationRequest],
        utility: Utility,
        sampler: DifferentiableSampler,
    ) -> list[GenerationRequest]:
        from utilgen.feedback.prompt_ascent import ascend_prompts

        cfg = ctx.config.feedback.prompt_ascent
        return list(ascend_prompts(sampler, utility, requests, cfg).requests)


class NoiseOptimisation(FeedbackComponent):
    """Optimisation of each request's initial noise (from its DDIM inversion) on the
    utility."""

    optimises_requests: ClassVar[bool] = True

    def check_config(self, config: RunConfig) -> None:
        require_image_generator(config, "noise_opt")
        require_text_to_image(config, "noise_opt")
        require_utility_scores(config, "noise_opt")

    def describe(self, config: RunConfig, n_requests: int) -> str:
        return (
            f"noise_opt: 1 DDIM inversion + {config.feedback.noise_opt.steps} steps on each of "
            f"{n_requests} requests' initial noise"
        )

    def generator_calls(self, config: RunConfig, n_requests: int) -> int:
        return (config.feedback.noise_opt.steps + 1) * n_requests  # + the DDIM inversion

    def optimise_requests(
        self,
        ctx: RoundContext,
        requests: list[GenerationRequest],
        utility: Utility,
        sampler: DifferentiableSampler,
    ) -> list[GenerationRequest]:
        from utilgen.feedback.noise_optimisation import optimise_noise

        cfg = ctx.config.feedback.noise_opt
        return list(optimise_noise(sampler, utility, requests, cfg).requests)


PROMPT_ASCENT = PromptAscent()
NOISE_OPT = NoiseOptimisation()
