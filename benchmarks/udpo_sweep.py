"""Offline sweep: U-DPO settings on a finished round 1 of a text run (bbc-news-udpo).

    .venv/bin/python benchmarks/udpo_sweep.py RUN OUT base sft_weight=1.0 \\
        learning_rate=1e-4,pairs.scheme=top-bottom

For each spec (comma-separated ``feedback.dpo`` fields, and ``pairs.<field>`` for
``feedback.pairs``; ``base`` trains nothing) the run's LM is trained from its base weights on
round 1's pairs (rebuilt from ``rounds/001/scores.parquet`` when a pair field is given), round
2's requests are generated, the text filters applied, and the kept texts scored under the
stage-1 classifier. Printed per spec: mean margin and similarity of round 2 with the one-sided
Mann-Whitney p against round 1 (the loop's test) and against ``base`` (same prompts and seeds,
when ``base`` ran first), and label fidelity. Texts go to ``OUT/<spec>.jsonl``. Not a target
benchmark: an instrument for the U-DPO investigation (RESULTS.md).
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from utilgen.config import load_config
from utilgen.data import LabelledData
from utilgen.feedback.lm_dpo import train_lm_dpo
from utilgen.feedback.model_level import _merge_lm_adapter, _text_pairs, scored_table
from utilgen.feedback.pairs import build_pairs
from utilgen.generate.factory import static_requests
from utilgen.generate.text_filters import filter_texts
from utilgen.loop.generation_round import stage1_judge
from utilgen.loop.run import build_model, prepare
from utilgen.pool import PoolStore
from utilgen.pool.payload import decode_text
from utilgen.progress import set_quiet
from utilgen.report.feedback_effect import mann_whitney_greater
from utilgen.value import score_samples


def _spec_fields(spec: str) -> tuple[dict[str, str], dict[str, str]]:
    if spec == "base":
        return {}, {}
    fields = dict(x.split("=", 1) for x in spec.split(","))
    pairs = {k.removeprefix("pairs."): v for k, v in fields.items() if k.startswith("pairs.")}
    dpo = {k: v for k, v in fields.items() if not k.startswith("pairs.")}
    return dpo, pairs


def main() -> int:
    set_quiet(True)
    run_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = load_config(run_dir / "config.yaml")
    prepared = prepare(cfg)
    lm: Any = prepared.generator
    assert lm is not None
    splits = prepared.splits
    judge, checkpoints = stage1_judge(
        build_model(cfg, prepared.splits), run_dir / "rounds/000/checkpoints"
    )
    store = PoolStore(run_dir)
    round1 = pd.read_parquet(run_dir / "rounds/001/scores.parquet")
    requests = static_requests(cfg.generator, splits=splits, seed=cfg.seed, round_index=2)
    base_model = copy.deepcopy(lm.model)
    base_name = lm.name
    real_texts = [str(t) for t in splits.train.items]
    valuation = cfg.valuation.model_copy(update={"scores": ["similarity", "margin"]})
    base_scores: pd.DataFrame | None = None
    print(
        f"round1: margin {round1['margin'].mean():.4f} similarity "
        f"{round1['similarity'].mean():.4f} n {len(round1)}",
        flush=True,
    )
    for spec in sys.argv[3:]:
        started = time.time()
        lm.model, lm.name = copy.deepcopy(base_model), base_name
        dpo_fields, pair_fields = _spec_fields(spec)
        note = ""
        if spec != "base":
            pair_cfg = cfg.feedback.pairs.model_validate(
                {**cfg.feedback.pairs.model_dump(), **pair_fields}
            )
            table = scored_table(store, run_dir, 1, pair_cfg.score)
            pairs = build_pairs(table, pair_cfg, modality="text")
            dpo_cfg = cfg.feedback.dpo.model_validate(
                {**cfg.feedback.dpo.model_dump(), **dpo_fields}
            )
            torch.manual_seed(0)
            result = train_lm_dpo(
                lm.model,
                lm.tokenizer,
                _text_pairs(store, pairs),
                dpo_cfg,
                out_dir=out_dir / f"{spec}.dpo",
                seed=cfg.seed + 1,
                format_prompt=lm.format_prompt,
            )
            _merge_lm_adapter(lm, result.model, result.tag)
            last = result.history[-1]
            note = (
                f" pairs {len(pairs)} w {pairs['weight'].mean():.3f} reward_margin "
                f"{last['rewards/margins']:.2f} nll {last['nll/chosen']:.3f}"
            )
        trained = time.time()
        samples = list(lm.generate(requests, round_index=2, progress=False))
        decided = filter_texts(samples, real_texts, cfg.generator.text_filters)
        kept = [s for s in decided if s.kept]
        texts = [decode_text(s.payload) for s in samples]
        labels = np.array([s.label for s in samples])
        fidelity = float((judge.predict_proba(texts).argmax(1) == labels).mean())
        data = LabelledData(
            modality="text",
            items=tuple(decode_text(s.payload) for s in kept),
            labels=np.array([s.label for s in kept]),
            class_names=splits.train.class_names,
            ids=tuple(s.id for s in kept),
        )
        scores = score_samples(
            valuation, judge, data, checkpoints=checkpoints, real_train=splits.train, seed=cfg.seed
        )
        if spec == "base":
            base_scores = scores
        _, p1 = mann_whitney_greater(scores["margin"].to_numpy(), round1["margin"].to_numpy())
        pb = float("nan")
        if base_scores is not None and spec != "base":
            _, pb = mann_whitney_greater(
                scores["margin"].to_numpy(), base_scores["margin"].to_numpy()
            )
        with open(out_dir / f"{spec}.jsonl", "w", encoding="utf-8") as f:
            for s, text, d in zip(samples, texts, decided, strict=True):
                row = scores.loc[scores["id"] == s.id]
                f.write(
                    json.dumps(
                        {
                            "label": int(s.label),
                            "kept": d.kept,
                            "margin": float(row["margin"].iloc[0]) if len(row) else None,
                            "text": text,
                        }
                    )
                    + "\n"
                )
        print(
            f"{spec}: margin {scores['margin'].mean():.4f} (p vs r1 {p1:.3f}, vs base {pb:.3f}) "
            f"similarity {scores['similarity'].mean():.4f} fidelity {fidelity:.3f} kept "
            f"{len(kept)}/{len(samples)}{note} (train {trained - started:.0f} s, generate "
            f"{time.time() - trained:.0f} s)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
