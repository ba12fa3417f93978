"""utilgen: utility-guided synthetic training data.

The Python API (the CLI is a thin layer over it)::

    import utilgen

    cfg = utilgen.load_config("digits-static", overrides=["seed=1"])
    result = utilgen.run(cfg, "runs/x")
    print(result.summary.accuracy, result.summary.label_fidelity)

``load_config`` takes a shipped preset's name or a YAML path; ``run`` runs or resumes the
config in a run directory and returns a :class:`RunResult` (typed :class:`Summary`, one
:class:`RoundMetrics` per stage). The protocols a user implements to bring their own parts
are exported too: :class:`Generator`, :class:`Valuator`, :class:`Selector`,
:class:`FeedbackComponent`, :class:`TaskModel`; :mod:`utilgen.registry` is where a part of
one's own is registered by name (docs/architecture.md, "Registries").

Names are imported on first use, so ``import utilgen`` stays light (no torch).
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("utilgen")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

if TYPE_CHECKING:
    from utilgen.config import RunConfig
    from utilgen.feedback.component import FeedbackComponent
    from utilgen.generate.base import Generator
    from utilgen.loop.results import RoundMetrics, StopRecord, Summary
    from utilgen.loop.run import RunResult, run
    from utilgen.task.base import TaskModel
    from utilgen.value.base import Valuator
    from utilgen.value.selectors import Selector

# public name -> the module that defines it
_EXPORTS = {
    "RunConfig": "utilgen.config",
    "run": "utilgen.loop.run",
    "RunResult": "utilgen.loop.run",
    "Summary": "utilgen.loop.results",
    "RoundMetrics": "utilgen.loop.results",
    "StopRecord": "utilgen.loop.results",
    "FeedbackComponent": "utilgen.feedback.component",
    "Generator": "utilgen.generate.base",
    "Valuator": "utilgen.value.base",
    "Selector": "utilgen.value.selectors",
    "TaskModel": "utilgen.task.base",
}

__all__ = [
    "FeedbackComponent",
    "Generator",
    "RoundMetrics",
    "RunConfig",
    "RunResult",
    "Selector",
    "StopRecord",
    "Summary",
    "TaskModel",
    "Valuator",
    "__version__",
    "load_config",
    "run",
]


def load_config(name_or_path: str, overrides: list[str] | None = None) -> RunConfig:
    """The validated config of a shipped preset (``utilgen presets``) or a YAML file, with
    ``section.key=value`` overrides applied in order, as ``utilgen run CONFIG --set ...``
    reads it. Raises :class:`utilgen.errors.ConfigError` with a one-line message."""
    from utilgen.config import resolve_config

    return resolve_config(name_or_path, overrides or [])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value  # once imported, a plain module attribute
        return value
    raise AttributeError(f"module 'utilgen' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
