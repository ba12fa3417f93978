"""Config values that name a registered part (``generator.kind``, ``task.model``,
``feedback.components``), checked against :mod:`utilgen.registry` when the config is
validated, so that a typo fails with the closest name before anything runs."""

from __future__ import annotations

from typing import Any

from pydantic_core import PydanticCustomError

from utilgen.registry import Registry

# The error type ``config.load`` reports as "invalid value for '<key>'", like a Literal's.
NAME_ERROR = "registered_name"


def check_registered(registry: Registry[Any], name: str, *, also: tuple[str, ...] = ()) -> str:
    """``name`` if it is registered in ``registry`` (or one of ``also``).

    Raises:
        PydanticCustomError: it is not; the message names the closest valid name.
    """
    if name in also or name in registry:
        return name
    raise PydanticCustomError(NAME_ERROR, registry.unknown(name, also).replace("{", "{{"))
