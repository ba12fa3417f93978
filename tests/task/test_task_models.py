"""Every task model kind: shapes and invariants of the TaskModel protocol, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from task_helpers import Build, all_params, trainable_params

from utilgen.config import TaskConfig
from utilgen.data.labelled import LabelledData
from utilgen.errors import UtilgenError
from utilgen.task import TaskModel, load_checkpoint, read_sidecar, train

# name -> (data fixture, feature dimension, gradient shape after n)
KINDS = {
    "small-cnn": ("digits_small", 128, (1, 16, 16)),
    "efficientnet-lite0": ("rgb_images", 1280, (3, 32, 32)),
    "hf-resnet": ("rgb_images", 16, (3, 32, 32)),
    "hf-vit": ("rgb_images", 16, (3, 32, 32)),
    "minilm": ("texts", 384, None),
    "hf-bert": ("texts", 16, None),
}
TEXT_DIM = {"minilm": 384, "hf-bert": 16}


@pytest.fixture(params=list(KINDS))
def case(
    request: pytest.FixtureRequest, build: Build
) -> tuple[str, TaskModel, LabelledData]:
    name = request.param
    data: LabelledData = request.getfixturevalue(KINDS[name][0])
    data = data.subset(range(min(len(data), 12)))
    return name, build(name, data), data


def test_predict_proba_rows_are_distributions(case: tuple[str, TaskModel, LabelledData]) -> None:
    _, model, data = case
    proba = model.predict_proba(data.items)
    assert proba.shape == (len(data), data.num_classes)
    assert proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert (proba >= 0).all()
    logits = model.logits(data.items)
    # exact: the same forward pass; softmax keeps the order of its logits
    np.testing.assert_array_equal(logits.argmax(1), proba.argmax(1))


def test_embed_has_the_head_input_dimension(case: tuple[str, TaskModel, LabelledData]) -> None:
    name, model, data = case
    features = model.embed(data.items)
    assert features.shape == (len(data), KINDS[name][1])
    assert features.dtype == np.float32 and np.isfinite(features).all()


def test_input_gradients_shape_and_nonzero(case: tuple[str, TaskModel, LabelledData]) -> None:
    name, model, data = case
    grads = model.input_gradients(data.items, data.labels)
    assert grads.dtype == np.float32
    if model.modality == "image":
        pixels = KINDS[name][2]
        assert pixels is not None and grads.shape == (len(data), *pixels)
    else:
        assert grads.ndim == 3 and grads.shape[0] == len(data)
        assert grads.shape[2] == TEXT_DIM[name]
    per_sample = np.abs(grads).reshape(len(data), -1).sum(axis=1)
    assert (per_sample > 0).all()


def test_input_gradients_do_not_depend_on_batch_mates(
    case: tuple[str, TaskModel, LabelledData],
) -> None:
    _, model, data = case
    together = model.input_gradients(data.items[:3], data.labels[:3])
    alone = model.input_gradients(data.items[1:2], data.labels[1:2])
    length = alone.shape[1] if model.modality == "text" else together.shape[1]
    np.testing.assert_allclose(together[1, :length], alone[0], rtol=1e-4, atol=1e-6)
    if model.modality == "text":  # positions past the text's own tokens are padding
        assert not together[1, length:].any()


def test_checkpoint_round_trip_restores_predictions(
    case: tuple[str, TaskModel, LabelledData], build: Build, tmp_path: Path
) -> None:
    name, model, data = case
    path = model.save(tmp_path / "model.safetensors", metadata={"note": "x"})
    assert read_sidecar(path)["model_kind"] == model.kind
    assert read_sidecar(path)["note"] == "x"
    other = build(name, data, seed=1)
    with torch.no_grad():  # make sure it differs (hf heads of the right size are loaded)
        for param in other.module().parameters():
            if param.requires_grad:
                param.add_(0.5)
    assert not np.array_equal(other.logits(data.items), model.logits(data.items))
    load_checkpoint(other, path)
    # exact: the weights come back bit for bit, and the same call on the same inputs
    np.testing.assert_array_equal(other.logits(data.items), model.logits(data.items))


def test_training_changes_every_trainable_and_no_frozen_parameter(
    case: tuple[str, TaskModel, LabelledData],
) -> None:
    name, model, data = case
    before_all, before = all_params(model), trainable_params(model)
    train(model, data, TaskConfig(epochs=2, batch_size=4, lr=1e-2), seed=0)
    after_all, after = all_params(model), trainable_params(model)
    assert before, "nothing to train"
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, f"{name}: trainable parameters did not change: {unchanged[:3]}"
    # frozen weights and batch-norm statistics stay put (the backbone stays in eval mode)
    module = model.module()
    frozen = [k for k in before_all if module.is_frozen_key(k)]  # type: ignore[operator]
    changed = [k for k in frozen if not torch.equal(before_all[k], after_all[k])]
    assert not changed, f"{name}: frozen tensors changed: {changed[:3]}"


def test_frozen_backbones_leave_only_the_head_trainable(
    build: Build, rgb_images: LabelledData
) -> None:
    model = build("efficientnet-lite0", rgb_images)
    names = list(trainable_params(model))
    assert names and all(n.startswith("head.") for n in names)
    unfrozen = build("efficientnet-lite0", rgb_images, freeze_backbone=False)
    assert any(n.startswith("backbone.") for n in trainable_params(unfrozen))
    resnet = build("hf-resnet", rgb_images)
    assert all(n.startswith("model.classifier.") for n in trainable_params(resnet))


def test_checkpoint_leaves_out_the_frozen_backbone(
    build: Build, rgb_images: LabelledData, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    model = build("efficientnet-lite0", rgb_images)
    state = load_file(str(model.save(tmp_path / "head.safetensors")))
    assert set(state) == {"head.weight", "head.bias"}
    assert (tmp_path / "head.json").is_file()


def test_checkpoint_of_another_kind_is_refused(
    build: Build, digits_small: LabelledData, tmp_path: Path
) -> None:
    cnn = build("small-cnn", digits_small)
    path = cnn.save(tmp_path / "cnn.safetensors")
    mlp = build("small-cnn", digits_small, head="mlp")
    with pytest.raises(UtilgenError, match="does not fit"):
        load_checkpoint(mlp, path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UtilgenError, match="not a readable safetensors"):
        load_checkpoint(cnn, tmp_path / "junk.safetensors")


def test_images_of_any_channel_count_and_size_are_accepted(
    build: Build, digits_small: LabelledData
) -> None:
    grey = build("small-cnn", digits_small)
    first = np.asarray(digits_small.items[0])
    rgb = np.concatenate([first] * 3, axis=-1)
    big = np.zeros((40, 30, 3), dtype=np.uint8)
    batch = grey.prepare([first, rgb, big])
    assert isinstance(batch, torch.Tensor)
    assert batch.shape == (3, 1, 16, 16)
    # an RGB image whose channels are equal is the same grey image
    torch.testing.assert_close(batch[0], batch[1], atol=1e-5, rtol=0)
    assert float(batch.min()) >= -1.0 and float(batch.max()) <= 1.0


def test_mlp_head_is_used(build: Build, texts: LabelledData) -> None:
    model = build("minilm", texts, head="mlp")
    assert isinstance(model.module().head, torch.nn.Sequential)
    assert model.predict_proba(texts.items[:2]).shape == (2, 3)


def test_gpt_style_checkpoint_without_pad_token_pads_with_end_of_text(
    tmp_path: Path, texts: LabelledData
) -> None:
    """A GPT-2 checkpoint has no pad token: padded rows must score as they do alone."""
    import json

    from transformers import AutoModelForSequenceClassification, GPT2Config, GPT2Tokenizer

    from utilgen.task.hf_text import HFTextModel

    vocab = {c: i for i, c in enumerate(["<|endoftext|>", *"abcdefghijklmnopqrstuvwxyz.'Ġ"])}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")).save_pretrained(
        tmp_path
    )
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(vocab), n_embd=16, n_layer=1, n_head=2, n_positions=128)
    config.num_labels = 2
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path)

    model = HFTextModel(2, str(tmp_path), max_length=64)
    items = [t.lower() for t in texts.items[:3]]
    together = model.predict_proba(items)
    alone = np.concatenate([model.predict_proba([t]) for t in items])
    np.testing.assert_allclose(together, alone, atol=1e-5)
