"""Image decoding: every PIL mode to uint8 (H, W, C) with C = 1 for grey, 3 otherwise."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utilgen.data.images import array_to_image, decode_image, image_from_value, unify_channels
from utilgen.errors import DataError


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_grey_image_keeps_one_channel_and_its_values() -> None:
    grey = np.arange(35, dtype=np.uint8).reshape(5, 7) * 7
    out = decode_image(_png_bytes(Image.fromarray(grey)), "test")
    assert out.dtype == np.uint8
    assert out.shape == (5, 7, 1)
    np.testing.assert_array_equal(out[:, :, 0], grey)


def test_bilevel_image_becomes_0_and_255() -> None:
    bits = np.zeros((4, 6), dtype=bool)
    bits[1, 2] = True
    out = decode_image(_png_bytes(Image.fromarray(bits).convert("1")), "test")
    assert out.shape == (4, 6, 1)
    assert set(np.unique(out).tolist()) == {0, 255}
    assert out[1, 2, 0] == 255 and out[0, 0, 0] == 0


def test_rgba_drops_alpha_and_keeps_colours() -> None:
    rgba = np.zeros((3, 4, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 0
    out = decode_image(_png_bytes(Image.fromarray(rgba, mode="RGBA")), "test")
    assert out.shape == (3, 4, 3)
    assert out[0, 0].tolist() == [10, 20, 30]


def test_palette_of_greys_is_grey_and_colour_palette_is_rgb() -> None:
    grey = Image.fromarray(np.array([[0, 128], [200, 255]], dtype=np.uint8)).convert("P")
    assert grey.mode == "P"
    out = decode_image(_png_bytes(grey), "test")
    assert out.shape == (2, 2, 1)
    assert out[:, :, 0].tolist() == [[0, 128], [200, 255]]

    colour = Image.new("P", (2, 1))
    colour.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    colour.putdata([0, 1])
    out = decode_image(_png_bytes(colour), "test")
    assert out.shape == (1, 2, 3)
    assert out[0].tolist() == [[255, 0, 0], [0, 0, 255]]


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path: Path) -> None:
    path = tmp_path / "c.jpg"
    Image.new("CMYK", (4, 3), (0, 255, 255, 0)).save(path)  # pure red in CMYK
    out = decode_image(path, "test")
    assert out.shape == (3, 4, 3)
    red, green, blue = out[1, 1].tolist()
    assert red > 200 and green < 60 and blue < 60


def test_16_bit_grey_is_scaled_not_clipped() -> None:
    deep = np.array([[0, 25600, 65535]], dtype=np.uint16)  # 25600 / 257 = 99.6
    out = decode_image(_png_bytes(Image.fromarray(deep)), "test")
    assert out.shape == (1, 3, 1)
    assert out[0, :, 0].tolist() == [0, 100, 255]


def test_arrays_float_chw_and_2d() -> None:
    np.testing.assert_array_equal(
        array_to_image(np.array([[0.0, 0.5], [1.0, 1.0]]), "t")[:, :, 0], [[0, 128], [255, 255]]
    )
    chw = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    np.testing.assert_array_equal(array_to_image(chw, "t"), np.moveaxis(chw, 0, -1))
    assert array_to_image([[1, 2], [3, 4]], "t").shape == (2, 2, 1)
    with pytest.raises(DataError, match=r"pixel values in \[-1, 3\]"):
        array_to_image(np.array([[-1.0, 3.0]]), "row 4")


def test_image_struct_uses_bytes_then_path(tmp_path: Path) -> None:
    array = np.full((2, 3, 3), 77, dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "x.png")
    from_path = image_from_value({"bytes": None, "path": "x.png"}, "row 0", base_dir=tmp_path)
    from_bytes = image_from_value({"bytes": (tmp_path / "x.png").read_bytes(), "path": None}, "r")
    np.testing.assert_array_equal(from_path, array)
    np.testing.assert_array_equal(from_bytes, array)
    with pytest.raises(DataError, match=r"row 1 refers to image file .*missing\.png"):
        image_from_value({"bytes": None, "path": "missing.png"}, "row 1", base_dir=tmp_path)


def test_unify_channels_promotes_grey_only_when_mixed() -> None:
    grey = np.zeros((2, 2, 1), dtype=np.uint8)
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    assert [a.shape[-1] for a in unify_channels([grey, rgb])] == [3, 3]
    assert [a.shape[-1] for a in unify_channels([grey, grey])] == [1, 1]
