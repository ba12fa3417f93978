"""Training, adaptation and caching of the built-in diffusion generator.

Tiny models (8/16 channels) trained for a few steps on a few digits, with the cache pointed
at a temporary directory through ``UTILGEN_CACHE_DIR``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from digits3 import digits_of_three_classes

from utilgen.config import BuiltinDiffusionConfig, config_from_dict
from utilgen.data.bundled import load_digits
from utilgen.data.labelled import LabelledData
from utilgen.errors import ConfigError, DataError, UtilgenError
from utilgen.generate import GenerationRequest
from utilgen.generate.builtin import cache as cache_module
from utilgen.generate.builtin import prepare as prepare_module
from utilgen.generate.builtin import prepare_builtin_generator
from utilgen.generate.builtin.cache import cache_key, cache_root
from utilgen.generate.builtin.generator import BuiltinDiffusionGenerator
from utilgen.generate.builtin.model import ClassConditionalUNet, build_unet
from utilgen.generate.builtin.pixels import image_format, to_model_space
from utilgen.generate.builtin.training import adapt, ddpm_scheduler, pretrain
from utilgen.progress import is_quiet, set_quiet

CPU = torch.device("cpu")


def tiny_config(**changes: object) -> BuiltinDiffusionConfig:
    fields: dict[str, object] = dict(
        block_out_channels=[8, 16],
        norm_num_groups=4,
        train_steps=12,
        train_batch_size=16,
        warmup_steps=2,
        adapt_steps=4,
        steps=4,
    )
    fields.update(changes)
    return BuiltinDiffusionConfig(**fields)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _quiet_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("UTILGEN_CACHE_DIR", str(tmp_path / "cache"))
    was = is_quiet()
    set_quiet(True)
    yield
    set_quiet(was)


@pytest.fixture(scope="module")
def task_and_broad() -> tuple[LabelledData, LabelledData]:
    """3 shots per class of the digits 0-2, and 10 further digits per class as broad data."""
    digits = load_digits()
    members = [np.flatnonzero(digits.labels == c) for c in range(3)]
    task = digits_of_three_classes(digits, np.concatenate([m[:3] for m in members]))
    broad = digits_of_three_classes(digits, np.concatenate([m[3:13] for m in members]))
    return task, broad


def prepare(
    cfg: BuiltinDiffusionConfig,
    task: LabelledData,
    broad: LabelledData | None,
    seed: int = 0,
) -> BuiltinDiffusionGenerator:
    return prepare_builtin_generator(
        cfg, task_train=task, broad=broad, device=CPU, seed=seed, batch_size=4, progress=False
    )


def first_image(gen: BuiltinDiffusionGenerator) -> bytes:
    request = GenerationRequest(label=1, class_name="1", seed=3)
    return next(iter(gen.generate([request]))).payload


# ---- cache ----


def test_second_prepare_loads_the_cache_without_training(
    task_and_broad: tuple[LabelledData, LabelledData],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    task, broad = task_and_broad
    cfg = tiny_config()
    fresh = prepare(cfg, task, broad)
    assert not fresh.from_cache
    entries = [
        p for p in (tmp_path / "cache" / "builtin-diffusion").iterdir() if p.suffix != ".lock"
    ]
    assert [p.name for p in entries] == [cache_key(cfg, task_train=task, broad=broad, seed=0)]

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cache hit must not train")

    monkeypatch.setattr(prepare_module, "pretrain", no_training)
    monkeypatch.setattr(prepare_module, "adapt", no_training)
    cached = prepare(cfg, task, broad)
    assert cached.from_cache
    assert cached.name == fresh.name
    assert cached.training["cache_key"] == fresh.training["cache_key"]
    # exact: safetensors gives the trained weights back bit for bit, and the same call
    assert first_image(cached) == first_image(fresh)
    # Sampling settings are not part of the key: they apply to the cached model.
    regraded = prepare(tiny_config(guidance_scale=0.0, steps=2), task, broad)
    assert regraded.from_cache and (regraded.guidance_scale, regraded.steps) == (0.0, 2)


def test_cache_key_follows_training_inputs(
    task_and_broad: tuple[LabelledData, LabelledData],
) -> None:
    task, broad = task_and_broad
    cfg = tiny_config()
    key = cache_key(cfg, task_train=task, broad=broad, seed=0)
    assert key == cache_key(tiny_config(), task_train=task, broad=broad, seed=0)
    assert key == cache_key(
        tiny_config(guidance_scale=5.0, steps=50, cache_dir=Path("/elsewhere")),
        task_train=task,
        broad=broad,
        seed=0,
    )
    changed = [
        cache_key(cfg, task_train=task, broad=broad, seed=1),
        cache_key(tiny_config(train_steps=13), task_train=task, broad=broad, seed=0),
        cache_key(tiny_config(adapt_method="full"), task_train=task, broad=broad, seed=0),
        cache_key(cfg, task_train=task, broad=None, seed=0),
        cache_key(cfg, task_train=task.subset(range(8)), broad=broad, seed=0),
    ]
    pixels_changed = LabelledData(
        modality="image",
        items=(np.zeros_like(task.items[0]), *task.items[1:]),
        labels=task.labels,
        class_names=task.class_names,
        ids=task.ids,
    )
    changed.append(cache_key(cfg, task_train=pixels_changed, broad=broad, seed=0))
    assert len({key, *changed}) == len(changed) + 1


def test_cache_root_prefers_config_then_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert cache_root(tiny_config()) == tmp_path / "cache" / "builtin-diffusion"
    assert cache_root(tiny_config(cache_dir=tmp_path / "mine")) == tmp_path / "mine"
    monkeypatch.delenv("UTILGEN_CACHE_DIR")
    assert cache_root(tiny_config()) == Path.home() / ".cache" / "utilgen" / "builtin-diffusion"


def test_a_crash_while_caching_leaves_no_entry(
    task_and_broad: tuple[LabelledData, LabelledData],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    task, _ = task_and_broad
    cfg = tiny_config(train_steps=3)
    save = BuiltinDiffusionGenerator.save_pretrained

    def crash_after_writing(self: BuiltinDiffusionGenerator, directory: Path) -> Path:
        save(self, directory)
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(BuiltinDiffusionGenerator, "save_pretrained", crash_after_writing)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, task, None)
    root = tmp_path / "cache" / "builtin-diffusion"
    assert [p for p in root.iterdir() if p.suffix != ".lock"] == []
    monkeypatch.undo()
    monkeypatch.setenv("UTILGEN_CACHE_DIR", str(tmp_path / "cache"))
    assert not prepare(cfg, task, None).from_cache
    assert prepare(cfg, task, None).from_cache


def test_an_unreadable_cache_entry_is_a_one_line_error(
    task_and_broad: tuple[LabelledData, LabelledData],
) -> None:
    task, _ = task_and_broad
    cfg = tiny_config(train_steps=3)
    prepare(cfg, task, None)
    entry = cache_root(cfg) / cache_key(cfg, task_train=task, broad=None, seed=0)
    (entry / "class_embeddings.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UtilgenError) as error:
        prepare(cfg, task, None)
    assert "\n" not in str(error.value) and "delete" in str(error.value)


def test_write_directory_atomic_keeps_a_finished_entry(tmp_path: Path) -> None:
    target = tmp_path / "entry"
    target.mkdir()
    (target / "a").write_text("first")
    cache_module.write_directory_atomic(target, lambda d: (d / "a").write_text("second"))
    assert (target / "a").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


# ---- training ----


def test_same_seed_trains_the_same_weights(
    task_and_broad: tuple[LabelledData, LabelledData], tmp_path: Path
) -> None:
    task, broad = task_and_broad
    a = prepare(tiny_config(cache_dir=tmp_path / "a"), task, broad)
    b = prepare(tiny_config(cache_dir=tmp_path / "b"), task, broad)
    c = prepare(tiny_config(cache_dir=tmp_path / "c"), task, broad, seed=1)
    # exact (the name hashes the weights): the same training call on the same inputs, in
    # this process and on its threads
    assert a.name == b.name != c.name
    assert not b.from_cache


def test_without_broad_data_trains_on_the_task_only(
    task_and_broad: tuple[LabelledData, LabelledData], caplog: pytest.LogCaptureFixture
) -> None:
    task, broad = task_and_broad
    empty = broad.subset([])
    for no_broad in (None, empty):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="utilgen.generate.builtin"):
            gen = prepare(tiny_config(cache_dir=None), task, no_broad)
        assert "no broad data" in caplog.text
        phases = gen.training["phases"]
        assert [p["phase"] for p in phases] == ["pretrain"]
        assert phases[0]["n_images"] == len(task)


def test_with_broad_data_pretrains_then_adapts(
    task_and_broad: tuple[LabelledData, LabelledData],
) -> None:
    task, broad = task_and_broad
    gen = prepare(tiny_config(), task, broad)
    phases = gen.training["phases"]
    assert [(p["phase"], p["n_images"], p["steps"]) for p in phases] == [
        ("pretrain", len(broad), 12),
        ("adapt", len(task), 4),
    ]
    assert gen.training["adapt_method"] == "lora"
    none = prepare(tiny_config(adapt_method="none"), task, broad)
    assert [p["phase"] for p in none.training["phases"]] == ["pretrain"]


def _fresh_model(
    cfg: BuiltinDiffusionConfig, data: LabelledData
) -> tuple[ClassConditionalUNet, torch.Tensor, torch.Tensor]:
    fmt = image_format([np.asarray(x) for x in data.items], len(cfg.block_out_channels))
    torch.manual_seed(0)
    model = ClassConditionalUNet(build_unet(cfg, fmt.channels, fmt.size), data.num_classes)
    images = to_model_space([np.asarray(x) for x in data.items], fmt)
    return model, images, torch.as_tensor(data.labels)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_pretraining_updates_every_weight(
    task_and_broad: tuple[LabelledData, LabelledData],
) -> None:
    _, broad = task_and_broad
    cfg = tiny_config(train_steps=3, ema_decay=0.0)
    model, images, labels = _fresh_model(cfg, broad)
    before = _snapshot(model)
    stats = pretrain(model, ddpm_scheduler(cfg), images, labels, cfg, torch.Generator())
    assert stats.steps == 3 and np.isfinite(stats.final_loss)
    unchanged = [k for k, v in model.state_dict().items() if torch.equal(v, before[k])]
    assert unchanged == []


def test_lora_adaptation_changes_targeted_weights_and_merges(
    task_and_broad: tuple[LabelledData, LabelledData],
) -> None:
    task, _ = task_and_broad
    cfg = tiny_config(adapt_method="lora", adapt_steps=3, lora_rank=2)
    model, images, labels = _fresh_model(cfg, task)
    unet_type = type(model.unet)
    before = _snapshot(model)
    torch.manual_seed(0)
    adapt(model, ddpm_scheduler(cfg), images, labels, cfg, torch.Generator())
    after = model.state_dict()
    assert set(after) == set(before)  # merged: no LoRA keys remain
    assert type(model.unet) is unet_type
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert "class_embeddings.weight" in changed
    targeted = [
        k for k in before if k.endswith(("conv1.weight", "conv2.weight", "time_emb_proj.weight"))
    ]
    assert targeted and set(targeted) <= changed
    # LoRA leaves everything else (norms, biases, conv_in/out) as it was.
    assert "unet.conv_in.weight" not in changed
    assert not any(k.endswith("norm1.weight") for k in changed)
    assert all(p.requires_grad for p in model.parameters())


def test_full_adaptation_changes_every_weight(
    task_and_broad: tuple[LabelledData, LabelledData],
) -> None:
    task, _ = task_and_broad
    cfg = tiny_config(adapt_method="full", adapt_steps=3)
    model, images, labels = _fresh_model(cfg, task)
    before = _snapshot(model)
    adapt(model, ddpm_scheduler(cfg), images, labels, cfg, torch.Generator())
    assert [k for k, v in model.state_dict().items() if torch.equal(v, before[k])] == []


# ---- bad input ----


def test_text_data_is_a_one_line_error(task_and_broad: tuple[LabelledData, LabelledData]) -> None:
    texts = LabelledData(
        modality="text",
        items=("a", "b"),
        labels=np.array([0, 1]),
        class_names=("x", "y"),
        ids=("t/0", "t/1"),
    )
    with pytest.raises(DataError) as error:
        prepare(tiny_config(), texts, None)
    assert "\n" not in str(error.value) and "causal-lm" in str(error.value)


@pytest.mark.parametrize(
    ("builtin", "field"),
    [
        ({"norm_num_groups": 5}, "norm_num_groups"),
        ({"block_out_channels": []}, "block_out_channels"),
        ({"image_size": 10, "block_out_channels": [8, 16, 32]}, "image_size"),
        ({"label_dropout": 1.0}, "label_dropout"),
        ({"adapt_method": "dreambooth"}, "adapt_method"),
        ({"guidance_scale": -1}, "guidance_scale"),
    ],
)
def test_bad_config_names_the_field(builtin: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as error:
        config_from_dict({"generator": {"builtin": builtin}})
    message = str(error.value)
    assert field in message and "\n" not in message


def test_concurrent_prepares_train_once_and_share_the_entry(
    task_and_broad: tuple[LabelledData, LabelledData], monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from utilgen.generate.builtin import prepare as prepare_module

    task, _ = task_and_broad
    cfg = tiny_config(train_steps=3)
    trained = []
    real_train = prepare_module.train_builtin_generator

    def counting(*args: object, **kwargs: object) -> BuiltinDiffusionGenerator:
        trained.append(1)
        return real_train(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(prepare_module, "train_builtin_generator", counting)
    results: list[BuiltinDiffusionGenerator] = []
    threads = [
        threading.Thread(target=lambda: results.append(prepare(cfg, task, None)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(trained) == 1
    assert sorted(r.from_cache for r in results) == [False, True]
