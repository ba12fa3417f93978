"""Every key of a config with its value, meaning and default: ``utilgen config show
--help-keys``, read from the config models' field descriptions (one source of truth)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


def _shown(value: Any) -> str:
    """A value as it would be written in YAML or after ``--set key=``."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_defaults=True)
    if isinstance(value, list):
        value = [
            v.model_dump(mode="json", exclude_defaults=True) if isinstance(v, BaseModel) else v
            for v in value
        ]
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value else '""'
    return json.dumps(value, default=str)


def key_rows(model: BaseModel, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, value, default, description) for every leaf key of ``model``; a nested
    section is walked, a list (of selection rules, components) is one key."""
    rows: list[tuple[str, str, str, str]] = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            rows += key_rows(value, f"{key}.")
            continue
        if field.default_factory is not None:
            default = _shown(field.default_factory())  # type: ignore[call-arg]
        elif field.default is PydanticUndefined:
            default = "required"
        else:
            default = _shown(field.default)
        rows.append((key, _shown(value), default, field.description or ""))
    return rows


def describe_keys(config: BaseModel) -> str:
    """One block per key: ``key: value`` then its description and default, indented."""
    lines = []
    for key, value, default, description in key_rows(config):
        lines.append(f"{key}: {value}")
        lines.append(f"    {description} (default: {default})")
    return "\n".join(lines)
