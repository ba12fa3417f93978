"""The data side of U-DPO: text preference pairs, their tokens, padded batches and the
seeded epoch order (:mod:`utilgen.feedback.lm_dpo`, step 1 of its docstring)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from utilgen.feedback.errors import FeedbackError


@dataclass(frozen=True)
class TextPair:
    """One preference pair of texts answering the same prompt.

    Attributes:
        prompt: the raw prompt (formatted by ``format_prompt`` before tokenising).
        chosen: the preferred completion x+ (plain text, no special tokens).
        rejected: the dispreferred completion x-.
        weight: the pair's loss weight (U-DPO: tanh(|r(x+) - r(x-)|); 1 when unweighted).
        chosen_id: sample id of x+, for logs and error messages.
        rejected_id: sample id of x-.
    """

    prompt: str
    chosen: str
    rejected: str
    weight: float = 1.0
    chosen_id: str = ""
    rejected_id: str = ""

    def label(self) -> str:
        """``chosen_id/rejected_id`` (or the start of the prompt) for messages."""
        if self.chosen_id or self.rejected_id:
            return f"{self.chosen_id}/{self.rejected_id}"
        return repr(self.prompt[:40])


@dataclass(frozen=True)
class TokenizedPair:
    """Token ids of a pair: the shared prompt (already cut to fit) and both completions
    (each ending with EOS); ``prompt_ids + chosen_ids`` is at most ``max_length`` long."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    weight: float


def _adds_special_tokens(format_prompt: Callable[[str], str] | None, tokenizer: Any) -> bool:
    """Whether the prompt is tokenised with the tokenizer's special tokens, as generation
    does: ``CausalLMGenerator`` adds them to raw prompts only (a chat template writes its
    own); its ``chat`` flag says which applies. Other callables: raw unless the tokenizer
    has a chat template."""
    owner = getattr(format_prompt, "__self__", None)
    chat = getattr(owner, "chat", None)
    if isinstance(chat, bool):
        return not chat
    return format_prompt is None or not getattr(tokenizer, "chat_template", None)


def eos_id(tokenizer: Any) -> int:
    """The tokenizer's end-of-text token id (the first, when it names several)."""
    eos = tokenizer.eos_token_id
    if isinstance(eos, list | tuple):
        eos = eos[0] if eos else None
    if eos is None:
        raise FeedbackError(
            "the tokenizer has no end-of-text token, so DPO completions cannot end; use a "
            "causal LM checkpoint whose tokenizer sets eos_token"
        )
    return int(eos)


def tokenize_pairs(
    pairs: Sequence[TextPair],
    tokenizer: Any,
    *,
    max_length: int,
    format_prompt: Callable[[str], str] | None = None,
    add_special_tokens: bool | None = None,
) -> list[TokenizedPair]:
    """Token ids of every pair (see the module docstring, step 1).

    The prompt is cut from the left so that prompt + the longer completion fits
    ``max_length``; at least one prompt token must stay (it predicts the first completion
    token).

    Args:
        add_special_tokens: add the tokenizer's special tokens (BOS) to the prompt; None: as
            generation does (:func:`_adds_special_tokens`).

    Raises:
        FeedbackError: a pair whose completion leaves no room for a prompt token, a pair
            with nothing to score, a negative or non-finite weight, no EOS token.
    """
    eos = eos_id(tokenizer)
    fmt = format_prompt or (lambda p: p)
    specials = (
        _adds_special_tokens(format_prompt, tokenizer)
        if add_special_tokens is None
        else add_special_tokens
    )
    prompt_cache: dict[str, list[int]] = {}
    out = []
    for pair in pairs:
        if not (math.isfinite(pair.weight) and pair.weight >= 0):
            raise FeedbackError(
                f"pair {pair.label()} has weight {pair.weight}; pair weights must be finite "
                "and >= 0 (tanh(|delta r|) or 1)"
            )
        if pair.prompt not in prompt_cache:
            text = fmt(pair.prompt)
            prompt_cache[pair.prompt] = list(
                tokenizer(text, add_special_tokens=specials)["input_ids"]
            )
        prompt = prompt_cache[pair.prompt]
        chosen = [*tokenizer(pair.chosen, add_special_tokens=False)["input_ids"], eos]
        rejected = [*tokenizer(pair.rejected, add_special_tokens=False)["input_ids"], eos]
        room = max_length - max(len(chosen), len(rejected))
        if prompt and room < 1:
            raise FeedbackError(
                f"pair {pair.label()}: a completion of {max(len(chosen), len(rejected))} tokens "
                f"leaves no prompt token within feedback.dpo.max_length={max_length}; raise "
                "feedback.dpo.max_length or lower generator.lm.max_new_tokens"
            )
        if not prompt and min(len(chosen), len(rejected)) < 2:
            raise FeedbackError(
                f"pair {pair.label()} has an empty prompt and an empty completion, so no "
                "completion token can be scored; drop empty texts before building pairs"
            )
        if len(prompt) > room:
            prompt = prompt[len(prompt) - room :]
        out.append(TokenizedPair(prompt, chosen, rejected, float(pair.weight)))
    return out


def collate_pairs(batch: Sequence[TokenizedPair], *, pad_token_id: int) -> dict[str, torch.Tensor]:
    """One padded batch: rows ``[chosen_0 .. chosen_B-1, rejected_0 .. rejected_B-1]``.

    Returns:
        ``input_ids``, ``attention_mask``, ``completion_mask`` (``(2B, L)``, right padded)
        and ``weights`` (``(B,)`` float32).
    """
    rows = [(p.prompt_ids, p.chosen_ids) for p in batch]
    rows += [(p.prompt_ids, p.rejected_ids) for p in batch]
    length = max(len(a) + len(b) for a, b in rows)
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    completion = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (prompt, answer) in enumerate(rows):
        n = len(prompt) + len(answer)
        input_ids[i, :n] = torch.tensor(prompt + answer)
        attention[i, :n] = 1
        completion[i, len(prompt) : n] = 1
    weights = torch.tensor([p.weight for p in batch], dtype=torch.float32)
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "completion_mask": completion,
        "weights": weights,
    }


class EpochShuffle(Sampler[int]):
    """Indices ``0..n-1`` in the order of ``randperm(n)`` seeded with ``seed + epoch``: the
    same on every process, different each epoch (call :meth:`set_epoch`)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())


def pair_loader(
    tokens: Sequence[TokenizedPair], *, batch_size: int, seed: int, pad_token_id: int
) -> tuple[DataLoader[TokenizedPair], EpochShuffle]:
    """Padded batches (:func:`collate_pairs`) of ``tokens`` in :class:`EpochShuffle` order,
    and that sampler (call its ``set_epoch`` before each epoch)."""
    sampler = EpochShuffle(len(tokens), seed)
    loader: DataLoader[TokenizedPair] = DataLoader(
        tokens,  # type: ignore[arg-type]  # a list is a map-style dataset
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=partial(collate_pairs, pad_token_id=pad_token_id),
    )
    return loader, sampler
