"""End-to-end accuracy with the recommended defaults on the bundled demos (full data,
stratified 65/15/20 split, seed 0): small-cnn on digits and MiniLM + linear on BBC News must
each reach 0.95 test accuracy."""

from __future__ import annotations

import logging
import time

import pytest

from utilgen.config import DataConfig, TaskConfig
from utilgen.data import load_data, split_for_config
from utilgen.task import build_task_model, evaluate, train

log = logging.getLogger(__name__)

# The recommended per-model settings: they reach 0.95 within seconds of training on a CPU
# (for BBC News, encoding the 2,225 articles once dominates the time).
DIGITS_TASK = TaskConfig(model="small-cnn", epochs=10, batch_size=32, lr=3e-3)
BBC_TASK = TaskConfig(
    model="minilm", head="linear", epochs=20, batch_size=32, lr=1e-2, max_length=128
)


def _fit_and_test(source: str, task: TaskConfig) -> tuple[float, float]:
    data_cfg = DataConfig(source=source, val_fraction=0.15, test_fraction=0.2)
    data = load_data(data_cfg)
    splits = split_for_config(data, data_cfg, seed=0)
    started = time.perf_counter()
    model = build_task_model(
        task, data.modality, data.num_classes, splits.train.items[:4], "cpu", seed=0
    )
    train(model, splits.train, task, val=splits.val, seed=0)
    accuracy = evaluate(model, splits.test)["accuracy"]
    seconds = time.perf_counter() - started
    log.info("%s: test accuracy %.4f in %.1f s", source, accuracy, seconds)
    return accuracy, seconds


def test_small_cnn_on_full_digits_reaches_095() -> None:
    accuracy, _ = _fit_and_test("digits", DIGITS_TASK)
    assert accuracy >= 0.95


@pytest.mark.slow
def test_minilm_linear_on_full_bbc_news_reaches_095() -> None:
    accuracy, _ = _fit_and_test("bbc-news", BBC_TASK)
    assert accuracy >= 0.95
