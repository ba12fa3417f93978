"""``loop.device``: which torch device a run computes on, checked when the config loads.

The spelling is checked by the config model itself (no torch import); whether the device
exists on this machine is checked by :func:`check_device_available`, which the loaders of
configs that are about to run call (``resolve_config``, ``load_config``). A report read from
a GPU run's ``config.yaml`` on a laptop only needs the spelling.
"""

from __future__ import annotations

import re

from utilgen.errors import ConfigError

DEVICE_FORMS = "auto, cpu, cuda, cuda:N or mps"
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def available_devices() -> list[str]:
    """The devices torch can compute on here, e.g. ``["cpu", "cuda:0", "cuda:1"]``."""
    import torch  # only when a device must be named: the config loads without torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def _here() -> str:
    return f"devices here: auto, {', '.join(available_devices())}"


def check_device_spelling(device: str) -> str:
    """``device`` if it is one of :data:`DEVICE_FORMS`; ValueError naming the devices here
    otherwise (``gpu``, ``cuda0``, ``CUDA``...)."""
    if _DEVICE.match(device):
        return device
    raise ValueError(f"{device!r} is not a device; use {DEVICE_FORMS} ({_here()})")


def check_device_available(device: str) -> None:
    """Raise ConfigError when ``device`` (already well spelled) does not exist here: CUDA on
    a CPU-only torch or machine, ``cuda:N`` past the last GPU, MPS off Apple silicon."""
    if device in ("auto", "cpu"):
        return
    devices = available_devices()
    wanted = "cuda:0" if device == "cuda" else device
    if wanted in devices:
        return
    import torch

    if device == "mps":
        why = "torch sees no Apple MPS device"
    else:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        why = f"torch {torch.__version__} ({build}) sees {count} CUDA GPU(s)"
    raise ConfigError(
        f"loop.device={device} is not available: {why}; {_here()}: "
        "set loop.device=auto or cpu"
    )
