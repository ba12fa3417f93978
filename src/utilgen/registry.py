"""Registries: where utilgen finds generator kinds, task models and feedback components by name.

A config names its parts as strings (``generator.kind``, ``task.model``,
``feedback.components``); each string is looked up in one registry here, and the loop only
talks to what it finds there, through the part's protocol:

* :data:`GENERATOR_KINDS`: ``generator.kind`` -> a :class:`utilgen.generate.kinds.GeneratorKind`
  (builds the generator, makes the static strategy's requests, says which modality it makes);
* :data:`TASK_MODELS`: ``task.model`` -> a :class:`utilgen.task.kinds.TaskModelKind`
  (the modality it classifies, builds the classifier);
* :data:`FEEDBACK_COMPONENTS`: a name in ``feedback.components`` -> a
  :class:`utilgen.feedback.component.FeedbackComponent` (checks, round requests, generator
  updates between rounds, cost);
* :data:`DPO_TRAINERS`: ``generator.kind`` -> the
  :class:`utilgen.feedback.model_level.DPOTrainer` that fine-tunes that family on preference
  pairs for the ``dpo`` component (a generator kind without one cannot take ``dpo``).

Adding a part is one module plus one registration, from anywhere, before the config is
loaded::

    from utilgen.registry import FEEDBACK_COMPONENTS
    FEEDBACK_COMPONENTS.register("my_feedback", MyFeedback())

The built-in entries are registered below as ``"module:attribute"`` strings and imported on
first use: validating a config needs only the names, and a text run never imports the
diffusion stack. This module imports nothing of utilgen's above it (the registries are how
the lower layers reach the parts above them: by name, at run time).
"""

from __future__ import annotations

import difflib
from importlib import import_module
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from utilgen.errors import ConfigError

if TYPE_CHECKING:
    from utilgen.feedback.component import FeedbackComponent
    from utilgen.feedback.model_level import DPOTrainer
    from utilgen.generate.kinds import GeneratorKind
    from utilgen.task.kinds import TaskModelKind

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> parts of one kind, in registration order (the order the loop applies them
    where order matters, e.g. feedback components shaping the same requests)."""

    def __init__(self, key: str, what: str) -> None:
        """``key``: the config key whose values are names here (used in messages);
        ``what``: what one entry is, in words."""
        self.key = key
        self.what = what
        self._entries: dict[str, Any] = {}

    def register(self, name: str, entry: T | str, *, replace: bool = False) -> None:
        """Register ``entry`` under ``name``; a ``"module:attribute"`` string is imported
        on first use. Registering a taken name raises unless ``replace``."""
        if not name or not name.isprintable() or name.strip() != name or " " in name:
            raise ValueError(f"{self.what} name {name!r} must be one word without spaces")
        if name in self._entries and not replace:
            raise ValueError(
                f"{self.key} {name!r} is already registered; pass replace=True to replace it"
            )
        self._entries[name] = entry

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a no-op if it is not registered)."""
        self._entries.pop(name, None)

    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order."""
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def unknown(self, name: str, also: tuple[str, ...] = ()) -> str:
        """The one-line message for a name that is not registered (``also``: names the
        config accepts besides the registered ones, e.g. ``none``)."""
        valid = (*also, *self.names())
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown {self.key} {name!r}: {hint}valid: {', '.join(valid)}"

    def get(self, name: str) -> T:
        """The entry of ``name``, imported now if it was registered as a string.

        Raises:
            ConfigError: ``name`` is not registered.
        """
        if name not in self._entries:
            raise ConfigError(self.unknown(name))
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attribute = entry.partition(":")
            entry = getattr(import_module(module), attribute)
            self._entries[name] = entry
        found: T = entry
        return found

    def entries(self, names: list[str] | tuple[str, ...] | None = None) -> list[tuple[str, T]]:
        """``(name, entry)`` of ``names`` (default: all), in registration order, not in the
        order ``names`` lists them."""
        wanted = self.names() if names is None else names
        return [(n, self.get(n)) for n in self.names() if n in wanted]


GENERATOR_KINDS: Registry[GeneratorKind] = Registry("generator.kind", "generator kind")
GENERATOR_KINDS.register("builtin-diffusion", "utilgen.generate.kinds:BUILTIN_DIFFUSION")
GENERATOR_KINDS.register("diffusers", "utilgen.generate.kinds:DIFFUSERS")
GENERATOR_KINDS.register("causal-lm", "utilgen.generate.kinds:CAUSAL_LM")

TASK_MODELS: Registry[TaskModelKind] = Registry("task.model", "task model")
TASK_MODELS.register("small-cnn", "utilgen.task.kinds:SMALL_CNN")
TASK_MODELS.register("efficientnet-lite0", "utilgen.task.kinds:EFFICIENTNET_LITE0")
TASK_MODELS.register("hf-image", "utilgen.task.kinds:HF_IMAGE")
TASK_MODELS.register("minilm", "utilgen.task.kinds:MINILM")
TASK_MODELS.register("hf-text", "utilgen.task.kinds:HF_TEXT")

# Registration order is application order: hard_samples makes a round's requests,
# prompt_ascent then noise_opt optimise them (UtilGen's order), dpo trains between rounds.
FEEDBACK_COMPONENTS: Registry[FeedbackComponent] = Registry(
    "feedback component", "feedback component"
)
FEEDBACK_COMPONENTS.register("dpo", "utilgen.feedback.components.dpo:DPO")
FEEDBACK_COMPONENTS.register(
    "hard_samples", "utilgen.feedback.components.hard_samples:HARD_SAMPLES"
)
FEEDBACK_COMPONENTS.register("prompt_ascent", "utilgen.feedback.components.instance:PROMPT_ASCENT")
FEEDBACK_COMPONENTS.register("noise_opt", "utilgen.feedback.components.instance:NOISE_OPT")

DPO_TRAINERS: Registry[DPOTrainer] = Registry("generator.kind", "DPO trainer")
DPO_TRAINERS.register("causal-lm", "utilgen.feedback.model_level:LM_DPO")
DPO_TRAINERS.register("builtin-diffusion", "utilgen.feedback.model_level:BUILTIN_DIFFUSION_DPO")
DPO_TRAINERS.register("diffusers", "utilgen.feedback.model_level:DIFFUSERS_DPO")
