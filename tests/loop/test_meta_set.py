"""UtilGen's meta set is held out from the classifier it weights (issue 29 item 4).

With ``meta_weight`` scored and ``valuation.meta_weight.meta_set: validation`` the run
reserves ``meta_per_class`` validation samples per class before anything uses validation;
the weight net is trained to lower their loss, and the weighted model (the stage-1 judge)
was never fitted on them. A replay generator (held-out real digits) stands in for the
diffusion model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from replay import ReplayGenerator

from utilgen.config import RunConfig, resolve_config
from utilgen.data import k_shot, load_data, split_for_config
from utilgen.errors import UtilgenError
from utilgen.generate.builtin import builtin_class_requests
from utilgen.loop import run as run_module
from utilgen.loop import run_splits
from utilgen.loop.dry_run import describe_plan
from utilgen.loop.run import Prepared, plan_run, prepare, run
from utilgen.pool import PoolStore
from utilgen.value import meta_weight

PER_CLASS = 3
META_PER_CLASS = 3

pytestmark = pytest.mark.usefixtures("quiet_one_thread")


def _config(*sets: str) -> RunConfig:
    return resolve_config(
        "digits-real-only",
        [
            "task.epochs=2", "data.k_shot=5", "data.max_per_class=60",
            "generator.kind=builtin-diffusion", f"generator.per_class={PER_CLASS}",
            "loop.rounds=1", "strategy=utilgen", "valuation.scores=[meta_weight]",
            "valuation.meta_weight.epochs=1", "valuation.meta_weight.batch_size=32",
            f"valuation.meta_weight.meta_per_class={META_PER_CLASS}", *sets,
        ],
    )  # fmt: skip


def _prepared(config: RunConfig) -> Prepared:
    base = prepare(config, with_generator=False)
    assert base.splits.unused_train is not None
    requests = builtin_class_requests(
        base.splits.train.class_names, per_class=PER_CLASS, seed=config.seed, round_index=1,
        cfg=config.generator.builtin,
    )  # fmt: skip
    return replace(
        base, generator=ReplayGenerator(base.splits.unused_train), requests=tuple(requests)
    )


def _unreserved_val_ids(config: RunConfig) -> set[str]:
    """Validation as the data split makes it, before the meta set is reserved."""
    return set(split_for_config(load_data(config.data), config.data, config.seed).val.ids)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """One round with ``meta_weight``; what the weight net trained on and its meta set."""
    run_dir = tmp_path_factory.mktemp("runs") / "meta"
    seen: dict[str, Any] = {}
    original = meta_weight.train_meta_weighted

    def spy(model, train, meta, cfg, *, seed):  # type: ignore[no-untyped-def]
        seen["trained_on"], seen["meta"] = set(train.ids), set(meta.ids)
        return original(model, train, meta, cfg, seed=seed)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(meta_weight, "train_meta_weighted", spy)
        run(_config(), run_dir, prepared=_prepared(_config()))
    yield run_dir, seen


def test_the_meta_sets_ids_are_disjoint_from_the_samples_the_weighted_model_was_fitted_on(
    finished: tuple[Path, dict[str, Any]],
) -> None:
    """Acceptance: the meta loss is on real samples that neither the judge (stage 1, fitted
    on the real training split) nor the weighted training (scored samples + real extras)
    saw; they come from validation and have left it."""
    run_dir, seen = finished
    frame = PoolStore(run_dir).manifest()
    meta = set(frame.loc[frame["split"] == "meta", "id"])
    fitted = set(frame.loc[frame["split"] == "train", "id"])  # the judge's training split
    reduced_val = set(frame.loc[frame["split"] == "val", "id"])
    assert seen["meta"] == meta and len(meta) == 10 * META_PER_CLASS
    assert not meta & fitted
    assert not meta & seen["trained_on"]
    assert fitted <= seen["trained_on"]  # train_on_real: the real extras were trained on
    assert meta <= _unreserved_val_ids(_config()) and not meta & reduced_val
    stage1 = json.loads((run_dir / "rounds/000/metrics.json").read_text())
    assert stage1["n_meta"] == len(meta) and stage1["n_val"] == len(reduced_val)
    assert json.loads((run_dir / "rounds/001/metrics.json").read_text())["n_val"] == len(
        reduced_val
    )


def test_the_meta_set_is_the_same_on_resume(finished: tuple[Path, dict[str, Any]]) -> None:
    run_dir, _ = finished
    before = PoolStore(run_dir).manifest()
    planned = plan_run(_config(), with_generator=False).splits
    assert planned.meta is not None
    assert set(planned.meta.ids) == set(before.loc[before["split"] == "meta", "id"])
    run(_config(), run_dir, prepared=_prepared(_config()))  # finished: nothing is redone
    assert PoolStore(run_dir).manifest().equals(before)


def test_a_run_started_without_the_held_out_meta_set_is_not_resumed_with_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose pool holds the meta samples as validation (started before the meta set
    was held out) would measure its later rounds on another validation split: refused."""
    run_dir = tmp_path / "old"
    config = _config()
    with monkeypatch.context() as patch:
        patch.setattr(run_splits, "reserves_meta_set", lambda config: False)

        def stop(*args: object) -> None:
            raise RuntimeError("stopped after the pool")

        patch.setattr(run_module, "_train_and_evaluate", stop)
        with pytest.raises(RuntimeError, match="stopped after the pool"):
            run(config, run_dir, prepared=_prepared(config))
    with pytest.raises(UtilgenError, match="in split 'val' but this run puts it in 'meta'"):
        run(config, run_dir, prepared=_prepared(config))


def test_meta_set_train_reserves_nothing_and_says_it_is_leaky(tmp_path: Path) -> None:
    """``meta_set: train`` keeps validation whole; the valuator then draws the meta set
    from the real training split as before (tests/value)."""
    leaky = plan_run(_config("valuation.meta_weight.meta_set=train"), with_generator=False)
    assert leaky.splits.meta is None
    assert set(leaky.splits.val.ids) == _unreserved_val_ids(leaky.config)
    assert "meta_set: train, leaky" in describe_plan(leaky, tmp_path / "run")
    held_out = plan_run(_config(), with_generator=False)
    assert held_out.splits.train.ids == leaky.splits.train.ids
    text = describe_plan(held_out, tmp_path / "run")
    assert f"meta 30 ({META_PER_CLASS} a class reserved from validation" in text
    # the old meta set, for comparison: k-shot of the training split, all memorised
    old = k_shot(leaky.splits.train, META_PER_CLASS, leaky.config.seed)
    assert set(old.ids) <= set(leaky.splits.train.ids)


def test_no_meta_set_is_reserved_without_the_meta_weight_score() -> None:
    plan = plan_run(_config("valuation.scores=[marginal]"), with_generator=False)
    assert plan.splits.meta is None
    assert set(plan.splits.val.ids) == _unreserved_val_ids(plan.config)
