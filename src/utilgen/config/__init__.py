"""The run configuration: one pydantic model tree, loaded from YAML, overridable from the CLI.

``RunConfig`` has one section per stage of the loop (``data``, ``task``, ``generator``,
``valuation``, ``feedback``, ``loop``), each in its own module here. Every field has a
default and a help text; unknown keys are rejected. :func:`load_config` turns every
validation failure into a one-line :class:`~utilgen.errors.ConfigError` naming the key, what
is allowed and, on a typo, the closest valid key.
"""

from utilgen.config.builtin_diffusion import BuiltinDiffusionConfig
from utilgen.config.data import DataConfig, DataSource
from utilgen.config.diffusion import DEFAULT_NEGATIVE_PROMPT, DiffusersConfig
from utilgen.config.feedback import (
    DiffusionDPOConfig,
    FeedbackConfig,
    LMDPOConfig,
    PreferencePairConfig,
)
from utilgen.config.generator import (
    GeneratorConfig,
    RealInitConfig,
)
from utilgen.config.instance import (
    HardSampleConfig,
    InstanceFeedbackConfig,
    NoiseOptimisationConfig,
    PromptAscentConfig,
)
from utilgen.config.load import (
    apply_overrides,
    config_from_dict,
    config_to_yaml,
    load_config,
    parse_override,
    preset_names,
    preset_path,
    resolve_config,
    save_config,
)
from utilgen.config.loop import LoopConfig
from utilgen.config.run import RunConfig
from utilgen.config.scale import RayConfig
from utilgen.config.section import Section
from utilgen.config.task import TaskConfig
from utilgen.config.text_generation import (
    CaptionPerturbationConfig,
    CausalLMConfig,
    FewShotPromptConfig,
    TextFilterConfig,
)
from utilgen.config.valuation import ScoreName, ValuationConfig

__all__ = [
    "DEFAULT_NEGATIVE_PROMPT",
    "BuiltinDiffusionConfig",
    "CaptionPerturbationConfig",
    "CausalLMConfig",
    "DataConfig",
    "DataSource",
    "DiffusersConfig",
    "DiffusionDPOConfig",
    "FeedbackConfig",
    "FewShotPromptConfig",
    "GeneratorConfig",
    "HardSampleConfig",
    "InstanceFeedbackConfig",
    "LMDPOConfig",
    "LoopConfig",
    "NoiseOptimisationConfig",
    "PreferencePairConfig",
    "PromptAscentConfig",
    "RayConfig",
    "RealInitConfig",
    "RunConfig",
    "ScoreName",
    "Section",
    "TaskConfig",
    "TextFilterConfig",
    "ValuationConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_yaml",
    "load_config",
    "parse_override",
    "preset_names",
    "preset_path",
    "resolve_config",
    "save_config",
]
