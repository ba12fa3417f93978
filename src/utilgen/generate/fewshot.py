"""U-DPO's class-conditional k-shot prompts (shared/papers/003, Section 4.1).

Each prompt shows ``k`` (default 2) real training texts of one class, drawn at random, and
asks for a new text of that class; each prompt yields ``n`` texts (default 5). The shots are
drawn per request from a random stream keyed by (run seed, round, class, request index), so
the same run makes the same prompts and different requests see different shot pairs. The
ids of the shots go into the request's ``metadata`` (and from there into each sample's
provenance).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from utilgen.config import FewShotPromptConfig
from utilgen.data import LabelledData
from utilgen.generate.request import GenerationError, GenerationRequest

TRUNCATION_MARK = " ..."


def truncate_words(text: str, max_words: int) -> str:
    """``text`` on one line (whitespace collapsed), cut to ``max_words`` words with
    :data:`TRUNCATION_MARK` appended when cut; ``max_words=0`` keeps every word."""
    tokens = text.split()
    if max_words and len(tokens) > max_words:
        return " ".join(tokens[:max_words]) + TRUNCATION_MARK
    return " ".join(tokens)


def label_text(class_name: str, cfg: FewShotPromptConfig) -> str:
    """How the class is named in the prompt: ``cfg.label_names`` or the class name with
    underscores as spaces."""
    return cfg.label_names.get(class_name, class_name.replace("_", " "))


def fewshot_prompt(class_name: str, shots: Sequence[str], cfg: FewShotPromptConfig) -> str:
    """The prompt for ``class_name`` showing ``shots`` (real texts, truncated here)."""
    examples = "\n".join(
        cfg.example_template.format(index=i + 1, text=truncate_words(t, cfg.max_example_words))
        for i, t in enumerate(shots)
    )
    return cfg.resolved_template.format(
        examples=examples, label=label_text(class_name, cfg), shots=len(shots)
    )


def request_seed(seed: int, round_index: int, label: int, index: int) -> int:
    """The seed of request ``index`` of class ``label`` in a round: 31 bits from NumPy's
    ``SeedSequence`` of the four numbers. Output ``i`` uses ``seed + i``; with
    random 31-bit bases, two requests' output seeds overlap with negligible probability."""
    state = np.random.SeedSequence([seed, round_index, label, index, 0xF5]).generate_state(1)
    return int(state[0] >> 1)


def fewshot_requests(
    train: LabelledData,
    *,
    per_class: int,
    seed: int,
    round_index: int,
    cfg: FewShotPromptConfig,
) -> list[GenerationRequest]:
    """Requests for ``per_class`` texts of every class, ``cfg.outputs_per_prompt`` per prompt.

    Each request shows ``cfg.shots`` distinct real texts of its class from ``train`` and
    records their ids as ``metadata["shot_ids"]``; the last request of a class asks for the
    remainder when ``per_class`` is not a multiple of ``outputs_per_prompt``.

    Raises:
        GenerationError: ``train`` is not text data, or a class has fewer texts than shots.
    """
    if train.modality != "text":
        raise GenerationError(
            f"k-shot text prompts need text data, got {train.modality} data; use an image "
            "generator (generator.kind) for images"
        )
    if per_class < 1:
        return []
    members = [np.flatnonzero(train.labels == c) for c in range(train.num_classes)]
    for c, idx in enumerate(members):
        if len(idx) < cfg.shots:
            raise GenerationError(
                f"class {train.class_names[c]!r} has {len(idx)} real training text(s) but "
                f"generator.text_prompt.shots={cfg.shots}; lower the shots or add texts of "
                "that class"
            )
    per_prompt = cfg.outputs_per_prompt
    requests: list[GenerationRequest] = []
    for c, idx in enumerate(members):
        name = train.class_names[c]
        for j in range(math.ceil(per_class / per_prompt)):
            rng = np.random.default_rng([seed, round_index, c, j])
            picked = [int(i) for i in rng.choice(idx, size=cfg.shots, replace=False)]
            requests.append(
                GenerationRequest(
                    label=c,
                    class_name=name,
                    seed=request_seed(seed, round_index, c, j),
                    prompt=fewshot_prompt(name, [str(train.items[i]) for i in picked], cfg),
                    num_outputs=min(per_prompt, per_class - j * per_prompt),
                    metadata={"shot_ids": [train.ids[i] for i in picked]},
                )
            )
    return requests
