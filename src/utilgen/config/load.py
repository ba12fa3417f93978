"""Loading a :class:`RunConfig` from YAML and ``--set`` overrides, with one-line errors.

A config file may start from another: ``extends: <preset name or YAML path>`` loads that
parent (which may extend in turn) and deep-merges the file's own keys over it, before the
overrides and validation, so the resolved config never holds ``extends``. Every validation
failure becomes a one-line :class:`~utilgen.errors.ConfigError` naming the key, what is
allowed and, on a typo, the closest valid key.
"""

from __future__ import annotations

import difflib
import os
import reprlib
import sys
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from utilgen.atomic import write_text_atomic
from utilgen.config.device import check_device_available
from utilgen.config.names import NAME_ERROR
from utilgen.config.run import RunConfig
from utilgen.errors import ConfigError

# A config is a few sections of scalars and short lists, four or five levels deep at most.
# Anything far deeper or larger is a mistake or a hostile file (a YAML alias that refers to
# itself, or aliases nested inside aliases that expand a few lines into billions of values),
# and is refused before pydantic, the YAML dumper or an error message walks all of it.
MAX_DEPTH = 32
MAX_VALUES = 100_000
# Every integer setting ends up in an int64 somewhere (torch seeds, the manifest's columns).
_INT64 = 2**63
# An ablation extends its method's preset, which might extend a base: a few levels. A longer
# chain of `extends:` is a mistake (or a generated loop through ever new file names).
MAX_EXTENDS = 16

# Values from the user shown in messages: short, on one line, never the whole of a huge input.
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxset = _SHORT.maxdict = 4
_SHORT.maxlevel = 2


def show(value: Any) -> str:
    """``repr(value)`` cut to about 60 characters, e.g. for a value named in an error."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        # repr of an int with thousands of digits raises ValueError (int max str digits).
        return f"<integer of {value.bit_length()} bits>"
    try:
        return _SHORT.repr(value)
    except ValueError:  # an int too long to print, deeper inside a list or dict
        return f"<{type(value).__name__}>"


def one_line(text: str) -> str:
    """``text`` with line breaks, tabs and other unprintable characters escaped, so that a
    message naming a user's key or path stays the one line the CLI promises."""
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


def check_tree(raw: Any, origin: str, at: tuple[str, ...] = ()) -> None:
    """Raise ConfigError when ``raw`` (a parsed config or override value) nests deeper than
    MAX_DEPTH, holds more than MAX_VALUES values counting repeats of shared (aliased)
    parts, or an integer outside int64. ``origin`` names the input in the message and
    ``at`` is the key path of ``raw`` within the config (an override's key)."""

    def name(where: tuple[Any, ...]) -> str:
        parts = [part if isinstance(part, str) else show(part) for part in where]
        return ".".join(part if len(part) <= 40 else part[:37] + "..." for part in parts)

    stack: list[tuple[Any, tuple[Any, ...]]] = [(raw, at)]
    seen = 0
    while stack:
        node, where = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise ConfigError(
                one_line(
                    f"{origin} expands to more than {MAX_VALUES} values (YAML aliases nested "
                    "inside aliases?); write the settings out without nested aliases"
                )
            )
        if len(where) > MAX_DEPTH:
            raise ConfigError(
                one_line(
                    f"{origin} nests deeper than {MAX_DEPTH} levels at '{name(where)[:80]}...' "
                    "(a YAML alias that contains itself?); no setting is nested that deep, fix it"
                )
            )
        if isinstance(node, int) and not isinstance(node, bool) and abs(node) >= _INT64:
            raise ConfigError(
                one_line(
                    f"invalid value for '{name(where) or 'config'}' in {origin}: {show(node)} "
                    "does not fit in 64 bits; no setting takes numbers that large"
                )
            )
        if isinstance(node, dict):
            stack.extend((child, (*where, k)) for k, child in node.items())
        elif isinstance(node, (list, tuple, set)):
            stack.extend((child, (*where, i)) for i, child in enumerate(node))


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The config section an annotation holds: itself, or the item of a list of sections
    (``list[SelectionRule]``) or an optional one."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if (model := _section_model(arg)) is not None:
            return model
    return None


def _fields_at(loc: tuple[str | int, ...]) -> list[str]:
    """Valid keys of the section that ``loc`` (a pydantic error location) points into."""
    model: type[BaseModel] | None = RunConfig
    for part in loc[:-1]:
        if isinstance(part, int):  # an item of a list of sections
            continue
        field = model.model_fields.get(str(part)) if model is not None else None
        model = _section_model(getattr(field, "annotation", None))
        if model is None:
            return []
    return list(model.model_fields) if model is not None else []


def _one_line(err: ValidationError) -> str:
    """The first validation error as ``key: problem (allowed / did you mean)``; an unknown
    key comes first, since a typo in a key also leaves the key it meant missing."""
    errors = err.errors(include_url=False)
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(first["loc"])
    # A key is named as typed, cut short: a YAML key can be any text, even a whole file.
    parts = [str(p) if isinstance(p, (str, int)) else show(p) for p in loc]
    key = ".".join(p if len(p) <= 80 else p[:77] + "..." for p in parts) or "config"
    if first["type"] == "extra_forbidden":
        valid = _fields_at(loc)
        close = difflib.get_close_matches(str(loc[-1])[:200], valid, n=1, cutoff=0.6)
        hint = f"did you mean '{'.'.join([*parts[:-1], close[0]])}'? " if close else ""
        return one_line(f"unknown config key '{key}': {hint}valid keys here: {', '.join(valid)}")
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "value_error":
        return one_line(f"invalid config '{key}': {msg}")
    if first["type"] in ("literal_error", "enum", NAME_ERROR):
        return one_line(f"invalid value for '{key}': {msg}")
    return one_line(f"invalid value for '{key}' ({show(first.get('input'))}): {msg}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``section.key=value`` into its key path and a YAML-typed value."""
    if "=" not in text:
        raise ConfigError(one_line(f"override {show(text)} must look like section.key=value"))
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(
            one_line(f"override {show(text)} has an empty key; use section.key=value")
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    except (ValueError, RecursionError) as err:
        # PyYAML lets these through: an integer of thousands of digits, a value nested
        # thousands of levels deep.
        raise ConfigError(
            one_line(f"override {show(text)} cannot be read ({_reason(err)}); fix its value")
        ) from None
    check_tree(value, f"override {show(text)}", at=tuple(parts))
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
                raise ConfigError(
                    one_line(f"override {show(text)}: '{part}' is a value, not a section")
                )
            node = child
        node[parts[-1]] = value
    return out


def merge_config(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` deep-merged over it, as ``extends:`` does: mappings merge
    key by key; a list or scalar in ``update`` replaces ``base``'s value whole. Neither input
    is changed."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = value
    return out


def config_from_dict(
    raw: dict[str, Any],
    overrides: list[str] | None = None,
    *,
    origin: str = "the config",
    path: str | Path | None = None,
) -> RunConfig:
    """Validate a raw mapping (plus overrides) into a :class:`RunConfig`; ``origin`` names
    where ``raw`` came from in error messages. An ``extends:`` key in ``raw`` is resolved
    first (a relative parent path against the folder of ``path``, the file ``raw`` was read
    from, or the working directory)."""
    check_tree(raw, origin)
    resolved = _resolve_extends(raw, origin, Path(path) if path is not None else None)
    if resolved is not raw:
        check_tree(resolved, origin)  # each file was within the limits; so must the sum be
    merged = apply_overrides(resolved, overrides or [])
    try:
        return RunConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_one_line(err)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config (or the defaults when ``path`` is None), resolve its ``extends:``
    and apply overrides; its ``loop.device`` must exist on this machine (the config is about
    to run here)."""
    config = _load_config(path, overrides)
    check_device_available(config.loop.device)
    return config


def _load_config(path: str | Path | None, overrides: list[str] | None) -> RunConfig:
    if path is None:
        return config_from_dict({}, overrides)
    path = Path(path)
    raw = _read_config_file(path)
    return config_from_dict(raw, overrides, origin=f"config file {path}", path=path)


def _shown(path: Path) -> str:
    """``path`` for a message, its middle cut when it is very long."""
    text = str(path)
    return text if len(text) <= 200 else f"{text[:120]}...{text[-60:]}"


def _read_config_file(path: Path) -> dict[str, Any]:
    """The mapping a YAML config file holds; every way a file can be unusable (missing,
    not UTF-8, unreadable, not YAML, not a mapping) is a one-line ConfigError naming it.
    The caller checks the mapping's size (:func:`check_tree`) before walking it."""
    if not _is_file(path):
        raise ConfigError(
            one_line(f"config file {_shown(path)} not found; pass the path of a YAML config")
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            one_line(f"config file {path} is not UTF-8 (byte offset {err.start}); save it as UTF-8")
        ) from None
    except OSError as err:
        raise ConfigError(
            one_line(f"cannot read config file {path} ({err.strerror}); check its permissions")
        ) from None
    try:
        raw = yaml.safe_load(text) or {}
    except (yaml.YAMLError, ValueError, RecursionError) as err:
        # ValueError and RecursionError come through PyYAML for an integer of thousands of
        # digits and for brackets nested thousands deep.
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise ConfigError(
            one_line(f"config file {path} is not valid YAML{where} ({_reason(err)}); fix it")
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(
            one_line(f"config file {path} must hold a mapping of sections at top level")
        )
    return raw


def _parent_file(parent: Any, child: Path | None, origin: str) -> Path:
    """The file that ``extends: parent`` in ``child`` (None: a mapping not read from a
    file; ``origin`` names it) refers to: a YAML path, relative to ``child``'s folder, or
    else the name of a shipped preset."""
    if not isinstance(parent, str):
        raise ConfigError(
            one_line(
                f"'extends' in {origin} must be a preset name or the path of a YAML file, "
                f"not {show(parent)}"
            )
        )
    path = Path(parent) if child is None else child.parent / parent
    if _is_file(path):
        return path
    if (preset := _preset_file(parent)) is not None:
        return preset
    raise ConfigError(
        one_line(
            f"{origin} extends {show(parent)}, which is neither a file ({_shown(path)}) nor a "
            f"preset{_preset_hint(parent)}; presets: {', '.join(preset_names())}"
        )
    )


def _chain_name(path: Path) -> str:
    """How a file of an ``extends`` chain is named in a message: a shipped preset by its
    name, any other file by its path."""
    if path.suffix == ".yaml" and os.path.realpath(path.parent) == os.path.realpath(_presets()):
        return path.stem
    return _shown(path)


def _resolve_extends(raw: dict[str, Any], origin: str, path: Path | None) -> dict[str, Any]:
    """``raw`` with the configs it ``extends`` merged under it, parent first, and every
    ``extends`` key removed; ``raw`` itself when it extends nothing. ``path`` is the file
    ``raw`` was read from (None: not a file)."""
    if "extends" not in raw:
        return raw
    # 1. walk up the chain, child first, keeping each file's mapping without `extends`
    layers: list[dict[str, Any]] = []
    chain: list[str] = [_chain_name(path) if path is not None else origin]
    seen: list[str] = [os.path.realpath(path)] if path is not None else []
    node, where, named = raw, path, origin
    while "extends" in node:
        if len(layers) >= MAX_EXTENDS:
            raise ConfigError(
                one_line(
                    f"{origin} extends more than {MAX_EXTENDS} configs in a chain "
                    f"({' -> '.join(chain[:3])} -> ...); shorten the chain"
                )
            )
        parent = _parent_file(node["extends"], where, named)
        layers.append({k: v for k, v in node.items() if k != "extends"})
        chain.append(_chain_name(parent))
        if (key := os.path.realpath(parent)) in seen:
            raise ConfigError(
                one_line(
                    f"{origin}: 'extends' goes round in a cycle ({' -> '.join(chain)}); "
                    "remove the extends that closes it"
                )
            )
        seen.append(key)
        node, where, named = _read_config_file(parent), parent, f"config file {parent}"
        check_tree(node, named)
    layers.append(node)
    # 2. merge down the chain: the root config, then each child over it
    merged = layers[-1]
    for layer in reversed(layers[:-1]):
        merged = merge_config(merged, layer)
    return merged


def _reason(err: BaseException) -> str:
    """The gist of a parser's exception, one short line."""
    if isinstance(err, RecursionError):
        return "nested too deeply"
    if isinstance(err, yaml.MarkedYAMLError) and err.problem:
        return err.problem
    if "integer string conversion" in str(err):
        return f"an integer with more than {sys.get_int_max_str_digits()} digits"
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:120]


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False too where the name itself is impossible (too long, NUL)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def config_to_yaml(config: RunConfig) -> str:
    """The resolved config as YAML (paths as strings), as written to ``RUN/config.yaml``."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def save_config(config: RunConfig, path: str | Path) -> Path:
    """Write the resolved config atomically."""
    return write_text_atomic(path, config_to_yaml(config))


def _presets() -> Path:
    """The folder of the shipped presets, ``utilgen/configs``."""
    return Path(str(resources.files("utilgen") / "configs"))


def preset_path(name: str) -> Path:
    """Path of a preset shipped in the package (``utilgen/configs/<name>.yaml``)."""
    return _presets() / f"{name}.yaml"


def preset_names() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in _presets().glob("*.yaml"))


def _preset_file(name: str) -> Path | None:
    """The shipped preset file ``name`` refers to; None when ``name`` is not a preset name
    (it has a folder or a YAML suffix) or no such preset is shipped."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.name != name:
        return None
    preset = preset_path(name)
    return preset if _is_file(preset) else None


def _preset_hint(name: str) -> str:
    """`` (did you mean preset 'x'?)`` for the preset closest to ``name``, or nothing."""
    close = difflib.get_close_matches(name, preset_names(), n=1)
    return f" (did you mean preset '{close[0]}'?)" if close else ""


def resolve_config(name_or_path: str, overrides: list[str] | None = None) -> RunConfig:
    """Load a config from a YAML path or, when no such file exists, a shipped preset name."""
    path = Path(name_or_path)
    if not _is_file(path) and path.suffix not in (".yaml", ".yml") and path.name == name_or_path:
        preset = _preset_file(name_or_path)
        if preset is None:
            raise ConfigError(
                one_line(
                    f"config {show(name_or_path)} is neither a file nor a preset"
                    f"{_preset_hint(name_or_path)}; presets: {', '.join(preset_names())}"
                )
            )
        path = preset
    return load_config(path, overrides)
