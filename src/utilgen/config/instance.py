"""Instance-level feedback: what round r+1 asks the generator for, shaped by utility.

Three components, each switched on in ``feedback.components``:

* ``hard_samples`` (GenDataAgent, shared/papers/002 §2.2–2.3): per class the k real training
  samples with the lowest marginal score p(y|x) become img2img parents, generated around
  at several strengths with m LLM-perturbed captions of the parent.
* ``prompt_ascent`` (UtilGen instance level): gradient ascent on a request's prompt
  embeddings (the built-in generator's class-embedding row) to raise the task model's
  log p(y|x) of the generated image, with a distance regulariser and a hard drift bound.
* ``noise_opt`` (UtilGen instance level): DDIM-invert the sample a request would give to
  its initial noise with a guidance scale different from regeneration's (asymmetric CFG),
  optimise that noise for log p(y|x) under a penalty that keeps it Gaussian, regenerate.

Departure: the UtilGen summary (shared/papers/000) keeps prompts on-class with a CLIP
regulariser; CLIP cannot be had offline, so the regulariser here is the cosine or L2
distance to the original embedding, and ``max_drift`` bounds it by projection.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from utilgen.config.section import Section

DriftMeasure = Literal["cosine", "l2"]
NoisePenalty = Literal["kl", "norm"]
UtilityModel = Literal["judge", "student"]
UtilityName = Literal["log_prob", "meta_weight"]


def check_img2img_strengths(value: list[float]) -> list[float]:
    """``value`` if every img2img strength is in (0, 1]; else ``ValueError``."""
    bad = [s for s in value if not 0.0 < s <= 1.0]
    if bad:
        raise ValueError(f"img2img strengths must be in (0, 1], got {bad}; 0 would copy the parent")
    return value


class HardSampleConfig(Section):
    """GenDataAgent's generation around the k lowest-marginal real samples of each class."""

    k: int = Field(
        5,
        ge=1,
        description="Parents per class: scope=per_class takes the k lowest-marginal real "
        "training samples of each class (k must not exceed the smallest class); "
        "scope=global the k x (number of classes) lowest of the whole training set, the same "
        "number of parents.",
    )
    scope: Literal["global", "per_class"] = Field(
        "global",
        description="Where the lowest marginals are ranked. global: over the whole training "
        "set, as GenDataAgent ranks all samples (Sec. 2.2), so hard classes get more parents "
        "and a class with none gets no samples that round; per_class: within each class, so "
        "every class is generated around.",
    )
    strengths: list[float] = Field(
        default_factory=lambda: [0.5, 0.75, 0.9],
        min_length=1,
        description="img2img strengths in (0, 1] (GenDataAgent appendix D, Table 8: 0.5, "
        "0.75, 0.9).",
    )
    captions: bool = Field(
        True,
        description="Prompt with m = generator.perturbation.versions LLM-perturbed captions "
        "of each parent (needs generator.diffusers.captions_file or .captioner); false: "
        "class prompt only, the only choice for the class-conditional built-in generator.",
    )
    scorer: UtilityModel = Field(
        "student",
        description="Whose marginal picks the parents: student, the classifier trained in the "
        "round just finished (GenDataAgent's on-the-fly target model), or judge, the stage-1 "
        "real-data classifier.",
    )

    @field_validator("strengths")
    @classmethod
    def _in_unit_interval(cls, value: list[float]) -> list[float]:
        return check_img2img_strengths(value)


class GradientPathConfig(Section):
    """How gradients flow back through the sampler (memory versus exactness)."""

    backprop_steps: int | None = Field(
        None,
        ge=1,
        description="Backpropagate through the last this-many denoising steps only (earlier "
        "steps run without a graph); None: through every step.",
    )
    gradient_checkpointing: bool = Field(
        True,
        description="Recompute denoiser activations in the backward pass (diffusers U-Nets) "
        "instead of storing them.",
    )
    batch_size: int = Field(8, ge=1, description="Requests optimised together.")


class PromptAscentConfig(GradientPathConfig):
    """UtilGen's prompt-embedding ascent on log p(y|x) with an embedding-distance regulariser."""

    steps: int = Field(10, ge=0, description="Adam steps per request (0: no optimisation).")
    learning_rate: float = Field(
        0.05,
        gt=0.0,
        description="Adam step size, relative to the original embedding's RMS value (so one "
        "setting suits embeddings of any scale).",
    )
    regulariser: DriftMeasure = Field(
        "cosine",
        description="Distance to the original embedding: cosine (1 - cos, per token) or l2 "
        "(||e - e0|| / ||e0||).",
    )
    regulariser_weight: float = Field(
        1.0, ge=0.0, description="Weight of the distance in the loss -log p(y|x) + w * d."
    )
    max_drift: float = Field(
        0.1,
        gt=0.0,
        description="Hard bound on the distance: after each step the embedding is projected "
        "back inside it, so samples stay on-class.",
    )


class NoiseOptimisationConfig(GradientPathConfig):
    """UtilGen's initial-noise optimisation after DDIM inversion with asymmetric guidance."""

    steps: int = Field(10, ge=0, description="Adam steps per request (0: inversion only).")
    learning_rate: float = Field(0.02, gt=0.0, description="Adam step size on the noise.")
    inversion_guidance: float = Field(
        1.0,
        ge=0.0,
        description="Guidance scale of the DDIM inversion (1: conditional model only).",
    )
    inversion_fixed_point: int = Field(
        3,
        ge=0,
        description="Fixed-point refinements per DDIM inversion step (0: plain inversion, "
        "whose error grows with the step count; 3 makes each step nearly exact).",
    )
    regeneration_guidance: float | None = Field(
        None,
        ge=0.0,
        description="Guidance scale of the regeneration (None: the generator's default, which "
        "differs from inversion_guidance: asymmetric CFG).",
    )
    penalty: NoisePenalty = Field(
        "kl",
        description="Keeps the noise Gaussian: kl, KL(N(mean, var) || N(0, 1)) of each noise's "
        "elements; norm, (||z||^2 / D - 1)^2.",
    )
    penalty_weight: float = Field(
        1.0, ge=0.0, description="Weight of the penalty in the loss -log p(y|x) + w * penalty."
    )

    @field_validator("backprop_steps")
    @classmethod
    def _full_gradient_path(cls, value: int | None) -> int | None:
        # Checked here, not when round 2 starts: a run must not find out after round 1.
        if value is not None:
            raise ValueError(
                f"feedback.noise_opt.backprop_steps={value} cannot work: the gradient must reach "
                "the initial noise through every denoising step; set it to null (use "
                "feedback.noise_opt.gradient_checkpointing to save memory)"
            )
        return value


class InstanceFeedbackConfig(Section):
    """Settings shared by the instance-level components."""

    utility: UtilityName = Field(
        "log_prob",
        description="What prompt ascent and noise optimisation raise: log_prob, the "
        "utility_model's log p(y|x) of the intended class; or meta_weight, UtilGen's "
        "meta-learned utility V(CE(f(x), y); Theta) with Theta the weight net the previous "
        "round's meta_weight valuation trained (needs meta_weight in valuation.scores).",
    )
    utility_model: UtilityModel = Field(
        "judge",
        description="The classifier f the utility is computed with: judge, the stage-1 "
        "real-data classifier that also values every round, or student, the classifier "
        "trained in the round just finished.",
    )
