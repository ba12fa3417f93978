"""``generator.lm``, ``generator.text_prompt``, ``generator.text_filters`` and
``generator.perturbation``: text generation settings (U-DPO, GenDataAgent captions)."""

from __future__ import annotations

from pydantic import Field

from utilgen.config.section import Section


class CausalLMConfig(Section):
    """A transformers causal LM by hub id, local path or GGUF file."""

    model: str | None = Field(
        None, description="Hub id, local directory or .gguf file (None: bundled SmolLM2-135M)."
    )
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(160, ge=1, description="Tokens generated per text at most.")


class FewShotPromptConfig(Section):
    """U-DPO's class-conditional k-shot prompt."""

    shots: int = Field(2, ge=1, description="Real examples of the class shown in each prompt.")


class TextFilterConfig(Section):
    """Post-generation filters; every drop is recorded with its reason."""

    min_words: int = Field(8, ge=0, description="Drop texts with fewer words.")


class CaptionPerturbationConfig(Section):
    """GenDataAgent's LLM caption perturbation (rewrites the part after the comma)."""

    versions: int = Field(3, ge=1, description="Rewrites per caption (m).")
