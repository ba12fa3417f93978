"""``hard_samples``: GenDataAgent's feedback. From round 2 on, a round generates img2img
around the k real training samples per class with the lowest marginal p(y|x) under the
judge or the student (:mod:`utilgen.feedback.hard_samples`); the parents and their perturbed
captions are written to ``rounds/NNN/hard_samples.json`` before anything is generated, and a
resumed round reads them back."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from utilgen.feedback.component import FeedbackComponent, RoundContext
from utilgen.feedback.components._image import require_image_generator

if TYPE_CHECKING:
    from utilgen.config import RunConfig
    from utilgen.data import Splits
    from utilgen.feedback.hard_samples import HardParent, ParentPrompt
    from utilgen.generate import GenerationRequest


class HardSampleFeedback(FeedbackComponent):
    """A round's requests: img2img around the hardest real samples of each class."""

    makes_requests: ClassVar[bool] = True

    def check_config(self, config: RunConfig) -> None:
        require_image_generator(config, "hard_samples")
        if not config.feedback.hard_samples.captions:
            return
        if config.generator.kind == "builtin-diffusion":
            raise ValueError(
                "feedback.hard_samples.captions needs a text-conditioned generator; the "
                "built-in generator reads class labels only: set "
                "feedback.hard_samples.captions=false"
            )
        diffusers = config.generator.diffusers
        if diffusers.captions_file is None and diffusers.captioner is None:
            raise ValueError(
                "feedback.hard_samples.captions needs captions of the real images to "
                "perturb: set generator.diffusers.captions_file or generator.diffusers."
                "captioner (a BLIP-2 directory), or feedback.hard_samples.captions=false"
            )

    def check_plan(self, config: RunConfig, splits: Splits) -> None:
        """k against the class sizes, and the caption source."""
        from utilgen.feedback.hard_samples import check_hard_sample_inputs

        table = None
        if config.feedback.hard_samples.captions:
            from utilgen.generate.prompts import captions_for

            table = captions_for(config.generator.diffusers, splits.train)
        check_hard_sample_inputs(
            config.feedback.hard_samples, splits.train, generator=config.generator, captions=table
        )

    def describe(self, config: RunConfig, n_requests: int) -> str:
        h = config.feedback.hard_samples
        return (
            f"hard_samples: img2img around the {h.k} real training samples a class with "
            f"the lowest marginal p(y|x) under the {h.scorer}, strengths {h.strengths}"
        )

    def make_requests(self, ctx: RoundContext) -> list[GenerationRequest]:
        from utilgen.feedback.hard_samples import (
            hard_parents,
            hard_sample_requests,
            read_hard_sample_plan,
            write_hard_sample_plan,
        )
        from utilgen.pool import RoundLayout

        cfg = ctx.config
        hs = cfg.feedback.hard_samples
        plan = RoundLayout(ctx.out).hard_sample_plan
        if plan.exists():
            parents, prompts = read_hard_sample_plan(plan)
        else:
            parents = hard_parents(ctx.scorer(hs.scorer), ctx.splits.train, hs.k, scope=hs.scope)
            prompts = _perturbed_captions(ctx, parents) if hs.captions else None
            write_hard_sample_plan(plan, parents, prompts)
        return hard_sample_requests(
            parents,
            ctx.splits.train,
            cfg=hs,
            generator=cfg.generator,
            per_class=cfg.generator.per_class,
            seed=cfg.seed,
            round_index=ctx.round_index,
            captions=prompts,
        )


def _perturbed_captions(
    ctx: RoundContext, parents: dict[int, list[HardParent]]
) -> dict[str, list[ParentPrompt]]:
    """The LM's rewrites of each parent's caption (GenDataAgent §2.3)."""
    from utilgen.determinism import resolve_device
    from utilgen.errors import UtilgenError
    from utilgen.feedback.hard_samples import perturbed_parent_captions
    from utilgen.generate.causal_lm import CausalLMGenerator
    from utilgen.generate.prompts import captions_for

    cfg = ctx.config
    table = captions_for(cfg.generator.diffusers, ctx.splits.train)
    if table is None:
        raise UtilgenError(
            "feedback.hard_samples.captions found no captions; set "
            "generator.diffusers.captions_file or generator.diffusers.captioner"
        )
    lm = CausalLMGenerator.from_config(
        cfg.generator.lm,
        device=resolve_device(cfg.loop.device),
        batch_size=cfg.generator.batch_size,
        seed=cfg.seed,
    )
    return perturbed_parent_captions(
        lm,
        parents,
        table,
        cfg.generator.perturbation,
        diffusers=cfg.generator.diffusers,
        class_names=ctx.splits.train.class_names,
        seed=cfg.seed,
        round_index=ctx.round_index,
    )


HARD_SAMPLES = HardSampleFeedback()
