"""``prepare_diffusers_generator``: a diffusers generator adapted to the task's real images
(textual inversion, LoRA), with what it trains cached on disk.

Split from :mod:`utilgen.generate.diffusers_backend`, which keeps the generator: adapting
is a step before generation, run once per task by
:func:`utilgen.generate.factory.build_generator`, and needs the training modules that
generating does not.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from utilgen.config.diffusion import DiffusersConfig
from utilgen.data.labelled import LabelledData
from utilgen.generate.diffusers_backend import DiffusersGenerator
from utilgen.generate.diffusers_loading import LORA_WEIGHT_NAME


def _cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _publish(directory: Path, write: Callable[[Path], object]) -> None:
    """Run ``write(tmp)`` into a fresh temporary directory, then rename it to ``directory``
    (atomic: a killed run leaves no half-written cache entry)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    try:
        os.replace(tmp, directory)
    except OSError:  # another process published the same entry first
        shutil.rmtree(tmp, ignore_errors=True)


def prepare_diffusers_generator(
    cfg: DiffusersConfig,
    *,
    task_train: LabelledData,
    device: torch.device,
    batch_size: int,
    seed: int,
    progress: bool = True,
) -> DiffusersGenerator:
    """:meth:`DiffusersGenerator.from_config`, then the adaptation ``cfg`` asks for on the
    task's real images ``task_train``:

    1. textual inversion of ``cfg.textual_inversion.classes`` (unless a ``path`` is given);
    2. LoRA adaptation (``cfg.lora.train``) with the class prompts and, when the config
       names a caption source, each image's caption.

    Trained tokens and adapters are cached under :func:`diffusers_cache_dir`, keyed by the
    model, settings, seed and real images, so a rerun loads what an earlier run trained.
    """
    from utilgen.generate.lora import TRAIN_ADAPTER, save_lora, train_lora, training_prompts
    from utilgen.generate.prompts import captions_for, data_digest, diffusers_cache_dir
    from utilgen.generate.textual_inversion import (
        class_tokens_sha256,
        save_class_tokens,
        train_class_tokens,
    )

    generator = DiffusersGenerator.from_config(cfg, device=device, batch_size=batch_size, seed=seed)
    cache = diffusers_cache_dir(cfg)
    base = {
        "model": cfg.model,
        "variant": cfg.variant,
        "dtype": str(generator.pipeline.unet.dtype),
        "image_size": generator.image_size,
        "seed": seed,
        "data": data_digest(task_train),
    }
    ti = cfg.textual_inversion
    if ti.classes and ti.path is None:
        settings = ti.model_dump(mode="json", exclude={"path"})
        directory = cache / "textual-inversion" / _cache_key({**base, "ti": settings})
        if directory.is_dir():
            generator.load_textual_inversion(directory)
        else:
            tokens = train_class_tokens(
                generator.pipeline,
                task_train,
                cfg,
                seed=seed,
                image_size=generator.image_size,
                progress=progress,
            )
            _publish(directory, lambda tmp: save_class_tokens(tokens, tmp))
            generator.record_textual_inversion(class_tokens_sha256(directory))
    if cfg.lora.train:
        prompts = training_prompts(task_train, cfg, captions_for(cfg, task_train, device=device))
        settings = cfg.lora.model_dump(mode="json", exclude={"path", "train", "scale"})
        key = _cache_key(
            {**base, "lora": settings, "prompts": prompts, "ti": generator.textual_inversion_sha256}
        )
        directory = cache / "lora" / key
        if not (directory / LORA_WEIGHT_NAME).is_file():
            train_lora(
                generator.pipeline,
                task_train,
                cfg.lora,
                prompts=prompts,
                seed=seed,
                image_size=generator.image_size,
                progress=progress,
            )
            _publish(directory, lambda tmp: save_lora(generator.pipeline, tmp))
            generator.pipeline.unet.delete_adapters(TRAIN_ADAPTER)
        generator.load_lora(directory, scale=cfg.lora.scale)
    return generator
