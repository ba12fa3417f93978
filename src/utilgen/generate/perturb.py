"""GenDataAgent's LLM caption perturbation (shared/papers/002, Section 2.3).

A caption ``"a photo of <class>, which is <scene>"`` is handed to an LM with the paper's
prompt: subtly alter the scene described after the comma, in no more than 10 words, and
respond with m versions. The reply is split into lines and each line is checked:

* it must start with the caption's text before the first comma (compared ignoring case
  and spacing; the original text is put back verbatim), followed by a comma and the new
  scene; with ``accept_scene_only`` a line without a comma is taken as the scene alone;
* the new scene must differ from the original one by 1 to ``max_changed_words`` words
  (word-level edit distance, our reading of "change the scene slightly in no more than
  10 words");
* it must differ from the rewrites already accepted in its words (case, spacing and
  punctuation ignored).

Lines that fail are rejected and the LM is asked again with a new seed, up to
``max_attempts`` replies per caption. If fewer than m distinct rewrites are found, the
``on_shortfall`` policy applies: ``warn`` logs a warning and returns those found (possibly
none), ``error`` raises :class:`~utilgen.generate.request.GenerationError`.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from utilgen.config import CaptionPerturbationConfig
from utilgen.generate.causal_lm_sampling import Completion, SamplingSettings
from utilgen.generate.request import GenerationError

log = logging.getLogger(__name__)

# "1.", "2)", "(3)", "-", "*", "•", "Version 2:", "Rewrite 1 -" at the start of a reply line.
_LIST_MARKER = re.compile(
    r"^\s*(?:(?:version|rewrite|option|sentence)\s*\d*\s*[:.)\-]|\(?\d+[.):]|[-*•])\s*",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+")


class TextCompleter(Protocol):
    """What perturbation needs of an LM: :class:`~utilgen.generate.causal_lm.CausalLMGenerator`
    and the vLLM generator both provide it."""

    name: str
    sampling: SamplingSettings

    def complete(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        *,
        system_prompt: str | None = None,
        sampling: SamplingSettings | None = None,
        progress: bool = False,
    ) -> list[Completion]: ...


@dataclass(frozen=True)
class PerturbedCaption:
    """The rewrites of one caption.

    Attributes:
        caption: the original caption.
        rewrites: up to m distinct rewrites, each starting with the caption's text before
            its first comma, verbatim.
        perturbation: provenance for the ``perturbation`` column of samples made from them.
        attempts: LM replies it took.
    """

    caption: str
    rewrites: tuple[str, ...]
    perturbation: str
    attempts: int


def split_caption(caption: str) -> tuple[str, str]:
    """``(head, scene)``: the text before the first comma and the (stripped) text after it.

    Raises:
        GenerationError: the caption has no comma, so it has no scene to perturb.
    """
    head, comma, scene = caption.partition(",")
    if not comma or not head.strip():
        raise GenerationError(
            f"caption {caption!r} has no '<subject>, <scene>' form; caption perturbation "
            "rewrites the part after the first comma (e.g. 'a photo of a dog, which is ...')"
        )
    return head, scene.strip()


def word_edit_distance(a: str, b: str) -> int:
    """Word-level Levenshtein distance between ``a`` and ``b`` (lower-cased ``\\w+`` words)."""
    x, y = _WORD.findall(a.lower()), _WORD.findall(b.lower())
    prev = list(range(len(y) + 1))
    for i, wx in enumerate(x, 1):
        cur = [i]
        for j, wy in enumerate(y, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (wx != wy)))
        prev = cur
    return prev[-1]


def reply_lines(reply: str) -> list[str]:
    """The candidate rewrites in an LM reply: non-empty lines without list markers or
    wrapping quotes."""
    out = []
    for line in reply.splitlines():
        line = _LIST_MARKER.sub("", line).strip().strip("\"'“”").strip()
        if line:
            out.append(line)
    return out


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def _words(text: str) -> tuple[str, ...]:
    # Rewrites that differ only in case or punctuation count as the same rewrite.
    return tuple(_WORD.findall(text.lower()))


def accept_rewrite(
    line: str, head: str, scene: str, cfg: CaptionPerturbationConfig
) -> tuple[str | None, str]:
    """``(rewrite, "")`` for a valid reply line, else ``(None, why)``; the rewrite is
    ``head`` verbatim + ``", "`` + the new scene."""
    new_head, comma, new_scene = line.partition(",")
    if comma and _norm(new_head) == _norm(head):
        new_scene = new_scene.strip()
    elif not comma and cfg.accept_scene_only:
        new_scene = line.strip()
    else:
        return None, "does not keep the text before the comma"
    if not new_scene:
        return None, "empty scene"
    changed = word_edit_distance(scene, new_scene)
    if changed == 0:
        return None, "scene unchanged"
    if changed > cfg.max_changed_words:
        return None, f"{changed} words changed > {cfg.max_changed_words}"
    return f"{head}, {new_scene}", ""


def perturbation_tag(lm_name: str, cfg: CaptionPerturbationConfig, seed: int) -> str:
    """Provenance of a rewrite: the LM, m, the seed and a hash of the two prompts."""
    prompts = hashlib.sha256(f"{cfg.system_prompt}\x00{cfg.user_prompt}".encode()).hexdigest()
    return f"llm-caption:{lm_name};m={cfg.versions};seed={seed};prompt={prompts[:12]}"


def attempt_seed(seed: int, caption: str, attempt: int) -> int:
    """The seed of reply ``attempt`` for ``caption``: 31 bits keyed by the seed, the
    caption's text and the attempt, so a caption gets the same rewrites in any batch."""
    key = int.from_bytes(hashlib.sha256(caption.encode()).digest()[:8], "little")
    state = np.random.SeedSequence([seed, key, attempt, 0xCA]).generate_state(1)
    return int(state[0] >> 1)


def perturb_captions(
    lm: TextCompleter,
    captions: Sequence[str],
    cfg: CaptionPerturbationConfig,
    *,
    seed: int,
) -> list[PerturbedCaption]:
    """m = ``cfg.versions`` distinct rewrites of each caption (see the module docstring).

    All captions still short of m rewrites are asked in one batched ``complete`` call per
    attempt; each reply is seeded by :func:`attempt_seed`, so results do not depend on
    which other captions are perturbed alongside.

    Raises:
        GenerationError: a caption without a comma; or fewer than m rewrites after
            ``max_attempts`` with ``on_shortfall="error"``.
    """
    parts = [split_caption(c) for c in captions]
    system = cfg.system_prompt.format(m=cfg.versions)
    sampling = replace(
        lm.sampling,
        max_new_tokens=cfg.max_new_tokens,
        min_new_tokens=0,
        temperature=lm.sampling.temperature if cfg.temperature is None else cfg.temperature,
    )
    found: list[list[str]] = [[] for _ in captions]
    attempts = [0] * len(captions)
    for attempt in range(cfg.max_attempts):
        todo = [k for k in range(len(captions)) if len(found[k]) < cfg.versions]
        if not todo:
            break
        replies = lm.complete(
            [cfg.user_prompt.format(caption=captions[k], m=cfg.versions) for k in todo],
            [attempt_seed(seed, captions[k], attempt) for k in todo],
            system_prompt=system,
            sampling=sampling,
        )
        for k, reply in zip(todo, replies, strict=True):
            attempts[k] += 1
            head, scene = parts[k]
            seen = {_words(r) for r in found[k]}
            for line in reply_lines(reply.text):
                rewrite, why = accept_rewrite(line, head, scene, cfg)
                if rewrite is None:
                    log.debug("perturbation of %r: rejected %r (%s)", captions[k], line, why)
                elif _words(rewrite) in seen:
                    log.debug("perturbation of %r: duplicate %r", captions[k], line)
                elif len(found[k]) < cfg.versions:
                    found[k].append(rewrite)
                    seen.add(_words(rewrite))
    tag = perturbation_tag(lm.name, cfg, seed)
    out = []
    for k, caption in enumerate(captions):
        if len(found[k]) < cfg.versions:
            message = (
                f"caption perturbation found {len(found[k])} of {cfg.versions} valid rewrites "
                f"of {caption!r} in {attempts[k]} replies; raise "
                "generator.perturbation.max_attempts or use a stronger generator.lm.model"
            )
            if cfg.on_shortfall == "error":
                raise GenerationError(message)
            log.warning(message)
        out.append(PerturbedCaption(caption, tuple(found[k]), tag, attempts[k]))
    return out


def perturb_caption(
    lm: TextCompleter, caption: str, cfg: CaptionPerturbationConfig, *, seed: int
) -> PerturbedCaption:
    """The m rewrites of one caption (:func:`perturb_captions` of a single caption)."""
    return perturb_captions(lm, [caption], cfg, seed=seed)[0]
