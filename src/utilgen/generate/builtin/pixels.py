"""Pixels in and out of the UNet: uint8 (H, W, C) images <-> float tensors in [-1, 1].

Diffusion models work on data scaled to [-1, 1] (the DDPM convention, and what the
scheduler's ``clip_sample`` clips to). Images whose size differs from the UNet's square
working size are resized with PIL (bicubic) on the way in and back on the way out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from utilgen.generate.builtin.model import ImageFormat, working_size


def image_format(items: Sequence[np.ndarray], levels: int, image_size: int = 0) -> ImageFormat:
    """The format of a training set: its most common (H, W), RGB if any image is RGB, and the
    UNet working side (see :func:`~utilgen.generate.builtin.model.working_size`)."""
    (height, width), _ = Counter(item.shape[:2] for item in items).most_common(1)[0]
    channels = 3 if any(item.shape[2] == 3 for item in items) else 1
    size = working_size(height, width, levels, image_size)
    return ImageFormat(height=int(height), width=int(width), channels=channels, size=size)


def _convert_channels(image: np.ndarray, channels: int) -> np.ndarray:
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == channels:
        return image
    if channels == 3:
        return np.repeat(image, 3, axis=2)
    # RGB to grey with PIL's ITU-R 601-2 luma, as Image.convert("L") does.
    return np.asarray(Image.fromarray(image).convert("L"), dtype=np.uint8)[:, :, None]


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    mode_image = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    resized = np.asarray(mode_image.resize((width, height), Image.Resampling.BICUBIC))
    return resized[:, :, None] if resized.ndim == 2 else resized


def to_model_space(items: Sequence[np.ndarray], fmt: ImageFormat) -> torch.Tensor:
    """Images as float32 (n, C, size, size) in [-1, 1]."""
    arrays = [
        _resize(
            _convert_channels(np.asarray(item, dtype=np.uint8), fmt.channels), fmt.size, fmt.size
        )
        for item in items
    ]
    stacked = (
        np.stack(arrays).astype(np.float32)
        if arrays
        else np.zeros((0, fmt.size, fmt.size, fmt.channels), np.float32)
    )
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous() / 127.5 - 1.0


def to_images(samples: torch.Tensor, fmt: ImageFormat) -> list[np.ndarray]:
    """uint8 (height, width, channels) images of model-space samples (n, C, size, size)."""
    pixels = ((samples.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round()
    arrays = pixels.to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [_resize(np.ascontiguousarray(a), fmt.height, fmt.width) for a in arrays]


def to_output_format(image: np.ndarray, fmt: ImageFormat) -> np.ndarray:
    """``image`` (uint8 (H, W, C)) with the generator's output size and channels."""
    return _resize(
        _convert_channels(np.asarray(image, dtype=np.uint8), fmt.channels), fmt.height, fmt.width
    )
