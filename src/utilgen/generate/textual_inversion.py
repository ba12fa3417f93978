"""Textual inversion of class tokens (UtilGen; Gal et al. 2023) for class names the text
encoder does not know.

Each listed class gets a placeholder token ``<class-name>`` in the tokenizer and one new row
in the text encoder's token-embedding table, initialised to the mean embedding of the class
name's own tokens. Only those rows train (diffusers' ``textual_inversion`` recipe): the
denoising loss of :mod:`utilgen.generate.lora` on the class's real images with the prompt
``"a photo of a <class-name>"``, AdamW at 5e-4 × batch size, and after every step all other
rows are put back, so weight decay and numerical noise cannot move them.

Embeddings are saved one file per token, ``<slug>.safetensors`` holding ``{token: (1, dim)}``:
the format diffusers' ``load_textual_inversion`` reads.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from utilgen.config.diffusion import DiffusersConfig
from utilgen.data.labelled import LabelledData
from utilgen.errors import ModelNotFoundError
from utilgen.generate.lora import (
    batch_order,
    diffusion_loss,
    image_tensor,
    random_flip,
    require_sd,
)
from utilgen.generate.prompts import class_prompt, class_texts, placeholder_token
from utilgen.generate.request import GenerationError
from utilgen.progress import progress_bar

logger = logging.getLogger(__name__)


def add_class_tokens(
    tokenizer: Any, text_encoder: Any, class_names: Sequence[str]
) -> dict[str, int]:
    """Add ``<class-name>`` for each class to ``tokenizer`` and a row per token to the text
    encoder's embeddings, initialised to the mean embedding of the class name's tokens.
    Returns token -> id.

    Raises:
        GenerationError: a token is already in the vocabulary (learned twice).
    """
    tokens = [placeholder_token(name) for name in class_names]
    present = [t for t in tokens if t in tokenizer.get_vocab()]
    if present:
        raise GenerationError(
            f"token {present[0]} is already in the tokenizer; load or learn each class once"
        )
    name_ids = [tokenizer(name, add_special_tokens=False).input_ids for name in class_names]
    tokenizer.add_tokens(tokens)
    # Rows are initialised below; the default mean-resizing would only cost time.
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    weight = text_encoder.get_input_embeddings().weight
    ids = tokenizer.convert_tokens_to_ids(tokens)
    with torch.no_grad():
        for token_id, source in zip(ids, name_ids, strict=True):
            weight[token_id] = weight[source].mean(dim=0)
    return dict(zip(tokens, ids, strict=True))


@dataclass(frozen=True)
class ClassTokens:
    """Learned class tokens: token -> embedding (float32, shape (dim,)), and the losses."""

    embeddings: dict[str, torch.Tensor]
    losses: tuple[float, ...]


def train_class_tokens(
    pipeline: Any,
    data: LabelledData,
    cfg: DiffusersConfig,
    *,
    seed: int,
    image_size: int,
    progress: bool = True,
) -> ClassTokens:
    """Learn a token for each class of ``cfg.textual_inversion.classes`` from its images in
    ``data``; the tokens stay in ``pipeline``'s tokenizer and text encoder.

    Raises:
        GenerationError: a listed class has no real image, or the pipeline is not SD 1.x/2.x.
    """
    # 1. check inputs
    require_sd(pipeline)
    settings = cfg.textual_inversion
    texts = class_texts(data.class_names, cfg)  # validates the class list
    wanted = [data.class_names.index(c) for c in settings.classes]
    indices = [i for i, y in enumerate(data.labels) if int(y) in wanted]
    empty = [data.class_names[c] for c in wanted if c not in set(data.labels.tolist())]
    if empty:
        raise GenerationError(f"textual inversion of {empty[0]!r} needs real images of it")
    subset = data.subset(indices)
    # 2. new tokens; only the embedding table trains, and only their rows are kept
    tokenizer, text_encoder = pipeline.tokenizer, pipeline.text_encoder
    token_ids = add_class_tokens(tokenizer, text_encoder, settings.classes)
    embeddings = text_encoder.get_input_embeddings()
    original = embeddings.weight.detach().clone()
    keep = torch.ones(len(tokenizer), dtype=torch.bool, device=original.device)
    keep[list(token_ids.values())] = False
    pipeline.unet.requires_grad_(False)
    pipeline.vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    embeddings.weight.requires_grad_(True)
    optimizer = torch.optim.AdamW(
        [embeddings.weight], lr=settings.learning_rate * settings.batch_size, weight_decay=1e-2
    )
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    prompts = [class_prompt(texts[subset.class_names[int(y)]], "", cfg) for y in subset.labels]
    pixels = image_tensor(subset.items, image_size)
    device, dtype = pipeline.unet.device, pipeline.unet.dtype
    generator = torch.Generator("cpu").manual_seed(seed)
    # 3. the training loop
    losses = []
    text_encoder.train()
    with progress_bar("textual inversion", settings.steps if progress else 0) as advance:
        for batch_idx in batch_order(len(subset), settings.batch_size, settings.steps, generator):
            with torch.no_grad():
                batch = random_flip(pixels[batch_idx], generator).to(device=device, dtype=dtype)
                latents = pipeline.vae.encode(batch).latent_dist.mode()
                latents = latents * pipeline.vae.config.scaling_factor
            ids = tokenizer(
                [prompts[i] for i in batch_idx],
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(device)
            hidden = text_encoder(ids)[0].to(dtype)
            loss = diffusion_loss(
                pipeline.unet, noise_scheduler, latents, hidden, generator=generator, snr_gamma=None
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                embeddings.weight[keep] = original[keep]
            losses.append(float(loss.detach()))
            advance(1)
    text_encoder.eval()
    embeddings.weight.requires_grad_(False)
    learned = {t: embeddings.weight[i].detach().float().cpu().clone() for t, i in token_ids.items()}
    return ClassTokens(embeddings=learned, losses=tuple(losses))


def token_file_name(token: str) -> str:
    """``<great-pyrenees>`` -> ``great-pyrenees.safetensors``."""
    return token.strip("<>") + ".safetensors"


def save_class_tokens(tokens: ClassTokens, directory: str | Path) -> list[Path]:
    """One ``{token: (1, dim)}`` safetensors file per token in ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for token, embedding in tokens.embeddings.items():
        path = directory / token_file_name(token)
        save_file({token: embedding[None].contiguous()}, str(path))
        paths.append(path)
    return paths


def token_files(directory: str | Path) -> list[Path]:
    """The ``*.safetensors`` token files of ``directory``, sorted by name.

    Raises:
        ModelNotFoundError: ``directory`` holds no token files.
    """
    directory = Path(directory).expanduser()
    files = sorted(directory.glob("*.safetensors")) if directory.is_dir() else []
    if not files:
        raise ModelNotFoundError(
            f"generator.diffusers.textual_inversion.path {str(directory)!r} holds no "
            "<token>.safetensors files; pass the directory written by save_class_tokens"
        )
    return files


def class_tokens_sha256(directory: str | Path) -> str:
    """SHA-256 (64 hex) over the token files of ``directory``: names and bytes."""
    digest = hashlib.sha256()
    for file in token_files(directory):
        digest.update(file.name.encode() + b"\0" + hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def load_class_tokens(pipeline: Any, directory: str | Path) -> str:
    """Load every token file in ``directory`` with diffusers' ``load_textual_inversion``;
    returns :func:`class_tokens_sha256` of the directory.

    Raises:
        ModelNotFoundError: ``directory`` holds no token files.
        GenerationError: a token is already loaded.
    """
    files = token_files(directory)
    states = [load_file(str(file)) for file in files]
    present = [t for state in states for t in state if t in pipeline.tokenizer.get_vocab()]
    if present:
        raise GenerationError(f"token {present[0]} is already loaded into this pipeline")
    pipeline.load_textual_inversion(states)
    logger.info("loaded %d class token(s) from %s", len(files), directory)
    return class_tokens_sha256(directory)
