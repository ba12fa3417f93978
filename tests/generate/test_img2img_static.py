"""``generator.real_init``: the static requests as img2img around random real training
samples (Real-Fake's latent prior; the baseline of GenDataAgent's hard samples).

* Requests, through the generator kinds (built-in on the digits splits, diffusers on toy
  images): every request starts from the image of a real training sample of its own class,
  k distinct parents a class, every parent used before any twice, strengths cycled as hard
  samples cycle them; the same for the same (seed, round), another draw in another round or
  under another seed.
* Prompts: the class name (built-in), the parent's caption prompt or the plain class prompt
  (diffusers).
* Generation: the tiny Stable Diffusion pipeline runs them as img2img; the samples record
  parent and strength.
* Refusals: text generators and too-weak strengths (config, one line), k above a class's
  size, text data, and prompt_ascent / noise_opt, which optimise text-to-image requests.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest
from tiny_sd import real_data, tiny_sd_pipeline

from utilgen.config import GeneratorConfig, RunConfig, resolve_config
from utilgen.data import Splits
from utilgen.data.labelled import LabelledData
from utilgen.errors import ConfigError
from utilgen.generate import GenerationError, GenerationRequest
from utilgen.generate.diffusers_backend import DiffusersGenerator
from utilgen.generate.factory import static_requests
from utilgen.generate.img2img import random_parents, real_init_requests
from utilgen.generate.prompts import CaptionEntry, CaptionTable
from utilgen.loop.run import plan_run
from utilgen.pool.payload import decode_image

STRENGTHS = [0.5, 0.75, 0.9]


@pytest.fixture(autouse=True)
def _quiet(quiet_one_thread: None) -> Iterator[None]:
    yield


def _digits(*extra: str) -> RunConfig:
    return resolve_config("digits-static-img2img", ["data.k_shot=5", *extra])


def _splits(data: LabelledData) -> Splits:
    return Splits(train=data, val=data, test=data)


def _check_around_own_class(
    requests: list[GenerationRequest], train: LabelledData, k: int, per_class: int
) -> None:
    """Every request is img2img around a real training sample of its class: its image, its
    id; k distinct parents a class, each used per_class // k or one more times, the
    t-th output of a parent at strength (t + t div 3) mod 3."""
    index = {sample_id: i for i, sample_id in enumerate(train.ids)}
    assert len(requests) == per_class * train.num_classes
    uses: Counter[str] = Counter()
    for request in requests:
        i = index[request.parent_id]  # a real training sample ...
        assert train.labels[i] == request.label  # ... of the request's own class
        assert request.init_image is not None
        np.testing.assert_array_equal(request.init_image, np.asarray(train.items[i]))
        t = uses[request.parent_id]  # hard samples' cycling with one prompt (S = 3)
        assert request.strength == STRENGTHS[(t + t // 3) % 3]
        assert request.metadata["real_init"] is True
        uses[request.parent_id] += 1
    for label in range(train.num_classes):
        counts = [n for pid, n in uses.items() if train.labels[index[pid]] == label]
        assert len(counts) == k and sum(counts) == per_class
        assert max(counts) - min(counts) <= 1


def _parents(requests: list[GenerationRequest]) -> list[str]:
    return [r.parent_id for r in requests]


def test_builtin_static_requests_start_from_random_real_digits_of_their_class() -> None:
    cfg = _digits()
    plan = plan_run(cfg)  # the run's own round-1 requests
    train = plan.splits.train
    requests = list(plan.requests)
    _check_around_own_class(requests, train, k=3, per_class=10)
    assert {r.prompt for r in requests} == set(train.class_names)  # the built-in: class names
    assert all(r.num_inference_steps == cfg.generator.builtin.steps for r in requests)

    def again(seed: int, round_index: int) -> list[GenerationRequest]:
        return static_requests(
            cfg.generator, splits=plan.splits, seed=seed, round_index=round_index
        )

    same = again(cfg.seed, 1)
    assert _parents(same) == _parents(requests)
    assert [r.seed for r in same] == [r.seed for r in requests]
    assert len({r.seed for r in requests}) == len(requests)
    # another round or seed draws other parents (10 classes x 3 of 5: a repeat of all is
    # (1/10)^10 per draw) and other noise
    for other in (again(cfg.seed, 2), again(cfg.seed + 1, 1)):
        _check_around_own_class(other, train, k=3, per_class=10)
        assert _parents(other) != _parents(requests)
        assert not {r.seed for r in other} & {r.seed for r in requests}


def test_parents_are_a_uniform_draw_without_replacement() -> None:
    """Over many rounds every digit of a class is drawn about equally often."""
    train = real_data(("cat", "dog"), per_class=5)
    counts: Counter[str] = Counter()
    for r in range(1, 401):
        parents = random_parents(train, 2, seed=0, round_index=r)
        for members in parents.values():
            assert len({p.id for p in members}) == 2
            counts.update(p.id for p in members)
    assert set(counts) == set(train.ids)
    # 400 draws of 2 of 5: 160 each in expectation, standard deviation about 9.8
    assert all(120 <= n <= 200 for n in counts.values()), counts

    # the draw does not depend on the order of the samples in the training data
    def drawn(data: LabelledData) -> dict[int, list[str]]:
        parents = random_parents(data, 2, seed=0, round_index=1)
        for members in parents.values():
            assert all(data.ids[p.index] == p.id for p in members)
        return {label: [p.id for p in members] for label, members in parents.items()}

    assert drawn(train.subset(np.arange(len(train))[::-1])) == drawn(train)


CAPTIONS = CaptionTable(
    (
        CaptionEntry("cat", "sitting on a sofa", "toy/cat/0"),
        CaptionEntry("cat", "asleep in the sun"),
        CaptionEntry("dog", "running on grass"),
    )
)


def test_diffusers_requests_prompt_with_the_parents_caption_or_the_class() -> None:
    data = real_data(("cat", "dog"), per_class=3)
    gen = GeneratorConfig.model_validate(
        {
            "kind": "diffusers",
            "per_class": 6,
            "diffusers": {"steps": 4},
            "real_init": {"enabled": True, "k": 3, "strengths": STRENGTHS},
        }
    )
    plain = static_requests(gen, splits=_splits(data), seed=0, round_index=1)
    _check_around_own_class(plain, data, k=3, per_class=6)
    assert {r.prompt for r in plain} == {"a photo of a cat", "a photo of a dog"}
    assert {r.negative_prompt for r in plain} == {gen.diffusers.negative_prompt}
    assert all(r.guidance_scale is None and r.num_inference_steps is None for r in plain)

    captioned = real_init_requests(gen, data, seed=0, round_index=1, captions=CAPTIONS)
    assert _parents(captioned) == _parents(plain)
    for request in captioned:
        own = CAPTIONS.for_sample(request.parent_id)
        caption = request.metadata["caption"]
        assert caption == own or (not own and caption in CAPTIONS.for_class(request.class_name))
        assert request.prompt == f"a photo of a {request.class_name}, which is {caption}"
    # the untied cat caption goes to the other cat parents
    assert {r.metadata["caption"] for r in captioned if r.label == 0} == {
        "sitting on a sofa",
        "asleep in the sun",
    }


def test_tiny_stable_diffusion_generates_them_as_img2img_with_provenance() -> None:
    data = real_data(("cat", "dog"), per_class=3)
    gen = GeneratorConfig.model_validate(
        {
            "kind": "diffusers",
            "per_class": 2,
            "diffusers": {"steps": 4},
            "real_init": {"enabled": True, "k": 2, "strengths": [0.5, 1.0]},
        }
    )
    requests = static_requests(gen, splits=_splits(data), seed=0, round_index=1)
    generator = DiffusersGenerator(tiny_sd_pipeline(), model="tiny-sd", batch_size=4, steps=4)
    samples = list(generator.generate(requests, round_index=1, progress=False))
    assert len(samples) == 4
    for request, sample in zip(requests, samples, strict=True):
        details = json.loads(sample.details)
        assert details["mode"] == "img2img"
        assert sample.parent_id == request.parent_id and sample.parent_id in data.ids
        assert sample.parent_id.split("/")[1] == sample.class_name
        # exact: the configured strength is passed through, never computed
        assert sample.strength == request.strength == 0.5  # the first output of each parent
        assert details["request"]["metadata"] == {"real_init": True, "caption": ""}
        assert decode_image(sample.payload).shape == (32, 32, 3)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("generator.kind=causal-lm", "generator.real_init starts generation from real images"),
        ("generator.real_init.strengths=[0.0]", "(0, 1]"),
        ("generator.real_init.k=0", "real_init.k"),
    ],
)
def test_config_refuses_real_init_that_cannot_work_in_one_line(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        _digits(override)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_too_weak_strengths_for_diffusers_steps_are_refused() -> None:
    with pytest.raises(ConfigError, match="run no denoising step"):
        _digits("generator.kind=diffusers", "generator.diffusers.steps=1")
    _digits("generator.kind=diffusers", "generator.diffusers.steps=2")  # int(2 * 0.5) = 1
    # generator.kind=none generates nothing: nothing to refuse
    GeneratorConfig.model_validate({"kind": "none", "real_init": {"enabled": True}})


@pytest.mark.parametrize("component", ["prompt_ascent", "noise_opt"])
def test_text_to_image_optimisers_are_refused(component: str) -> None:
    with pytest.raises(ConfigError, match=f"{component}.*img2img") as info:
        _digits(
            "loop.rounds=2", "valuation.scores=[marginal]", f"feedback.components=[{component}]"
        )
    assert "\n" not in str(info.value)


def test_hard_samples_after_a_real_init_round_is_allowed() -> None:
    cfg = _digits(
        "loop.rounds=2",
        "feedback.components=[hard_samples]",
        "feedback.hard_samples.captions=false",
        "valuation.scores=[marginal]",
    )
    assert cfg.generator.real_init.enabled


def test_k_above_a_class_size_and_text_data_are_refused() -> None:
    with pytest.raises(GenerationError, match=r"real_init\.k=6 exceeds the 5") as info:
        plan_run(_digits("generator.real_init.k=6"))
    assert "\n" not in str(info.value)
    texts = LabelledData(
        modality="text",
        items=("a", "b"),
        labels=np.array([0, 1]),
        class_names=("x", "y"),
        ids=("t/0", "t/1"),
        name="texts",
    )
    gen = _digits().generator
    with pytest.raises(GenerationError, match="data are texts"):
        real_init_requests(gen, texts, seed=0, round_index=1)


def test_off_by_default_and_static_requests_unchanged() -> None:
    cfg = resolve_config("digits-static", ["data.k_shot=5"])
    assert not cfg.generator.real_init.enabled
    requests = plan_run(cfg).requests
    assert all(r.init_image is None and r.parent_id == "" for r in requests)
