"""``prepare_builtin_generator``: train (or load from cache) the built-in generator for a task.

The recipe mirrors how the papers use Stable Diffusion: a model pretrained on broad data
(for the bundled digits, the training images not in the task's k-shot set, standing in for
LAION) is adapted to the task's few real images (GenDataAgent's LoRA, UtilGen's
class-token inversion), then used to generate.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from diffusers.schedulers.scheduling_ddim import DDIMScheduler

from utilgen.config import BuiltinDiffusionConfig
from utilgen.data.labelled import LabelledData
from utilgen.errors import DataError, ModelNotFoundError
from utilgen.generate.builtin.cache import cache_key, cache_root, write_directory_atomic
from utilgen.generate.builtin.generator import CONFIG_NAME, BuiltinDiffusionGenerator
from utilgen.generate.builtin.model import ClassConditionalUNet, build_unet
from utilgen.generate.builtin.pixels import image_format, to_model_space
from utilgen.generate.builtin.training import adapt, ddpm_scheduler, pretrain

log = logging.getLogger(__name__)


def _check_data(task_train: LabelledData, broad: LabelledData | None) -> None:
    if task_train.modality != "image":
        raise DataError(
            "generator.kind=builtin-diffusion generates images but the data are texts; use "
            "generator.kind=causal-lm for text data"
        )
    if len(task_train) == 0:
        raise DataError("the built-in generator needs at least one real training image")
    if broad is not None and len(broad) and broad.class_names != task_train.class_names:
        raise DataError("the broad split's classes differ from the task's; split one dataset")


def train_builtin_generator(
    cfg: BuiltinDiffusionConfig,
    *,
    task_train: LabelledData,
    broad: LabelledData | None,
    device: torch.device,
    seed: int,
    batch_size: int,
    progress: bool = True,
) -> BuiltinDiffusionGenerator:
    """Train a built-in generator from scratch: DDPM pretraining on ``broad``, then
    adaptation to ``task_train`` by ``cfg.adapt_method``. Without broad data the model is
    trained on ``task_train`` only (and not adapted again)."""
    # 1. data: images in [-1, 1] at the UNet's working size
    _check_data(task_train, broad)
    broad_data = broad if broad is not None and len(broad) > 0 else None
    every_item = task_train.items + (broad_data.items if broad_data is not None else ())
    fmt = image_format(
        [np.asarray(x) for x in every_item], len(cfg.block_out_channels), cfg.image_size
    )
    task_images = to_model_space([np.asarray(x) for x in task_train.items], fmt)
    task_labels = torch.as_tensor(task_train.labels, dtype=torch.long)

    # 2. model: weights, and every later random draw, from the seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ClassConditionalUNet(
            build_unet(cfg, fmt.channels, fmt.size), task_train.num_classes
        ).to(device)
        log.info(
            "built-in diffusion: training a %.2f M-parameter UNet2DModel on %dx%dx%d images",
            sum(p.numel() for p in model.parameters()) / 1e6,
            fmt.size,
            fmt.size,
            fmt.channels,
        )
        generator = torch.Generator().manual_seed(seed)
        ddpm = ddpm_scheduler(cfg)

        # 3. pretrain on the broad split (or, without one, on the task's samples)
        if broad_data is not None:
            broad_images = to_model_space([np.asarray(x) for x in broad_data.items], fmt)
            broad_labels = torch.as_tensor(broad_data.labels, dtype=torch.long)
            stats = [
                pretrain(model, ddpm, broad_images, broad_labels, cfg, generator, progress=progress)
            ]
            # 4. adapt to the task's k real samples per class
            if cfg.adapt_method != "none" and cfg.adapt_steps > 0:
                stats.append(
                    adapt(model, ddpm, task_images, task_labels, cfg, generator, progress=progress)
                )
        else:
            log.info(
                "built-in diffusion: no broad data; training on the task's %d real images only",
                len(task_train),
            )
            stats = [
                pretrain(model, ddpm, task_images, task_labels, cfg, generator, progress=progress)
            ]

    # 5. DDIM sampling on the training noise schedule
    return BuiltinDiffusionGenerator(
        model,
        DDIMScheduler.from_config(ddpm.config),
        class_names=task_train.class_names,
        image_format=fmt,
        guidance_scale=cfg.guidance_scale,
        steps=cfg.steps,
        batch_size=batch_size,
        device=device,
        training={
            "phases": [s.as_dict() for s in stats],
            "adapt_method": cfg.adapt_method if len(stats) > 1 else "none",
            "seed": seed,
            "config": cfg.training_fields(),
        },
    )


def prepare_builtin_generator(
    cfg: BuiltinDiffusionConfig,
    *,
    task_train: LabelledData,
    broad: LabelledData | None,
    device: torch.device,
    seed: int,
    batch_size: int,
    progress: bool = True,
) -> BuiltinDiffusionGenerator:
    """The built-in generator for this task: loaded from the cache when these inputs trained
    one before, else trained (:func:`train_builtin_generator`) and cached atomically.

    Args:
        cfg: the ``generator.builtin`` section; its sampling settings (guidance, steps)
            apply to a cached model too.
        task_train: the task's real training images (the k shots per class).
        broad: images to pretrain on (``Splits.unused_train``: never val or test); None or
            empty trains on ``task_train`` only.
        device: where the model trains and samples.
        seed: fixes initialisation and training.
        batch_size: outputs denoised together when generating.

    Returns:
        The generator; ``from_cache`` says whether it was loaded.
    """
    _check_data(task_train, broad)
    key = cache_key(cfg, task_train=task_train, broad=broad, seed=seed)
    entry = cache_root(cfg) / key
    # Runs in parallel (utilgen demo --jobs, several seeds or strategies at once) would each
    # train the same model; the lock makes the later ones wait and load the first's.
    with _entry_lock(entry):
        return _load_or_train(
            cfg, entry, key, task_train, broad, device, seed, batch_size, progress
        )


@contextmanager
def _entry_lock(entry: Path) -> Iterator[None]:
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.with_name(entry.name + ".lock"), "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load_or_train(
    cfg: BuiltinDiffusionConfig,
    entry: Path,
    key: str,
    task_train: LabelledData,
    broad: LabelledData | None,
    device: torch.device,
    seed: int,
    batch_size: int,
    progress: bool,
) -> BuiltinDiffusionGenerator:
    if (entry / CONFIG_NAME).is_file():
        try:
            cached = BuiltinDiffusionGenerator.from_pretrained(
                entry,
                device=device,
                batch_size=batch_size,
                guidance_scale=cfg.guidance_scale,
                steps=cfg.steps,
            )
        except ModelNotFoundError as error:
            raise ModelNotFoundError(
                f"cached built-in generator {entry} cannot be read "
                f"({type(error.__cause__).__name__}); delete that directory to retrain"
            ) from error
        cached.from_cache = True
        log.info("built-in diffusion: loaded %s from cache %s", cached.name, entry)
        return cached
    trained = train_builtin_generator(
        cfg,
        task_train=task_train,
        broad=broad,
        device=device,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
    )
    trained.training["cache_key"] = key
    write_directory_atomic(entry, trained.save_pretrained)
    log.info("built-in diffusion: cached %s at %s", trained.name, entry)
    return trained
