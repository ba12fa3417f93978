"""VoG: hand-computed cases, zero for identical checkpoints, numpy parity on a linear model,
the checkpoints read being exactly the configured epochs, padding-invariance for texts, and
its bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from value_helpers import LinearModel

from utilgen.config import TaskConfig
from utilgen.config.valuation import ValuationConfig
from utilgen.data.labelled import LabelledData
from utilgen.task import TaskModel, build_task_model, train
from utilgen.value import ValuationError, VoG, class_normalize, variance_of_gradients
from utilgen.value import vog as vog_module
from utilgen.value.scoring import build_valuators


def test_variance_of_gradients_by_hand() -> None:
    # one sample, two dimensions, two checkpoints: per-dimension population variances 1 and 4
    grads = np.array([[[1.0, 0.0]], [[3.0, 4.0]]])
    np.testing.assert_allclose(variance_of_gradients(grads), [2.5])
    # a mask keeps only the second dimension
    np.testing.assert_allclose(variance_of_gradients(grads, np.array([[False, True]])), [4.0])
    # a fully masked sample scores 0 rather than NaN
    assert variance_of_gradients(grads, np.array([[False, False]]))[0] == 0.0


def test_class_normalize_by_hand() -> None:
    values = np.array([1.0, 3.0, 10.0, 10.0, 7.0])
    labels = np.array([0, 0, 1, 1, 2])
    # class 0: mean 2, std 1; class 1 and the single-sample class 2 are constant -> 0
    np.testing.assert_allclose(class_normalize(values, labels), [-1.0, 1.0, 0.0, 0.0, 0.0])


def _train_linear(model: LinearModel, data: LabelledData, out: Path, n: int = 3) -> list[Path]:
    """Train ``n`` epochs; the checkpoints of epochs 1..n."""
    cfg = TaskConfig(epochs=n, batch_size=16, lr=0.05)
    return list(train(model, data, cfg, checkpoint_dir=out, seed=0).checkpoints)


def _linear_vog(checkpoints: list[Path], epochs: list[int], labels: np.ndarray) -> np.ndarray:
    """Raw VoG of a linear model by hand: d z_y / d x = W[y] at each of ``epochs``."""
    weights = np.stack([load_file(str(checkpoints[e - 1]))["head.weight"] for e in epochs])
    weights = weights.astype(np.float64)
    return np.asarray(weights[:, labels, :].var(axis=0).mean(axis=1))


def test_vog_matches_numpy_on_a_linear_model(
    linear_model: LinearModel, digits_small: LabelledData, tmp_path: Path
) -> None:
    checkpoints = _train_linear(linear_model, digits_small, tmp_path)
    # d z_y / d x = W[y] for logits W x + b: the per-checkpoint gradient of every sample
    weights = np.stack([load_file(str(p))["head.weight"] for p in checkpoints]).astype(np.float64)
    y = digits_small.labels
    expected_raw = weights[:, y, :].var(axis=0).mean(axis=1)

    vog = VoG(checkpoints, batch_size=7)  # several batches
    raw = vog.raw(linear_model, digits_small)
    np.testing.assert_allclose(raw, expected_raw, rtol=1e-5)
    assert expected_raw.min() > 0  # the test is not vacuous: the weights did move
    assert len(np.unique(np.round(expected_raw, 12))) == 10  # one value per class
    # every sample of a class has the same gradient W[y], so the class-normalised VoG is 0
    # (exact: backpropagating a one-hot through W gives the row W[y] itself, 1 * w plus
    # zeros, in any batch, and a constant class normalises to 0)
    assert np.all(vog.score(linear_model, digits_small) == 0.0)


def test_vog_is_zero_when_every_checkpoint_is_the_same_model(
    trained_cnn: tuple[TaskModel, list[Path]], digits_other: LabelledData, tmp_path: Path
) -> None:
    model, _ = trained_cnn
    same = [model.save(tmp_path / f"epoch-{e:03d}.safetensors") for e in (1, 2, 3)]
    vog = VoG(same)
    # exact: the same call gives each checkpoint the same float32 gradients, and their mean
    # in float64 is exact, so every deviation is 0
    assert np.all(vog.raw(model, digits_other) == 0.0)
    assert np.all(vog.score(model, digits_other) == 0.0)


@pytest.mark.parametrize(
    ("points", "epochs"),
    [
        (3, [2, 4, 6]),  # 3 evenly spaced of 6 epochs (the default form)
        ({"fractions": [0.25, 0.5]}, [2, 3]),  # 1.5 -> 2 (halves up), 3
        ({"epochs": [5, 1]}, [1, 5]),
    ],
)
def test_vog_reads_exactly_the_configured_checkpoints(
    points: object,
    epochs: list[int],
    linear_model: LinearModel,
    digits_small: LabelledData,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checkpoints = _train_linear(linear_model, digits_small, tmp_path, n=6)
    loaded: list[str] = []
    real_load = vog_module.load_checkpoint

    def spy(model: TaskModel, path: str | Path) -> None:
        loaded.append(Path(path).name)
        real_load(model, path)

    monkeypatch.setattr(vog_module, "load_checkpoint", spy)
    cfg = ValuationConfig(scores=["vog"], vog_checkpoints=points, batch_size=32)
    vog = build_valuators(cfg, checkpoints=checkpoints, trained_epochs=6)["vog"]
    assert isinstance(vog, VoG)
    raw = vog.raw(linear_model, digits_small)
    # 80 samples in batches of 32: each batch loads the configured epochs, in training order
    assert loaded == [f"epoch-{e:03d}.safetensors" for e in epochs] * 3
    expected = _linear_vog(checkpoints, epochs, digits_small.labels)
    np.testing.assert_allclose(raw, expected, rtol=1e-5)
    # without trained_epochs the run's length is the last checkpoint's epoch: the same
    again = build_valuators(cfg, checkpoints=checkpoints)["vog"]
    assert isinstance(again, VoG) and again.checkpoints == vog.checkpoints


def test_vog_restores_the_model(
    trained_cnn: tuple[TaskModel, list[Path]], digits_other: LabelledData
) -> None:
    model, checkpoints = trained_cnn
    before = {k: v.clone() for k, v in model.module().state_dict().items()}
    model.module().train()
    scores = VoG(checkpoints, epochs=[2, 3]).score(model, digits_other)
    assert scores.shape == (len(digits_other),) and np.all(np.isfinite(scores))
    assert np.any(scores != 0)
    # the earliest checkpoint changes the answer when it is included
    assert not np.allclose(VoG(checkpoints, epochs=[1, 2, 3]).score(model, digits_other), scores)
    after = model.module().state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.module().training  # mode given back as well


def test_vog_needs_two_checkpoints(trained_cnn: tuple[TaskModel, list[Path]]) -> None:
    _, checkpoints = trained_cnn
    with pytest.raises(ValuationError, match="at least 2 training checkpoints but 1") as err:
        VoG(checkpoints[:1])
    assert "\n" not in str(err.value)
    with pytest.raises(ValuationError, match="at least 2 training checkpoints but 1"):
        VoG(checkpoints, epochs=[3])


def test_a_configured_epoch_without_its_checkpoint_is_one_line(
    trained_cnn: tuple[TaskModel, list[Path]],
) -> None:
    _, checkpoints = trained_cnn  # epochs 1..3
    with pytest.raises(ValuationError, match="stage-1 epoch 4 ") as err:
        VoG(checkpoints, epochs=[2, 4])
    assert "\n" not in str(err.value) and "epochs 1..3" in str(err.value)
    # through the config: 3 evenly spaced of a 6-epoch run need epochs 2, 4 and 6
    cfg = ValuationConfig(scores=["vog"])
    with pytest.raises(ValuationError, match="stage-1 epoch 4 "):
        build_valuators(cfg, checkpoints=checkpoints, trained_epochs=6)
    # and points the run cannot hold are the config's own one-line message
    with pytest.raises(ValuationError, match=r"valuation\.vog_checkpoints=4 .* at most 3"):
        build_valuators(cfg.model_copy(update={"vog_checkpoints": 4}), checkpoints=checkpoints)


def test_text_vog_ignores_padding(tmp_path: Path) -> None:
    """A short text scores the same alone and batched with a long one (padding excluded)."""
    short = "Shares fell."
    long = " ".join(["The bank raised interest rates again and the stock market fell."] * 6)
    data = LabelledData(
        modality="text",
        items=(short, long, "The team won the match.", "A late goal won the cup."),
        labels=np.array([0, 0, 1, 1]),
        class_names=("markets", "sport"),
        ids=("t/0", "t/1", "t/2", "t/3"),
    )
    cfg = TaskConfig(model="minilm", epochs=3, batch_size=2, lr=0.05)
    model = build_task_model(cfg, "text", 2, data.items[:1], "cpu", seed=0)
    checkpoints = list(train(model, data, cfg, checkpoint_dir=tmp_path, seed=0).checkpoints)
    vog = VoG(checkpoints, normalize=False)
    together = vog.raw(model, data)
    alone = vog.raw(model, data.subset([0]))
    assert together[0] > 0
    np.testing.assert_allclose(alone[0], together[0], rtol=1e-4)
