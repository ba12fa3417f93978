"""Issue 4 acceptance: the built-in generator with its default config draws digits that a
real-data classifier recognises as the requested class at least 80% of the time.

Digits, the default 65/15/20 split with seed 0 and k_shot=10: the generator is pretrained on
the unused training digits and adapted to the 10 shots per class (fresh, in a temporary
cache: minutes on a CPU), then generates 50 images per class. A small-cnn trained on ALL
real training digits labels them. benchmarks/builtin_fidelity.py runs the same measurement
with timings.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from utilgen.config import BuiltinDiffusionConfig, DataConfig, TaskConfig
from utilgen.data import load_data, split_for_config, stratified_split
from utilgen.generate.builtin import builtin_class_requests, prepare_builtin_generator
from utilgen.pool.payload import decode_image
from utilgen.task import build_task_model, evaluate, train
from utilgen.task.fidelity import label_fidelity

log = logging.getLogger(__name__)

PER_CLASS = 50
# The digits settings of tests/task/test_task_accuracy.py (>= 0.95 test accuracy).
CLASSIFIER = TaskConfig(model="small-cnn", epochs=10, batch_size=32, lr=3e-3)


@pytest.mark.slow
def test_default_builtin_generator_reaches_label_fidelity_08_on_digits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UTILGEN_CACHE_DIR", str(tmp_path))
    data_cfg = DataConfig(source="digits", k_shot=10)
    data = load_data(data_cfg)
    splits = split_for_config(data, data_cfg, seed=0)
    assert splits.unused_train is not None and len(splits.train) == 100

    cfg = BuiltinDiffusionConfig()
    generator = prepare_builtin_generator(
        cfg,
        task_train=splits.train,
        broad=splits.unused_train,
        device=torch.device("cpu"),
        seed=0,
        batch_size=64,
        progress=False,
    )
    requests = builtin_class_requests(
        data.class_names, per_class=PER_CLASS, seed=0, round_index=1, cfg=cfg
    )
    samples = list(generator.generate(requests, progress=False))
    assert len(samples) == PER_CLASS * data.num_classes

    full_train = stratified_split(data, data_cfg.val_fraction, data_cfg.test_fraction, 0).train
    classifier = build_task_model(
        CLASSIFIER, "image", data.num_classes, full_train.items[:4], "cpu", seed=0
    )
    train(classifier, full_train, CLASSIFIER, seed=0, progress=lambda n: None)
    assert evaluate(classifier, splits.test)["accuracy"] >= 0.95

    images = [decode_image(s.payload) for s in samples]
    assert all(image.shape == (8, 8, 1) for image in images)
    fidelity = label_fidelity(
        classifier, images, np.array([s.label for s in samples]), data.class_names
    )
    per_class = ", ".join(f"{name}: {value:.2f}" for name, value in fidelity.per_class.items())
    print(f"label fidelity {fidelity.overall:.3f} (per class {per_class})")
    log.info("label fidelity %.3f (per class %s)", fidelity.overall, per_class)
    assert fidelity.overall >= 0.8
