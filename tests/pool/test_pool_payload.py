"""Payload codecs and the LabelledData <-> Sample conversions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pool_samples import image_data, pixels, text_data

from utilgen.pool import (
    Sample,
    content_hash,
    decode_image,
    decode_text,
    encode_image,
    encode_text,
    samples_from_labelled,
)


@pytest.mark.parametrize("channels", [1, 3])
def test_image_round_trip_keeps_pixels_and_shape(channels: int) -> None:
    array = pixels(7, channels=channels, size=5)
    data = encode_image(array)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    decoded = decode_image(data)
    assert decoded.dtype == np.uint8 and decoded.shape == (5, 5, channels)
    np.testing.assert_array_equal(decoded, array)


def test_image_encoding_is_deterministic_and_has_no_metadata() -> None:
    array = pixels(3)
    assert encode_image(array) == encode_image(array.copy())
    # Only the IHDR, IDAT and IEND chunks: no text, time or gamma chunks.
    assert b"tEXt" not in encode_image(array) and b"tIME" not in encode_image(array)


def test_image_encoding_rejects_wrong_arrays() -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_image(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        encode_image(np.zeros((4, 4, 2), dtype=np.uint8))


def test_text_round_trip() -> None:
    text = "héllo — wörld ✓\nsecond line "
    assert decode_text(encode_text(text)) == text
    assert encode_text(text) == text.encode("utf-8")


def test_samples_from_labelled_carry_ids_labels_class_names_and_split() -> None:
    data = image_data(4)
    samples = samples_from_labelled(data, split="val")
    assert [s.id for s in samples] == list(data.ids)
    assert [s.label for s in samples] == data.labels.tolist()
    assert [s.class_name for s in samples] == [data.class_names[y] for y in data.labels]
    assert {s.split for s in samples} == {"val"} and {s.source for s in samples} == {"real"}
    assert samples[0].blob == content_hash(samples[0].payload)
    texts = samples_from_labelled(text_data(2), split="train")
    assert decode_text(texts[1].payload) == text_data(2).items[1]


def _sample(**over: Any) -> Sample:
    fields: dict[str, Any] = {
        "id": "x",
        "modality": "text",
        "label": 0,
        "class_name": "a",
        "payload": b"t",
        "source": "synthetic",
    }
    return Sample(**{**fields, **over})


def test_sample_rejects_malformed_fields() -> None:
    with pytest.raises(ValueError, match="split"):
        _sample(source="real")  # real samples must carry their split
    with pytest.raises(ValueError, match="source"):
        _sample(source="fake", split="train")
    with pytest.raises(ValueError, match="label"):
        _sample(label=-1)
    with pytest.raises(ValueError, match="prompt"):
        _sample(prompt=None)
    # numpy scalars are accepted and stored as Python numbers
    sample = _sample(label=np.int64(2), guidance=np.float32(2))
    assert type(sample.label) is int and type(sample.guidance) is float
    assert "payload" not in repr(sample)  # payloads can be megabytes
