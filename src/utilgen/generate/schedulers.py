"""Samplers by name: ``"ddim"``, ``"euler-a"``, ``"dpm++"`` … -> a diffusers scheduler.

A scheduler is rebuilt from the pipeline's own scheduler config
(``cls.from_config(pipe.scheduler.config)``), so the model's noise schedule (betas, prediction
type, timestep spacing) carries over and only the sampling algorithm changes. The name table
lives in :mod:`utilgen.config.diffusion`, where the config checks names without diffusers.
"""

from __future__ import annotations

from typing import Any

import diffusers
from diffusers import SchedulerMixin

from utilgen.config.diffusion import (
    SCHEDULERS,
    canonical_scheduler_name,
    unknown_scheduler_message,
)
from utilgen.generate.request import GenerationError


class UnknownSchedulerError(GenerationError):
    """A scheduler name that is not in the table; the message lists the valid ones."""


def scheduler_spec(name: str) -> tuple[type[SchedulerMixin], dict[str, Any]]:
    """The diffusers scheduler class of ``name`` and the config overrides it needs.

    Raises:
        UnknownSchedulerError: ``name`` is not a known scheduler (did-you-mean + valid names).
    """
    canonical = canonical_scheduler_name(name)
    if canonical is None:
        raise UnknownSchedulerError(unknown_scheduler_message(name))
    class_name, overrides = SCHEDULERS[canonical]
    return getattr(diffusers, class_name), dict(overrides)


def make_scheduler(name: str, base_config: Any) -> SchedulerMixin:
    """A new scheduler of kind ``name`` with the noise schedule of ``base_config`` (a
    scheduler's ``.config``)."""
    cls, overrides = scheduler_spec(name)
    scheduler: SchedulerMixin = cls.from_config(base_config, **overrides)
    return scheduler


def scheduler_names() -> list[str]:
    """Every valid scheduler name, in table order."""
    return list(SCHEDULERS)
