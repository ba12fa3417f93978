"""One round of ``digits-static-img2img`` through the run engine: the static requests are
img2img around real training digits drawn at random, and the pool records it.

A tiny untrained built-in generator stands in for the trained one (tests/loop/tiny_builtin.py);
it runs img2img from the parent images like the real one, which is all the round needs.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from tiny_builtin import tiny_generator

from utilgen.config import resolve_config
from utilgen.loop.run import plan_run, prepare, run
from utilgen.pool import PoolStore

pytestmark = pytest.mark.usefixtures("quiet_one_thread")

PER_CLASS = 9  # 3 random parents a class, 3 outputs each: every strength once per parent


def test_one_round_generates_around_random_real_digits_of_the_same_label(tmp_path: Path) -> None:
    cfg = resolve_config(
        "digits-static-img2img",
        [
            "task.epochs=2",
            "data.k_shot=5",
            "data.max_per_class=40",
            f"generator.per_class={PER_CLASS}",
        ],
    )
    base = prepare(cfg, with_generator=False)
    names = base.splits.train.class_names
    prepared = replace(
        base,
        generator=tiny_generator(names),
        requests=plan_run(cfg).requests,
        base_generator=lambda: tiny_generator(names),
    )
    run_dir = tmp_path / "static-img2img"
    run(cfg, run_dir, prepared=prepared)

    with PoolStore.open(run_dir) as store:
        manifest = store.manifest()
    real = manifest[(manifest["source"] == "real") & (manifest["split"] == "train")]
    label_of = dict(zip(real["id"], real["label"], strict=True))
    assert set(label_of) == set(base.splits.train.ids)
    synthetic = manifest[manifest["source"] == "synthetic"]
    assert len(synthetic) == PER_CLASS * len(names)
    assert set(synthetic["round"]) == {1}
    for row in synthetic.itertuples():
        assert label_of[row.parent_id] == row.label  # a real training digit of its label
    assert set(synthetic["strength"]) == {0.5, 0.75, 0.9}
    parents = synthetic.groupby("label")["parent_id"].nunique()
    assert (parents == 3).all()  # generator.real_init.k
    for _, group in synthetic.groupby("parent_id"):
        assert sorted(group["strength"]) == [0.5, 0.75, 0.9]
    metadata = [json.loads(d)["request"]["metadata"] for d in synthetic["details"]]
    assert all(m == {"real_init": True, "caption": ""} for m in metadata)
    assert (run_dir / "rounds/001/metrics.json").exists()
