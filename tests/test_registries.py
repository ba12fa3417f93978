"""Registries: a generator kind, a feedback component and a task model added from outside
the package, by one registration each, and run by the round engine as the built-ins are.

The toy generator draws each sample as its class's mean real image plus seeded noise; the
toy component makes round 2's requests itself (seeds shifted, a tag in their metadata) and
"trains" the generator between rounds (a suffix on its provenance name), so the test can
see every hook the loop calls in the run directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from utilgen.config import GeneratorConfig, RunConfig, TaskConfig, resolve_config
from utilgen.data import Splits
from utilgen.errors import ConfigError
from utilgen.feedback.component import FeedbackComponent, RoundContext
from utilgen.generate import GenerationRequest, Generator, make_sample
from utilgen.loop.dry_run import describe_plan
from utilgen.loop.run import plan_run, run
from utilgen.pool import PoolStore, Sample, encode_image
from utilgen.registry import FEEDBACK_COMPONENTS, GENERATOR_KINDS, TASK_MODELS, Registry
from utilgen.task import TaskModel, build_task_model
from utilgen.task.kinds import SMALL_CNN

pytestmark = pytest.mark.usefixtures("quiet_one_thread")

TOY_COST = 7  # generator calls the toy component claims per request


class ToyGenerator:
    """Class mean of the real training images plus noise drawn from the request's seed."""

    modality = "image"

    def __init__(self, means: dict[int, np.ndarray]) -> None:
        self.means = means
        self.name = "toy-noise"

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        round_index: int = 1,
        progress: bool = True,
    ) -> Iterator[Sample]:
        for request in requests:
            for i in range(request.num_outputs):
                rng = np.random.default_rng(request.seed + i)
                noisy = self.means[request.label] + rng.normal(0, 8, self.means[0].shape)
                pixels = np.clip(noisy, 0, 255).astype(np.uint8)
                yield make_sample(
                    request,
                    i,
                    encode_image(pixels),
                    modality="image",
                    generator=self.name,
                    round_index=round_index,
                    guidance=None,
                    steps=None,
                )


class ToyKind:
    modality = "image"

    def build(
        self,
        cfg: GeneratorConfig,
        *,
        splits: Splits,
        device: torch.device,
        seed: int,
        progress: bool = True,
    ) -> Generator:
        train = splits.train
        items = np.stack([np.asarray(x, dtype=np.float64) for x in train.items])
        means = {c: items[train.labels == c].mean(axis=0) for c in range(train.num_classes)}
        return ToyGenerator(means)

    def static_requests(
        self, cfg: GeneratorConfig, *, splits: Splits, seed: int, round_index: int
    ) -> list[GenerationRequest]:
        return [
            GenerationRequest(
                label=c,
                class_name=name,
                seed=seed * 10_000 + round_index * 1000 + c * 10 + j,
                num_outputs=2,
            )
            for c, name in enumerate(splits.train.class_names)
            for j in range(cfg.per_class // 2)
        ]


class ToyShift(FeedbackComponent):
    """Makes a round's requests (seeds shifted, tagged) and renames the generator between
    rounds; refuses a config with fewer than 2 samples per class."""

    makes_requests: ClassVar[bool] = True
    trains_generator: ClassVar[bool] = True

    def __init__(self) -> None:
        self.updates: list[int] = []

    def check_config(self, config: RunConfig) -> None:
        if config.generator.per_class < 2:
            raise ValueError("toy_shift needs generator.per_class >= 2")

    def describe(self, config: RunConfig, n_requests: int) -> str:
        return f"toy_shift: shifts the seeds of {n_requests} requests"

    def generator_calls(self, config: RunConfig, n_requests: int) -> int:
        return TOY_COST * n_requests

    def make_requests(self, ctx: RoundContext) -> list[GenerationRequest]:
        base = GENERATOR_KINDS.get(ctx.config.generator.kind).static_requests(
            ctx.config.generator, splits=ctx.splits, seed=ctx.config.seed, round_index=1
        )
        return [
            GenerationRequest(
                label=r.label,
                class_name=r.class_name,
                seed=r.seed + 50_000,
                num_outputs=r.num_outputs,
                metadata={"toy_shift": ctx.round_index},
            )
            for r in base
        ]

    def update_generator(
        self,
        generator: Generator,
        store: PoolStore,
        config: RunConfig,
        run_dir: Path,
        round_index: int,
    ) -> Generator:
        self.updates.append(round_index)
        generator.name = f"toy-noise+shift{round_index}"
        return generator

    def saved_result(self, run_dir: Path, round_index: int) -> dict[str, Any] | None:
        return {"round": round_index}


@pytest.fixture
def toy() -> Iterator[ToyShift]:
    component = ToyShift()
    GENERATOR_KINDS.register("toy-noise", ToyKind())
    FEEDBACK_COMPONENTS.register("toy_shift", component)
    try:
        yield component
    finally:
        GENERATOR_KINDS.unregister("toy-noise")
        FEEDBACK_COMPONENTS.unregister("toy_shift")


SETS = [
    "generator.kind=toy-noise",
    "generator.per_class=4",
    "task.epochs=1",
    "data.k_shot=5",
    "strategy=toy",
    "valuation.scores=[marginal]",
]


def test_a_registered_generator_and_component_run_two_rounds(toy: ToyShift, tmp_path: Path) -> None:
    config = resolve_config(
        "digits-real-only", [*SETS, "loop.rounds=2", "feedback.components=[toy_shift]"]
    )
    result = run(config, tmp_path / "run", report=False)

    with PoolStore.open(tmp_path / "run") as store:
        manifest = store.manifest()
    synthetic = manifest[manifest["source"] == "synthetic"]
    first, second = synthetic[synthetic["round"] == 1], synthetic[synthetic["round"] == 2]
    assert len(first) == len(second) == 40  # 4 a class, 10 classes
    # round 1: the kind's static requests, from the generator as built
    assert set(first["generator"]) == {"toy-noise"}
    # between rounds 1 and 2 the component trained the generator once ...
    assert toy.updates == [1]
    assert set(second["generator"]) == {"toy-noise+shift1"}
    # ... and made round 2's requests itself
    assert all(json.loads(d)["request"]["metadata"] == {"toy_shift": 2} for d in second["details"])
    assert not set(first["id"]) & set(second["id"])
    # its cost is counted against the budget: 20 requests a round
    metrics = [m.to_dict() for m in result.rounds]
    assert metrics[1]["generator_calls"] == 40
    assert metrics[2]["generator_calls"] == 40 + TOY_COST * 20
    assert result.summary.rounds == 3  # stage 1 and two rounds


def test_registered_parts_are_checked_and_described_like_built_ins(
    toy: ToyShift, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"toy_shift needs generator\.per_class >= 2"):
        resolve_config(
            "digits-real-only",
            [*SETS, "generator.per_class=1", "loop.rounds=2", "feedback.components=[toy_shift]"],
        )
    # a typo of a registered name is refused with the closest name
    with pytest.raises(ConfigError, match="did you mean 'toy-noise'"):
        resolve_config("digits-real-only", [*SETS, "generator.kind=toy-nose", "loop.rounds=1"])
    with pytest.raises(ConfigError, match="did you mean 'toy_shift'"):
        resolve_config(
            "digits-real-only", [*SETS, "loop.rounds=2", "feedback.components=[toy_shfit]"]
        )
    # dpo needs a trainer for the generator's family, and the toy kind registered none
    with pytest.raises(ConfigError, match=r"no DPO trainer for generator\.kind=toy-noise"):
        resolve_config(
            "digits-real-only",
            [
                *SETS,
                "loop.rounds=2",
                "feedback.components=[dpo]",
                "valuation.scores=[margin]",
                "feedback.pairs.score=margin",
            ],
        )
    config = resolve_config(
        "digits-real-only", [*SETS, "loop.rounds=3", "feedback.components=[toy_shift]"]
    )
    text = describe_plan(plan_run(config), tmp_path / "run")
    assert "feedback: toy_shift: shifts the seeds of 20 requests" in text
    assert f"({40 + TOY_COST * 20} generator calls)" in text


def test_unregistered_names_are_refused_and_the_registry_refuses_a_taken_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown generator\.kind 'toy-noise'"):
        resolve_config("digits-real-only", [*SETS, "loop.rounds=1"])
    with pytest.raises(ValueError, match="already registered"):
        GENERATOR_KINDS.register("diffusers", ToyKind())
    registry: Registry[int] = Registry("x.kind", "thing")
    registry.register("lazy", "math:pi")  # a "module:attribute" string is imported on use
    assert registry.get("lazy") == pytest.approx(3.14159, abs=1e-5)
    with pytest.raises(ValueError, match="one word"):
        registry.register("two words", 1)
    with pytest.raises(ConfigError, match=r"unknown x\.kind 'lazzy': did you mean 'lazy'"):
        registry.get("lazzy")


def test_built_in_components_apply_in_registration_order() -> None:
    assert FEEDBACK_COMPONENTS.names()[:4] == ("dpo", "hard_samples", "prompt_ascent", "noise_opt")
    config = resolve_config("digits-utilgen", ["feedback.components=[noise_opt, prompt_ascent]"])
    names = [n for n, _ in FEEDBACK_COMPONENTS.entries(config.feedback.components)]
    assert names == ["prompt_ascent", "noise_opt"]  # UtilGen's order, whatever the list's


class CountingCNN:
    """small-cnn, counting its builds: a task model registered from outside."""

    modality = "image"

    def __init__(self) -> None:
        self.built = 0

    def build(self, cfg: TaskConfig, **kwargs: Any) -> TaskModel:
        self.built += 1
        return SMALL_CNN.build(cfg, **kwargs)


def test_a_registered_task_model_is_built_by_name_and_checked_against_the_modality() -> None:
    kind = CountingCNN()
    TASK_MODELS.register("counting-cnn", kind)
    try:
        config = resolve_config("digits-real-only", ["task.model=counting-cnn"])
        image = np.zeros((8, 8, 1), dtype=np.uint8)
        model = build_task_model(
            config.task, "image", num_classes=3, example_items=[image], device="cpu", seed=0
        )
        assert kind.built == 1 and model.num_classes == 3
        with pytest.raises(ConfigError, match="does not classify texts; for text data use auto"):
            build_task_model(
                config.task, "text", num_classes=3, example_items=["a"], device="cpu", seed=0
            )
    finally:
        TASK_MODELS.unregister("counting-cnn")
