"""``CausalLMGenerator``: class-conditional texts from a transformers causal LM (U-DPO).

Any ``AutoModelForCausalLM`` checkpoint works: a hub id already in the local cache, a local
directory, or a ``.gguf`` file (dequantised by transformers); the default is the bundled
SmolLM2-135M-Instruct GGUF (docs/assets.md). A peft LoRA adapter can be loaded on top; its
hash goes into every sample's ``generator`` string. Loading and naming models and adapters
is :mod:`utilgen.generate.causal_lm_loading`; the sampling settings and the per-row draw are
:mod:`utilgen.generate.causal_lm_sampling`.

Prompts are wrapped in the tokenizer's chat template when it has one (the request's prompt
is the user message, with an optional system message), left-padded into batches, and only
the new tokens are decoded.

Sampling and seeds. ``model.generate`` samples with one global random stream, so what a row
draws depends on which other rows share its batch. Here every output has its own
``torch.Generator`` seeded with ``request.seed + i``: at each step one uniform number from it
picks the next token by inverse CDF from ``softmax(scores)`` (after temperature, top-k and
top-p, the same transformers warpers ``generate`` uses), and ``generate`` runs in greedy
mode around that draw (:class:`~utilgen.generate.causal_lm_sampling.PerRowSampling`). So
output ``i`` of a request is reproducible from its seed alone and the same whichever batch,
batch size or position it runs in, up to float noise in the logits of a padded batch (which
can only change a draw whose uniform number falls within that noise of a token boundary).
Greedy decoding (``temperature=0``) is batch-invariant in the same sense.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig

from utilgen.config import CausalLMConfig, TextFilterConfig
from utilgen.data.labelled import Modality
from utilgen.errors import first_line
from utilgen.generate.base import make_sample
from utilgen.generate.causal_lm_loading import load_causal_lm, model_name
from utilgen.generate.causal_lm_sampling import Completion, SamplingSettings, sampling_processors
from utilgen.generate.request import GenerationError, GenerationRequest
from utilgen.generate.text_filters import clean_text
from utilgen.pool.payload import encode_text
from utilgen.pool.sample import Sample
from utilgen.progress import progress_or_nothing

if TYPE_CHECKING:
    from utilgen.generate.vllm_backend import VLLMGenerator


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    generation_config = getattr(model, "generation_config", None)
    for value in (tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is not None and int(item) not in ids:
                ids.append(int(item))
    if not ids:
        raise GenerationError(
            "the tokenizer has no end-of-text token; use a causal LM checkpoint with eos_token"
        )
    return ids


class CausalLMGenerator:
    """A causal LM behind the :class:`~utilgen.generate.base.Generator` protocol.

    Args:
        model: a transformers causal LM (or a peft model around one), in eval mode.
        tokenizer: its tokenizer; a missing pad token is set to the end-of-text token.
        name: provenance name (default:
            :func:`~utilgen.generate.causal_lm_loading.model_name`).
        device: where it runs (default: the model's device).
        batch_size: rows (prompt x output) per ``generate`` call.
        sampling: temperature, top-p, top-k, repetition penalty, token limits.
        system_prompt: system message for chat templates (None: the template's default).
        use_chat_template: None: when the tokenizer has one; True: required; False: never.
        cleaning: settings of :func:`~utilgen.generate.text_filters.clean_text`, applied to
            every text before its sample is made (None: the defaults).
    """

    modality: Modality = "text"
    backend = "transformers"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str | None = None,
        device: torch.device | str | None = None,
        batch_size: int = 8,
        sampling: SamplingSettings | None = None,
        system_prompt: str | None = None,
        use_chat_template: bool | None = None,
        cleaning: TextFilterConfig | None = None,
    ) -> None:
        if batch_size < 1:
            raise GenerationError(f"batch_size must be >= 1, got {batch_size}")
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if use_chat_template and not has_template:
            raise GenerationError(
                "generator.lm.use_chat_template=true but the tokenizer has no chat template; "
                "set it to false or null"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.device = (
            torch.device(device) if device is not None else next(model.parameters()).device
        )
        self.batch_size = batch_size
        self.sampling = sampling or SamplingSettings()
        self.system_prompt = system_prompt
        self.chat = has_template if use_chat_template is None else use_chat_template
        self.cleaning = cleaning or TextFilterConfig()
        self.eos_token_ids = _eos_ids(model, tokenizer)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(self.eos_token_ids[0])
        self.name = name or model_name(model)

    @classmethod
    def from_config(
        cls,
        cfg: CausalLMConfig,
        *,
        device: torch.device,
        batch_size: int,
        seed: int,
        cleaning: TextFilterConfig | None = None,
    ) -> CausalLMGenerator | VLLMGenerator:
        """The generator of ``cfg`` (the vLLM one when ``cfg.backend == "vllm"``).

        ``seed`` is the run seed; every request carries its own seed (derived from it by
        the policy), so generation reads only those and ``seed`` is not used here.

        Raises:
            ModelNotFoundError: the model, GGUF file or adapter is not on disk.
        """
        del seed  # requests carry their own seeds
        if cfg.backend == "vllm":
            from utilgen.generate.vllm_backend import VLLMGenerator

            return VLLMGenerator.from_config(
                cfg, device=device, batch_size=batch_size, cleaning=cleaning
            )
        model, tokenizer, name = load_causal_lm(cfg, device)
        return cls(
            model,
            tokenizer,
            name=name,
            device=device,
            batch_size=batch_size,
            sampling=SamplingSettings.from_config(cfg),
            system_prompt=cfg.system_prompt,
            use_chat_template=cfg.use_chat_template,
            cleaning=cleaning,
        )

    # prompts ---------------------------------------------------------------------------

    def format_prompt(self, prompt: str, system_prompt: str | None = None) -> str:
        """The model input for ``prompt``: the chat template with the prompt as the user
        message (and ``system_prompt``, else the generator's, as the system message), or
        the raw prompt after the system prompt when there is no template."""
        system = system_prompt if system_prompt is not None else self.system_prompt
        if not self.chat:
            return f"{system}\n\n{prompt}" if system else prompt
        messages = [{"role": "user", "content": prompt}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception as err:  # jinja raises its own TemplateError
            raise GenerationError(
                f"the chat template of {self.name} rejects these messages ({first_line(err)}); "
                "unset generator.lm.system_prompt or set generator.lm.use_chat_template=false"
            ) from None
        return str(text)

    def _encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        # Chat templates write their own BOS; raw prompts get the tokenizer's specials.
        enc = self.tokenizer(
            list(texts),
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=not self.chat,
        )
        keep = ("input_ids", "attention_mask")
        return {k: v.to(self.device) for k, v in enc.items() if k in keep}

    # generation ------------------------------------------------------------------------

    def _generation_config(self, settings: SamplingSettings) -> GenerationConfig:
        # Greedy mode always: sampling happens in PerRowSampling. The sampling fields
        # are set here so that the checkpoint's generation_config.json cannot switch on one
        # the user did not ask for; its hard constraints (suppressed tokens, forced tokens)
        # still apply, as they do in a plain ``generate`` call.
        return GenerationConfig(
            do_sample=False,
            num_beams=1,
            max_new_tokens=settings.max_new_tokens,
            min_new_tokens=settings.min_new_tokens,
            repetition_penalty=settings.repetition_penalty,
            no_repeat_ngram_size=0,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.tokenizer.pad_token_id,
        )

    @torch.inference_mode()
    def _complete_batch(
        self, texts: Sequence[str], seeds: Sequence[int], settings: SamplingSettings
    ) -> list[Completion]:
        enc = self._encode(texts)
        prompt_len = enc["input_ids"].shape[1]
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and prompt_len + settings.max_new_tokens > limit:
            raise GenerationError(
                f"a prompt of {prompt_len} tokens plus max_new_tokens={settings.max_new_tokens} "
                f"exceeds the context of {self.name} ({limit} tokens); shorten the prompt "
                "(generator.text_prompt.max_example_words) or lower generator.lm.max_new_tokens"
            )
        # A model fresh from a training step (DPO feedback) may be in train mode: generate
        # without dropout, then hand it back as it was.
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(
                **enc,
                generation_config=self._generation_config(settings),
                logits_processor=sampling_processors(settings, seeds, self.device),
            )
        finally:
            self.model.train(was_training)
        new = out[:, prompt_len:].cpu()
        eos = torch.isin(new, torch.tensor(self.eos_token_ids))
        completions = []
        for row in range(new.shape[0]):
            hits = torch.nonzero(eos[row])
            n = int(hits[0, 0]) if len(hits) else int(new.shape[1])
            text = self.tokenizer.decode(new[row, :n], skip_special_tokens=True)
            completions.append(Completion(text=text, new_tokens=n, finished=bool(len(hits))))
        return completions

    def complete(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        *,
        system_prompt: str | None = None,
        sampling: SamplingSettings | None = None,
        progress: bool = False,
    ) -> list[Completion]:
        """One completion per (prompt, seed) pair, in order, batched by ``batch_size``.

        ``system_prompt`` and ``sampling`` override the generator's own for this call.
        """
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        settings = sampling or self.sampling
        texts = [self.format_prompt(p, system_prompt) for p in prompts]
        out: list[Completion] = []
        bar = progress_or_nothing(f"generating texts ({self.name})", len(texts), progress)
        with bar as advance:
            for start in range(0, len(texts), self.batch_size):
                part = slice(start, start + self.batch_size)
                out += self._complete_batch(texts[part], seeds[part], settings)
                advance(len(texts[part]))
        return out

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        round_index: int = 1,
        progress: bool = True,
    ) -> Iterator[Sample]:
        """``request.num_outputs`` text samples per request, in request order; output ``i``
        is sampled with seed ``request.seed + i`` and cleaned with :func:`clean_text`."""
        for request in requests:
            if not request.prompt.strip():
                raise GenerationError(
                    f"a text request for class {request.class_name!r} has an empty prompt; "
                    "build requests with utilgen.generate.fewshot.fewshot_requests"
                )
        rows = [(r, i) for r in requests for i in range(r.num_outputs)]
        texts = {id(r): self.format_prompt(r.prompt) for r in requests}
        bar = progress_or_nothing(f"generating texts ({self.name})", len(rows), progress)
        with bar as advance:
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start : start + self.batch_size]
                completions = self._complete_batch(
                    [texts[id(r)] for r, _ in batch], [r.seed + i for r, i in batch], self.sampling
                )
                for (request, i), completion in zip(batch, completions, strict=True):
                    yield self._sample(request, i, completion, round_index)
                advance(len(batch))

    def _sample(
        self, request: GenerationRequest, index: int, completion: Completion, round_index: int
    ) -> Sample:
        text = clean_text(completion.text, self.cleaning, truncated=not completion.finished)
        details: dict[str, Any] = {
            "backend": self.backend,
            "model": self.name,
            # The name carries the adapter after a "+" (e.g. "+lora:3f2a9c01b2d4").
            "adapter": self.name.split("+", 1)[1] if "+" in self.name else "",
            **self.sampling.as_details(),
            "sampling": "greedy" if self.sampling.temperature == 0 else "seeded per output",
            "chat_template": self.chat,
            "system_prompt": self.system_prompt,
            "new_tokens": completion.new_tokens,
            "finished": completion.finished,
            "shot_ids": list(request.metadata.get("shot_ids", [])),
        }
        if text != completion.text:
            details["raw_text"] = completion.text
        return make_sample(
            request,
            index,
            encode_text(text),
            modality="text",
            generator=self.name,
            round_index=round_index,
            guidance=None,
            steps=completion.new_tokens,
            details=details,
        )
