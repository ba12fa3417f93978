"""Requests written to disk come back equal, tensors and images included, with equal keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from utilgen.errors import UtilgenError
from utilgen.generate import GenerationRequest
from utilgen.generate.request_io import read_requests, write_requests


def test_round_trip_keeps_every_field_and_the_key(tmp_path: Path) -> None:
    image = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    requests = [
        GenerationRequest(
            label=1, class_name="cat", seed=7, prompt="a cat", guidance_scale=2.5,
            prompt_embeds=torch.randn(1, 6), latents=torch.randn(2, 1, 4, 4), num_outputs=2,
            metadata={"prompt_ascent": {"drift": 0.05}},
        ),
        GenerationRequest(
            label=0, class_name="dog", seed=3, init_image=image, strength=0.75,
            parent_id="real/dog/1", perturbation="llm-caption:x",
        ),
    ]
    write_requests(tmp_path / "req", requests)
    again = read_requests(tmp_path / "req")
    assert [r.key() for r in again] == [r.key() for r in requests]
    assert torch.equal(again[0].prompt_embeds, requests[0].prompt_embeds)  # type: ignore[arg-type]
    assert torch.equal(again[0].latents, requests[0].latents)  # type: ignore[arg-type]
    assert again[0].metadata == {"prompt_ascent": {"drift": 0.05}}
    assert again[1].init_image is not None and np.array_equal(again[1].init_image, image)
    assert again[1].prompt_embeds is None and again[1].strength == 0.75


def test_a_changed_tensor_changes_the_key(tmp_path: Path) -> None:
    request = GenerationRequest(label=0, class_name="a", seed=0, latents=torch.zeros(1, 2, 2))
    write_requests(tmp_path / "req", [request])
    (back,) = read_requests(tmp_path / "req")
    other = GenerationRequest(label=0, class_name="a", seed=0, latents=torch.ones(1, 2, 2))
    assert back.key() == request.key() != other.key()


def test_a_truncated_file_is_a_one_line_error(tmp_path: Path) -> None:
    write_requests(tmp_path / "req", [GenerationRequest(label=0, class_name="a", seed=0)])
    (tmp_path / "req.safetensors").write_bytes(b"\x00\x01")
    with pytest.raises(UtilgenError, match=r"cannot be read.*delete") as info:
        read_requests(tmp_path / "req")
    assert "\n" not in str(info.value)
