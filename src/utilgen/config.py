"""The run configuration: one pydantic model tree, loaded from YAML, overridable from the CLI.

``RunConfig`` has one section per stage of the loop (``data``, ``task``, ``generator``,
``valuation``, ``feedback``, ``loop``). Every field has a default and a help text; unknown
keys are rejected. :func:`load_config` turns every validation failure into a one-line
:class:`~utilgen.errors.ConfigError` naming the key, what is allowed and, on a typo, the
closest valid key.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from utilgen.atomic import write_text_atomic
from utilgen.errors import ConfigError

DataSource = Literal["digits", "bbc-news", "imagefolder", "hf-disk", "parquet", "csv", "jsonl"]
TaskModelName = Literal["auto", "small-cnn", "efficientnet-lite0", "hf-image", "minilm", "hf-text"]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class DataConfig(Section):
    """Where the real labelled data comes from and how it is split."""

    source: DataSource = Field(
        "digits",
        description="digits | bbc-news (bundled demos), imagefolder (DIR/<class>/<image>), "
        "hf-disk (a `datasets` dataset saved with save_to_disk), parquet, csv, jsonl.",
    )
    path: Path | None = Field(None, description="File or directory; required unless bundled.")
    text_column: str = Field("text", description="Column holding the text (csv/jsonl/parquet/hf).")
    image_column: str = Field("image", description="Column holding the image (parquet/hf).")
    label_column: str = Field("label", description="Column holding the class (name or index).")
    hf_split: str = Field(
        "train", description="Split to read when a hf-disk path is a DatasetDict."
    )
    val_fraction: float = Field(
        0.15, gt=0.0, lt=0.5, description="Share of each class for validation."
    )
    test_fraction: float = Field(0.2, gt=0.0, lt=0.5, description="Share of each class for test.")
    k_shot: int | None = Field(
        None, ge=1, description="Real training samples kept per class (None keeps all)."
    )
    max_per_class: int | None = Field(
        None, ge=1, description="Cap on samples read per class before splitting (None: all)."
    )

    @model_validator(mode="after")
    def _path_needed(self) -> DataConfig:
        if self.source not in ("digits", "bbc-news") and self.path is None:
            raise ValueError(f"data.path is required when data.source is {self.source!r}")
        if self.val_fraction + self.test_fraction >= 0.8:
            raise ValueError("data.val_fraction + data.test_fraction must be below 0.8")
        return self


class TaskConfig(Section):
    """The downstream classifier and how it is trained."""

    model: TaskModelName = Field(
        "auto",
        description="auto (small-cnn for images, minilm for text), small-cnn, efficientnet-lite0, "
        "hf-image (transformers image classifier), minilm (MiniLM embeddings + head), "
        "hf-text (transformers sequence classifier).",
    )
    model_path: str | None = Field(
        None, description="Hub id or local path for hf-image / hf-text (must be on disk offline)."
    )
    head: Literal["linear", "mlp"] = Field("linear", description="Head on frozen embeddings.")
    freeze_backbone: bool = Field(
        True, description="Train only the head of pretrained backbones (efficientnet, hf-*)."
    )
    image_size: int = Field(
        0, ge=0, description="Resize images to this side in pixels (0: the model's default)."
    )
    epochs: int = Field(30, ge=1, description="Training epochs; a checkpoint is saved after each.")
    batch_size: int = Field(64, ge=1, description="Mini-batch size.")
    lr: float = Field(1e-3, gt=0.0, description="Learning rate (AdamW).")
    weight_decay: float = Field(1e-4, ge=0.0, description="AdamW weight decay.")
    max_length: int = Field(256, ge=8, description="Token limit for text models.")
    trust_remote_code: bool = Field(
        False, description="Allow model code from the model's repository. Off: it runs code."
    )


class GeneratorConfig(Section):
    """Which generator makes synthetic samples (image generation and text generation issues)."""

    kind: Literal["none"] = Field(
        "none", description="none: real data only. Diffusion and LM generators arrive with them."
    )


class ValuationConfig(Section):
    """How sample utility is measured (valuation issue)."""

    scores: list[Literal["marginal", "margin", "entropy", "loss"]] = Field(
        default_factory=list, description="Utility scores computed each round."
    )


class FeedbackConfig(Section):
    """How utility is fed back into generation (feedback issues)."""

    components: list[str] = Field(
        default_factory=list, description="Feedback components switched on (none yet)."
    )

    @model_validator(mode="after")
    def _known(self) -> FeedbackConfig:
        if self.components:
            raise ValueError(
                f"feedback.components {self.components} are not available in this version; "
                "leave the list empty"
            )
        return self


class LoopConfig(Section):
    """The round engine."""

    rounds: int = Field(0, ge=0, description="Generation rounds after the real-only stage 1.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")

    @model_validator(mode="after")
    def _rounds_need_generator(self) -> LoopConfig:
        if self.rounds:
            raise ValueError("loop.rounds > 0 needs a generator; set loop.rounds=0 for now")
        return self


class RunConfig(Section):
    """A whole run: one section per stage of the loop."""

    name: str = Field("run", description="Free-form name shown in reports.")
    strategy: str = Field("real-only", description="Strategy preset this config implements.")
    seed: int = Field(0, ge=0, description="Fixes splits, generation and training on CPU.")
    data: DataConfig = Field(default_factory=DataConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    valuation: ValuationConfig = Field(default_factory=ValuationConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)


# ---------------------------------------------------------------------------------------
# Loading, overrides and one-line errors


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
