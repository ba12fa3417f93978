"""GenDataAgent's hard-sample feedback: img2img around the lowest-marginal real samples.

After a training round, every real training sample is scored with the marginal p(y|x)
(shared/papers/002, Eq. 1, :func:`utilgen.value.logit_scores.marginal`). Per class the k samples
with the lowest marginal, those nearest the decision boundary, become *parents*: round r+1
generates img2img around each of them at several strengths (appendix D, Table 8: 0.5, 0.75,
0.9), prompted with m LLM-perturbed captions of the parent (§2.3, Eq. 2–3). Every generated
sample records its parent (``parent_id``), its strength and the caption it came from.

The work is split so that each step can be tested and resumed on its own:

1. :func:`check_hard_sample_inputs` refuses settings that cannot work (k above a class's
   size, captions without a caption source or without a text-conditioned generator, a
   strength that runs no denoising step) before anything is written;
2. :func:`hard_parents` picks the parents with the task model;
3. :func:`perturbed_parent_captions` asks the LM for the m rewrites of each parent's prompt
   (the only step that needs an LM);
4. :func:`hard_sample_requests` turns parents and prompts into generation requests (with
   :mod:`utilgen.generate.img2img`'s builder, which ``generator.real_init`` shares: random
   parents, the baseline these are measured against);
5. :func:`write_hard_sample_plan` / :func:`read_hard_sample_plan` keep steps 2–3 in the run
   directory, so a resumed round asks for exactly the same requests.

Ranking scope (``cfg.scope``): GenDataAgent ranks the whole training set and keeps the k
lowest (``global``, the default; here k x classes, so both scopes pick as many parents);
``per_class`` takes the k lowest of each class, so every class is generated around.
Departures from the paper: it fixes one strength per experiment; here requests cycle
through the configured ones. What the LM perturbs is the whole class prompt ``"a photo
of a {class}, which is {caption}"``, as in the paper's user prompt; the text before its
first comma is kept verbatim (:mod:`utilgen.generate.perturb`), so the class text (a
textual-inversion token, a ``prompt_map`` entry) survives the rewrite.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utilgen.atomic import write_json_atomic
from utilgen.config import GeneratorConfig, HardSampleConfig
from utilgen.config.diffusion import DiffusersConfig
from utilgen.config.text_generation import CaptionPerturbationConfig
from utilgen.data.labelled import LabelledData
from utilgen.feedback.errors import FeedbackError
from utilgen.generate import img2img
from utilgen.generate.img2img import ParentPrompt, around_parents, class_slots, plain_prompt
from utilgen.generate.perturb import TextCompleter, perturb_captions, split_caption
from utilgen.generate.prompts import CaptionTable, class_prompt, class_texts, request_seed
from utilgen.generate.request import GenerationError, GenerationRequest
from utilgen.task.base import TaskModel
from utilgen.value.logit_scores import OutputScore
from utilgen.value.selectors import rank_order

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HardParent:
    """A real training sample chosen to generate around.

    Attributes:
        id: the real sample's id (becomes ``parent_id`` of every sample made around it).
        label: its class index.
        class_name: its class name.
        marginal: p(y|x) of its own class under the scoring model, in [0, 1].
        index: its position in the real training data the parents were chosen from.
    """

    id: str
    label: int
    class_name: str
    marginal: float
    index: int


# 1. checks ------------------------------------------------------------------------------


def _check_class_sizes(k: int, real_train: LabelledData) -> None:
    counts = real_train.class_counts()
    for label, name in enumerate(real_train.class_names):
        if counts[label] < k:
            raise FeedbackError(
                f"feedback.hard_samples.k={k} exceeds the {counts[label]} real training "
                f"sample(s) of class {name!r}; set feedback.hard_samples.k to at most "
                f"{int(counts.min())} (the smallest class)"
            )


def _check_image_generator(generator: GeneratorConfig) -> None:
    """Hard samples are img2img with the generator families :mod:`utilgen.generate.img2img`
    knows how to prompt; its check, raised as this module's error."""
    try:
        img2img.check_img2img_generator(generator, "feedback.hard_samples")
    except GenerationError as err:
        raise FeedbackError(str(err)) from None


def check_hard_sample_inputs(
    cfg: HardSampleConfig,
    real_train: LabelledData,
    *,
    generator: GeneratorConfig,
    captions: CaptionTable | None = None,
) -> None:
    """Raise :class:`FeedbackError` (one line, naming the setting and the fix) when hard-sample
    generation cannot run on ``real_train`` with these settings; returns None otherwise.

    Checks: the data are images; every class has at least ``cfg.k`` samples; the generator
    is an image generator; with ``cfg.captions``, the generator is text-conditioned
    (diffusers), ``captions`` is given and has a caption for every class, and the caption
    prompt template has the comma that caption perturbation rewrites after; with diffusers,
    every strength runs at least one denoising step.
    """
    if real_train.modality != "image":
        raise FeedbackError(
            f"feedback.hard_samples generates img2img around real images, but the data are "
            f"{real_train.modality}s; remove hard_samples from feedback.components"
        )
    if cfg.scope == "per_class":
        _check_class_sizes(cfg.k, real_train)
    elif cfg.k * real_train.num_classes > len(real_train):
        raise FeedbackError(
            f"feedback.hard_samples.k={cfg.k} asks for {cfg.k * real_train.num_classes} parents "
            f"(k x {real_train.num_classes} classes) from {len(real_train)} real training "
            "samples; lower feedback.hard_samples.k"
        )
    _check_image_generator(generator)
    if generator.kind == "diffusers":
        steps = generator.diffusers.steps
        too_weak = [s for s in cfg.strengths if int(steps * s) < 1]
        if too_weak:
            raise FeedbackError(
                f"feedback.hard_samples.strengths {too_weak} run no denoising step with "
                f"generator.diffusers.steps={steps} (int(steps * strength) = 0); raise the "
                "strengths or the steps"
            )
    if not cfg.captions:
        return
    if generator.kind != "diffusers":
        raise FeedbackError(
            "feedback.hard_samples.captions needs a text-conditioned generator (diffusers); "
            "set feedback.hard_samples.captions=false for the built-in generator"
        )
    if captions is None:
        raise FeedbackError(
            "feedback.hard_samples.captions needs captions of the real images: set "
            "generator.diffusers.captions_file or generator.diffusers.captioner, or "
            "feedback.hard_samples.captions=false"
        )
    for name in real_train.class_names:
        if not captions.for_class(name):
            raise FeedbackError(
                f"feedback.hard_samples.captions: the captions have none for class {name!r}, "
                "so its parents cannot be perturbed; add captions of that class or set "
                "feedback.hard_samples.captions=false"
            )
    template = generator.diffusers.prompt_template
    try:
        split_caption(template.replace("{class}", "x").replace("{caption}", "y"))
    except GenerationError:
        raise FeedbackError(
            f"feedback.hard_samples.captions perturbs the scene after the first comma of "
            f"generator.diffusers.prompt_template, which has none ({template!r}); use a "
            "template like 'a photo of a {class}, which is {caption}'"
        ) from None


# 2. the parents -------------------------------------------------------------------------


def hard_parents(
    model: TaskModel, real_train: LabelledData, k: int, *, scope: str = "per_class"
) -> dict[int, list[HardParent]]:
    """Per class label, its parents among the real training samples with the lowest
    marginal p(y|x) under ``model``, lowest first (equal marginals: smaller id first).

    ``scope="per_class"``: the ``k`` lowest of each class. ``scope="global"``: the
    ``k x (number of classes)`` lowest of the whole training set (GenDataAgent ranks all
    samples), grouped by class, so a class may have more than ``k`` parents or none. Every
    class of ``real_train`` has an entry, in label order.

    Raises:
        FeedbackError: ``k < 1``, or (per class) a class has fewer than ``k`` samples.
    """
    if k < 1:
        raise FeedbackError(f"feedback.hard_samples.k must be >= 1, got {k}")
    if scope == "per_class":
        _check_class_sizes(k, real_train)
    scores = OutputScore("marginal").score(model, real_train)

    def lowest(members: np.ndarray, n: int) -> list[int]:
        order = rank_order(
            scores[members], [real_train.ids[i] for i in members], highest_first=False
        )
        return [int(i) for i in members[order][:n]]

    if scope == "global":
        every = np.arange(len(real_train))
        chosen = lowest(every, k * real_train.num_classes)
        picked = {
            label: [i for i in chosen if real_train.labels[i] == label]
            for label in range(real_train.num_classes)
        }
    else:
        picked = {
            label: lowest(np.flatnonzero(real_train.labels == label), k)
            for label in range(real_train.num_classes)
        }
    out = {
        label: [
            HardParent(
                id=real_train.ids[i],
                label=label,
                class_name=real_train.class_names[label],
                marginal=float(scores[i]),
                index=i,
            )
            for i in picked[label]
        ]
        for label in range(real_train.num_classes)
    }
    marginals = [p.marginal for members in out.values() for p in members] or [float("nan")]
    log.info(
        "hard samples (%s): %d parent(s), marginal p(y|x) from %.3g to %.3g",
        scope,
        sum(len(m) for m in out.values()),
        min(marginals),
        max(marginals),
    )
    return out


# 3. the prompts: LLM-perturbed captions -------------------------------------------------


def parent_caption(parent: HardParent, rank: int, captions: CaptionTable) -> str:
    """The caption of ``parent``: its own (tied to its id), else caption ``rank mod n`` of
    the n captions of its class that are tied to no image (else of all its class's
    captions), so parents of a class spread over the class captions.

    Raises:
        FeedbackError: neither the parent nor its class has a caption.
    """
    caption = img2img.parent_caption(parent, rank, captions)
    if not caption:
        raise FeedbackError(
            f"feedback.hard_samples.captions: no caption for parent {parent.id!r} nor for its "
            f"class {parent.class_name!r}; add captions of that class or set "
            "feedback.hard_samples.captions=false"
        )
    return caption


def perturbed_parent_captions(
    lm: TextCompleter,
    parents: Mapping[int, Sequence[HardParent]],
    captions: CaptionTable,
    perturbation: CaptionPerturbationConfig,
    *,
    diffusers: DiffusersConfig,
    class_names: Sequence[str],
    seed: int,
    round_index: int,
) -> dict[str, list[ParentPrompt]]:
    """Parent id -> its m = ``perturbation.versions`` prompts: LLM rewrites of the class
    prompt with the parent's caption (GenDataAgent Eq. 2).

    All prompts are perturbed in one :func:`~utilgen.generate.perturb.perturb_captions`
    call, seeded by (``seed``, ``round_index``): the same round gets the same rewrites.
    A parent whose rewrites fall short of m keeps those found (the perturbation module
    warns). One with none at all is handled by ``perturbation.on_shortfall``: ``error``
    raises; ``warn`` logs a warning and gives it its unperturbed caption prompt (tag "").
    It is never given the plain class prompt.

    Raises:
        FeedbackError: a parent has no caption (see :func:`parent_caption`).
        GenerationError: a prompt has no comma to perturb after, or fewer than m rewrites
            with ``on_shortfall="error"``.
        ConfigError: ``diffusers.prompt_map`` lacks a class.
    """
    texts = class_texts(class_names, diffusers)
    sentence: dict[str, tuple[str, str]] = {}  # parent id -> (caption, class prompt)
    for members in parents.values():
        for rank, parent in enumerate(members):
            caption = parent_caption(parent, rank, captions)
            prompt = class_prompt(texts[parent.class_name], caption, diffusers)
            sentence[parent.id] = (caption, prompt)
    unique = sorted({prompt for _, prompt in sentence.values()})
    perturbation_seed = request_seed(seed, round_index, "caption-perturbation", 0)
    results = perturb_captions(lm, unique, perturbation, seed=perturbation_seed)
    rewrites = {r.caption: r for r in results}
    out: dict[str, list[ParentPrompt]] = {}
    for parent_id, (caption, prompt) in sentence.items():
        found = rewrites[prompt]
        if found.rewrites:
            out[parent_id] = [ParentPrompt(caption, r, found.perturbation) for r in found.rewrites]
            continue
        # perturb_captions raised already under on_shortfall="error" (fewer than m found).
        log.warning(
            "hard samples: the LM gave no valid rewrite of %r for parent %s in %d replies; "
            "generating around it with the unperturbed caption prompt",
            prompt,
            parent_id,
            found.attempts,
        )
        out[parent_id] = [ParentPrompt(caption, prompt, "")]
    return out


# 4. the requests ------------------------------------------------------------------------


def _output_slots(
    parents: Mapping[int, Sequence[HardParent]],
    real_train: LabelledData,
    per_class: int,
    scope: str,
) -> list[tuple[HardParent, int, str, int]]:
    """(parent, its output t, seed key, output j under that key) of every request.

    Per class: output j of a class (j < per_class) goes to its parent ``j mod k``, keyed
    ``hard-sample/<class>``. Global: output j of ``per_class x classes`` goes to parent
    ``j mod P`` of all P parents ranked by marginal (lowest first, ties by id), keyed
    ``hard-sample/global``: the same number of samples, spread over the hardest parents
    whatever their class.
    """
    if scope == "global":
        every = sorted(
            (p for members in parents.values() for p in members), key=lambda p: (p.marginal, p.id)
        )
        if not every:
            raise FeedbackError("no hard-sample parents were picked; pick them with k >= 1")
        total = per_class * real_train.num_classes
        return [
            (every[j % len(every)], j // len(every), "hard-sample/global", j) for j in range(total)
        ]
    slots = []
    for label in sorted(parents):
        members = list(parents[label])
        if not members:
            raise FeedbackError(f"class {label} has no hard-sample parents; pick them with k >= 1")
        slots += class_slots(members, per_class, f"hard-sample/{real_train.class_names[label]}")
    return slots


def hard_sample_requests(
    parents: Mapping[int, Sequence[HardParent]],
    real_train: LabelledData,
    *,
    cfg: HardSampleConfig,
    generator: GeneratorConfig,
    per_class: int,
    seed: int,
    round_index: int,
    captions: Mapping[str, Sequence[ParentPrompt]] | None = None,
) -> list[GenerationRequest]:
    """``per_class`` one-output img2img requests per class around the parents (on average,
    with ``cfg.scope=global``), in the order of :func:`_output_slots`.

    Per class: output j of a class (j = 0 .. per_class - 1) goes to parent ``j mod k``
    (parents lowest marginal first), as that parent's output t = ``j div k``; so every parent
    gets a request before any gets a second, and with per_class < k only the hardest
    per_class parents are used. Global: the same over all parents at once. Output t of a
    parent takes its prompt and strength from
    :func:`~utilgen.generate.img2img.prompt_and_strength` (m prompts: its ``captions`` entry,
    or one class prompt when ``cfg.captions`` is false).

    Each request: ``init_image`` the parent's image, ``strength``, ``parent_id`` the parent's
    id, ``prompt`` the (perturbed) caption prompt, or without captions the plain class prompt
    (diffusers) or the class name (built-in generator, which conditions on the label),
    ``perturbation`` the rewrite's tag, ``metadata`` ``{"hard_sample": true,
    "parent_marginal": p, "caption": <the parent's caption before perturbation, "" without
    captions>}``. Seeds come from :func:`~utilgen.generate.prompts.request_seed` keyed by
    (seed, round, ``hard-sample/<class>``, j): different per output, the same on resume.

    Raises:
        FeedbackError: ``captions`` is missing (or given with ``cfg.captions`` false), lacks a
            parent or gives one no prompt; the generator is not an image generator.
    """
    if per_class < 0:
        raise FeedbackError(f"hard-sample outputs per class must be >= 0, got {per_class}")
    _check_image_generator(generator)
    if cfg.captions and captions is None:
        raise FeedbackError(
            "feedback.hard_samples.captions is true but no perturbed captions were given; "
            "make them with perturbed_parent_captions or set feedback.hard_samples.captions=false"
        )
    if not cfg.captions and captions is not None:
        raise FeedbackError(
            "perturbed captions were given but feedback.hard_samples.captions is false; set it "
            "to true to prompt with them"
        )
    texts = (
        {}
        if generator.kind == "builtin-diffusion"
        else class_texts(real_train.class_names, generator.diffusers)
    )

    def prompts(parent: HardParent) -> list[ParentPrompt]:
        if captions is None:
            name = parent.class_name
            return [plain_prompt(generator, name, texts.get(name, name))]
        found = list(captions.get(parent.id, ()))
        if not found:
            raise FeedbackError(
                f"no perturbed caption for hard-sample parent {parent.id!r}; make the "
                "captions for the same parents (perturbed_parent_captions)"
            )
        return found

    return around_parents(
        _output_slots(parents, real_train, per_class, cfg.scope),
        real_train,
        generator=generator,
        strengths=cfg.strengths,
        seed=seed,
        round_index=round_index,
        prompts=prompts,
        metadata=lambda parent: {"hard_sample": True, "parent_marginal": parent.marginal},
    )


# 5. the plan in the run directory -------------------------------------------------------


def write_hard_sample_plan(
    path: str | Path,
    parents: Mapping[int, Sequence[HardParent]],
    captions: Mapping[str, Sequence[ParentPrompt]] | None,
) -> Path:
    """Write the parents (with their marginals) and their prompts as JSON, atomically;
    returns the path. Read back with :func:`read_hard_sample_plan`."""
    doc: dict[str, Any] = {
        "parents": {str(label): [asdict(p) for p in members] for label, members in parents.items()},
        "captions": None
        if captions is None
        else {pid: [asdict(c) for c in prompts] for pid, prompts in captions.items()},
    }
    return write_json_atomic(path, doc)


def read_hard_sample_plan(
    path: str | Path,
) -> tuple[dict[int, list[HardParent]], dict[str, list[ParentPrompt]] | None]:
    """The (parents, captions) written by :func:`write_hard_sample_plan`.

    Raises:
        FeedbackError: the file is missing or not a plan.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        parents = {
            int(label): [HardParent(**p) for p in members]
            for label, members in sorted(doc["parents"].items(), key=lambda kv: int(kv[0]))
        }
        raw = doc["captions"]
        captions = (
            None
            if raw is None
            else {pid: [ParentPrompt(**c) for c in prompts] for pid, prompts in raw.items()}
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FeedbackError(
            f"hard-sample plan {path} cannot be read ({type(err).__name__}); delete it to pick "
            "the parents again"
        ) from None
    return parents, captions
