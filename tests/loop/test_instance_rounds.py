"""Two rounds with instance-level feedback through the run engine.

A tiny untrained built-in generator stands in for the real one (its images are noise, which
is all the mechanics need). ``prompt_ascent`` + ``noise_opt``: round 2's requests carry
optimised class embeddings and initial noise, saved in the round directory and read back on
resume instead of being optimised again. ``hard_samples``: round 2 generates img2img around
the k lowest-marginal real training digits per class under round 1's classifier.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_builtin import PER_CLASS, prepared

from utilgen.config import RunConfig, resolve_config
from utilgen.feedback import prompt_ascent
from utilgen.feedback.errors import FeedbackError
from utilgen.generate.request_io import read_requests
from utilgen.loop.run import build_model, prepare, run
from utilgen.pool import PoolStore
from utilgen.task.checkpoint import list_checkpoints, load_checkpoint

pytestmark = pytest.mark.usefixtures("quiet_one_thread")


def config(preset: str, *extra: str) -> RunConfig:
    return resolve_config(
        preset,
        [
            "task.epochs=2", "data.k_shot=5", "data.max_per_class=40",
            f"generator.per_class={PER_CLASS}", "valuation.scores=[marginal,margin]",
            *extra,
        ],
    )


def test_optimised_requests_in_round_two_and_restored_on_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(
        "digits-instance", "feedback.prompt_ascent.steps=2", "feedback.noise_opt.steps=2",
        "feedback.noise_opt.inversion_fixed_point=0",
    )
    run_dir = tmp_path / "instance"
    summary = run(cfg, run_dir, prepared=prepared(cfg)).summary.to_dict()
    saved = read_requests(run_dir / "rounds/002/instance_requests")
    assert len(saved) == 10 * PER_CLASS
    assert all(r.prompt_embeds is not None and r.latents is not None for r in saved)
    assert all({"prompt_ascent", "noise_opt"} <= set(r.metadata) for r in saved)
    with PoolStore.open(run_dir) as store:
        manifest = store.manifest()
    second = manifest[(manifest["source"] == "synthetic") & (manifest["round"] == 2)]
    assert len(second) == 10 * PER_CLASS
    details = [json.loads(d) for d in second["details"]]
    assert {d["conditioning"] for d in details} == {"prompt_embeds"}
    assert {d["initial_noise"] for d in details} == {"latents"}
    first = manifest[(manifest["source"] == "synthetic") & (manifest["round"] == 1)]
    assert {json.loads(d)["conditioning"] for d in first["details"]} == {"class"}
    assert "feedback_effect" in summary

    # Resume after a crash in round 2's training: the saved requests are reused, nothing is
    # optimised again and the pool gains no duplicate.
    (run_dir / "rounds/002/metrics.json").unlink()
    (run_dir / "summary.json").unlink()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("prompt ascent ran again on resume")

    monkeypatch.setattr(prompt_ascent, "ascend_prompts", refuse)
    run(cfg, run_dir, prepared=prepared(cfg))
    with PoolStore.open(run_dir) as store:
        assert len(store.manifest()) == len(manifest)


@pytest.mark.parametrize("scope", ["per_class", "global"])
def test_hard_sample_round_generates_around_the_lowest_marginal_digits(
    tmp_path: Path, scope: str
) -> None:
    cfg = config(
        "digits-hard-samples", "feedback.hard_samples.k=2", f"feedback.hard_samples.scope={scope}"
    )
    run_dir = tmp_path / "hard"
    first = prepared(cfg)
    run(cfg, run_dir, prepared=first)
    plan = json.loads((run_dir / "rounds/002/hard_samples.json").read_text())
    assert plan

    # The parents are the 2 lowest-marginal training digits per class under round 1's model
    # (per_class), or the 2 x 10 lowest of all training digits (global).
    student = build_model(cfg, first.splits)
    load_checkpoint(student, list_checkpoints(run_dir / "rounds/001/checkpoints")[-1])
    train = first.splits.train
    p = student.predict_proba(train.items)[np.arange(len(train)), train.labels]
    expected: set[str] = set()
    if scope == "global":
        order = sorted(range(len(train)), key=lambda i: (p[i], train.ids[i]))
        expected.update(train.ids[i] for i in order[:20])
    for c in range(train.num_classes if scope == "per_class" else 0):
        idx = np.flatnonzero(train.labels == c)
        order = sorted(idx, key=lambda i: (p[i], train.ids[i]))
        expected.update(train.ids[i] for i in order[:2])

    with PoolStore.open(run_dir) as store:
        manifest = store.manifest()
    second = manifest[(manifest["source"] == "synthetic") & (manifest["round"] == 2)]
    assert len(second) == 10 * PER_CLASS
    assert set(second["parent_id"]) == expected
    assert set(second["strength"]) <= {0.5, 0.75, 0.9}


def test_k_above_a_class_size_fails_before_anything_is_written(tmp_path: Path) -> None:
    cfg = config(
        "digits-hard-samples", "feedback.hard_samples.k=6", "feedback.hard_samples.scope=per_class"
    )
    with pytest.raises(FeedbackError, match="k") as info:
        prepare(cfg)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()
