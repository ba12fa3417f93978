"""How a causal LM's tokens are drawn: the sampling settings, the per-row seeded draw that
makes every output reproducible from its own seed whatever batch it runs in (see
:mod:`utilgen.generate.causal_lm`, "Sampling and seeds"), and the completion it yields.

Split from :mod:`utilgen.generate.causal_lm`, which keeps the generator itself: caption
perturbation's LM protocol (:mod:`utilgen.generate.perturb`) is typed with these settings
and completions and needs nothing else of the transformers backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from utilgen.config import CausalLMConfig


@dataclass(frozen=True)
class SamplingSettings:
    """How tokens are drawn (see ``CausalLMConfig`` for each field); temperature 0: greedy."""

    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 160
    min_new_tokens: int = 0

    @classmethod
    def from_config(cls, cfg: CausalLMConfig) -> SamplingSettings:
        return cls(
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            repetition_penalty=cfg.repetition_penalty,
            max_new_tokens=cfg.max_new_tokens,
            min_new_tokens=cfg.min_new_tokens,
        )

    def as_details(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.min_new_tokens,
        }


class PerRowSampling(LogitsProcessor):
    """Samples each row's next token with that row's own seeded generator (inverse CDF).

    One uniform number per row and step, from the row's generator, picks the token where
    the cumulative distribution of ``softmax(scores)`` passes it; the returned scores are
    0 there and -inf elsewhere, so the argmax ``generate`` takes in greedy mode is that
    exact sample. Tokens the warpers set to -inf have zero probability and are never drawn.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device) -> None:
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.generators):
            raise RuntimeError(
                f"{scores.shape[0]} rows but {len(self.generators)} seeded generators"
            )
        cdf = torch.softmax(scores.float(), dim=-1).cumsum_(dim=-1)
        u = torch.cat([torch.rand(1, generator=g, device=g.device) for g in self.generators]).to(
            scores.device
        )
        # right=True: the first token whose cumulative mass exceeds u (never a zero-mass one).
        token = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True)
        token.clamp_(max=scores.shape[-1] - 1)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, token, 0.0)
        return out  # type: ignore[return-value]


def sampling_processors(
    settings: SamplingSettings, seeds: Sequence[int], device: torch.device
) -> LogitsProcessorList:
    """The logits processors of ``settings`` for rows seeded with ``seeds`` (empty when
    greedy): temperature, top-k and top-p as ``generate`` orders them, then the draw."""
    processors = LogitsProcessorList()
    if settings.temperature == 0:
        return processors
    if settings.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(settings.temperature))
    if settings.top_k > 0:
        processors.append(TopKLogitsWarper(settings.top_k))
    if settings.top_p < 1.0:
        processors.append(TopPLogitsWarper(settings.top_p))
    processors.append(PerRowSampling(seeds, device))
    return processors


@dataclass(frozen=True)
class Completion:
    """One generated text.

    Attributes:
        text: the decoded new tokens (prompt removed, special tokens skipped), not cleaned.
        new_tokens: tokens generated before end-of-text.
        finished: True when the model ended the text; False when ``max_new_tokens`` cut it.
    """

    text: str
    new_tokens: int
    finished: bool
