"""Payload codecs: images as PNG bytes, texts as UTF-8 bytes.

The bytes are what the pool hashes, so encoding is deterministic: the same pixels give the
same PNG (no metadata chunks, fixed compression level), and a resumed run that re-encodes
its real data finds the blobs it wrote before.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from utilgen.data.labelled import Item, Modality

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# zlib's default trade-off; fixed so that the bytes do not depend on Pillow's default.
PNG_COMPRESS_LEVEL = 6


def encode_image(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 image of shape (H, W, 1), (H, W, 3) or (H, W).

    One channel is stored as 8-bit grey, three as 8-bit RGB; nothing but the pixels is
    written (no text chunks, no timestamps).
    """
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8 arrays, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"images must have shape (H, W, 1) or (H, W, 3), got {arr.shape}")
    buffer = io.BytesIO()
    # Pillow infers grey ("L") from 2-D uint8 and RGB from (H, W, 3) uint8.
    Image.fromarray(np.ascontiguousarray(arr)).save(
        buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False
    )
    return buffer.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """A uint8 array of shape (H, W, 1) for grey PNGs or (H, W, 3) for colour ones.

    Colour modes other than grey and RGB (palette, alpha, 16-bit) are converted to RGB so
    that every decoded image fits ``LabelledData``.
    """
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode == "L":
            return np.asarray(image, dtype=np.uint8)[:, :, None].copy()
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def encode_text(text: str) -> bytes:
    """UTF-8 bytes of ``text``, unchanged (no normalisation, no trailing newline)."""
    if not isinstance(text, str):
        raise ValueError(f"texts must be str, got {type(text).__name__}")
    return text.encode("utf-8")


def decode_text(data: bytes) -> str:
    """The text stored as UTF-8 ``data``."""
    return data.decode("utf-8")


def encode_item(item: Item, modality: Modality) -> bytes:
    """The payload of a ``LabelledData`` item of ``modality``."""
    if modality == "image":
        if not isinstance(item, np.ndarray):
            raise ValueError(f"image items must be numpy arrays, got {type(item).__name__}")
        return encode_image(item)
    if not isinstance(item, str):
        raise ValueError(f"text items must be str, got {type(item).__name__}")
    return encode_text(item)


def decode_item(data: bytes, modality: Modality) -> Item:
    """The ``LabelledData`` item stored as payload ``data``."""
    return decode_image(data) if modality == "image" else decode_text(data)


def check_payload(data: bytes, modality: Modality) -> str | None:
    """Why ``data`` is not a valid payload of ``modality`` (cheap checks), or None if it is."""
    if modality == "image":
        return None if data.startswith(PNG_SIGNATURE) else "image payloads must be PNG bytes"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "text payloads must be UTF-8"
    return None
