"""Model-level feedback (component ``dpo``): utility-ranked pairs fine-tune the generator.

Between round r and round r+1 (:func:`apply_model_feedback`):

1. the round's kept samples, ranked by ``feedback.pairs.score`` from its
   ``rounds/NNN/scores.parquet`` (and weighted by ``feedback.pairs.weight_score``'s gap),
   become preference pairs (``rounds/NNN/pairs.parquet``);
2. the generator is fine-tuned on them: U-DPO for a causal LM (a LoRA adapter, merged into
   the weights afterwards so that the next round's DPO starts from the updated policy as
   its reference), Diffusion-DPO for the built-in diffusion model or a diffusers pipeline;
3. everything is written to ``rounds/NNN/adapters/dpo/`` with ``result.json`` last.

A resumed run finds ``result.json`` and re-applies the saved adapter or weights instead of
training again (:func:`restore_model_feedback`), so the generator of round r+1 is the same
whether or not the run was interrupted. Every later sample names the adapter in its
``generator`` provenance (``...+lora:<hash>``, or the built-in model's new fingerprint).

The training itself is the generator family's :class:`DPOTrainer`, looked up by
``generator.kind`` in :data:`utilgen.registry.DPO_TRAINERS`; a generator kind without one
cannot take ``dpo`` feedback (the config says so when it validates).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
from PIL import Image

from utilgen.config import RunConfig
from utilgen.errors import UtilgenError
from utilgen.faults import fault_point
from utilgen.feedback.pairs import (
    WEIGHT_COLUMN,
    build_pairs,
    describe_pairs,
    read_pairs,
    write_pairs,
)
from utilgen.feedback.training_log import RESULT_FILE
from utilgen.generate import Generator
from utilgen.pool import PoolStore, RunLayout
from utilgen.pool.payload import decode_image, decode_text
from utilgen.registry import DPO_TRAINERS

log = logging.getLogger(__name__)


def scored_table(
    store: PoolStore, run_dir: Path, round_index: int, score: str, weight_score: str | None = None
) -> pd.DataFrame:
    """The round's scored samples: id, label, class_name, prompt, ``utility`` = ``score``
    (the ranking score) and, when ``weight_score`` names another score, ``weight_utility``
    = ``weight_score`` (the score whose gap weighs a pair)."""
    path = RunLayout(run_dir).round(round_index).scores
    if not path.exists():
        raise UtilgenError(
            f"feedback needs the scores of round {round_index} ({path} is missing); "
            "set valuation.scores"
        )
    scores = pd.read_parquet(path)
    wanted = {"score": score}
    if weight_score is not None and weight_score != score:
        wanted["weight_score"] = weight_score
    for key, name in wanted.items():
        if name not in scores.columns:
            raise UtilgenError(
                f"{path} has no {name!r} column (it has "
                f"{[c for c in scores.columns if c != 'id']}); set feedback.pairs.{key} to one "
                "of valuation.scores"
            )
    manifest = store.manifest().set_index("id")
    rows = manifest.loc[scores["id"], ["label", "class_name", "prompt"]].reset_index()
    rows["utility"] = scores[score].to_numpy()
    if "weight_score" in wanted:
        rows[WEIGHT_COLUMN] = scores[wanted["weight_score"]].to_numpy()
    return rows


def round_pairs(
    store: PoolStore, config: RunConfig, run_dir: Path, round_index: int
) -> pd.DataFrame:
    """Round ``round_index``'s preference pairs, built once and read back on resume."""
    path = RunLayout(run_dir).round(round_index).pairs
    if path.exists():
        return read_pairs(path)
    table = scored_table(
        store, run_dir, round_index, config.feedback.pairs.score, config.feedback.pairs.weight_score
    )
    modality = store.modality or "image"
    pairs = build_pairs(table, config.feedback.pairs, modality=modality)
    from accelerate import PartialState

    # Under `accelerate launch` every process builds the same pairs; one writes them.
    if PartialState().is_main_process:
        write_pairs(pairs, path)
    log.info(
        "round %d: %d preference pairs (%s; mean weight %.3f; %d with x+ below x- in the "
        "weight score)",
        round_index,
        len(pairs),
        describe_pairs(config.feedback.pairs),
        float(pairs["weight"].mean()),
        int((pairs["weight_gap"] < 0).sum()),
    )
    return pairs


def _payloads(store: PoolStore, ids: list[str]) -> dict[str, bytes]:
    return {s.id: s.payload for s in store.samples(sorted(set(ids)))}


def _text_pairs(store: PoolStore, pairs: pd.DataFrame) -> list[Any]:
    from utilgen.feedback.lm_dpo import TextPair

    payload = _payloads(store, [*pairs["chosen_id"], *pairs["rejected_id"]])
    return [
        TextPair(
            prompt=str(row.prompt),
            chosen=decode_text(payload[row.chosen_id]),
            rejected=decode_text(payload[row.rejected_id]),
            weight=float(row.weight),
            chosen_id=str(row.chosen_id),
            rejected_id=str(row.rejected_id),
        )
        for row in pairs.itertuples()
    ]


def _image_pairs(store: PoolStore, pairs: pd.DataFrame) -> list[Any]:
    from utilgen.feedback.diffusion_dpo import ImagePair

    payload = _payloads(store, [*pairs["chosen_id"], *pairs["rejected_id"]])

    def image(sample_id: str) -> Image.Image:
        pixels = decode_image(payload[sample_id])
        # grey images are stored (H, W, 1); PIL wants (H, W) for mode L
        return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)

    return [
        ImagePair(
            label=int(row.label),
            prompt=str(row.prompt),
            chosen=image(str(row.chosen_id)),
            rejected=image(str(row.rejected_id)),
            weight=float(row.weight),
            chosen_id=str(row.chosen_id),
            rejected_id=str(row.rejected_id),
        )
        for row in pairs.itertuples()
    ]


def _merge_lm_adapter(generator: Any, model: Any, tag: str) -> None:
    """Put the DPO-trained peft ``model`` into ``generator`` with its adapter merged, and add
    the adapter's tag to the generator's provenance name."""
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    merged.eval()
    generator.model = merged
    generator.name = f"{generator.name}+{tag}"


class DPOTrainer(Protocol):
    """Model-level feedback for one generator family: train on a round's pairs, restore."""

    def describe(self, config: RunConfig) -> str:
        """What one round's training does, for ``utilgen run --dry-run``."""
        ...

    def train(
        self,
        generator: Generator,
        store: PoolStore,
        pairs: pd.DataFrame,
        config: RunConfig,
        out: Path,
        seed: int,
    ) -> Generator:
        """Fine-tune ``generator`` on ``pairs``, save into ``out`` with ``result.json``
        last; returns the generator for the next round."""
        ...

    def restore(
        self, generator: Generator, config: RunConfig, out: Path, result: dict[str, Any]
    ) -> Generator:
        """Re-apply what :meth:`train` saved in ``out`` (``result``: its result.json)."""
        ...


class LMDPOTrainer:
    """U-DPO of a causal LM: a LoRA adapter (merged afterwards) or a full fine-tune."""

    def describe(self, config: RunConfig) -> str:
        lm, fb = config.feedback.dpo, config.feedback
        tuning = "LoRA adapter" if lm.lora else "full fine-tune"
        return (
            f"U-DPO ({tuning}), {lm.epochs} epoch(s) over the round's preference pairs, "
            f"{lm.batch_size} pair(s) a step x {lm.gradient_accumulation_steps} accumulation "
            f"(the pair count is known once the round is scored), "
            f"{describe_pairs(fb.pairs)}"
        )

    def train(
        self,
        generator: Generator,
        store: PoolStore,
        pairs: pd.DataFrame,
        config: RunConfig,
        out: Path,
        seed: int,
    ) -> Generator:
        from utilgen.feedback.lm_dpo import train_lm_dpo

        lm: Any = generator
        result = train_lm_dpo(
            lm.model,
            lm.tokenizer,
            _text_pairs(store, pairs),
            config.feedback.dpo,
            out_dir=out,
            seed=seed,
            format_prompt=lm.format_prompt,
        )
        _merge_lm_adapter(lm, result.model, result.tag)
        return generator

    def restore(
        self, generator: Generator, config: RunConfig, out: Path, result: dict[str, Any]
    ) -> Generator:
        lm: Any = generator
        if result.get("lora", True):
            from utilgen.generate.causal_lm_loading import load_adapter

            model, tag = load_adapter(lm.model, str(out / result["weights_dir"]), merge=False)
            _merge_lm_adapter(lm, model, tag)
            return generator
        # a full fine-tune saved the whole model: its weights replace the generator's
        from safetensors.torch import load_file

        state: dict[str, Any] = {}
        for shard in sorted((out / result["weights_dir"]).glob("*.safetensors")):
            state.update(load_file(str(shard)))
        loaded = lm.model.load_state_dict(state, strict=False)
        tied = bool(getattr(lm.model.config, "tie_word_embeddings", False))
        missing = [k for k in loaded.missing_keys if not (tied and k.endswith("lm_head.weight"))]
        if missing or loaded.unexpected_keys:
            raise UtilgenError(
                f"{out / result['weights_dir']} does not fit the generator's model (missing "
                f"{missing[:2]}, unexpected {loaded.unexpected_keys[:2]}); delete {out} to "
                "train the feedback again"
            )
        lm.model.eval()
        lm.name = f"{lm.name}+{result['tag']}"
        return generator


class DiffusionDPOTrainer:
    """Diffusion-DPO of a diffusion model's denoiser (:mod:`utilgen.feedback.diffusion_dpo`).

    ``builtin``: the built-in UNet (restored by loading the saved generator); otherwise a
    diffusers pipeline (restored by loading the saved LoRA)."""

    def __init__(self, *, builtin: bool) -> None:
        self.builtin = builtin

    def describe(self, config: RunConfig) -> str:
        d, fb = config.feedback.diffusion_dpo, config.feedback
        return (
            f"Diffusion-DPO ({d.method}), {d.steps} optimiser steps of {d.batch_size} "
            f"pair(s) x {d.gradient_accumulation_steps} accumulation, "
            f"{describe_pairs(fb.pairs)}"
        )

    def train(
        self,
        generator: Generator,
        store: PoolStore,
        pairs: pd.DataFrame,
        config: RunConfig,
        out: Path,
        seed: int,
    ) -> Generator:
        from utilgen.feedback import diffusion_dpo

        trainer = (
            diffusion_dpo.train_builtin_diffusion_dpo
            if self.builtin
            else diffusion_dpo.train_diffusers_dpo
        )
        trainer(
            generator,
            _image_pairs(store, pairs),
            config.feedback.diffusion_dpo,
            out_dir=out,
            seed=seed,
        )
        return generator

    def restore(
        self, generator: Generator, config: RunConfig, out: Path, result: dict[str, Any]
    ) -> Generator:
        if self.builtin:
            from utilgen.generate.builtin import BuiltinDiffusionGenerator

            builtin: Any = generator
            restored: Generator = BuiltinDiffusionGenerator.from_pretrained(
                out / "generator", device=builtin.device, batch_size=builtin.batch_size
            )
            return restored
        diffusers: Any = generator
        diffusers.load_lora(out / str(result.get("lora_file", "lora")))
        return generator


LM_DPO = LMDPOTrainer()
BUILTIN_DIFFUSION_DPO = DiffusionDPOTrainer(builtin=True)
DIFFUSERS_DPO = DiffusionDPOTrainer(builtin=False)


def apply_model_feedback(
    generator: Generator, store: PoolStore, config: RunConfig, run_dir: Path, round_index: int
) -> Generator:
    """Fine-tune ``generator`` on round ``round_index``'s preference pairs (or, when the run
    directory already holds the result, restore it); returns the generator for the next
    round (the same object, updated, except for the built-in generator on resume). The
    trainer is the generator kind's entry in :data:`utilgen.registry.DPO_TRAINERS`."""
    out = RunLayout(run_dir).round(round_index).dpo_adapter
    if (out / RESULT_FILE).exists():
        return restore_model_feedback(generator, config, run_dir, round_index)
    pairs = round_pairs(store, config, run_dir, round_index)
    fault_point("feedback.pairs")
    trainer = DPO_TRAINERS.get(config.generator.kind)
    return trainer.train(generator, store, pairs, config, out, config.seed + round_index)


def restore_model_feedback(
    generator: Generator, config: RunConfig, run_dir: Path, round_index: int
) -> Generator:
    """Re-apply what round ``round_index``'s feedback saved (a resumed run)."""
    out = RunLayout(run_dir).round(round_index).dpo_adapter
    result = json.loads((out / RESULT_FILE).read_text(encoding="utf-8"))
    log.info("round %d: restoring the DPO feedback saved in %s", round_index, out)
    return DPO_TRAINERS.get(config.generator.kind).restore(generator, config, out, result)
