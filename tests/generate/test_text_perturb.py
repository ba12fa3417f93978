"""GenDataAgent caption perturbation with a scripted LM.

The LM is a real ``LlamaForCausalLM`` set up as a bigram model over whole-line tokens
(tests/generate/tiny_lm.py): after the chat template's assistant tag it answers lines drawn
from a table we choose, valid rewrites mixed with every kind of invalid one, so the tests
know exactly what a correct perturbation must return.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest
from tiny_lm import one_thread, scripted_lm, token_margins

from utilgen.config import CaptionPerturbationConfig
from utilgen.generate import GenerationError
from utilgen.generate.perturb import (
    accept_rewrite,
    perturb_caption,
    perturb_captions,
    reply_lines,
    split_caption,
    word_edit_distance,
)

CAPTION = "a photo of a beagle, which is sitting on the grass in a park"
HEAD = "a photo of a beagle"
VALID = [
    "1. a photo of a beagle, which is lying on the grass in a park",
    "2. A photo of a beagle, which is sitting on the sand at a beach",
    "- a photo of a beagle, which is running on the grass in a garden",
    "a photo of a beagle, which is sleeping on a sofa in a living room",
]
INVALID = [
    "a photo of a poodle, which is sitting on the grass in a park",  # head changed
    "a photo of a beagle, which is sitting on the grass in a park",  # scene unchanged
    "a photo of a beagle, which is surrounded by many tall trees and bright flowers under "
    "a cloudy sky near an old stone bridge",  # more than 10 words changed
    "a beagle lying on the grass",  # no comma
    "a photo of a beagle, which is lying on the grass in a park.",  # duplicate of VALID[0]
]
EXPECTED = {
    "a photo of a beagle, which is lying on the grass in a park",
    "a photo of a beagle, which is sitting on the sand at a beach",
    "a photo of a beagle, which is running on the grass in a garden",
    "a photo of a beagle, which is sleeping on a sofa in a living room",
}


def _words(text: str) -> tuple[str, ...]:
    """A rewrite up to case and punctuation (what makes two rewrites the same)."""
    return tuple(re.findall(r"\w+", text.lower()))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def test_returns_m_distinct_rewrites_keeping_the_text_before_the_comma() -> None:
    lm = scripted_lm(VALID + INVALID)
    cfg = CaptionPerturbationConfig(versions=3, max_attempts=10, on_shortfall="error")
    for seed in range(5):
        result = perturb_caption(lm, CAPTION, cfg, seed=seed)
        assert len(result.rewrites) == 3 == len({_words(r) for r in result.rewrites})
        assert all(r.startswith(HEAD + ", ") for r in result.rewrites)
        assert {_words(r) for r in result.rewrites} <= {_words(e) for e in EXPECTED}
        assert result.perturbation.startswith("llm-caption:scripted;m=3;seed=")
    again = perturb_caption(lm, CAPTION, cfg, seed=4)
    assert again == result  # exact: the same call on the same inputs


def test_results_do_not_depend_on_the_other_captions() -> None:
    lm = scripted_lm(VALID + INVALID)
    other = "a photo of a tabby, which is on a chair"
    cfg = CaptionPerturbationConfig(versions=2, max_attempts=10)
    with token_margins() as margins:
        alone = perturb_caption(lm, CAPTION, cfg, seed=1)
        together = perturb_captions(lm, [other, CAPTION], cfg, seed=1)[1]
    margins.assert_clear()  # other batches, the same draws: no draw was near a boundary
    assert together == alone


def test_shortfall_warns_or_raises() -> None:
    lm = scripted_lm([*INVALID, VALID[0]], stop=0.5)  # one valid rewrite, written two ways
    cfg = CaptionPerturbationConfig(versions=3, max_attempts=3)
    with pytest.raises(GenerationError, match="found 1 of 3 valid rewrites") as err:
        perturb_caption(lm, CAPTION, cfg.model_copy(update={"on_shortfall": "error"}), seed=0)
    assert "\n" not in str(err.value)


def test_shortfall_warning_returns_what_was_found(caplog: pytest.LogCaptureFixture) -> None:
    lm = scripted_lm(INVALID[:-1])  # the last one is valid when it comes alone
    cfg = CaptionPerturbationConfig(versions=2, max_attempts=2, on_shortfall="warn")
    with caplog.at_level(logging.WARNING):
        result = perturb_caption(lm, CAPTION, cfg, seed=0)
    assert result.rewrites == () and result.attempts == 2
    assert "found 0 of 2 valid rewrites" in caplog.text


def test_scene_only_lines_when_allowed() -> None:
    lm = scripted_lm(["sitting on a bench in a park"])
    strict = CaptionPerturbationConfig(versions=1, max_attempts=1)
    assert perturb_caption(lm, CAPTION, strict, seed=0).rewrites == ()
    lenient = strict.model_copy(update={"accept_scene_only": True})
    assert perturb_caption(lm, CAPTION, lenient, seed=0).rewrites == (
        f"{HEAD}, sitting on a bench in a park",
    )


def test_prompts_follow_the_config() -> None:
    lm = scripted_lm(VALID)
    seen: list[tuple[list[str], str | None]] = []
    complete = lm.complete

    def recording(prompts, seeds, *, system_prompt=None, sampling=None, progress=False):  # type: ignore[no-untyped-def]
        seen.append((list(prompts), system_prompt))
        return complete(prompts, seeds, system_prompt=system_prompt, sampling=sampling)

    lm.complete = recording  # type: ignore[method-assign]
    perturb_caption(lm, CAPTION, CaptionPerturbationConfig(versions=2), seed=0)
    prompts, system = seen[0]
    assert system is not None and system.endswith("Respond with 2 versions.")
    assert system.startswith("You are an editor tasked with subtly altering the scene")
    assert prompts == [
        f"Given the sentence {CAPTION}, slightly alter the scene described after the comma "
        "to depict a similar yet different scenario."
    ]


def test_helpers() -> None:
    assert split_caption("a photo of x, which is y, z") == ("a photo of x", "which is y, z")
    with pytest.raises(GenerationError, match="no '<subject>, <scene>' form"):
        split_caption("a photo of a dog")
    assert word_edit_distance("on the grass in a park", "on the sand in a park") == 1
    assert word_edit_distance("a b c", "") == 3
    assert word_edit_distance("A b.", "a B") == 0
    assert reply_lines('Version 1: "x, y"\n\n(2) x, z\n* x, w') == ["x, y", "x, z", "x, w"]
    cfg = CaptionPerturbationConfig(max_changed_words=2)
    assert accept_rewrite("x, a b c", "x", "a b d", cfg) == ("x, a b c", "")
    assert accept_rewrite("x, q r s", "x", "a b d", cfg) == (None, "3 words changed > 2")


def test_prompt_placeholders_are_validated() -> None:
    with pytest.raises(ValueError, match=r"lacks \{caption\}"):
        CaptionPerturbationConfig(user_prompt="Rewrite the scene.")
    with pytest.raises(ValueError, match=r"unknown placeholder\(s\) \{n\}"):
        CaptionPerturbationConfig(system_prompt="Respond with {n} versions.")
