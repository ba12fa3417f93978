"""img2img requests around real training samples (*parents*).

Two users share the request builder here, so that they differ only in which parents they
pick:

* ``generator.real_init`` (:func:`real_init_requests`): the static requests start from the
  latents of real training samples drawn at random, k per class, seeded by (seed, round)
  (Real-Fake's latent prior of real images, which GenDataAgent also starts from, appendix D,
  Table 8); the baseline that GenDataAgent's choice of parents is measured against;
* GenDataAgent's hard samples (:mod:`utilgen.feedback.hard_samples`): the parents are the
  real samples with the lowest marginal p(y|x).

Outputs are spread over the parents in turn (:func:`class_slots`); a parent's t-th output
takes its prompt and strength from :func:`prompt_and_strength`; :func:`around_parents` turns
(parent, t) slots into requests whose ``init_image`` is the parent's image and whose
``parent_id`` and ``strength`` end up in every sample's provenance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from utilgen.config import GeneratorConfig
from utilgen.config.generator import IMG2IMG_KINDS
from utilgen.data.labelled import LabelledData
from utilgen.generate.prompts import (
    CaptionTable,
    captions_for,
    class_prompt,
    class_texts,
    request_seed,
)
from utilgen.generate.request import GenerationError, GenerationRequest


class Img2ImgParent(Protocol):
    """A real training sample to generate around (what :func:`around_parents` reads)."""

    @property
    def id(self) -> str:
        """The sample's id (the ``parent_id`` of every request around it)."""
        ...

    @property
    def label(self) -> int:
        """Its class index."""
        ...

    @property
    def class_name(self) -> str:
        """Its class name."""
        ...

    @property
    def index(self) -> int:
        """Its position in the real training data."""
        ...


P = TypeVar("P", bound=Img2ImgParent)


@dataclass(frozen=True)
class RandomParent:
    """A real training sample drawn at random to generate around (``generator.real_init``).

    Attributes:
        id: the real sample's id (becomes ``parent_id``).
        label: its class index.
        class_name: its class name.
        index: its position in the real training data.
    """

    id: str
    label: int
    class_name: str
    index: int


@dataclass(frozen=True)
class ParentPrompt:
    """One text prompt to generate around a parent with.

    Attributes:
        caption: the parent's caption as the caption source gave it (before any
            perturbation; "" without captions).
        prompt: the full prompt: the class prompt (with the caption), an LLM rewrite of it,
            or the class name for the class-conditional built-in generator.
        perturbation: the perturbation tag of an LLM rewrite, or "" for none.
    """

    caption: str
    prompt: str
    perturbation: str


def prompt_and_strength(t: int, num_prompts: int, num_strengths: int) -> tuple[int, int]:
    """(prompt index, strength index) of a parent's ``t``-th output (t = 0, 1, ...).

    Prompt ``t mod m`` and strength ``(t + t div L) mod S`` with L = lcm(m, S): within a
    block of L outputs consecutive ones change both, and the first m * S outputs cover every
    (prompt, strength) pair exactly once (block b = t div L holds the pairs with strength -
    prompt = b mod gcd(m, S), by the Chinese remainder theorem).
    """
    block = t // math.lcm(num_prompts, num_strengths)
    return t % num_prompts, (t + block) % num_strengths


def class_slots(members: Sequence[P], per_class: int, key: str) -> list[tuple[P, int, str, int]]:
    """(parent, its output t, seed key, output j) of a class's ``per_class`` outputs: output
    j goes to parent ``j mod k`` as its output ``j div k``, so every parent gets one before
    any gets a second (with per_class < k only the first per_class parents are used)."""
    if not members:
        raise GenerationError(f"no parents to generate {key} around")
    return [(members[j % len(members)], j // len(members), key, j) for j in range(per_class)]


def parent_caption(parent: Img2ImgParent, rank: int, captions: CaptionTable) -> str:
    """The caption of ``parent``: its own (tied to its id), else caption ``rank mod n`` of
    the n captions of its class that are tied to no image (else of all its class's
    captions), so the parents of a class spread over the class captions; "" when neither
    the parent nor its class has one."""
    own = captions.for_sample(parent.id)
    if own:
        return own
    untied = [
        e.caption for e in captions.entries if e.class_name == parent.class_name and not e.sample_id
    ]
    shared = untied or list(captions.for_class(parent.class_name))
    return shared[rank % len(shared)] if shared else ""


def plain_prompt(generator: GeneratorConfig, class_name: str, class_text: str) -> ParentPrompt:
    """A parent's one unperturbed prompt without captions: the class name for the built-in
    generator (which conditions on the label), the plain class prompt for diffusers."""
    if generator.kind == "builtin-diffusion":
        return ParentPrompt("", class_name, "")
    return ParentPrompt("", class_prompt(class_text, "", generator.diffusers), "")


def check_img2img_generator(generator: GeneratorConfig, setting: str) -> None:
    """Raise :class:`GenerationError` unless ``generator.kind`` is one whose requests this
    module knows how to build (class labels for the built-in one, class texts for
    diffusers); ``setting`` names what asked for img2img."""
    if generator.kind not in IMG2IMG_KINDS:
        raise GenerationError(
            f"{setting} needs an image generator, not generator.kind={generator.kind}; set "
            f"generator.kind to {' or '.join(IMG2IMG_KINDS)}"
        )


def around_parents(
    slots: Sequence[tuple[P, int, str, int]],
    real_train: LabelledData,
    *,
    generator: GeneratorConfig,
    strengths: Sequence[float],
    seed: int,
    round_index: int,
    prompts: Callable[[P], Sequence[ParentPrompt]],
    metadata: Callable[[P], Mapping[str, Any]],
) -> list[GenerationRequest]:
    """One one-output img2img request per slot (parent, t, key, j), in slot order.

    Output t of a parent takes prompt ``p`` of ``prompts(parent)`` (which must not be empty)
    and strength ``s`` of ``strengths`` by :func:`prompt_and_strength`. Each request:
    ``init_image`` the parent's image in ``real_train``, ``strength``, ``parent_id`` the
    parent's id, the prompt and its perturbation tag, the negative prompt (diffusers) or
    guidance and steps (built-in generator), ``metadata`` ``metadata(parent)`` plus
    ``"caption"`` (the prompt's caption before perturbation), and the seed
    :func:`~utilgen.generate.prompts.request_seed` (seed, round, key, j): different per
    output, the same on resume.

    Raises:
        GenerationError: the generator is not builtin-diffusion or diffusers.
    """
    check_img2img_generator(generator, "img2img around real samples")
    builtin = generator.kind == "builtin-diffusion"
    requests: list[GenerationRequest] = []
    for parent, t, key, j in slots:
        options = list(prompts(parent))
        p, s = prompt_and_strength(t, len(options), len(strengths))
        chosen = options[p]
        requests.append(
            GenerationRequest(
                label=parent.label,
                class_name=parent.class_name,
                seed=request_seed(seed, round_index, key, j),
                prompt=chosen.prompt,
                negative_prompt="" if builtin else generator.diffusers.negative_prompt,
                guidance_scale=generator.builtin.guidance_scale if builtin else None,
                num_inference_steps=generator.builtin.steps if builtin else None,
                init_image=np.asarray(real_train.items[parent.index]),
                strength=float(strengths[s]),
                parent_id=parent.id,
                perturbation=chosen.perturbation,
                metadata={**metadata(parent), "caption": chosen.caption},
            )
        )
    return requests


# generator.real_init: random parents ------------------------------------------------------


def random_parents(
    real_train: LabelledData, k: int, *, seed: int, round_index: int
) -> dict[int, list[RandomParent]]:
    """Per class label, ``k`` of its real training samples drawn at random without
    replacement, in the order drawn: the same for the same (seed, round, class samples; their
    order in ``real_train`` does not matter), another draw in another round or under another
    seed.

    Raises:
        GenerationError: a class has fewer than ``k`` samples.
    """
    counts = real_train.class_counts()
    out: dict[int, list[RandomParent]] = {}
    for label, name in enumerate(real_train.class_names):
        if counts[label] < k:
            raise GenerationError(
                f"generator.real_init.k={k} exceeds the {counts[label]} real training "
                f"sample(s) of class {name!r}; set generator.real_init.k to at most "
                f"{int(counts.min())} (the smallest class)"
            )
        rng = np.random.default_rng(request_seed(seed, round_index, f"real-init/{name}", 0))
        members = np.flatnonzero(real_train.labels == label)
        members = members[np.argsort([real_train.ids[i] for i in members], kind="stable")]
        drawn = rng.choice(members, size=k, replace=False)
        out[label] = [
            RandomParent(id=real_train.ids[i], label=label, class_name=name, index=int(i))
            for i in drawn
        ]
    return out


def real_init_requests(
    cfg: GeneratorConfig,
    real_train: LabelledData,
    *,
    seed: int,
    round_index: int,
    captions: CaptionTable | None = None,
) -> list[GenerationRequest]:
    """The static requests with ``generator.real_init``: ``cfg.per_class`` one-output
    img2img requests per class, class by class, around ``cfg.real_init.k`` random real
    training samples of the class (:func:`random_parents`), spread and cycled through
    ``cfg.real_init.strengths`` as hard samples are (:func:`class_slots`,
    :func:`around_parents`; seed keys ``real-init/<class>``).

    Prompts: the class name (built-in generator); for diffusers the class prompt with the
    parent's caption (:func:`parent_caption`) when ``captions`` are given or the config names
    a caption source, else the plain class prompt. ``metadata``: ``{"real_init": true,
    "caption": ...}``.

    Raises:
        GenerationError: the generator is neither builtin-diffusion nor diffusers, the data
            are not images, or a class has fewer than ``k`` samples.
        ConfigError: ``generator.diffusers.prompt_map`` lacks a class.
    """
    check_img2img_generator(cfg, "generator.real_init")
    if real_train.modality != "image":
        raise GenerationError(
            f"generator.real_init generates img2img around real images, but the data are "
            f"{real_train.modality}s; set generator.real_init.enabled=false"
        )
    init = cfg.real_init
    parents = random_parents(real_train, init.k, seed=seed, round_index=round_index)
    builtin = cfg.kind == "builtin-diffusion"
    texts = {} if builtin else class_texts(real_train.class_names, cfg.diffusers)
    if not builtin and captions is None:
        captions = captions_for(cfg.diffusers, real_train)
    prompt: dict[str, ParentPrompt] = {}
    for members in parents.values():
        for rank, parent in enumerate(members):
            caption = "" if builtin or captions is None else parent_caption(parent, rank, captions)
            name = parent.class_name
            prompt[parent.id] = (
                ParentPrompt(caption, class_prompt(texts[name], caption, cfg.diffusers), "")
                if caption
                else plain_prompt(cfg, name, texts.get(name, name))
            )
    slots = [
        slot
        for label, name in enumerate(real_train.class_names)
        for slot in class_slots(parents[label], cfg.per_class, f"real-init/{name}")
    ]
    return around_parents(
        slots,
        real_train,
        generator=cfg,
        strengths=init.strengths,
        seed=seed,
        round_index=round_index,
        prompts=lambda parent: [prompt[parent.id]],
        metadata=lambda parent: {"real_init": True},
    )
