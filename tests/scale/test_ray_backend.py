"""Acceptance (issue 10): the Ray backend writes the manifest the local backend writes —
ids, labels, provenance, blob hashes, row order — for the built-in image generator and a
tiny causal LM; valuation on Ray gives the local scores; and an actor killed mid-round
still leaves every sample exactly once.

One local Ray (2 CPUs) serves the module; every round starts a fresh actor pool, whose
workers import torch and utilgen (seconds each on a busy machine), hence ``slow``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from tiny_builtin import tiny_generator
from tiny_lm import tiny_llama

from utilgen.config import RayConfig, TaskConfig, TextFilterConfig, ValuationConfig
from utilgen.config.valuation import MetaWeightConfig
from utilgen.data.bundled import load_digits
from utilgen.data.labelled import Item
from utilgen.generate import GenerationRequest, Generator
from utilgen.generate.causal_lm import CausalLMGenerator
from utilgen.generate.causal_lm_sampling import SamplingSettings
from utilgen.loop.generation_round import generate_into_pool
from utilgen.pool import COLUMNS, PoolStore, Sample
from utilgen.scale import RayBackendError, RayExecutor, RayGenerator, valuation
from utilgen.scale.actors import KILL_ONCE_ENV
from utilgen.scale.valuation import score_samples_on_ray
from utilgen.task import TaskModel, build_task_model, train
from utilgen.value import score_samples

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session", "quiet_one_thread")]

NAMES = ("zero", "one", "two")
# Small shards: more shards than actors, so both actors work and results interleave.
RAY = RayConfig(actors=2, batch_size=4)
# Ray and local results are compared exactly, blob hashes and scores included. That holds by
# construction on this machine: each actor runs on one thread (num_cpus_per_actor), as the
# local calls do (quiet_one_thread), and shards are cut at the local batch starts, so the
# actors run the local batches: the same kernels on the same numbers. It is also the only
# comparison that can fail for a shard cut mid-batch, whose images differ from the local
# ones by float noise, a grey level at most.


def _image_requests() -> list[GenerationRequest]:
    """70 outputs with mixed steps and outputs per request: local batches (size 8) open
    mid-request and at every change of steps, so a naive split would batch differently."""
    return [
        GenerationRequest(
            label=i % 3,
            class_name=NAMES[i % 3],
            seed=1000 + 17 * i,
            num_outputs=1 + i % 3,
            num_inference_steps=2 if i % 7 == 3 else None,
        )
        for i in range(35)
    ]


def _text_generator() -> CausalLMGenerator:
    model, tokenizer = tiny_llama()
    raw = TextFilterConfig(strip_prefixes=[], stop_patterns=[], trim_incomplete=False)
    sampling = SamplingSettings(max_new_tokens=8)
    return CausalLMGenerator(model, tokenizer, batch_size=3, sampling=sampling, cleaning=raw)


def _text_requests() -> list[GenerationRequest]:
    prompts = ["the film was", "match report", "the government said growth in the economy"]
    return [
        GenerationRequest(
            label=i % 3,
            class_name=NAMES[i % 3],
            seed=50 + 3 * i,
            prompt=prompts[i % 3],
            num_outputs=1 + i % 2,
        )
        for i in range(9)
    ]


def _manifest(
    run: Path, generator: Generator, requests: Sequence[GenerationRequest]
) -> pd.DataFrame:
    """The manifest after ``generate_into_pool`` ran ``requests`` into a new pool at ``run``."""
    with PoolStore.open(run, writable=True) as store:
        added = generate_into_pool(generator, requests, store, round_index=1)
        frame = store.manifest()
    assert added == sum(r.num_outputs for r in requests) == len(frame)
    return frame[list(COLUMNS)]


@pytest.mark.parametrize("kind", ["builtin-diffusion", "causal-lm"])
def test_ray_writes_the_local_manifest(tmp_path: Path, kind: str) -> None:
    if kind == "builtin-diffusion":
        generator: Generator = tiny_generator(NAMES)
        requests = _image_requests()
    else:
        generator, requests = _text_generator(), _text_requests()
    local = _manifest(tmp_path / "local", generator, requests)
    remote = _manifest(tmp_path / "ray", RayGenerator(generator, RAY), requests)
    pd.testing.assert_frame_equal(remote, local)  # every column, in row order (exact: RAY)
    assert local["blob"].nunique() == len(local)  # distinct samples, not one repeated
    assert local["generator"].eq(generator.name).all()


def test_an_actor_killed_mid_round_loses_and_repeats_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generator, requests = tiny_generator(NAMES), _image_requests()
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_ONCE_ENV, str(marker))
    remote = _manifest(tmp_path / "ray", RayGenerator(generator, RAY), requests)
    assert marker.exists()  # an actor did die: its batch was re-run on the restart
    monkeypatch.delenv(KILL_ONCE_ENV)
    local = _manifest(tmp_path / "local", generator, requests)
    assert remote["id"].is_unique
    pd.testing.assert_frame_equal(remote, local)  # exact: see RAY


def test_executor_reports_its_cluster_and_streams_in_request_order() -> None:
    executor = RayExecutor(RAY)
    assert not executor.cluster.started_here  # joined the module's session
    assert executor.cluster.resources["CPU"] == 2
    requests = _image_requests()[:6]
    ids = [s.id for s in executor.generate(tiny_generator(NAMES), requests, round_index=2)]
    local = [s.id for s in tiny_generator(NAMES).generate(requests, round_index=2)]
    assert ids == local and all(i.startswith("synthetic/r002/") for i in ids)
    executor.shutdown()  # leaves a session it did not start running
    import ray

    assert ray.is_initialized()


def test_the_actors_outlive_a_call_and_take_each_calls_generator() -> None:
    """Calls reuse the actors (their processes import torch and utilgen once per run), and
    a call with another generator (the next round's, after feedback) gets its samples."""
    import ray

    executor = RayExecutor(RAY)
    base, tuned = tiny_generator(NAMES), tiny_generator(NAMES)
    with torch.no_grad():
        next(tuned.model.parameters()).add_(0.05)
    requests = _image_requests()[:10]
    first = [s.blob for s in executor.generate(base, requests, round_index=1)]
    pids = ray.get([actor.pid.remote() for actor in executor.actors()])
    second = [s.blob for s in executor.generate(tuned, requests, round_index=1)]
    assert ray.get([actor.pid.remote() for actor in executor.actors()]) == pids
    assert second == [s.blob for s in tuned.generate(requests, progress=False)]
    assert first == [s.blob for s in base.generate(requests, progress=False)]
    assert first != second
    executor.shutdown()
    assert not executor.started


def test_warmed_actors_load_the_generator_before_the_first_call() -> None:
    import ray

    executor = RayExecutor(RAY)
    generator = tiny_generator(NAMES)
    executor.warm(generator)  # returns at once; utilgen run trains stage 1 meanwhile
    assert executor.started and len(executor._warming) == RAY.actors
    warmed = ray.get(list(executor._warming))  # every actor fetched it, without an error
    assert sorted(warmed) == sorted(ray.get([a.pid.remote() for a in executor.actors()]))
    requests = _image_requests()[:6]
    made = [s.blob for s in executor.generate(generator, requests, round_index=1)]
    assert made == [s.blob for s in generator.generate(requests, progress=False)]
    assert executor._warming == []  # the first call waited for the warm-up
    executor.shutdown()


def test_a_run_shares_one_executor_and_other_settings_replace_it() -> None:
    from utilgen.scale.backend import shared_executor

    executor = shared_executor(RAY)
    assert shared_executor(RAY) is executor
    assert executor.actors()
    other = shared_executor(RayConfig(actors=1))  # other settings: the old pool makes way
    assert other is not executor and not executor.started


def _spy_on_ray_generate(
    monkeypatch: pytest.MonkeyPatch,
    seen: Callable[[Generator, Sequence[GenerationRequest]], object],
) -> None:
    """Call ``seen(generator, requests)`` on every ``RayExecutor.generate``, then generate."""
    real_generate = RayExecutor.generate

    def spy(
        self: RayExecutor,
        generator: Generator,
        requests: Sequence[GenerationRequest],
        round_index: int,
    ) -> Iterator[Sample]:
        seen(generator, requests)
        return real_generate(self, generator, requests, round_index)

    monkeypatch.setattr(RayExecutor, "generate", spy)


def test_utilgen_run_with_the_ray_backend_matches_the_local_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``utilgen run --set loop.backend=ray``: the same pool (every manifest column, the
    round's utility scores included) and the same metrics as the local backend."""
    from cli_helpers import TINY_BUILTIN, sets, utilgen

    monkeypatch.setenv("UTILGEN_CACHE_DIR", str(tmp_path / "cache"))
    on_ray: list[int] = []
    _spy_on_ray_generate(monkeypatch, lambda generator, requests: on_ray.append(len(requests)))
    warmed: list[str] = []
    real_warm = RayExecutor.warm

    def counted_warm(self: RayExecutor, generator: Generator) -> None:
        # before stage 1 trains: its checkpoints are not written yet
        warmed.append(str(sorted((tmp_path / "ray").rglob("*.safetensors"))))
        real_warm(self, generator)

    monkeypatch.setattr(RayExecutor, "warm", counted_warm)
    on_ray_logits: list[int] = []
    real_logits = valuation.ray_logits

    def counted_logits(executor: RayExecutor, model: TaskModel, items: Sequence[Item]) -> Any:
        on_ray_logits.append(len(items))
        return real_logits(executor, model, items)

    monkeypatch.setattr(valuation, "ray_logits", counted_logits)
    settings = [
        "task.epochs=1",
        "data.k_shot=5",
        "data.max_per_class=20",
        "generator.per_class=5",
        # an output score on each side of one the driver computes: the merge keeps the order
        "valuation.scores=[marginal,similarity,margin]",
    ]
    runs = {}
    for backend in ("local", "ray"):
        run = tmp_path / backend
        overrides = [*settings, *TINY_BUILTIN, f"loop.backend={backend}", "ray.batch_size=8"]
        assert utilgen("run", "digits-static", "--out", str(run), *sets(overrides)) == 0
        with PoolStore.open(run) as store:
            runs[backend] = store.manifest()
        assert (run / "rounds" / "001" / "metrics.json").is_file()
        assert on_ray == ([] if backend == "local" else [50])  # the round ran on Ray
        assert on_ray_logits == ([] if backend == "local" else [50])  # and its scoring
        assert warmed == ([] if backend == "local" else ["[]"])  # once, before stage 1
    assert (runs["local"]["source"] == "synthetic").sum() == 50
    scores = [f"utility_r001_{name}" for name in ("marginal", "similarity", "margin")]
    assert runs["local"].loc[runs["local"]["round"] == 1, scores].notna().all().all()
    # exact (see RAY); training runs in this process on one thread for both backends
    pd.testing.assert_frame_equal(runs["ray"], runs["local"])
    local_metrics, ray_metrics = (
        (tmp_path / b / "rounds" / "001" / "metrics.json").read_text() for b in ("local", "ray")
    )
    assert _accuracies(ray_metrics) == _accuracies(local_metrics)


def _accuracies(metrics_json: str) -> tuple[float, float]:
    metrics = json.loads(metrics_json)
    return metrics["val_accuracy"], metrics["test"]["accuracy"]


def test_valuation_on_ray_gives_the_local_scores(tmp_path: Path) -> None:
    """Every score: the per-sample passes (logits, embeddings, input gradients at each
    checkpoint) on the actors over slices of whole batches, the rest in the driver. The
    table equals ``score_samples``'s, bit for bit."""
    digits = load_digits()
    real, candidates = digits.subset(range(0, 200)), digits.subset(range(200, 290))
    cfg = TaskConfig(model="small-cnn", image_size=8, epochs=3, batch_size=32)
    model = build_task_model(cfg, "image", 10, real.items[:1], "cpu", 0)
    trained = train(model, real, cfg, checkpoint_dir=tmp_path, seed=0, progress=lambda n: None)
    model.eval_batch_size = 16  # type: ignore[attr-defined]
    names = ["loss", "similarity", "vog", "marginal", "composite", "entropy", "meta_weight"]
    meta = MetaWeightConfig(epochs=1, meta_per_class=2)
    scores = ValuationConfig(scores=names, batch_size=12, meta_weight=meta)
    checkpoints = list(trained.checkpoints)
    # meta_weight's held-out meta set: real digits the model was not fitted on
    inputs = {
        "checkpoints": checkpoints,
        "real_train": real,
        "meta_set": digits.subset(range(290, 330)),
        "fitted_ids": real.ids,
    }
    local = score_samples(scores, model, candidates, **inputs)
    with RayExecutor(RayConfig(actors=2, batch_size=20)) as executor:  # slices of 32 / 24
        remote = score_samples_on_ray(executor, scores, model, candidates, **inputs)
    pd.testing.assert_frame_equal(remote, local)  # exact: see RAY
    assert list(remote.columns) == ["id", *names]
    assert remote[names].std().gt(0).all()  # real scores, not constants


def test_a_pool_larger_than_the_cluster_is_refused_in_one_line() -> None:
    with pytest.raises(RayBackendError) as err:
        RayExecutor(RayConfig(actors=3))  # the session has 2 CPUs
    message = str(err.value)
    assert "has 2 CPU(s)" in message and "needs 3" in message and "lower ray.actors" in message


def test_a_round_resumed_on_ray_makes_only_what_the_pool_lacks(tmp_path: Path) -> None:
    """A driver stopped after its first appends: re-running the round on Ray generates the
    rest, and the pool ends as one uninterrupted local round leaves it."""
    generator, requests = tiny_generator(NAMES), _image_requests()
    local = _manifest(tmp_path / "local", generator, requests)
    with PoolStore.open(tmp_path / "resumed", writable=True) as store:
        store.append(list(generator.generate(requests[:12], round_index=1, progress=False)))
        before = len(store.manifest())
        added = generate_into_pool(RayGenerator(generator, RAY), requests, store, round_index=1)
        resumed = store.manifest()[list(COLUMNS)]
    assert before > 0 and added == len(local) - before
    pd.testing.assert_frame_equal(resumed, local)  # exact: see RAY


def test_control_arm_on_the_ray_backend_matches_the_local_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``feedback.control`` with ``loop.backend=ray``: the base generator is shipped to the
    actors (not the DPO-tuned one the round used), and the control equals the local run's."""
    from cli_helpers import TINY_BUILTIN, sets, utilgen

    monkeypatch.setenv("UTILGEN_CACHE_DIR", str(tmp_path / "cache"))
    shipped: list[str] = []
    _spy_on_ray_generate(monkeypatch, lambda generator, requests: shipped.append(generator.name))
    settings = [
        "task.epochs=1", "data.k_shot=5", "data.max_per_class=20", "generator.per_class=4",
        "valuation.scores=[marginal,margin]", "valuation.selection=[]",
        "feedback.pairs.score=marginal", "feedback.pairs.ratio=0.5",
        "feedback.diffusion_dpo.steps=2", "feedback.diffusion_dpo.batch_size=4",
    ]  # fmt: skip
    controls = {}
    for backend in ("local", "ray"):
        run = tmp_path / backend
        overrides = [*settings, *TINY_BUILTIN, f"loop.backend={backend}", "ray.batch_size=8"]
        assert utilgen("run", "digits-dpo", "--out", str(run), *sets(overrides)) == 0
        controls[backend] = pd.read_parquet(run / "rounds/002/control.parquet")
    # round 1 and the control by the base generator, round 2 by the tuned one (the built-in
    # generator's name hashes its weights)
    assert len(shipped) == 3 and shipped[0] == shipped[2] != shipped[1]
    pd.testing.assert_frame_equal(controls["ray"], controls["local"])  # exact: see RAY
