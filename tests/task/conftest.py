"""Fixtures for the task-model tests: small real data and tiny transformers models on disk.

Tiny ResNet / ViT / BERT models are built from config under a fixed seed and written with
``save_pretrained`` into a temporary directory, then loaded by path: the real loading code
runs, offline, in well under a second each.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from task_helpers import Build

from utilgen.config import TaskConfig
from utilgen.data.bundled import load_digits
from utilgen.data.labelled import LabelledData
from utilgen.progress import is_quiet, set_quiet
from utilgen.task import TaskModel, build_task_model

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

TINY_LABELS = 3
BERT_WORDS = [
    *("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "cat", "dog", "sat", "on"),
    *("mat", "stock", "market", "fell", "rose", "shares", "bank", "match", "goal", "team"),
    *("won", "lost", "film", "star", "music"),
]


@pytest.fixture(autouse=True)
def _no_progress_bars() -> Iterator[None]:
    """Training progress bars off in these tests, as ``--quiet`` does."""
    was_quiet = is_quiet()
    set_quiet(True)
    yield
    set_quiet(was_quiet)


@pytest.fixture(scope="session", autouse=True)
def _quiet_transformers() -> None:
    """No weight-loading progress bars or load reports in the test output."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@pytest.fixture(scope="session")
def digits() -> LabelledData:
    """All 1,797 digits (8x8 grey)."""
    return load_digits()


@pytest.fixture(scope="session")
def digits_small(digits: LabelledData) -> LabelledData:
    """The first 12 digits of each class (120 images), in a fixed order."""
    idx = np.concatenate([np.flatnonzero(digits.labels == c)[:12] for c in range(10)])
    return digits.subset(np.sort(idx))


@pytest.fixture(scope="session")
def rgb_images() -> LabelledData:
    """Six random RGB 20x24 images (and one grey) in 3 classes, for the pretrained models."""
    rng = np.random.default_rng(0)
    items: list[np.ndarray] = [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(5)]
    items.append(rng.integers(0, 256, (20, 24, 1), dtype=np.uint8))
    return LabelledData(
        modality="image",
        items=tuple(items),
        labels=np.array([0, 1, 2, 0, 1, 2]),
        class_names=("a", "b", "c"),
        ids=tuple(f"rgb/{i}" for i in range(6)),
        name="rgb",
    )


TEXTS = {
    "markets": [
        "Shares fell sharply as the stock market closed lower.",
        "The bank raised interest rates again this quarter.",
        "Investors sold shares after weak company profits.",
        "Oil prices rose and the stock market rallied.",
        "The central bank warned about inflation and rates.",
        "Quarterly earnings beat analyst forecasts for the firm.",
    ],
    "sport": [
        "The team won the match with a late goal.",
        "Their striker scored twice in the cup final.",
        "The coach praised the defence after the victory.",
        "Fans cheered as the team lifted the trophy.",
        "The tennis champion won in straight sets.",
        "A late penalty decided the football match.",
    ],
    "film": [
        "The film star won an award for her role.",
        "Critics praised the director's new movie.",
        "The actor starred in a popular comedy film.",
        "The soundtrack of the movie topped the charts.",
        "A new documentary premiered at the festival.",
        "The sequel broke box office records this weekend.",
    ],
}


@pytest.fixture(scope="session")
def texts() -> LabelledData:
    """18 short news sentences in 3 classes."""
    items: list[str] = []
    labels: list[int] = []
    for label, sentences in enumerate(TEXTS.values()):
        items += sentences
        labels += [label] * len(sentences)
    return LabelledData(
        modality="text",
        items=tuple(items),
        labels=np.array(labels),
        class_names=tuple(TEXTS),
        ids=tuple(f"news/{i:02d}" for i in range(len(items))),
        name="news",
    )


@pytest.fixture(scope="session")
def tiny_resnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-stage ResNet (8/16 channels) with a ConvNeXt-style image processor (32 px)."""
    from transformers import (
        AutoModelForImageClassification,
        ConvNextImageProcessorPil,
        ResNetConfig,
    )

    path = tmp_path_factory.mktemp("tiny-resnet")
    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])
    config.num_labels = TINY_LABELS
    AutoModelForImageClassification.from_config(config).save_pretrained(path)
    ConvNextImageProcessorPil(size={"shortest_edge": 32}).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer ViT on 32 px images, saved without an image processor."""
    from transformers import AutoModelForImageClassification, ViTConfig

    path = tmp_path_factory.mktemp("tiny-vit")
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    config.num_labels = TINY_LABELS
    AutoModelForImageClassification.from_config(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer BERT (hidden 16) with a 27-word WordPiece vocabulary."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertTokenizer

    path = tmp_path_factory.mktemp("tiny-bert")
    BertTokenizer(vocab={w: i for i, w in enumerate(BERT_WORDS)}).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(BERT_WORDS),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    config.num_labels = 2
    AutoModelForSequenceClassification.from_config(config).save_pretrained(path)
    return path


@pytest.fixture
def build(tiny_resnet_dir: Path, tiny_vit_dir: Path, tiny_bert_dir: Path) -> Build:
    """``build(name, data, seed=0, **task_config)``: a task model for one of the test setups.

    Names: small-cnn, efficientnet-lite0, hf-resnet, hf-vit, minilm, hf-bert.
    """
    setups: dict[str, dict[str, Any]] = {
        "small-cnn": {"model": "small-cnn"},
        "efficientnet-lite0": {"model": "efficientnet-lite0", "image_size": 32},
        "hf-resnet": {"model": "hf-image", "model_path": str(tiny_resnet_dir)},
        "hf-vit": {"model": "hf-image", "model_path": str(tiny_vit_dir)},
        "minilm": {"model": "minilm", "max_length": 64},
        "hf-bert": {"model": "hf-text", "model_path": str(tiny_bert_dir), "max_length": 32},
    }

    def make(name: str, data: LabelledData, seed: int = 0, **overrides: Any) -> TaskModel:
        cfg = TaskConfig(**{**setups[name], **overrides})
        return build_task_model(
            cfg,
            modality=data.modality,
            num_classes=data.num_classes,
            example_items=data.items[:4],
            device="cpu",
            seed=seed,
        )

    return make
