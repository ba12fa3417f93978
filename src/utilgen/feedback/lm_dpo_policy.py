"""The policy U-DPO trains and its reference (:mod:`utilgen.feedback.lm_dpo`, step 3 of its
docstring): a fresh peft LoRA whose reference is the same model with the adapter switched
off, a saved adapter trained on against a frozen copy of itself (adapter ``ref``, as TRL
does), or every weight against a frozen deep copy."""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from utilgen.config.feedback import LMDPOConfig
from utilgen.feedback.errors import FeedbackError

log = logging.getLogger(__name__)

TRAIN_ADAPTER = "default"
REF_ADAPTER = "ref"


def is_peft(model: Any) -> bool:
    """Whether ``model`` is a peft model (a base model with adapters)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def check_adapter_dir(adapter: str | None) -> Path | None:
    """``cfg.adapter`` as a path, checked to hold a peft adapter (None when unset).

    Raises:
        FeedbackError: the directory holds no ``adapter_config.json``.
    """
    if adapter is None:
        return None
    root = Path(adapter).expanduser()
    if not (root / "adapter_config.json").is_file():
        raise FeedbackError(
            f"feedback.dpo.adapter {adapter!r} holds no adapter_config.json; pass a directory "
            "written by a peft model's save_pretrained, or unset it to train a fresh LoRA"
        )
    return root


def prepare_policy(model: Any, cfg: LMDPOConfig, adapter: Path | None = None) -> tuple[Any, Any]:
    """The model to train and its separate reference model (None when the reference is the
    same peft model with its adapter off or switched to ``ref``).

    * ``cfg.lora`` without ``adapter``: a fresh peft LoRA (``lora_r``, ``lora_alpha``,
      ``lora_dropout``, ``lora_target_modules``) wraps ``model`` in place;
    * with ``adapter``: that adapter, trainable, plus a frozen copy ``ref`` as the reference;
    * ``cfg.lora`` false: every weight trains against a frozen deep copy.

    A peft model passed in has its adapter merged first (it is the starting policy).
    Seed torch before calling: LoRA's A matrices are drawn from the global generator.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if is_peft(model):
        log.info("merging the adapter the LM carries into its weights before DPO")
        model = model.merge_and_unload()
    if adapter is not None:
        policy = PeftModel.from_pretrained(
            model, str(adapter), adapter_name=TRAIN_ADAPTER, is_trainable=True
        )
        policy.load_adapter(str(adapter), adapter_name=REF_ADAPTER, is_trainable=False)
        policy.set_adapter(TRAIN_ADAPTER)
        return policy, None
    if cfg.lora:
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target_modules,
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, lora), None
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    return model.requires_grad_(True), reference


def unwrapped_model(model: Any) -> Any:
    """The transformers model under DDP wrappers and a peft model."""
    while hasattr(model, "module"):  # DistributedDataParallel and friends
        model = model.module
    return model.get_base_model() if is_peft(model) else model


def supports_logits_to_keep(model: Any) -> bool:
    """Whether the transformers model under ``model`` takes ``logits_to_keep``."""
    forward = type(unwrapped_model(model)).forward
    return "logits_to_keep" in inspect.signature(forward).parameters


@contextlib.contextmanager
def reference_mode(peft_model: Any) -> Iterator[None]:
    """Inside: ``peft_model`` computes the reference (adapter ``ref`` active, or the adapter
    switched off), in eval mode; restored afterwards."""
    was_training = peft_model.training
    peft_model.eval()
    try:
        if REF_ADAPTER in peft_model.peft_config:
            peft_model.set_adapter(REF_ADAPTER)
            try:
                yield
            finally:
                # set_adapter makes the named adapter trainable and freezes the others.
                peft_model.set_adapter(TRAIN_ADAPTER)
        else:
            with peft_model.disable_adapter():
                yield
    finally:
        peft_model.train(was_training)
