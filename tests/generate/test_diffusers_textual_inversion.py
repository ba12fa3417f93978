"""Textual inversion of class tokens on a tiny SD pipeline: only the new embedding rows
train, the tokens reach the prompts, and they round-trip through diffusers' format."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny_sd import one_thread, real_data, save_tiny_sd, tiny_sd_pipeline

from utilgen.config import DiffusersConfig
from utilgen.errors import ModelNotFoundError
from utilgen.generate import GenerationError, GenerationRequest
from utilgen.generate.diffusers_backend import DiffusersGenerator
from utilgen.generate.diffusers_prepare import prepare_diffusers_generator
from utilgen.generate.prompts import class_prompt_requests, placeholder_token
from utilgen.generate.textual_inversion import (
    add_class_tokens,
    load_class_tokens,
    save_class_tokens,
    train_class_tokens,
)
from utilgen.pool.payload import decode_image

CPU = torch.device("cpu")
CLASSES = ("quokka", "dog")
TI = {"classes": ["quokka"], "steps": 3, "batch_size": 2, "learning_rate": 0.05}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def test_placeholder_tokens_are_slugs() -> None:
    assert placeholder_token("Great Pyrenees") == "<great-pyrenees>"
    assert placeholder_token("n01440764/tench") == "<n01440764-tench>"


def test_new_tokens_start_at_the_class_names_mean_embedding() -> None:
    pipe = tiny_sd_pipeline()
    name_ids = pipe.tokenizer("quokka", add_special_tokens=False).input_ids
    assert len(name_ids) > 1  # the tiny tokenizer does not know the word
    ids = add_class_tokens(pipe.tokenizer, pipe.text_encoder, ["quokka"])
    weight = pipe.text_encoder.get_input_embeddings().weight
    assert torch.allclose(weight[ids["<quokka>"]], weight[name_ids].mean(dim=0))
    assert pipe.tokenizer("<quokka>", add_special_tokens=False).input_ids == [ids["<quokka>"]]
    with pytest.raises(GenerationError, match="already"):
        add_class_tokens(pipe.tokenizer, pipe.text_encoder, ["quokka"])


def test_only_the_new_rows_train_and_they_round_trip(tmp_path: Path) -> None:
    pipe = tiny_sd_pipeline()
    before = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    others = [
        p.detach().clone()
        for n, p in pipe.text_encoder.named_parameters()
        if "token_embedding" not in n
    ]
    unet = [p.detach().clone() for p in pipe.unet.parameters()]
    cfg = DiffusersConfig(textual_inversion=TI)
    data = real_data(CLASSES)
    tokens = train_class_tokens(pipe, data, cfg, seed=0, image_size=32, progress=False)
    after = pipe.text_encoder.get_input_embeddings().weight.detach()
    assert after.shape[0] == before.shape[0] + 1 and len(tokens.losses) == 3
    # Old rows bit-identical; the new row moved away from its initialisation.
    assert torch.equal(after[: before.shape[0]], before)
    name_ids = pipe.tokenizer("quokka", add_special_tokens=False).input_ids
    assert not torch.allclose(after[-1], before[name_ids].mean(dim=0))
    assert torch.equal(tokens.embeddings["<quokka>"], after[-1])
    rest = [p for n, p in pipe.text_encoder.named_parameters() if "token_embedding" not in n]
    assert all(torch.equal(a, b) for a, b in zip(rest, others, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(pipe.unet.parameters(), unet, strict=True))

    # Saved in diffusers' one-token-per-file format; a fresh pipeline loads the same row.
    (path,) = save_class_tokens(tokens, tmp_path / "tokens")
    assert path.name == "quokka.safetensors"
    assert set(load_file(str(path))) == {"<quokka>"}
    fresh = tiny_sd_pipeline()
    digest = load_class_tokens(fresh, tmp_path / "tokens")
    assert len(digest) == 64
    row = fresh.tokenizer.convert_tokens_to_ids("<quokka>")
    assert torch.equal(fresh.text_encoder.get_input_embeddings().weight[row], after[-1])


def test_prompts_use_the_learned_token_and_it_changes_the_image(tmp_path: Path) -> None:
    cfg = DiffusersConfig(textual_inversion=TI)
    requests = class_prompt_requests(CLASSES, per_class=1, seed=0, round_index=1, cfg=cfg)
    assert [r.prompt for r in requests] == ["a photo of a <quokka>", "a photo of a dog"]
    model = save_tiny_sd(tmp_path / "tiny-sd")
    cfg = DiffusersConfig(
        model=str(model), steps=3, cache_dir=tmp_path / "cache", textual_inversion=TI
    )
    gen = prepare_diffusers_generator(
        cfg, task_train=real_data(CLASSES), device=CPU, batch_size=2, seed=0, progress=False
    )
    assert "+ti:" in gen.name
    plain = DiffusersGenerator(tiny_sd_pipeline(), model="m", steps=3)
    request = [GenerationRequest(label=0, class_name="quokka", seed=0, prompt=requests[0].prompt)]
    learned = decode_image(next(iter(gen.generate(request, progress=False))).payload).astype(int)
    unknown = decode_image(next(iter(plain.generate(request, progress=False))).payload).astype(int)
    assert np.abs(learned - unknown).mean() > 1.0
    # The second preparation loads the cached tokens: same name, same tokens.
    again = prepare_diffusers_generator(
        cfg, task_train=real_data(CLASSES), device=CPU, batch_size=2, seed=0, progress=False
    )
    assert again.name == gen.name


def test_missing_token_files_and_double_loads_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"textual_inversion\.path"):
        load_class_tokens(tiny_sd_pipeline(), tmp_path)
    pipe = tiny_sd_pipeline()
    cfg = DiffusersConfig(textual_inversion=TI)
    tokens = train_class_tokens(
        pipe, real_data(CLASSES), cfg, seed=0, image_size=32, progress=False
    )
    save_class_tokens(tokens, tmp_path / "t")
    with pytest.raises(GenerationError, match="already loaded"):
        load_class_tokens(pipe, tmp_path / "t")
