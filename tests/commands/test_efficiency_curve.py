"""Sample-efficiency curve of a finished run: nested stratified subsets, retraining that
reproduces the run's own rounds at fractions 0 and 1, and resume from saved points.

The run is a tiny static round (an untrained built-in generator, 2 epochs) whose selection
weighs each synthetic sample by its per-class min-max marginal, so the round trained with
non-trivial weights and left the lowest-marginal sample of every class out (weight 0).
"""

from __future__ import annotations

import itertools
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from utilgen.commands import efficiency
from utilgen.commands.efficiency import efficiency_curve, final_synthetic, nested_subsets
from utilgen.config import RunConfig, resolve_config
from utilgen.errors import UtilgenError
from utilgen.loop.run import run
from utilgen.pool import PoolStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loop"))
from tiny_builtin import PER_CLASS, prepared

pytestmark = pytest.mark.usefixtures("quiet_one_thread")


def config() -> RunConfig:
    return resolve_config(
        "digits-static",
        [
            "task.epochs=2",
            "data.k_shot=5",
            "data.max_per_class=40",
            f"generator.per_class={PER_CLASS}",
            "valuation.scores=[marginal]",
            "valuation.selection=[{rule: weight, score: marginal, normalize: true}]",
        ],
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run, on one thread as the tests' retraining (quiet_one_thread): another thread
    count sums floats in another order, and the metrics are compared exactly."""
    run_dir = tmp_path_factory.mktemp("runs") / "static"
    cfg = config()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(cfg, run_dir, prepared=prepared(cfg))
    finally:
        torch.set_num_threads(threads)
    return run_dir


def test_subsets_are_nested_stratified_and_seeded() -> None:
    labels = np.repeat([0, 1, 2], [8, 4, 1])
    ids = tuple(f"s{i:02d}" for i in range(len(labels)))
    fractions = (0.0, 0.125, 0.25, 0.5, 1.0)
    subsets = nested_subsets(labels, ids, fractions, seed=0)
    # round-half-up(f * class size) per class: 8 -> 0,1,2,4,8; 4 -> 0,1,1,2,4; 1 -> 0,0,0,1,1
    expected = {0.0: [0, 0, 0], 0.125: [1, 1, 0], 0.25: [2, 1, 0], 0.5: [4, 2, 1], 1.0: [8, 4, 1]}
    for f, counts in expected.items():
        assert np.bincount(labels[subsets[f]], minlength=3).tolist() == counts
    for small, large in itertools.pairwise(fractions):
        assert set(subsets[small]) <= set(subsets[large])
    # The permutation is keyed by id, not position: shuffling the input picks the same ids.
    order = np.random.default_rng(1).permutation(len(labels))
    shuffled = nested_subsets(labels[order], tuple(ids[i] for i in order), fractions, seed=0)
    assert {ids[order[i]] for i in shuffled[0.5]} == {ids[i] for i in subsets[0.5]}
    other = nested_subsets(labels, ids, fractions, seed=1)
    assert any(set(other[f]) != set(subsets[f]) for f in (0.125, 0.25, 0.5))


def test_final_synthetic_carries_the_round_weights(finished: Path, tmp_path: Path) -> None:
    store = PoolStore(finished)
    synthetic = final_synthetic(store, 1, tuple(str(c) for c in range(10)))
    frame = store.manifest().set_index("id")
    weights = frame.loc[list(synthetic.data.ids), "utility_r001_weight"].to_numpy()
    assert synthetic.weights is not None
    assert np.array_equal(synthetic.weights, weights)  # exact: read back, not recomputed
    # the lowest-marginal sample of each class got weight 0 and was never trained on
    assert len(synthetic.data) == 10 * (PER_CLASS - 1)
    assert (synthetic.weights > 0).all()
    # A run from before rounds/NNN/training_set.parquet: the same set from the pool's kept
    # flags and weight column.
    old = tmp_path / "old"
    shutil.copytree(finished, old)
    (old / "rounds/001/training_set.parquet").unlink()
    legacy = final_synthetic(PoolStore(old), 1, tuple(str(c) for c in range(10)))
    assert legacy.data.ids == synthetic.data.ids
    assert np.array_equal(legacy.weights, synthetic.weights)  # the same stored column


def test_curve_reproduces_the_run_at_fractions_zero_and_one(finished: Path) -> None:
    curve = efficiency_curve(finished, (0, 0.5, 1))
    summary = json.loads((finished / "summary.json").read_text())
    stage1 = json.loads((finished / "rounds/000/metrics.json").read_text())
    assert json.loads((finished / "efficiency.json").read_text()) == curve
    assert not (finished / "efficiency.partial.json").exists()
    assert (curve["strategy"], curve["dataset"], curve["seed"]) == ("static", "digits", 0)
    assert curve["order"] == "stratified-random" and curve["n_real"] == 50
    points = curve["points"]
    assert [p["fraction"] for p in points] == [0.0, 0.5, 1.0]
    assert [p["n_synthetic"] for p in points] == [0, 10, 20]
    # Exact: the same model, seed and training set (ids, order, weights) as the run, in this
    # process and on one thread as the run was: the same computation, bit for bit.
    assert points[0]["accuracy"] == stage1["test"]["accuracy"]
    assert points[-1]["accuracy"] == summary["accuracy"]
    assert points[-1]["worst_class_ratio"] == summary["worst_class_ratio"]


def test_saved_points_are_reused_and_a_crash_resumes(
    finished: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    efficiency_curve(finished, (0, 1))
    reference = json.loads((finished / "efficiency.json").read_text())["points"]
    trained: list[float] = []
    crashed: list[float] = []
    real_train_point = efficiency.train_point

    def counting(*args: object, **kwargs: object) -> dict[str, object]:
        fraction = args[4]
        assert isinstance(fraction, float)
        if fraction == 0.5 and not crashed:
            crashed.append(fraction)
            raise RuntimeError("simulated crash")
        trained.append(fraction)
        return real_train_point(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(efficiency, "train_point", counting)
    # 0 and 1 come from efficiency.json; 0.25 is trained and saved, then 0.5 crashes
    with pytest.raises(RuntimeError, match="simulated crash"):
        efficiency_curve(finished, (0, 0.25, 0.5, 1))
    partial = json.loads((finished / "efficiency.partial.json").read_text())
    assert [p["fraction"] for p in partial["points"]] == [0.0, 0.25, 1.0]
    curve = efficiency_curve(finished, (0, 0.25, 0.5, 1))
    assert trained == [0.25, 0.5]
    assert [p["fraction"] for p in curve["points"]] == [0.0, 0.25, 0.5, 1.0]
    assert [curve["points"][i] for i in (0, 3)] == reference
    assert not (finished / "efficiency.partial.json").exists()


def test_a_run_without_synthetic_samples_is_refused(tmp_path: Path) -> None:
    cfg = resolve_config(
        "digits-real-only", ["task.epochs=1", "data.k_shot=5", "data.max_per_class=40"]
    )
    run(cfg, tmp_path / "real")
    before = sorted(p.name for p in (tmp_path / "real").iterdir())
    with pytest.raises(UtilgenError, match="generated no synthetic samples"):
        efficiency_curve(tmp_path / "real")
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == before
