"""``VLLMGenerator``: the causal LM generator on vLLM (GPU), same interface and outputs
contract as :class:`~utilgen.generate.causal_lm.CausalLMGenerator`.

Prompts are formatted and tokenised with the model's transformers tokenizer (same chat
template, same system prompt) and handed to vLLM as token ids; vLLM returns token ids,
decoded by that tokenizer, so cleaning and provenance are identical. Every output is its own
vLLM request with ``SamplingParams(seed=request.seed + i)``: output ``i`` is reproducible
from its seed. The random streams are vLLM's, so a seed gives different texts here than on
the transformers backend. A LoRA adapter is served with a ``LoRARequest``.

Untested in this repository's CI (no GPU, vLLM not installed); it needs ``pip install vllm``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from utilgen.config import CausalLMConfig, TextFilterConfig
from utilgen.errors import ModelNotFoundError
from utilgen.generate.causal_lm import CausalLMGenerator
from utilgen.generate.causal_lm_loading import _load, adapter_hash, resolve_model_source
from utilgen.generate.causal_lm_sampling import Completion, SamplingSettings


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise ModelNotFoundError(
            "generator.lm.backend=vllm needs the vllm package (CUDA GPU); install it with "
            "`pip install vllm` or set generator.lm.backend=transformers"
        ) from None
    return vllm


class VLLMGenerator(CausalLMGenerator):
    """A causal LM served by ``vllm.LLM``; see the module docstring.

    Args:
        llm: a ``vllm.LLM`` built with ``skip_tokenizer_init=True``.
        tokenizer: the model's transformers tokenizer.
        name: provenance name (model, plus ``+lora:<hash>`` with an adapter).
        lora: a ``vllm.lora.request.LoRARequest`` applied to every request, or None.
        Other arguments as for :class:`CausalLMGenerator`.
    """

    backend = "vllm"

    def __init__(
        self,
        llm: Any,
        tokenizer: Any,
        *,
        name: str,
        lora: Any = None,
        max_model_len: int | None = None,
        batch_size: int = 64,
        sampling: SamplingSettings | None = None,
        system_prompt: str | None = None,
        use_chat_template: bool | None = None,
        cleaning: TextFilterConfig | None = None,
    ) -> None:
        self.llm = llm
        self.lora = lora
        self.max_model_len = max_model_len
        # No transformers model: the engine holds the weights; prompts stay on the CPU.
        super().__init__(
            None,
            tokenizer,
            name=name,
            device="cpu",
            batch_size=batch_size,
            sampling=sampling,
            system_prompt=system_prompt,
            use_chat_template=use_chat_template,
            cleaning=cleaning,
        )

    @classmethod
    def from_config(  # type: ignore[override]
        cls,
        cfg: CausalLMConfig,
        *,
        device: torch.device,
        batch_size: int,
        cleaning: TextFilterConfig | None = None,
    ) -> VLLMGenerator:
        """A vLLM engine for ``cfg.model`` (GGUF files included) on the current GPU.

        Raises:
            ModelNotFoundError: vllm is missing, or the model / adapter is not on disk.
        """
        vllm = _import_vllm()
        from transformers import AutoTokenizer

        if device.type != "cuda":
            raise ModelNotFoundError(
                f"generator.lm.backend=vllm runs on CUDA GPUs, not {device}; set "
                "device to a GPU or generator.lm.backend=transformers"
            )
        source = resolve_model_source(cfg.model, cfg.gguf_file)
        tokenizer = _load(
            AutoTokenizer.from_pretrained,
            source,
            "tokenizer",
            trust_remote_code=cfg.trust_remote_code,
        )
        model_path = (
            f"{source.path}/{source.gguf_file}" if source.gguf_file is not None else source.path
        )
        llm = vllm.LLM(
            model=model_path,
            skip_tokenizer_init=True,
            trust_remote_code=cfg.trust_remote_code,
            dtype="auto" if cfg.dtype == "auto" else cfg.dtype,
            enable_lora=cfg.adapter is not None,
        )
        name, lora = source.name, None
        if cfg.adapter is not None:
            from vllm.lora.request import LoRARequest

            tag = f"lora:{adapter_hash(cfg.adapter)}"
            name = f"{name}+{tag}"
            lora = LoRARequest(tag, 1, cfg.adapter)
        return cls(
            llm,
            tokenizer,
            name=name,
            lora=lora,
            max_model_len=llm.llm_engine.model_config.max_model_len,
            batch_size=batch_size,
            sampling=SamplingSettings.from_config(cfg),
            system_prompt=cfg.system_prompt,
            use_chat_template=cfg.use_chat_template,
            cleaning=cleaning,
        )

    def _complete_batch(
        self, texts: Sequence[str], seeds: Sequence[int], settings: SamplingSettings
    ) -> list[Completion]:
        from vllm import SamplingParams

        prompts = [
            {"prompt_token_ids": self.tokenizer(t, add_special_tokens=not self.chat).input_ids}
            for t in texts
        ]
        params = [
            SamplingParams(
                temperature=settings.temperature,
                top_p=settings.top_p,
                top_k=settings.top_k if settings.top_k > 0 else -1,
                repetition_penalty=settings.repetition_penalty,
                max_tokens=settings.max_new_tokens,
                min_tokens=settings.min_new_tokens,
                stop_token_ids=self.eos_token_ids,
                seed=int(seed),
                detokenize=False,
            )
            for seed in seeds
        ]
        results = self.llm.generate(prompts, params, lora_request=self.lora, use_tqdm=False)
        out = []
        for result in results:
            ids = [t for t in result.outputs[0].token_ids if t not in self.eos_token_ids]
            out.append(
                Completion(
                    text=self.tokenizer.decode(ids, skip_special_tokens=True),
                    new_tokens=len(ids),
                    finished=result.outputs[0].finish_reason == "stop",
                )
            )
        return out
