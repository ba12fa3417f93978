"""``dpo``: model-level feedback. Between round r and r+1 the generator is fine-tuned on
round r's utility-ranked preference pairs: U-DPO for a causal LM, Diffusion-DPO for a
diffusion model (:mod:`utilgen.feedback.model_level`, which restores the saved result when
a resumed run has already trained it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from utilgen.feedback.component import FeedbackComponent

if TYPE_CHECKING:
    from utilgen.config import RunConfig
    from utilgen.generate import Generator
    from utilgen.pool import PoolStore


class DPOFeedback(FeedbackComponent):
    """Preference pairs from a round's utility fine-tune the generator before the next."""

    trains_generator: ClassVar[bool] = True

    def check_config(self, config: RunConfig) -> None:
        from utilgen.registry import DPO_TRAINERS

        if config.generator.kind not in DPO_TRAINERS:
            raise ValueError(
                f"feedback.components [dpo] has no DPO trainer for generator.kind="
                f"{config.generator.kind}; use one of {', '.join(DPO_TRAINERS.names())} or "
                "register one in utilgen.registry.DPO_TRAINERS"
            )
        if config.generator.kind == "causal-lm" and config.generator.lm.backend == "vllm":
            raise ValueError(
                "feedback.components [dpo] fine-tunes the generator's transformers model "
                "between rounds, and generator.lm.backend=vllm holds none: set "
                "generator.lm.backend=transformers or drop dpo"
            )
        pairs = config.feedback.pairs
        for key, score in (("score", pairs.score), ("weight_score", pairs.weight_score)):
            if score is not None and score not in config.valuation.scores:
                raise ValueError(
                    f"feedback.pairs.{key}={score!r} is not among valuation.scores "
                    f"{config.valuation.scores}; add it there or pick one of them"
                )

    def describe(self, config: RunConfig, n_requests: int) -> str:
        from utilgen.registry import DPO_TRAINERS

        return f"dpo: {DPO_TRAINERS.get(config.generator.kind).describe(config)}"

    def update_generator(
        self,
        generator: Generator,
        store: PoolStore,
        config: RunConfig,
        run_dir: Path,
        round_index: int,
    ) -> Generator:
        from utilgen.feedback.model_level import apply_model_feedback

        return apply_model_feedback(generator, store, config, run_dir, round_index)

    def saved_result(self, run_dir: Path, round_index: int) -> dict[str, Any] | None:
        from utilgen.pool.layout import RunLayout

        path = RunLayout(run_dir).round(round_index).dpo_result
        if not path.is_file():
            return None
        result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return result


DPO = DPOFeedback()
