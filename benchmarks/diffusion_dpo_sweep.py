"""Offline sweep: Diffusion-DPO settings on a finished digits-dpo run's round-1 pairs.

    .venv/bin/python benchmarks/diffusion_dpo_sweep.py RUN base steps=200 steps=200,g=1.0

For each spec (comma-separated ``feedback.diffusion_dpo`` fields, ``pairs.<field>`` for
``feedback.pairs``, plus ``g=<guidance>`` for sampling and ``swap=1`` to swap preferred and
dispreferred images) the run's generator is trained from its base weights on round 1's pairs
(rebuilt from ``rounds/001/scores.parquet`` when a pair field is given), round 2's requests
are generated, and the mean marginal p(y|x) and label fidelity under the stage-1 classifier
are printed. Not a target benchmark: an instrument for the digits Diffusion-DPO investigation
(RESULTS.md).
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from utilgen.config import load_config
from utilgen.feedback.diffusion_dpo import train_builtin_diffusion_dpo
from utilgen.feedback.model_level import _image_pairs, scored_table
from utilgen.feedback.pairs import build_pairs, read_pairs
from utilgen.generate.factory import static_requests
from utilgen.loop.generation_round import stage1_judge
from utilgen.loop.run import build_model, prepare
from utilgen.pool import PoolStore
from utilgen.pool.payload import decode_image
from utilgen.progress import set_quiet


def main() -> int:
    set_quiet(True)
    torch.set_num_threads(1)
    run_dir = Path(sys.argv[1])
    cfg = load_config(run_dir / "config.yaml")
    prepared = prepare(cfg)
    generator: object = prepared.generator
    assert generator is not None
    judge, _ = stage1_judge(build_model(cfg, prepared.splits), run_dir / "rounds/000/checkpoints")
    store = PoolStore(run_dir)
    pairs = _image_pairs(store, read_pairs(run_dir / "rounds/001/pairs.parquet"))
    requests = static_requests(
        cfg.generator, splits=prepared.splits, seed=cfg.seed, round_index=2
    )
    gen: object = generator
    base_state = copy.deepcopy(gen.model.state_dict())  # type: ignore[attr-defined]
    for spec in sys.argv[2:]:
        fields = dict(x.split("=") for x in spec.split(",")) if spec != "base" else {}
        gen.model.load_state_dict(base_state)  # type: ignore[attr-defined]
        guidance = fields.pop("g", None)
        train = bool(fields)  # anything but the guidance scale trains
        use = pairs
        pair_fields = {k[6:]: fields.pop(k) for k in list(fields) if k.startswith("pairs.")}
        if pair_fields:
            base_pairs = cfg.feedback.pairs
            pair_cfg = base_pairs.model_validate({**base_pairs.model_dump(), **pair_fields})
            table = scored_table(store, run_dir, 1, pair_cfg.score)
            use = _image_pairs(store, build_pairs(table, pair_cfg, modality="image"))
        if fields.pop("swap", None):
            use = [dataclasses.replace(p, chosen=p.rejected, rejected=p.chosen) for p in use]
        started = time.time()
        if train:
            base = cfg.feedback.diffusion_dpo
            dpo = base.model_validate({**base.model_dump(), **fields})
            out = Path(tempfile.mkdtemp()) / "dpo"
            train_builtin_diffusion_dpo(gen, use, dpo, out_dir=out, seed=1)
        todo = requests
        if guidance is not None:
            todo = [dataclasses.replace(r, guidance_scale=float(guidance)) for r in requests]
        samples = list(gen.generate(todo, round_index=2, progress=False))  # type: ignore[attr-defined]
        labels = np.array([s.label for s in samples])
        probs = judge.predict_proba([decode_image(s.payload) for s in samples])
        marginal = probs[np.arange(len(labels)), labels]
        fidelity = float((probs.argmax(1) == labels).mean())
        print(
            f"{spec}: marginal {marginal.mean():.4f} fidelity {fidelity:.3f} pairs {len(use)} "
            f"({time.time() - started:.0f} s)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
