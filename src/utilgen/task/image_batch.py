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
    for (height, width), indices in by_shape.items():
        group = torch.from_numpy(np.stack([prepared[i] for i in indices])).permute(0, 3, 1, 2)
        if (height, width) != (size, size):
            group = F.interpolate(
                group, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        out[indices] = group
    shift = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
    scale = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
    out = (out - shift) / scale
    return out if device is None else out.to(device)
