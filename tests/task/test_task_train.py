"""Weighted training: loss goes down, one seed fixes the result, weight 0 removes a sample
exactly, checkpoints are written per epoch and reload to identical predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from task_helpers import Build, all_params, identical

from utilgen.config import TaskConfig
from utilgen.data.labelled import LabelledData
from utilgen.errors import UtilgenError
from utilgen.task import (
    list_checkpoints,
    load_checkpoint,
    read_sidecar,
    train,
    weighted_cross_entropy,
)
from utilgen.task.epoch_order import epoch_order, id_keys

FAST = TaskConfig(epochs=3, batch_size=16, lr=3e-3)


def _with_extra(data: LabelledData, extra: LabelledData, label: int) -> LabelledData:
    """``data`` plus the first sample of ``extra`` (relabelled ``label``) in the middle."""
    one = LabelledData(
        modality=extra.modality,
        items=extra.items[:1],
        labels=np.array([label]),
        class_names=extra.class_names,
        ids=("extra/0",),
        name=extra.name,
    )
    half = len(data) // 2
    head, tail = data.subset(range(half)), data.subset(range(half, len(data)))
    return head.concat(one).concat(tail)


def _train_params(
    build: Build, data: LabelledData, weights: np.ndarray | None = None, seed: int = 0
) -> dict[str, torch.Tensor]:
    model = build("small-cnn", data)
    train(model, data, FAST, weights=weights, seed=seed)
    return all_params(model)


def test_training_reduces_the_loss(build: Build, digits_small: LabelledData) -> None:
    model = build("small-cnn", digits_small)
    result = train(model, digits_small, TaskConfig(epochs=5, batch_size=16, lr=3e-3), seed=0)
    assert len(result.train_loss) == 5
    assert result.train_loss[-1] < 0.5 * result.train_loss[0]
    assert result.n_trained == len(digits_small)
    assert result.val_accuracy == () and result.checkpoints == ()


def test_same_seed_same_parameters_other_seed_other_parameters(
    build: Build, digits_small: LabelledData
) -> None:
    first = _train_params(build, digits_small, seed=0)
    again = _train_params(build, digits_small, seed=0)
    other = _train_params(build, digits_small, seed=1)
    assert identical(first, again)
    assert not identical(first, other)


def test_zero_weight_removes_a_sample_exactly(build: Build, digits_small: LabelledData) -> None:
    """A weight-0 sample leaves every parameter and batch-norm statistic bit-identical: to a
    run without it, and to a run where it carries another label; a non-zero weight does not."""
    extra_source = digits_small.subset([0])  # a "0"
    with_zero = _with_extra(digits_small, extra_source, label=0)
    flipped = _with_extra(digits_small, extra_source, label=7)
    zero = np.ones(len(with_zero))
    zero[len(digits_small) // 2] = 0.0

    without = _train_params(build, digits_small)
    assert identical(_train_params(build, with_zero, zero), without)
    assert identical(_train_params(build, flipped, zero), without)
    assert not identical(_train_params(build, flipped, np.ones(len(flipped))), without)


def test_weight_zero_gives_exactly_zero_gradient() -> None:
    logits = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0])
    weighted_cross_entropy(logits, labels, torch.tensor([1.0, 0.0, 2.0, 1.0])).backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[1] == 0)
    assert torch.all(logits.grad[[0, 2, 3]] != 0)


def test_weighted_loss_is_the_normalised_weighted_mean() -> None:
    # CE of logits (0, 0) is ln 2 for either label; of (ln 3, 0) with label 0 it is ln(4/3).
    logits = torch.tensor([[0.0, 0.0], [float(np.log(3.0)), 0.0]])
    labels = torch.tensor([1, 0])
    loss = weighted_cross_entropy(logits, labels, torch.tensor([1.0, 3.0]))
    expected = (1 * np.log(2.0) + 3 * np.log(4.0 / 3.0)) / 4
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    unweighted = torch.nn.functional.cross_entropy(logits, labels)
    ones = weighted_cross_entropy(logits, labels, torch.ones(2))
    assert float(ones) == pytest.approx(float(unweighted), rel=1e-7)
    zeros = weighted_cross_entropy(logits, labels, torch.zeros(2))
    assert float(zeros) == 0.0


def test_weights_are_relative_scaling_all_changes_nothing(
    build: Build, digits_small: LabelledData
) -> None:
    # x4 is exact in floating point and sum(w * loss) / sum(w) divides it out exactly, so
    # both runs feed every kernel the same numbers (same process, same threads): they must
    # agree bit for bit. (A tolerance would also pass weights that are not normalised,
    # whose effect AdamW's scale invariance shrinks to the size of its eps.)
    rng = np.random.default_rng(0)
    weights = rng.uniform(0.5, 2.0, len(digits_small))
    assert identical(
        _train_params(build, digits_small, weights),
        _train_params(build, digits_small, 4.0 * weights),
    )
    unweighted = _train_params(build, digits_small)
    assert not identical(_train_params(build, digits_small, weights), unweighted)


def test_epoch_order_of_a_sample_pair_ignores_other_samples() -> None:
    ids = [f"s/{i}" for i in range(50)]
    order_all = epoch_order(id_keys(ids, seed=3), epoch=2)
    kept = [i for i in range(50) if i % 7]
    order_kept = epoch_order(id_keys([ids[i] for i in kept], seed=3), epoch=2)
    # the kept samples appear in the same relative order in both
    assert [ids[i] for i in order_all if i % 7] == [ids[kept[j]] for j in order_kept]
    assert not np.array_equal(order_all, epoch_order(id_keys(ids, seed=3), epoch=3))
    assert sorted(order_all) == list(range(50))


def test_a_checkpoint_per_epoch_reloads_to_identical_predictions(
    build: Build, digits_small: LabelledData, tmp_path: Path
) -> None:
    model = build("small-cnn", digits_small)
    val = digits_small.subset(range(0, len(digits_small), 3))
    result = train(model, digits_small, FAST, val=val, checkpoint_dir=tmp_path, seed=0)
    names = [f"epoch-{e:03d}.safetensors" for e in (1, 2, 3)]
    assert [p.name for p in result.checkpoints] == names
    assert list_checkpoints(tmp_path) == list(result.checkpoints)
    assert not list(tmp_path.glob(".*.tmp"))
    assert len(result.val_accuracy) == 3

    sidecar = read_sidecar(result.checkpoints[1])
    assert sidecar["epoch"] == 2 and sidecar["model_kind"] == "small-cnn"
    assert sidecar["val_accuracy"] == pytest.approx(result.val_accuracy[1])
    assert sidecar["train_loss"] == pytest.approx(result.train_loss[1])
    assert json.loads((tmp_path / "epoch-003.json").read_text())["epoch"] == 3

    fresh = build("small-cnn", digits_small, seed=5)
    load_checkpoint(fresh, result.checkpoints[-1])
    np.testing.assert_array_equal(  # exact: the same weights, the same call
        fresh.predict_proba(digits_small.items), model.predict_proba(digits_small.items)
    )
    load_checkpoint(fresh, result.checkpoints[0])
    assert not np.array_equal(
        fresh.predict_proba(digits_small.items), model.predict_proba(digits_small.items)
    )


def test_checkpoints_are_listed_by_epoch_number(tmp_path: Path) -> None:
    for name in ("epoch-010.safetensors", "epoch-002.safetensors", "epoch-1000.safetensors"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "notes.safetensors").write_bytes(b"")
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "epoch-002.safetensors",
        "epoch-010.safetensors",
        "epoch-1000.safetensors",
    ]
    assert list_checkpoints(tmp_path / "missing") == []


def test_text_head_trains_on_cached_embeddings(build: Build, texts: LabelledData) -> None:
    model = build("minilm", texts)
    encoder = model.encoder  # type: ignore[attr-defined]
    model.prepare(texts.items)
    cached = encoder.cache_size
    result = train(model, texts, TaskConfig(epochs=30, batch_size=8, lr=1e-2), seed=0)
    assert encoder.cache_size == cached  # nothing re-encoded
    assert result.train_loss[-1] < 0.5 * result.train_loss[0]
    assert (model.predict_proba(texts.items).argmax(1) == texts.labels).mean() == 1.0


def test_progress_callback_is_called_once_per_epoch(
    build: Build, digits_small: LabelledData
) -> None:
    calls: list[int] = []
    train(build("small-cnn", digits_small), digits_small, FAST, seed=0, progress=calls.append)
    assert calls == [1, 1, 1]


def test_bad_training_inputs(
    build: Build, digits_small: LabelledData, texts: LabelledData
) -> None:
    model = build("small-cnn", digits_small)
    with pytest.raises(UtilgenError, match="classifies images"):
        train(model, texts, FAST, seed=0)
    with pytest.raises(ValueError, match="weights for"):
        train(model, digits_small, FAST, weights=np.ones(3), seed=0)
    with pytest.raises(ValueError, match="non-negative"):
        train(model, digits_small, FAST, weights=-np.ones(len(digits_small)), seed=0)
    with pytest.raises(UtilgenError, match="weight 0"):
        train(model, digits_small, FAST, weights=np.zeros(len(digits_small)), seed=0)
