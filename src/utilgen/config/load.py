"""Loading a :class:`RunConfig` from YAML and ``--set`` overrides, with one-line errors.

Every validation failure becomes a one-line :class:`~utilgen.errors.ConfigError` naming the
key, what is allowed and, on a typo, the closest valid key.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from utilgen.atomic import write_text_atomic
from utilgen.config.run import RunConfig
from utilgen.errors import ConfigError


def _fields_at(loc: tuple[str | int, ...]) -> list[str]:
    """Valid keys of the section that ``loc`` (a pydantic error location) points into."""
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _one_line(err: ValidationError) -> str:
    """The first validation error as ``key: problem (allowed / did you mean)``."""
    first = err.errors()[0]
    loc = tuple(first["loc"])
    key = ".".join(str(p) for p in loc) or "config"
    if first["type"] == "extra_forbidden":
        valid = _fields_at(loc)
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
        hint = f"did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'? " if close else ""
        return f"unknown config key '{key}': {hint}valid keys here: {', '.join(valid)}"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "value_error":
        return f"invalid config '{key}': {msg}"
    if first["type"] in ("literal_error", "enum"):
        return f"invalid value for '{key}': {msg}"
    return f"invalid value for '{key}' ({first.get('input')!r}): {msg}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``section.key=value`` into its key path and a YAML-typed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r} has an empty key; use section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with every ``section.key=value`` override applied."""
    out: dict[str, Any] = yaml.safe_load(yaml.safe_dump(raw)) or {}
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return out


def config_from_dict(raw: dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    """Validate a raw mapping (plus overrides) into a :class:`RunConfig`."""
    merged = apply_overrides(raw, overrides or [])
    try:
        return RunConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_one_line(err)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    raw: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found; pass the path of a YAML config")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            line = getattr(getattr(err, "problem_mark", None), "line", None)
            where = f" at line {line + 1}" if line is not None else ""
            raise ConfigError(
                f"config file {path} is not valid YAML{where}; fix its syntax"
            ) from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections at top level")
    return config_from_dict(raw, overrides)


def config_to_yaml(config: RunConfig) -> str:
    """The resolved config as YAML (paths as strings), as written to ``RUN/config.yaml``."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def save_config(config: RunConfig, path: str | Path) -> Path:
    """Write the resolved config atomically."""
    return write_text_atomic(path, config_to_yaml(config))


def preset_path(name: str) -> Path:
    """Path of a preset shipped in the package (``utilgen/configs/<name>.yaml``)."""
    return Path(str(resources.files("utilgen") / "configs" / f"{name}.yaml"))


def preset_names() -> list[str]:
    """Names of the shipped presets."""
    folder = Path(str(resources.files("utilgen") / "configs"))
    return sorted(p.stem for p in folder.glob("*.yaml"))


def resolve_config(name_or_path: str, overrides: list[str] | None = None) -> RunConfig:
    """Load a config from a YAML path or, when no such file exists, a shipped preset name."""
    path = Path(name_or_path)
    if not path.exists() and path.suffix not in (".yaml", ".yml") and path.name == name_or_path:
        if preset_path(name_or_path).is_file():
            path = preset_path(name_or_path)
        else:
            close = difflib.get_close_matches(name_or_path, preset_names(), n=1)
            hint = f" (did you mean preset '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"config {name_or_path!r} is neither a file nor a preset{hint}; "
                f"presets: {', '.join(preset_names())}"
            )
    return load_config(path, overrides)
