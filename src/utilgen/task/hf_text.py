"""``hf-text``: any transformers sequence classifier (BERT, DistilBERT, RoBERTa, ...) by id
or local path, with a new ``num_classes``-way head.

Texts are tokenised with the checkpoint's tokenizer, truncated at ``max_length`` and padded
to the longest text of the batch. ``freeze_backbone`` freezes the transformers
``base_model``, so only the classification head trains (the encoder still runs every epoch:
this model caches nothing, use ``minilm`` for a fast frozen text encoder). Features
(:meth:`embed`) are the input of the final linear layer; gradients are taken w.r.t. the
input word embeddings (``inputs_embeds``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from utilgen.data.labelled import Item
from utilgen.task.base import Batch
from utilgen.task.hf_classifier import HFClassifier, load_classification_model
from utilgen.task.model_sources import load_pretrained
from utilgen.task.text_batch import as_texts
from utilgen.task.torch_task_model import TorchTaskModel, check_labels, chunks, eval_mode

GRADIENT_BATCH_SIZE = 32


def dict_batch(batch: Batch) -> dict[str, torch.Tensor]:
    """``batch`` checked to be a dict of tensors (tokenised text)."""
    if not isinstance(batch, dict):
        raise TypeError(f"this module takes a dict of token tensors, got {type(batch).__name__}")
    return batch


class HFTextClassifier(HFClassifier):
    """A transformers sequence classifier; ``forward(tokens)`` returns logits.

    ``tokens`` may carry ``inputs_embeds`` in place of ``input_ids``.
    """

    def forward(self, batch: Batch) -> torch.Tensor:
        logits: torch.Tensor = self.model(**dict_batch(batch)).logits
        return logits


class HFTextModel(TorchTaskModel):
    """``hf-text`` as a :class:`~utilgen.task.base.TaskModel`.

    Args:
        num_classes: output classes.
        model_path: hub id (from the local cache) or a directory written by save_pretrained
            (model and tokenizer).
        max_length: token limit per text.
        freeze_backbone: train only the classification head.
        trust_remote_code: allow the checkpoint's own model code.
        device: where it runs.

    Raises:
        ModelNotFoundError: ``model_path`` is not on disk.
    """

    def __init__(
        self,
        num_classes: int,
        model_path: str,
        *,
        max_length: int = 256,
        freeze_backbone: bool = True,
        trust_remote_code: bool = False,
        device: torch.device | str = "cpu",
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer: Any = load_pretrained(
            AutoTokenizer.from_pretrained, model_path, trust_remote_code=trust_remote_code
        )
        model = load_classification_model(
            AutoModelForSequenceClassification.from_pretrained,
            model_path,
            num_classes,
            trust_remote_code=trust_remote_code,
        )
        # GPT-style checkpoints have no pad token: pad with end-of-text (the usual choice),
        # and tell the classifier, which needs it to find the last real token of each row.
        if self.tokenizer.pad_token is None and self.tokenizer.eos_token is not None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if (
            getattr(model.config, "pad_token_id", None) is None
            and self.tokenizer.pad_token_id is not None
        ):
            model.config.pad_token_id = self.tokenizer.pad_token_id
        self.max_length = max_length
        super().__init__(
            HFTextClassifier(model, num_classes, freeze_backbone),
            kind="hf-text",
            modality="text",
            num_classes=num_classes,
            device=torch.device(device),
            eval_batch_size=64,
        )
        self.hf_model = model
        self.model_path = model_path

    def prepare(self, items: Sequence[Item]) -> dict[str, torch.Tensor]:
        tokens = self.tokenizer(
            as_texts(items),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in tokens.items()}

    def input_gradients(self, items: Sequence[Item], labels: np.ndarray) -> np.ndarray:
        """Gradient of each true-class logit w.r.t. the input word embeddings, (n, T, d)."""
        texts = as_texts(items)
        labels = check_labels(labels, len(texts), self.num_classes)
        tokens = self.prepare(texts)
        embedding: nn.Embedding = self.hf_model.get_input_embeddings()
        dim = int(embedding.weight.shape[1])
        grads = torch.zeros((len(texts), tokens["input_ids"].shape[1], dim))
        with eval_mode(self.net), torch.enable_grad():
            for part in chunks(len(texts), GRADIENT_BATCH_SIZE):
                inputs = {k: v[part] for k, v in tokens.items()}
                embeds = embedding(inputs.pop("input_ids")).detach().requires_grad_(True)
                logits = self.net({**inputs, "inputs_embeds": embeds})
                y = torch.as_tensor(labels[part], device=self.device)
                (grad,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), embeds)
                mask = inputs["attention_mask"].unsqueeze(-1).to(grad.dtype)
                grads[part] = (grad * mask).float().cpu()
        return grads.numpy()
