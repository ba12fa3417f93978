"""MiniLM: our transformers path reproduces sentence-transformers; embeddings are cached."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from task_helpers import Build

from utilgen.data.labelled import LabelledData
from utilgen.task.text_minilm import MiniLMModel, minilm_dir

SENTENCES = [
    "A short sentence.",
    "  Leading and trailing spaces are stripped, as sentence-transformers does.  ",
    "The stock market fell sharply on Monday after weak earnings reports. " * 20,  # > 256
    "Ünïcödé and emoji 🎉 survive tokenisation.",
]


def test_embeddings_match_sentence_transformers(build: Build, texts: LabelledData) -> None:
    from sentence_transformers import SentenceTransformer

    model = build("minilm", texts, max_length=256)  # sentence-transformers' own limit
    reference = SentenceTransformer(str(minilm_dir()), device="cpu").encode(
        SENTENCES, convert_to_numpy=True, batch_size=2
    )
    ours = model.embed(SENTENCES)
    assert ours.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_gradient_path_computes_the_same_embedding(build: Build, texts: LabelledData) -> None:
    model = build("minilm", texts)
    assert isinstance(model, MiniLMModel)
    encoder = model.encoder
    tokens = encoder.tokenize(SENTENCES)
    with torch.no_grad():
        from_ids = encoder.sentence_embeddings(tokens)
        from_embeds = encoder.sentence_embeddings(
            tokens, inputs_embeds=encoder.token_embeddings(tokens)
        )
    torch.testing.assert_close(from_embeds, from_ids, atol=1e-6, rtol=0)


def test_input_gradients_zero_on_padding(build: Build, texts: LabelledData) -> None:
    model = build("minilm", texts)
    grads = model.input_gradients(["short", "a somewhat longer second text"], np.array([0, 1]))
    n_tokens = 3  # [CLS] short [SEP]
    assert np.abs(grads[0, :n_tokens]).sum() > 0
    assert not grads[0, n_tokens:].any()


def test_each_text_is_encoded_once(build: Build, texts: LabelledData) -> None:
    model = build("minilm", texts)
    assert isinstance(model, MiniLMModel)
    fresh = [f"a text never seen before, number {i}" for i in range(3)]
    before = model.encoder.cache_size
    first = model.prepare([*fresh, fresh[0]])
    assert model.encoder.cache_size == before + 3  # the duplicate is encoded once
    again = build("minilm", texts, head="mlp")  # a rebuilt model shares the encoder's cache
    assert isinstance(again, MiniLMModel) and again.encoder is model.encoder
    # exact: the cache hands back the very tensors it stored, nothing is recomputed
    torch.testing.assert_close(again.prepare(fresh), first[:3], atol=0, rtol=0)
    assert model.encoder.cache_size == before + 3


def test_asset_package_prints_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "all_minilm_l6_v2", raising=False)
    path = minilm_dir()
    assert (path / "config.json").is_file()
    assert capsys.readouterr().out == ""


def test_text_models_refuse_images(build: Build, texts: LabelledData) -> None:
    model = build("minilm", texts)
    with pytest.raises(TypeError, match="str items"):
        model.prepare([np.zeros((4, 4, 1), dtype=np.uint8)])
