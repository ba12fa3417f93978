"""Text cleaning and filters: each filter alone drops what it should, with its reason."""

from __future__ import annotations

from dataclasses import replace

import pytest

from utilgen.config import TextFilterConfig
from utilgen.generate import GenerationRequest, make_sample
from utilgen.generate.text_filters import (
    KEPT_REASON,
    clean_text,
    copied_real_texts,
    filter_texts,
)
from utilgen.pool import Sample, encode_text

# Every filter off; a test switches on the one it checks.
NONE = TextFilterConfig(
    min_words=0, max_words=None, drop_exact_duplicates=False, near_duplicate_cosine=None,
    copy_ngram=0,
)
REAL = [
    "The central bank raised interest rates by a quarter point on Thursday, citing inflation.",
    "The striker scored twice as the home side won the cup final in extra time.",
]


def _samples(*texts: str) -> list[Sample]:
    request = GenerationRequest(label=0, class_name="news", seed=0, prompt="p", num_outputs=1)
    return [
        make_sample(
            replace(request, seed=i), 0, encode_text(t), modality="text", generator="lm",
            round_index=1, guidance=None, steps=None,
        )
        for i, t in enumerate(texts)
    ]


def _decisions(samples: list[Sample], cfg: TextFilterConfig) -> list[tuple[bool, str]]:
    return [(s.kept, s.reason) for s in filter_texts(samples, REAL, cfg)]


@pytest.mark.parametrize(
    ("raw", "truncated", "clean"),
    [
        ("  Article: Shares rose on Monday.  ", False, "Shares rose on Monday."),
        ("Here is a new article: Shares rose.", False, "Shares rose."),
        ("Sure! Here's the article:\nExample 3: Shares rose.", False, "Shares rose."),
        ("Shares rose.\nExample 3: Another text.", False, "Shares rose."),
        ("Shares rose.\n\nuser: write another", False, "Shares rose."),
        ("Shares rose. Then the market", True, "Shares rose."),
        ("Shares rose. Then the market", False, "Shares rose. Then the market"),
        ('"Shares rose sharply."', False, "Shares rose sharply."),
        ("No sentence end at all", True, "No sentence end at all"),
        ("Article:", False, ""),
    ],
)
def test_clean_text(raw: str, truncated: bool, clean: str) -> None:
    assert clean_text(raw, TextFilterConfig(), truncated=truncated) == clean


def test_clean_text_settings_are_used() -> None:
    text = "Article: Shares rose. Then the"
    assert clean_text(text, NONE.model_copy(update={"strip_prefixes": []}), truncated=True) == (
        "Article: Shares rose."
    )
    off = NONE.model_copy(update={"trim_incomplete": False})
    assert clean_text(text, off, truncated=True) == "Shares rose. Then the"


def test_empty_short_and_long_texts() -> None:
    cfg = NONE.model_copy(update={"min_words": 3, "max_words": 5})
    samples = _samples("", "two words", "just three words", "one two three four five six")
    assert _decisions(samples, cfg) == [
        (False, "filter: empty"),
        (False, "filter: too short (2 words < min_words 3)"),
        (True, KEPT_REASON),
        (False, "filter: too long (6 words > max_words 5)"),
    ]


def test_copies_of_real_texts() -> None:
    cfg = NONE.model_copy(update={"copy_ngram": 8})
    samples = _samples(
        # 8 words of REAL[1] in a row (case and punctuation ignored) -> copied
        "Fans cheered: THE STRIKER scored twice, as the home side won easily.",
        # only 7 in a row -> its own text
        "The striker scored twice as the home crowd sang for the team.",
        "A new phone was released with a larger screen and a faster chip.",
    )
    assert _decisions(samples, cfg) == [
        (False, "filter: copies real training text #1 (shares a run of 8 words)"),
        (True, KEPT_REASON),
        (True, KEPT_REASON),
    ]
    assert copied_real_texts(["a b c"], REAL, 8) == [None]


def test_exact_duplicates_keep_the_first() -> None:
    cfg = NONE.model_copy(update={"drop_exact_duplicates": True})
    samples = _samples("Shares rose on Monday.", "shares  rose on\nMonday.", "Shares fell.")
    decisions = _decisions(samples, cfg)
    assert decisions[0] == (True, KEPT_REASON) and decisions[2] == (True, KEPT_REASON)
    assert decisions[1] == (False, f"filter: exact duplicate of {samples[0].id}")


def test_near_duplicates_by_minilm_cosine() -> None:
    cfg = NONE.model_copy(update={"near_duplicate_cosine": 0.9})
    samples = _samples(
        "The team won the football match on Sunday afternoon.",
        "The team won the football game on Sunday afternoon!",
        "The government announced a new tax on imported cars.",
    )
    decisions = _decisions(samples, cfg)
    assert decisions[0] == (True, KEPT_REASON) and decisions[2] == (True, KEPT_REASON)
    kept, reason = decisions[1]
    assert not kept
    assert reason.startswith(f"filter: near duplicate of {samples[0].id} (MiniLM cosine 0.9")
    # A threshold above the pair's cosine keeps it: the setting is used.
    loose = NONE.model_copy(update={"near_duplicate_cosine": 0.999})
    assert all(kept for kept, _ in _decisions(samples, loose))


def test_every_sample_comes_back_with_its_text_and_dropped_ones_stay_dropped() -> None:
    samples = _samples("", "Shares rose on Monday as investors cheered the results.")
    samples[1] = replace(samples[1], kept=False, reason="vog below threshold")
    out = filter_texts(samples, REAL, TextFilterConfig())
    assert [s.id for s in out] == [s.id for s in samples]
    assert [s.payload for s in out] == [s.payload for s in samples]
    assert (out[0].kept, out[0].reason) == (False, "filter: empty")
    assert out[1] == samples[1]


def test_first_failing_filter_gives_the_reason() -> None:
    # Short and a duplicate: the length check runs first.
    samples = _samples("Shares rose.", "Shares rose.")
    cfg = TextFilterConfig(min_words=3, near_duplicate_cosine=None)
    assert [r for _, r in _decisions(samples, cfg)] == [
        "filter: too short (2 words < min_words 3)"
    ] * 2
