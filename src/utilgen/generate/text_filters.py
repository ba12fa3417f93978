"""Cleaning and filtering LM-generated texts (U-DPO's synthetic texts, issue 5).

Two steps, both driven by :class:`~utilgen.config.TextFilterConfig`:

1. :func:`clean_text` runs on every raw completion before its sample is made: it removes
   echoed prefixes ("Article:", "Here is a new article:"), cuts the text where the model
   starts a second one (another "Example 3:", a new chat turn), trims an output that ran
   into ``max_new_tokens`` back to its last complete sentence, and strips wrapping quotes.
2. :func:`filter_texts` decides which samples are kept: it drops empty, too short and too
   long texts, texts that copy a real training text (a shared run of ``copy_ngram`` words),
   exact duplicates and near duplicates (MiniLM cosine at or above a threshold) of an earlier
   kept text. Every sample comes back, dropped ones with ``kept=False`` and the reason, so the
   manifest records why.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from utilgen.config import TextFilterConfig
from utilgen.pool.sample import Sample

log = logging.getLogger(__name__)

KEPT_REASON = "text filters passed"
_WORD = re.compile(r"\w+")
# A sentence ends at . ! ? (optionally followed by closing quotes or brackets).
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*(?=\s|$)")
_QUOTES = {'"': '"', "“": "”", "'": "'", "«": "»"}


# 1. cleaning ---------------------------------------------------------------------------


def strip_prefixes(text: str, patterns: Sequence[str]) -> str:
    """``text`` without the leading matches of ``patterns``, removed until none matches."""
    compiled = [re.compile(p) for p in patterns]
    changed = True
    while changed and text:
        changed = False
        for pattern in compiled:
            match = pattern.match(text)
            if match and match.end() > 0:
                text = text[match.end() :].lstrip()
                changed = True
    return text


def cut_at_stop(text: str, patterns: Sequence[str]) -> str:
    """``text`` up to the earliest match of any pattern after its start (the first text)."""
    end = len(text)
    for pattern in patterns:
        for match in re.finditer(pattern, text):
            if match.start() > 0:
                end = min(end, match.start())
                break
    return text[:end]


def trim_to_sentence(text: str) -> str:
    """``text`` up to its last sentence end; unchanged when it has none."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]] if ends else text


def strip_quotes(text: str) -> str:
    """``text`` without one pair of quotes around all of it."""
    if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
        return text[1:-1].strip()
    return text


def clean_text(text: str, cfg: TextFilterConfig, *, truncated: bool = False) -> str:
    """The generated text as it goes into the pool.

    Args:
        text: the decoded new tokens (the prompt already removed).
        cfg: the prefixes, stop patterns and trimming rule.
        truncated: the output ran into ``max_new_tokens``, so its last sentence is cut off.

    Returns:
        The cleaned text (possibly empty; :func:`filter_texts` drops it then).
    """
    text = strip_prefixes(text.strip(), cfg.strip_prefixes)
    text = cut_at_stop(text, cfg.stop_patterns).strip()
    if truncated and cfg.trim_incomplete:
        text = trim_to_sentence(text)
    return strip_quotes(text.strip())


# 2. filters ----------------------------------------------------------------------------


def words(text: str) -> list[str]:
    """Lower-cased word tokens (``\\w+`` runs) of ``text``."""
    return _WORD.findall(text.lower())


def _normalised(text: str) -> str:
    return " ".join(text.split()).casefold()


def copied_real_texts(texts: Sequence[str], real_texts: Sequence[str], n: int) -> list[int | None]:
    """For each text, the index of a real text sharing a run of ``n`` words with it (or None).

    The n-grams of the generated texts (few) are indexed and the real texts (many) scanned,
    so memory stays proportional to the generated texts.
    """
    found: list[int | None] = [None] * len(texts)
    index: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        toks = words(text)
        for j in range(len(toks) - n + 1):
            index.setdefault(" ".join(toks[j : j + n]), []).append(i)
    if not index:
        return found
    for r, real in enumerate(real_texts):
        toks = words(real)
        for j in range(len(toks) - n + 1):
            for i in index.get(" ".join(toks[j : j + n]), ()):
                if found[i] is None:
                    found[i] = r
    return found


def embed_texts(
    texts: Sequence[str], cfg: TextFilterConfig, device: torch.device | str = "cpu"
) -> np.ndarray:
    """L2-normalised sentence embeddings (n, d) of ``texts`` with the configured MiniLM.

    Uses the task package's shared encoder (same weights, pooling and cache as the ``minilm``
    task model), so texts a run has already embedded are not encoded twice.
    """
    from utilgen.task.text_minilm import minilm_dir, shared_encoder

    path = cfg.embedder_path or str(minilm_dir())
    encoder = shared_encoder(path, cfg.embedder_max_length, torch.device(device))
    return encoder.cached_encode(list(texts)).numpy()


def _length_reason(n_words: int, cfg: TextFilterConfig) -> str:
    if n_words == 0:
        return "filter: empty"
    if n_words < cfg.min_words:
        return f"filter: too short ({n_words} words < min_words {cfg.min_words})"
    if cfg.max_words is not None and n_words > cfg.max_words:
        return f"filter: too long ({n_words} words > max_words {cfg.max_words})"
    return ""


def filter_texts(
    samples: Sequence[Sample],
    real_texts: Sequence[str],
    cfg: TextFilterConfig,
    *,
    device: torch.device | str = "cpu",
) -> list[Sample]:
    """Every sample of ``samples``, with ``kept`` and ``reason`` decided by the filters.

    Checks run in this order, the first failing one giving the reason: empty, too short,
    too long (words), copies a real text (``copy_ngram``), exact duplicate, near duplicate
    (``near_duplicate_cosine``). Duplicates are judged against earlier samples that are
    kept, so of a group of duplicates the first one stays. Samples that arrive with
    ``kept=False`` are returned unchanged and never count as the original of a duplicate.

    Args:
        samples: text samples, in generation order.
        real_texts: the real training texts (for the copy check).
        cfg: the thresholds.
        device: where the MiniLM embedder runs (near duplicates only).

    Returns:
        The samples in the same order; dropped ones keep their text, with ``kept=False``
        and a reason starting with ``"filter: "``; the others ``kept=True``, reason
        :data:`KEPT_REASON`.
    """
    texts = [s.payload.decode("utf-8") for s in samples]
    reasons = ["" if s.kept else s.reason for s in samples]
    active = [s.kept for s in samples]

    # 1. length
    for i, text in enumerate(texts):
        if active[i]:
            reasons[i] = _length_reason(len(words(text)), cfg)

    # 2. copies of real training texts
    if cfg.copy_ngram > 0:
        todo = [i for i in range(len(texts)) if active[i] and not reasons[i]]
        copied = copied_real_texts([texts[i] for i in todo], real_texts, cfg.copy_ngram)
        for i, real in zip(todo, copied, strict=True):
            if real is not None:
                reasons[i] = (
                    f"filter: copies real training text #{real} "
                    f"(shares a run of {cfg.copy_ngram} words)"
                )

    # 3. exact duplicates of an earlier kept text
    if cfg.drop_exact_duplicates:
        first: dict[str, str] = {}
        for i, text in enumerate(texts):
            if active[i] and not reasons[i]:
                key = _normalised(text)
                if key in first:
                    reasons[i] = f"filter: exact duplicate of {first[key]}"
                else:
                    first[key] = samples[i].id

    # 4. near duplicates (MiniLM cosine) of an earlier kept text
    if cfg.near_duplicate_cosine is not None:
        todo = [i for i in range(len(texts)) if active[i] and not reasons[i]]
        if len(todo) > 1:
            emb = embed_texts([texts[i] for i in todo], cfg, device)
            kept_rows: list[int] = []
            for row, i in enumerate(todo):
                if kept_rows:
                    cos = emb[kept_rows] @ emb[row]
                    best = int(np.argmax(cos))
                    if cos[best] >= cfg.near_duplicate_cosine:
                        other = samples[todo[kept_rows[best]]].id
                        reasons[i] = (
                            f"filter: near duplicate of {other} (MiniLM cosine "
                            f"{cos[best]:.3f} >= {cfg.near_duplicate_cosine})"
                        )
                        continue
                kept_rows.append(row)

    out: list[Sample] = []
    for sample, was_active, reason in zip(samples, active, reasons, strict=True):
        if not was_active:
            out.append(sample)
        elif reason:
            out.append(replace(sample, kept=False, reason=reason))
        else:
            out.append(replace(sample, kept=True, reason=KEPT_REASON))
    dropped = sum(1 for s in out if not s.kept)
    log.info("text filters: %d of %d generated text(s) dropped", dropped, len(out))
    return out
