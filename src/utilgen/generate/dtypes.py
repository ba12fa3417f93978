"""Weight dtypes of the pretrained generators: ``generator.lm.dtype`` and
``generator.diffusers.dtype``.

Both accept ``auto``, ``float32``, ``float16`` and ``bfloat16``, and ``auto`` is float32 off
CUDA for both (half precision on CPU is slow and inexact). On CUDA they differ on purpose,
each following the precision its model family is published and run in:

* :func:`lm_dtype`, causal LMs: bfloat16. Current LMs (SmolLM2, Llama, Qwen) are trained in
  bfloat16, which keeps float32's exponent range; float16's narrow range can overflow in
  their activations, in generation and in U-DPO's passes through the loaded weights alike.
* :func:`diffusion_dtype`, diffusers pipelines: float16. Stable Diffusion checkpoints ship
  float16 weights (``generator.diffusers.variant: fp16``) and are run in float16, which every
  CUDA GPU supports (bfloat16 needs Ampere or newer).

The two are separate functions so that a call site says which rule it applies. vLLM is given
``auto`` as it is and resolves it itself (the model config's dtype).
"""

from __future__ import annotations

import torch

_BY_NAME = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _resolve(name: str, device: torch.device, *, auto_on_cuda: torch.dtype) -> torch.dtype:
    if name == "auto":
        return auto_on_cuda if device.type == "cuda" else torch.float32
    return _BY_NAME[name]


def lm_dtype(name: str, device: torch.device) -> torch.dtype:
    """A causal LM's weight dtype: ``auto`` is bfloat16 on CUDA and float32 elsewhere; other
    names map to their torch dtype."""
    return _resolve(name, device, auto_on_cuda=torch.bfloat16)


def diffusion_dtype(name: str, device: torch.device) -> torch.dtype:
    """A diffusers pipeline's weight dtype: ``auto`` is float16 on CUDA and float32
    elsewhere; other names map to their torch dtype."""
    return _resolve(name, device, auto_on_cuda=torch.float16)
