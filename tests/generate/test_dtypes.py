"""``generate.dtypes``: ``auto`` is float32 off CUDA for both families, bfloat16 on CUDA for
causal LMs and float16 on CUDA for diffusers pipelines; a named dtype is itself anywhere."""

from __future__ import annotations

import pytest
import torch

from utilgen.generate.dtypes import diffusion_dtype, lm_dtype

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU


def test_auto_is_float32_off_cuda() -> None:
    assert lm_dtype("auto", CPU) == torch.float32
    assert diffusion_dtype("auto", CPU) == torch.float32
    assert lm_dtype("auto", torch.device("mps")) == torch.float32


def test_auto_on_cuda_differs_by_family() -> None:
    assert lm_dtype("auto", CUDA) == torch.bfloat16
    assert diffusion_dtype("auto", CUDA) == torch.float16


@pytest.mark.parametrize("device", [CPU, CUDA])
@pytest.mark.parametrize(
    ("name", "dtype"),
    [("float32", torch.float32), ("float16", torch.float16), ("bfloat16", torch.bfloat16)],
)
def test_a_named_dtype_is_itself(name: str, dtype: torch.dtype, device: torch.device) -> None:
    assert lm_dtype(name, device) == dtype
    assert diffusion_dtype(name, device) == dtype
