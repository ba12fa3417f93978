"""Helpers of the kill/resume tests: tiny end-to-end configs, ``utilgen run`` in a subprocess
(optionally SIGKILLed at a fault point, see ``utilgen.faults``), and a comparison of two run
directories that ignores only wall-clock fields.

The configs are the smallest that still pass through every stage of the loop with real
parts: the scikit-learn digits (40 per class, 5-shot), a two-level built-in diffusion model
trained for a few steps (cached per test session, so only the first run trains it), 7
images per class per round (70 a round: two pool appends of at most 64, so a kill can land
between them), a top-k selection, 3 training epochs (a checkpoint each) and 2 rounds with
feedback between them. The text variant (``udpo``) runs U-DPO on BBC News with the same
shape: a two-layer Llama from config saved as a local model directory writes 15 texts per
class a round (75: again two appends), the bundled MiniLM classifier scores them, and DPO
trains a LoRA adapter on round 1's margin-ranked pairs before round 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "generate"))
from tiny_lm import tiny_llama

from utilgen.faults import ENV as FAULT_ENV
from utilgen.pool import verify_pool
from utilgen.pool.layout import blob_path, manifest_path
from utilgen.pool.sample import content_hash

PER_CLASS = 7
EPOCHS = 3
TIMEOUT_S = 600

_BASE: dict[str, Any] = {
    "seed": 0,
    "data": {"source": "digits", "k_shot": 5, "max_per_class": 40},
    "task": {"model": "small-cnn", "epochs": EPOCHS, "batch_size": 32},
    "generator": {
        "kind": "builtin-diffusion",
        "per_class": PER_CLASS,
        "builtin": {
            "block_out_channels": [8, 16],
            "norm_num_groups": 4,
            "steps": 3,
            "train_steps": 5,
            "adapt_steps": 2,
        },
    },
    "valuation": {
        "scores": ["marginal", "margin"],
        "selection": [{"rule": "top_k", "score": "marginal", "k": 3}],
    },
    "loop": {"rounds": 2},
}

FEEDBACK: dict[str, dict[str, Any]] = {
    # model level: Diffusion-DPO on round 1's marginal-ranked pairs, and the control arm
    "dpo": {
        "components": ["dpo"],
        "pairs": {"score": "marginal", "ratio": 0.5},
        "diffusion_dpo": {"steps": 3, "batch_size": 4},
        "control": True,
    },
    # instance level: round 2's requests carry optimised class embeddings and noise
    "instance": {
        "components": ["prompt_ascent", "noise_opt"],
        "prompt_ascent": {"steps": 2},
        "noise_opt": {"steps": 2, "inversion_fixed_point": 0},
    },
    # instance level: round 2 generates img2img around the hardest real digits
    "hard_samples": {"components": ["hard_samples"], "hard_samples": {"k": 2, "captions": False}},
}


TEXT_PER_CLASS = 15  # three 2-shot prompts of five texts per class
_TEXT: dict[str, Any] = {
    "seed": 0,
    "data": {"source": "bbc-news", "k_shot": 4, "max_per_class": 30},
    "task": {"model": "minilm", "head": "linear", "epochs": EPOCHS, "max_length": 64},
    "generator": {
        "kind": "causal-lm",
        "per_class": TEXT_PER_CLASS,
        "lm": {"max_new_tokens": 8},
        # the tiny model's word salad must survive the cleaning filters
        "text_filters": {"min_words": 0, "drop_exact_duplicates": False, "copy_ngram": 0},
    },
    "valuation": {"scores": ["margin"]},
    "feedback": {"components": ["dpo"], "pairs": {"score": "margin"}, "dpo": {"epochs": 1}},
    "loop": {"rounds": 2},
}


def _tiny_lm_dir(directory: Path) -> Path:
    """The tiny Llama and its tokenizer saved as a local model directory (once)."""
    model_dir = directory / "tiny-llama"
    if not (model_dir / "config.json").exists():
        model, tokenizer = tiny_llama()
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    return model_dir


def write_config(directory: Path, feedback: str, cache_dir: Path) -> Path:
    """Write the tiny config with feedback ``feedback`` (a key of FEEDBACK, or ``udpo``
    for the text variant) to ``directory/<feedback>.yaml``; returns its path."""
    if feedback == "udpo":
        config = json.loads(json.dumps(_TEXT))
        config["generator"]["lm"]["model"] = str(_tiny_lm_dir(directory))
    else:
        config = json.loads(json.dumps(_BASE))  # a deep copy
        config["generator"]["builtin"]["cache_dir"] = str(cache_dir)
        config["feedback"] = FEEDBACK[feedback]
    config["name"] = f"kill-resume-{feedback}"
    config["strategy"] = f"kill-resume-{feedback}"
    path = directory / f"{feedback}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@dataclass(frozen=True)
class Finished:
    """One ``utilgen run`` subprocess: its return code, output and wall time in seconds."""

    returncode: int
    output: str
    seconds: float


def run_utilgen(config: Path, out: Path, fault: str | None = None) -> Finished:
    """``python -m utilgen run CONFIG --out OUT`` in a subprocess, with ``UTILGEN_FAULT`` set
    to ``fault`` (or unset), offline and on one thread; the same environment otherwise."""
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    if fault is not None:
        env[FAULT_ENV] = fault
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "utilgen", "--quiet", "run", str(config), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    return Finished(done.returncode, done.stdout + done.stderr, time.perf_counter() - started)


def verify_command(run_dir: Path) -> Finished:
    """``python -m utilgen pool verify RUN`` in a subprocess."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "utilgen", "pool", "verify", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    return Finished(done.returncode, done.stdout + done.stderr, time.perf_counter() - started)


# -- comparing two run directories ------------------------------------------------------------


def _ignored(key: str) -> bool:
    # Wall time, and diffusers' note of the folder a model was loaded from (the generator
    # cache when it was warm, nothing when the run trained the generator itself).
    return key == "seconds" or key.endswith("_seconds") or key == "_name_or_path"


def without_wall_clock(value: Any) -> Any:
    """``value`` (parsed JSON) without the keys that may legitimately differ between two runs
    of one config: wall time (``seconds``, ``*_seconds``) and ``_name_or_path``."""
    if isinstance(value, dict):
        return {k: without_wall_clock(v) for k, v in value.items() if not _ignored(k)}
    if isinstance(value, list):
        return [without_wall_clock(v) for v in value]
    return value


def _is_temporary(path: Path) -> bool:
    # atomic.py's temp files (.NAME.XXXX.tmp), request_io's .partial, the generator cache's
    # and diffusers' .tmp-* directories
    name = path.name
    return name.endswith((".tmp", ".partial")) or ".tmp-" in name


def leftover_temporaries(run_dir: Path) -> list[str]:
    """Temp and partial files or directories under ``run_dir`` (relative paths)."""
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if _is_temporary(p))


def _layout(run_dir: Path) -> list[str]:
    """Every file under ``run_dir``, relative, TensorBoard event files named by their folder
    only (their names carry a timestamp, host name and pid)."""
    files = []
    for path in run_dir.rglob("*"):
        if not path.is_file():
            continue
        rel = path.relative_to(run_dir)
        if rel.name.startswith("events.out.tfevents."):
            rel = rel.parent / "events.out.tfevents"
        files.append(str(rel))
    return sorted(files)


def differences(reference: Path, resumed: Path) -> list[str]:
    """How ``resumed`` differs from ``reference`` (empty: the same run).

    Compared: the set of files; every JSON file except wall-clock fields (summary.json,
    metrics.json, result.json, feedback_effect.json, hard-sample plans, request lists);
    every Parquet file (the pool manifest: ids, row order, provenance, keep decisions,
    utilities; scores; pairs) in full; every safetensors file tensor for tensor, metadata
    included (task-model checkpoints, the DPO-tuned generator, optimised requests). Files
    with no meaning beyond these (plots, logs, the report) are only required to exist.
    """
    found: list[str] = []
    ref_files, new_files = _layout(reference), _layout(resumed)
    if ref_files != new_files:
        ref_count, new_count = Counter(ref_files), Counter(new_files)
        found.append(
            f"files more often in the reference: {sorted(ref_count - new_count)}; "
            f"more often in the resumed run: {sorted(new_count - ref_count)}"
        )
    for rel in sorted(set(ref_files) & set(new_files)):
        a, b = reference / rel, resumed / rel
        if rel.endswith(".json"):
            left = without_wall_clock(json.loads(a.read_text(encoding="utf-8")))
            right = without_wall_clock(json.loads(b.read_text(encoding="utf-8")))
            if left != right:
                found.append(f"{rel} differs: {_json_diff(left, right)}")
        elif rel.endswith(".parquet"):
            left_frame, right_frame = pd.read_parquet(a), pd.read_parquet(b)
            if not left_frame.equals(right_frame):
                found.append(f"{rel} differs: {_frame_diff(left_frame, right_frame)}")
        elif rel.endswith(".safetensors") and not _same_tensors(a, b):
            found.append(f"{rel} differs")
    return found


def _same_tensors(a: Path, b: Path) -> bool:
    # Not the bytes: safetensors writes the metadata map in a per-process hash order.
    with safe_open(str(a), "pt") as left, safe_open(str(b), "pt") as right:
        names = sorted(left.keys())
        return (
            left.metadata() == right.metadata()
            and names == sorted(right.keys())
            and all(torch.equal(left.get_tensor(k), right.get_tensor(k)) for k in names)
        )


def _json_diff(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _json_diff(a.get(key), b.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.') or '<root>'}: {a!r} != {b!r}"


def _frame_diff(a: pd.DataFrame, b: pd.DataFrame) -> str:
    if list(a.columns) != list(b.columns):
        return f"columns {list(a.columns)} != {list(b.columns)}"
    if len(a) != len(b):
        return f"{len(a)} rows != {len(b)} rows"
    for column in a.columns:
        if not a[column].equals(b[column]):
            return f"column {column!r}"
    return "dtypes"


def pool_damage(run_dir: Path) -> list[str]:
    """What is wrong with the pool (empty: intact and without garbage): a manifest row whose
    blob is missing or does not hash to its name (checked here, not only by ``verify``), and
    ``verify_pool``'s findings, unreferenced blobs and stale temp files included."""
    found = []
    for blob in sorted(set(pd.read_parquet(manifest_path(run_dir))["blob"])):
        path = blob_path(run_dir, blob)
        if not path.is_file():
            found.append(f"blob {blob} is missing")
        elif content_hash(path.read_bytes()) != blob:
            found.append(f"blob {blob} does not hash to its name")
    report = verify_pool(run_dir)
    if not report.ok:
        found.append(report.describe())
    if report.unreferenced_blobs:
        found.append(f"{report.unreferenced_blobs} unreferenced blob(s)")
    if report.stale_temp_files:
        found.append(f"{report.stale_temp_files} stale temp file(s) in the pool")
    return found
