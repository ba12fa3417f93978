"""Decoding images into the one in-memory form: ``uint8`` arrays of shape (H, W, C).

C is 1 for grey images (PIL modes ``1``, ``L``, ``LA``, 16-bit grey, and palette images whose
used colours are all grey) and 3 for everything else (RGBA, palette, CMYK, ... are converted
to RGB; alpha is dropped). Every decoding failure becomes a :class:`DataError` naming the file
or row, because a corrupt file in a folder of thousands is otherwise hard to find.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from utilgen.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})

# Everything PIL raises for a broken, truncated or hostile file (a decompression bomb is an
# image that claims to be enormous; PIL refuses it rather than allocating the memory).
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    UnidentifiedImageError,
    Image.DecompressionBombError,
)

_GREY_MODES = frozenset({"1", "L", "LA", "La"})


def is_image_file(path: Path) -> bool:
    """Whether ``path`` has one of the supported image suffixes (case-insensitive)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def to_uint8(array: np.ndarray, where: str) -> np.ndarray:
    """Pixel values as uint8: 0..1 floats are scaled by 255, 16-bit integers divided by 257.

    Raises when the values fit none of the usual ranges, since guessing a scale there would
    silently produce black or saturated images.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.size == 0:
        raise DataError(f"{where} is an empty image; remove it")
    lo, hi = float(array.min()), float(array.max())
    if np.issubdtype(array.dtype, np.integer) and lo >= 0:
        if hi <= 255:
            return array.astype(np.uint8)
        if hi <= 65535:
            return np.round(array.astype(np.float64) / 257.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating) and np.isfinite(array).all() and lo >= 0:
        if hi <= 1.0:
            return np.round(array.astype(np.float64) * 255.0).astype(np.uint8)
        if hi <= 255.0:
            return np.round(array).astype(np.uint8)
    raise DataError(
        f"{where} has pixel values in [{lo:g}, {hi:g}] ({array.dtype}); store images as "
        "uint8 0..255, floats 0..1 or 16-bit integers"
    )


def pil_to_array(image: Image.Image, where: str) -> np.ndarray:
    """A decoded PIL image as uint8 (H, W, 1) for grey modes or (H, W, 3) otherwise."""
    mode = image.mode
    if mode in _GREY_MODES:
        return np.asarray(image.convert("L"), dtype=np.uint8)[:, :, None]
    if mode.startswith("I") or mode == "F":
        # High-bit-depth grey, e.g. a 16-bit PNG: scale rather than clip to 8 bits.
        return to_uint8(np.asarray(image), where)[:, :, None]
    try:
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except ValueError as err:
        raise DataError(
            f"{where} has image mode {mode} that cannot be converted to RGB ({err})"
        ) from None
    if (
        mode in ("P", "PA")
        and (rgb[:, :, 0] == rgb[:, :, 1]).all()
        and (rgb[:, :, 1] == rgb[:, :, 2]).all()
    ):
        # A palette of greys is a grey image that happens to be stored indexed.
        return np.ascontiguousarray(rgb[:, :, :1])
    return rgb


def check_size(image: Image.Image, where: str) -> None:
    """Raise for an image that declares no pixels, or more than PIL's own warning limit.

    PIL only refuses an image above *twice* ``Image.MAX_IMAGE_PIXELS`` and allocates
    anything below, so a small file declaring 12000 x 12000 pixels would cost 430 MB before
    its (missing) data is found. The header is all ``Image.open`` has read at this point.
    """
    width, height = image.size
    limit = Image.MAX_IMAGE_PIXELS
    if width <= 0 or height <= 0:
        raise DataError(f"{where} is an empty image ({width} x {height} pixels); remove it")
    if limit is not None and width * height > limit:
        raise DataError(
            f"{where} declares {width} x {height} pixels, more than the {limit} utilgen decodes "
            "(a decompression bomb, or a scan far larger than a classifier needs); downscale "
            "it or delete it"
        )


def decode_image(source: Path | bytes, where: str) -> np.ndarray:
    """Open and fully decode an image file or encoded bytes into a uint8 (H, W, C) array.

    ``Image.open`` only reads the header, so ``load()`` is called inside the ``try`` to catch
    truncated files here rather than later, far from the file name; the declared size is
    checked in between, before any pixel memory is allocated.
    """
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            check_size(image, where)
            image.load()
            return pil_to_array(image, where)
    except DataError:
        raise
    except _DECODE_ERRORS as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(
            f"{where} is not a readable image ({type(err).__name__}: {reason}); "
            "replace or delete it"
        ) from None


def array_to_image(value: Any, where: str) -> np.ndarray:
    """An image given as an array or nested lists, as uint8 (H, W, C).

    Accepts (H, W), (H, W, C) and channels-first (C, H, W) with C in 1, 3 or 4 (alpha is
    dropped).
    """
    try:
        array = np.asarray(value)
    except ValueError:
        array = np.asarray([], dtype=np.float64)
    if array.dtype == object or array.ndim not in (2, 3):
        raise DataError(
            f"{where} is not an image array (shape {array.shape}); store H x W or H x W x C pixels"
        )
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.shape[-1] not in (1, 3, 4):
        raise DataError(
            f"{where} has {array.shape[-1]} channels (shape {array.shape}); images need 1, 3 or 4"
        )
    return np.ascontiguousarray(to_uint8(array[:, :, :3], where))


def image_from_value(value: Any, where: str, base_dir: Path | None = None) -> np.ndarray:
    """Decode one cell of an image column, as ``datasets`` and Parquet files store them.

    ``value`` may be a ``{"bytes": ..., "path": ...}`` struct (the ``datasets`` Image
    feature; ``path`` is used when ``bytes`` is empty, relative to ``base_dir``), raw encoded
    bytes, a file path, a PIL image, or an array / nested list of pixels.
    """
    if value is None:
        raise DataError(f"{where} has no image; fill it in or remove the row")
    if isinstance(value, dict):
        if value.get("bytes"):
            return decode_image(bytes(value["bytes"]), where)
        if value.get("path"):
            return decode_image(_resolve(str(value["path"]), where, base_dir), where)
        raise DataError(
            f"{where} has an image with neither bytes nor path; fill it in or remove the row"
        )
    if isinstance(value, (bytes, bytearray, memoryview)):
        return decode_image(bytes(value), where)
    if isinstance(value, str):
        return decode_image(_resolve(value, where, base_dir), where)
    if isinstance(value, Image.Image):
        return pil_to_array(value, where)
    return array_to_image(value, where)


def _resolve(path: str, where: str, base_dir: Path | None) -> Path:
    """An image path stored in a table, made absolute against the table's directory."""
    candidate = Path(path).expanduser()
    if not candidate.is_absolute() and base_dir is not None:
        candidate = base_dir / candidate
    if not candidate.is_file():
        raise DataError(
            f"{where} refers to image file {candidate}, which does not exist; "
            "embed the image bytes or fix the path"
        )
    return candidate


def unify_channels(images: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """All images with the same channel count: grey ones are repeated to RGB if any is RGB.

    A folder mixing grey and colour files is common; the classifier needs one input layout.
    """
    if any(image.shape[-1] == 3 for image in images):
        return tuple(
            image if image.shape[-1] == 3 else np.repeat(image, 3, axis=-1) for image in images
        )
    return tuple(images)
