"""GenDataAgent hard-sample feedback: the parents, their perturbed captions, the requests, and
what the generated samples record.

* Parents: a real ``small-cnn`` scores the real images; the expected k lowest-marginal ids per
  class are computed here from its logits with numpy (float64 softmax, ties by id), with a
  duplicated image to force an exact tie.
* Captions: the real perturbation code with a scripted LM (a bigram ``LlamaForCausalLM`` over
  whole-line tokens, tests/generate/tiny_lm.py) whose valid rewrites we know.
* Generation: the tiny built-in diffusion model (class-conditional, no captions) and the tiny
  Stable Diffusion pipeline (img2img with perturbed prompts) generate from the requests; the
  samples' ``parent_id``, ``strength``, ``prompt``, ``perturbation`` and ``details`` are read
  back.
* Bad input: k above a class's size, strengths outside (0, 1], captions with the built-in
  generator or without captions, through the functions, the config and the CLI.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from utilgen.config import (
    BuiltinDiffusionConfig,
    CaptionPerturbationConfig,
    DiffusersConfig,
    GeneratorConfig,
    HardSampleConfig,
    TaskConfig,
    config_from_dict,
)
from utilgen.data.bundled import load_digits
from utilgen.data.labelled import LabelledData
from utilgen.errors import ConfigError
from utilgen.feedback.errors import FeedbackError
from utilgen.feedback.hard_samples import (
    HardParent,
    ParentPrompt,
    check_hard_sample_inputs,
    hard_parents,
    hard_sample_requests,
    perturbed_parent_captions,
    read_hard_sample_plan,
    write_hard_sample_plan,
)
from utilgen.generate import GenerationError
from utilgen.generate.builtin import train_builtin_generator
from utilgen.generate.diffusers_backend import DiffusersGenerator
from utilgen.generate.img2img import prompt_and_strength
from utilgen.generate.prompts import CaptionEntry, CaptionTable
from utilgen.pool.payload import decode_image
from utilgen.task import TaskModel, build_task_model

sys.path.insert(0, str(Path(__file__).parents[1] / "generate"))
from tiny_lm import scripted_lm
from tiny_sd import real_data, tiny_sd_pipeline


def _per_class(**settings: object) -> HardSampleConfig:
    """Hard-sample settings ranking within each class (the config's default is global)."""
    return HardSampleConfig.model_validate({"scope": "per_class", **settings})


@pytest.fixture(autouse=True)
def _quiet(quiet_one_thread: None) -> Iterator[None]:
    yield


# ---- data and models ------------------------------------------------------------------


def _digits3(per_class: int = 6) -> LabelledData:
    """``per_class`` digits of each of the classes 0, 1, 2 (8x8 grey), names "0".."2"."""
    digits = load_digits()
    idx = np.concatenate([np.flatnonzero(digits.labels == c)[:per_class] for c in range(3)])
    part = digits.subset(np.sort(idx))
    return LabelledData(
        modality="image", items=part.items, labels=part.labels, class_names=("0", "1", "2"),
        ids=part.ids, name="digits3",
    )


def _small_cnn(data: LabelledData, seed: int = 0) -> TaskModel:
    cfg = TaskConfig(model="small-cnn", image_size=8)
    return build_task_model(cfg, "image", data.num_classes, data.items[:1], "cpu", seed)


def _expected_parents(model: TaskModel, data: LabelledData, k: int) -> dict[int, list[str]]:
    """The k lowest-p(y|x) ids per class, written out independently: float64 softmax of the
    model's logits, sorted by (p, id)."""
    z = model.logits(data.items).astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    own = p[np.arange(len(data)), data.labels]
    out = {}
    for c in range(data.num_classes):
        members = [(float(own[i]), data.ids[i]) for i in np.flatnonzero(data.labels == c)]
        out[c] = [sample_id for _, sample_id in sorted(members)[:k]]
    return out


def _parent(label: int, name: str, i: int, marginal: float, index: int) -> HardParent:
    return HardParent(id=f"toy/{name}/{i}", label=label, class_name=name, marginal=marginal,
                      index=index)


# ---- 1. parents: the k lowest-marginal real samples per class (known answer) ----------


def test_parents_are_the_k_lowest_marginal_samples_of_each_class() -> None:
    data = _digits3()
    model = _small_cnn(data)
    for k in (1, 3, 6):
        parents = hard_parents(model, data, k)
        assert sorted(parents) == [0, 1, 2]
        assert {c: [p.id for p in ps] for c, ps in parents.items()} == _expected_parents(
            model, data, k
        )
        probs = model.predict_proba(data.items)
        for c, members in parents.items():
            assert [p.marginal for p in members] == sorted(p.marginal for p in members)
            for p in members:
                assert p.label == c and p.class_name == data.class_names[c]
                assert data.ids[p.index] == p.id and data.labels[p.index] == c
                assert p.marginal == pytest.approx(float(probs[p.index, c]), abs=1e-6)


def test_global_parents_are_the_lowest_marginals_of_the_whole_training_set() -> None:
    data = _digits3()
    model = _small_cnn(data)
    probs = model.predict_proba(data.items)
    own = probs[np.arange(len(data)), data.labels].astype(np.float64)
    # known answer: all samples ranked by marginal (ties by id), the k x 3 lowest
    ranked = sorted((float(own[i]), data.ids[i]) for i in range(len(data)))
    for k in (1, 2):
        expected = {sample_id for _, sample_id in ranked[: k * 3]}
        parents = hard_parents(model, data, k, scope="global")
        assert sorted(parents) == [0, 1, 2]
        picked = [p for members in parents.values() for p in members]
        assert {p.id for p in picked} == expected
        assert len(picked) == k * 3
        for c, members in parents.items():
            assert all(p.label == c for p in members)
            assert [p.marginal for p in members] == sorted(p.marginal for p in members)


def test_global_requests_spread_the_outputs_over_the_hardest_parents() -> None:
    data = _digits3()
    parents = {
        0: [_parent(0, "zero", 0, 0.05, 0), _parent(0, "zero", 1, 0.30, 1)],
        1: [_parent(1, "one", 0, 0.10, 2)],
        2: [],  # an easy class: no parent, no sample this round
    }
    cfg = HardSampleConfig(k=1, captions=False, strengths=[0.5, 0.9])
    assert cfg.scope == "global"
    requests = hard_sample_requests(
        parents, data, cfg=cfg, generator=_builtin_cfg(), per_class=2, seed=0, round_index=2
    )
    # 2 a class x 3 classes = 6 outputs, round-robin over the 3 parents, lowest first
    assert [r.parent_id for r in requests] == ["toy/zero/0", "toy/one/0", "toy/zero/1"] * 2
    assert [r.label for r in requests] == [0, 1, 0] * 2
    assert [r.strength for r in requests] == [0.5, 0.5, 0.5, 0.9, 0.9, 0.9]
    assert len({r.seed for r in requests}) == 6
    with pytest.raises(FeedbackError, match="k >= 1"):
        hard_sample_requests({0: [], 1: [], 2: []}, data, cfg=cfg, generator=_builtin_cfg(),
                             per_class=2, seed=0, round_index=2)


def test_global_k_cannot_ask_for_more_parents_than_samples() -> None:
    data = _digits3()
    with pytest.raises(FeedbackError, match=r"lower feedback\.hard_samples\.k") as err:
        check_hard_sample_inputs(HardSampleConfig(k=len(data)), data, generator=_builtin_cfg(),
                                 captions=None)
    assert "\n" not in str(err.value)


def test_equal_marginals_are_ordered_by_id(monkeypatch: pytest.MonkeyPatch) -> None:
    base = _digits3()
    model = _small_cnn(base)
    # Replace class 0's hardest image by two copies, the larger id first in data order: the
    # copies tie exactly, and the smaller id must come first.
    hardest = _expected_parents(model, base, 1)[0][0]
    i = base.ids.index(hardest)
    rest = base.subset([j for j in range(len(base)) if j != i])
    data = rest.concat(
        LabelledData(
            modality="image", items=(base.items[i], base.items[i]), labels=np.array([0, 0]),
            class_names=base.class_names, ids=("digits3/0/b-copy", "digits3/0/a-copy"),
        )
    )
    # Two rows of one batch with the same image agree up to kernel rounding only: give the
    # copies one row of logits, so that the tie is exact on any CPU and the order by id is
    # what this test checks.
    real_logits = model.logits

    def tied(items: object) -> np.ndarray:
        logits = real_logits(items)  # type: ignore[arg-type]
        if len(logits) == len(data):
            logits[-1] = logits[-2]
        return logits

    monkeypatch.setattr(model, "logits", tied)
    first, second = hard_parents(model, data, 2)[0]
    assert (first.id, second.id) == ("digits3/0/a-copy", "digits3/0/b-copy")
    assert first.index == len(data) - 1 and first.marginal == second.marginal


# ---- 2. requests: round-robin over (parent, prompt, strength) ------------------------------


@pytest.mark.parametrize(("m", "s"), [(1, 3), (2, 2), (2, 3), (2, 4), (3, 3), (4, 6)])
def test_a_parents_first_m_times_s_outputs_cover_every_pair_once(m: int, s: int) -> None:
    pairs = [prompt_and_strength(t, m, s) for t in range(m * s)]
    assert sorted(pairs) == [(a, b) for a in range(m) for b in range(s)]
    if m > 1 and s > 1:  # within a block of lcm(m, s), each output changes both
        block = math.lcm(m, s)
        for t in range(1, m * s):
            if t % block:
                assert pairs[t][0] != pairs[t - 1][0] and pairs[t][1] != pairs[t - 1][1]


def _builtin_cfg(**changes: object) -> GeneratorConfig:
    return GeneratorConfig(kind="builtin-diffusion", per_class=4, builtin=_tiny_builtin(**changes))


def _tiny_builtin(**changes: object) -> BuiltinDiffusionConfig:
    """A ~40k-parameter UNet trained for 30 steps (tests/generate/test_builtin_generator.py)."""
    fields: dict[str, object] = dict(
        block_out_channels=[8, 16], norm_num_groups=4, train_steps=30, train_batch_size=16,
        warmup_steps=5, adapt_steps=5, steps=10,
    )
    fields.update(changes)
    return BuiltinDiffusionConfig(**fields)  # type: ignore[arg-type]


def test_requests_visit_every_parent_before_any_twice_with_stable_distinct_seeds() -> None:
    data = real_data(("cat", "dog"), per_class=3)
    parents = {
        0: [_parent(0, "cat", 2, 0.1, 2), _parent(0, "cat", 0, 0.2, 0)],
        1: [_parent(1, "dog", 4, 0.3, 4), _parent(1, "dog", 3, 0.4, 3)],
    }
    cfg = _per_class(k=2, strengths=[0.5, 0.75, 0.9], captions=False)
    gen = _builtin_cfg()
    requests = hard_sample_requests(
        parents, data, cfg=cfg, generator=gen, per_class=7, seed=3, round_index=2
    )
    assert len(requests) == 14
    for label, name in enumerate(("cat", "dog")):
        mine = [r for r in requests if r.label == label]
        order = [p.id for p in parents[label]]
        # j -> parent j mod k: each parent before any second, hardest first
        assert [r.parent_id for r in mine] == [order[j % 2] for j in range(7)]
        for pid in order:
            strengths = [r.strength for r in mine if r.parent_id == pid]
            assert strengths[:3] == [0.5, 0.75, 0.9]  # m = 1: every strength, then again
            assert set(strengths) == {0.5, 0.75, 0.9}
        for r in mine:
            parent = next(p for p in parents[label] if p.id == r.parent_id)
            assert r.class_name == name and r.prompt == name  # built-in: the class name
            assert np.array_equal(r.init_image, data.items[parent.index])
            assert r.guidance_scale == gen.builtin.guidance_scale
            assert r.num_inference_steps == gen.builtin.steps
            assert dict(r.metadata) == {
                "hard_sample": True, "parent_marginal": parent.marginal, "caption": ""
            }
            json.dumps(dict(r.metadata))
    assert len({r.seed for r in requests}) == len(requests)
    assert len({r.key() for r in requests}) == len(requests)
    again = hard_sample_requests(
        parents, data, cfg=cfg, generator=gen, per_class=7, seed=3, round_index=2
    )
    assert [r.key() for r in again] == [r.key() for r in requests]
    other_round = hard_sample_requests(
        parents, data, cfg=cfg, generator=gen, per_class=7, seed=3, round_index=3
    )
    assert not {r.seed for r in other_round} & {r.seed for r in requests}
    # fewer outputs than parents: only the hardest ones
    (only,) = [
        r for r in hard_sample_requests(
            parents, data, cfg=cfg, generator=gen, per_class=1, seed=3, round_index=2
        ) if r.label == 0
    ]
    assert only.parent_id == "toy/cat/2"


def test_requests_need_captions_exactly_when_configured() -> None:
    data = real_data(("cat", "dog"), per_class=3)
    parents = {0: [_parent(0, "cat", 0, 0.1, 0)], 1: [_parent(1, "dog", 3, 0.2, 3)]}
    gen = GeneratorConfig(kind="diffusers", per_class=2)
    with pytest.raises(FeedbackError, match="perturbed_parent_captions"):
        hard_sample_requests(parents, data, cfg=_per_class(k=1), generator=gen,
                             per_class=2, seed=0, round_index=1)
    some = {"toy/cat/0": [ParentPrompt("c", "a photo of a cat, c", "t")]}
    with pytest.raises(FeedbackError, match="toy/dog/3"):  # a parent without prompts
        hard_sample_requests(parents, data, cfg=_per_class(k=1), generator=gen,
                             per_class=2, seed=0, round_index=1, captions=some)
    with pytest.raises(FeedbackError, match="captions is false"):
        hard_sample_requests(parents, data, cfg=_per_class(k=1, captions=False),
                             generator=gen, per_class=2, seed=0, round_index=1, captions=some)
    # no captions with diffusers: the plain class prompt and the negative prompt
    plain = hard_sample_requests(parents, data, cfg=_per_class(k=1, captions=False),
                                 generator=gen, per_class=1, seed=0, round_index=1)
    assert [r.prompt for r in plain] == ["a photo of a cat", "a photo of a dog"]
    assert all(r.negative_prompt == gen.diffusers.negative_prompt for r in plain)
    assert all(r.guidance_scale is None and r.num_inference_steps is None for r in plain)


def test_plan_round_trips(tmp_path: Path) -> None:
    parents = {
        0: [_parent(0, "cat", 0, 0.125, 0)],
        10: [_parent(10, "dog", 3, 0.5, 3)],
        2: [_parent(2, "emu", 5, 0.25, 5)],
    }
    captions = {"toy/cat/0": [ParentPrompt("on a mat", "a photo of a cat, on a rug", "tag")]}
    path = write_hard_sample_plan(tmp_path / "hard_samples.json", parents, captions)
    back, back_captions = read_hard_sample_plan(path)
    assert back == {0: parents[0], 2: parents[2], 10: parents[10]}
    assert list(back) == [0, 2, 10] and back_captions == captions
    write_hard_sample_plan(path, parents, None)
    assert read_hard_sample_plan(path)[1] is None
    path.write_text("{}")
    with pytest.raises(FeedbackError, match="delete it"):
        read_hard_sample_plan(path)


# ---- 3. generation: provenance of every sample -------------------------------------------


def test_builtin_generator_samples_carry_parent_strength_and_marginal() -> None:
    data = _digits3(per_class=4)
    gen_cfg = _builtin_cfg()
    generator = train_builtin_generator(
        gen_cfg.builtin, task_train=data, broad=None, device=torch.device("cpu"), seed=0,
        batch_size=8, progress=False,
    )
    cfg = _per_class(k=2, strengths=[0.5, 0.9], captions=False)
    check_hard_sample_inputs(cfg, data, generator=gen_cfg)
    parents = hard_parents(_small_cnn(data), data, cfg.k)
    requests = hard_sample_requests(
        parents, data, cfg=cfg, generator=gen_cfg, per_class=3, seed=0, round_index=1
    )
    samples = list(generator.generate(requests, round_index=1, progress=False))
    assert len(samples) == 9
    by_id = {p.id: p for members in parents.values() for p in members}
    for request, sample in zip(requests, samples, strict=True):
        parent = by_id[sample.parent_id]
        assert sample.parent_id == request.parent_id and sample.label == parent.label
        assert sample.strength == request.strength in (0.5, 0.9)
        assert sample.prompt == parent.class_name and sample.perturbation == ""
        details = json.loads(sample.details)["request"]
        assert details["parent_id"] == parent.id and details["strength"] == sample.strength
        assert details["metadata"] == {
            "hard_sample": True, "parent_marginal": parent.marginal, "caption": ""
        }
        assert "init_image_sha256" in details
        assert decode_image(sample.payload).shape == (8, 8, 1)
    # img2img really starts from the parent: at strength 0.5 outputs stay clearly nearer
    # their own parent than another class's parent, on average.
    near, far = [], []
    for sample in samples:
        if sample.strength != 0.5:
            continue
        out = decode_image(sample.payload).astype(float)
        own = np.asarray(data.items[by_id[sample.parent_id].index], dtype=float)
        other = next(p for p in by_id.values() if p.label != sample.label)
        near.append(np.abs(out - own).mean())
        far.append(np.abs(out - np.asarray(data.items[other.index], float)).mean())
    # measured: about 43 vs 79 grey levels
    assert near and np.mean(near) < 0.75 * np.mean(far)


CAPTIONS = CaptionTable(
    (
        CaptionEntry("cat", "sitting on a sofa", "toy/cat/0"),
        CaptionEntry("cat", "asleep in the sun"),
        CaptionEntry("dog", "running on grass"),
    )
)
# One-word rewrites of each prompt (max_changed_words=1 ties every rewrite to its prompt).
REWRITES = {
    "a photo of a cat, which is sitting on a sofa": [
        "a photo of a cat, which is sitting on a chair",
        "a photo of a cat, which is lying on a sofa",
    ],
    "a photo of a cat, which is asleep in the sun": [
        "a photo of a cat, which is asleep in the shade",
        "a photo of a cat, which is awake in the sun",
    ],
    "a photo of a dog, which is running on grass": [
        "a photo of a dog, which is running on sand",
        "a photo of a dog, which is walking on grass",
    ],
}
INVALID = ["a photo of a bird, which is running on grass", "a dog on grass"]


def _perturbation(**changes: object) -> CaptionPerturbationConfig:
    fields: dict[str, object] = dict(versions=2, max_changed_words=1, max_attempts=12)
    fields.update(changes)
    return CaptionPerturbationConfig(**fields)  # type: ignore[arg-type]


def test_stable_diffusion_img2img_samples_carry_parent_strength_and_caption() -> None:
    data = real_data(("cat", "dog"), per_class=3)
    gen_cfg = GeneratorConfig(kind="diffusers", per_class=4, diffusers=DiffusersConfig(steps=4))
    cfg = _per_class(k=2, strengths=[0.5, 1.0])
    check_hard_sample_inputs(cfg, data, generator=gen_cfg, captions=CAPTIONS)
    parents = {
        0: [_parent(0, "cat", 1, 0.1, 1), _parent(0, "cat", 0, 0.2, 0)],
        1: [_parent(1, "dog", 5, 0.3, 5), _parent(1, "dog", 3, 0.4, 3)],
    }
    lm = scripted_lm([line for v in REWRITES.values() for line in v] + INVALID, stop=0.3)
    captions = perturbed_parent_captions(
        lm, parents, CAPTIONS, _perturbation(on_shortfall="error"),
        diffusers=gen_cfg.diffusers, class_names=data.class_names, seed=0, round_index=1,
    )
    original = {  # toy/cat/0 has its own caption; the others get their class's first
        "toy/cat/1": "asleep in the sun", "toy/cat/0": "sitting on a sofa",
        "toy/dog/5": "running on grass", "toy/dog/3": "running on grass",
    }
    assert set(captions) == set(original)
    for pid, prompts in captions.items():
        assert {p.caption for p in prompts} == {original[pid]}
        source = f"a photo of a {pid.split('/')[1]}, which is {original[pid]}"
        assert sorted(p.prompt for p in prompts) == sorted(REWRITES[source])
        assert all(p.perturbation.startswith("llm-caption:scripted;m=2;") for p in prompts)
    again = perturbed_parent_captions(
        lm, parents, CAPTIONS, _perturbation(on_shortfall="error"),
        diffusers=gen_cfg.diffusers, class_names=data.class_names, seed=0, round_index=1,
    )
    assert again == captions

    requests = hard_sample_requests(
        parents, data, cfg=cfg, generator=gen_cfg, per_class=4, seed=0, round_index=1,
        captions=captions,
    )
    generator = DiffusersGenerator(tiny_sd_pipeline(), model="tiny-sd", batch_size=4, steps=4)
    samples = list(generator.generate(requests, round_index=1, progress=False))
    assert len(samples) == 8
    used: dict[str, set[tuple[str, float]]] = {}
    for sample in samples:
        details = json.loads(sample.details)
        assert details["mode"] == "img2img"
        meta = details["request"]["metadata"]
        assert sample.parent_id in original
        assert meta == {
            "hard_sample": True,
            "parent_marginal": next(
                p.marginal for ps in parents.values() for p in ps if p.id == sample.parent_id
            ),
            "caption": original[sample.parent_id],
        }
        assert sample.prompt in [p.prompt for p in captions[sample.parent_id]]
        assert sample.perturbation.startswith("llm-caption:scripted")
        assert sample.strength in (0.5, 1.0)
        assert sample.negative_prompt == gen_cfg.diffusers.negative_prompt
        assert decode_image(sample.payload).shape == (32, 32, 3)
        used.setdefault(sample.parent_id, set()).add((sample.prompt, sample.strength))
    # every parent: both rewrites, both strengths (m = 2, S = 2, two outputs each)
    for pid, pairs in used.items():
        assert len(pairs) == 2
        assert {s for _, s in pairs} == {0.5, 1.0}
        assert {p for p, _ in pairs} == {p.prompt for p in captions[pid]}


def test_no_rewrite_errors_or_warns_and_keeps_the_caption_never_the_class_prompt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = real_data(("cat", "dog"), per_class=3)
    parents = {0: [_parent(0, "cat", 0, 0.1, 0)], 1: [_parent(1, "dog", 3, 0.2, 3)]}
    one_rewrite = REWRITES["a photo of a dog, which is running on grass"][:1]
    lm = scripted_lm(INVALID + one_rewrite, stop=0.3)
    kwargs = dict(diffusers=DiffusersConfig(), class_names=data.class_names, seed=0, round_index=1)
    with pytest.raises(GenerationError, match="valid rewrites") as err:
        perturbed_parent_captions(lm, parents, CAPTIONS, _perturbation(max_attempts=3,
                                  on_shortfall="error"), **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
    with caplog.at_level(logging.WARNING):
        captions = perturbed_parent_captions(
            lm, parents, CAPTIONS, _perturbation(max_attempts=3), **kwargs  # type: ignore[arg-type]
        )
    # the cat prompt has no valid rewrite: unperturbed caption prompt, tag "", warned
    assert captions["toy/cat/0"] == [
        ParentPrompt("sitting on a sofa", "a photo of a cat, which is sitting on a sofa", "")
    ]
    assert any("toy/cat/0" in r.getMessage() for r in caplog.records)
    # the dog prompt has one of m = 2: kept, perturbed
    (dog,) = captions["toy/dog/3"]
    assert dog.prompt == "a photo of a dog, which is running on sand" and dog.perturbation


# ---- 4. bad input -------------------------------------------------------------------------


def _one_line(err: pytest.ExceptionInfo[BaseException], *needles: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_k_above_a_class_size_is_refused_naming_the_class_and_its_size() -> None:
    data = _digits3(per_class=4).subset(list(range(11)))  # class "2" keeps 3 images
    with pytest.raises(FeedbackError) as err:
        hard_parents(_small_cnn(data), data, 4)
    _one_line(err, "k=4", "3 real training", "'2'", "at most 3")
    with pytest.raises(FeedbackError) as err:
        check_hard_sample_inputs(_per_class(k=4, captions=False), data,
                                 generator=_builtin_cfg())
    _one_line(err, "'2'", "at most 3")


def test_inputs_that_cannot_work_are_refused_before_generation() -> None:
    data = real_data(("cat", "dog"), per_class=3)
    diffusers = GeneratorConfig(kind="diffusers", per_class=1, diffusers=DiffusersConfig(steps=4))
    cases = [
        (_per_class(k=1), _builtin_cfg(), CAPTIONS, "built-in"),
        (_per_class(k=1), diffusers, None, "captions_file"),
        (_per_class(k=1), diffusers, CaptionTable(CAPTIONS.entries[:2]), "'dog'"),
        (_per_class(k=1, strengths=[0.2]), diffusers, CAPTIONS, "denoising step"),
        (
            _per_class(k=1),
            diffusers.model_copy(update={"diffusers": DiffusersConfig(
                steps=4, prompt_template="{class} {caption}")}),
            CAPTIONS,
            "comma",
        ),
    ]
    for cfg, gen, captions, needle in cases:
        with pytest.raises(FeedbackError) as err:
            check_hard_sample_inputs(cfg, data, generator=gen, captions=captions)
        _one_line(err, needle)
    check_hard_sample_inputs(_per_class(k=3), data, generator=diffusers, captions=CAPTIONS)


DIGITS_HARD = {
    "seed": 0,
    "data": {"source": "digits", "k_shot": 10},
    "generator": {"kind": "builtin-diffusion", "per_class": 4},
    "feedback": {"components": ["hard_samples"], "hard_samples": {"captions": False}},
    "loop": {"rounds": 2},
}


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("feedback.hard_samples.strengths=[0.0, 0.5]", "(0, 1]"),
        ("feedback.hard_samples.strengths=[0.5, 1.5]", "(0, 1]"),
        ("feedback.hard_samples.strengths=[]", "strengths"),
        ("feedback.hard_samples.k=0", "feedback.hard_samples.k"),
        ("feedback.hard_samples.captions=true", "built-in generator"),
    ],
)
def test_config_refuses_bad_hard_sample_settings(override: str, needle: str) -> None:
    assert config_from_dict(DIGITS_HARD).feedback.hard_samples.strengths == [0.5, 0.75, 0.9]
    with pytest.raises(ConfigError) as err:
        config_from_dict(DIGITS_HARD, [override])
    _one_line(err, needle)


def test_cli_exits_2_with_one_line_for_a_strength_outside_the_unit_interval(
    tmp_path: Path, cli_error: Callable[[list[str]], str]
) -> None:
    run = tmp_path / "run"
    line = cli_error(
        ["run", "digits-static", "--out", str(run)]
        + [arg for item in (
            "loop.rounds=2", "feedback.components=[hard_samples]",
            "feedback.hard_samples.captions=false", "feedback.hard_samples.strengths=[0,0.5]",
        ) for arg in ("--set", item)]
    )
    assert "feedback.hard_samples.strengths" in line and "(0, 1]" in line
    assert not run.exists()


def test_parents_are_ranked_by_the_projects_marginal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parents come from utilgen.value.logit_scores' marginal, not a copy of it: replacing that
    score by its negative makes the highest-marginal sample of each class the first parent."""
    import utilgen.value.logit_scores as scores

    data = _digits3(per_class=4)
    model = _small_cnn(data)
    every = hard_parents(model, data, 4)
    monkeypatch.setitem(scores.OUTPUT_SCORES, "marginal", lambda z, y: -scores.marginal(z, y))
    flipped = hard_parents(model, data, 1)
    for c, members in every.items():
        assert flipped[c][0].id == members[-1].id
        assert flipped[c][0].marginal == pytest.approx(-members[-1].marginal)
