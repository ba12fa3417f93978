"""Raw uint8 images -> a normalised float batch (n, C, S, S), with numpy and torch only.

Images of one dataset may differ in size and in channel count (grey real digits next to RGB
synthetic ones), so each image is first brought to the model's channel count, then images
of equal size are resized together (one ``interpolate`` call per distinct size, which keeps
the common case of a uniformly sized dataset fast). Non-square images are stretched to the
square side; classifiers here are trained on whatever the loader gives, so this only has to
be consistent.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from utilgen.data.labelled import Item

# ITU-R BT.601 luma, the weights PIL uses for RGB -> "L".
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def as_hwc(item: Item) -> np.ndarray:
    """``item`` as an (H, W, C) array with C in {1, 3} (alpha dropped, 2-D made grey).

    Raises:
        TypeError: ``item`` is not an image array.
    """
    if not isinstance(item, np.ndarray):
        raise TypeError(f"expected an image array (H, W, C), got {type(item).__name__}")
    arr = item[..., None] if item.ndim == 2 else item
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise TypeError(f"expected an image of shape (H, W, 1|3), got {item.shape}")
    return arr[..., :3] if arr.shape[2] == 4 else arr


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """An (H, W, C) image as float32 in [0, 1] with ``channels`` (1 or 3) channels.

    Grey -> RGB replicates the channel; RGB -> grey takes the BT.601 luma.
    """
    scale = 255.0 if image.dtype == np.uint8 else 1.0
    x = image.astype(np.float32) / scale
    if x.shape[2] == channels:
        return x
    if channels == 3:
        return np.repeat(x, 3, axis=2)
    return (x @ _LUMA)[..., None]


def images_to_tensor(
    items: Sequence[Item],
    size: int,
    channels: int,
    mean: float | Sequence[float] = 0.5,
    std: float | Sequence[float] = 0.5,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Images as a float32 batch (n, channels, size, size), normalised as (x - mean) / std.

    Pixels are scaled to [0, 1] before normalising; the defaults map them to [-1, 1].
    ``mean`` and ``std`` are one value for all channels or one per channel.
    Resizing is bilinear with antialiasing (which matters when shrinking large images).
    """
    prepared = [to_channels(as_hwc(item), channels) for item in items]
    out = torch.empty((len(prepared), channels, size, size), dtype=torch.float32)
    by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, image in enumerate(prepared):
        by_shape[image.shape[:2]].append(i)
    for indices in by_shape.values():
        group = torch.from_numpy(np.stack([prepared[i] for i in indices])).permute(0, 3, 1, 2)
        out[indices] = _resized(group, size)
    out = _normalised(out, mean, std)
    return out if device is None else out.to(device)


def _resized(pixels: torch.Tensor, size: int) -> torch.Tensor:
    if tuple(pixels.shape[-2:]) == (size, size):
        return pixels
    return F.interpolate(
        pixels, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )


def _normalised(
    pixels: torch.Tensor, mean: float | Sequence[float], std: float | Sequence[float]
) -> torch.Tensor:
    shift = torch.as_tensor(mean, dtype=pixels.dtype, device=pixels.device).reshape(-1, 1, 1)
    scale = torch.as_tensor(std, dtype=pixels.dtype, device=pixels.device).reshape(-1, 1, 1)
    return (pixels - shift) / scale


def pixels_to_tensor(
    pixels: torch.Tensor,
    size: int,
    channels: int,
    mean: float | Sequence[float] = 0.5,
    std: float | Sequence[float] = 0.5,
) -> torch.Tensor:
    """:func:`images_to_tensor` for a float batch (n, C, H, W) in [0, 1], differentiably:
    the same channel conversion, resize and normalisation as torch operations, so a utility
    computed from the result can be backpropagated into the pixels (instance-level
    optimisation). Stays on ``pixels``' device."""
    if pixels.dim() != 4 or pixels.shape[1] not in (1, 3):
        raise TypeError(f"expected pixels of shape (n, 1|3, H, W), got {tuple(pixels.shape)}")
    if pixels.shape[1] != channels:
        if channels == 3:
            pixels = pixels.expand(-1, 3, -1, -1)
        else:
            luma = torch.as_tensor(_LUMA, dtype=pixels.dtype, device=pixels.device)
            pixels = (pixels * luma.reshape(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    return _normalised(_resized(pixels, size), mean, std)
