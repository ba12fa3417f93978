"""Does a refactor change what a run produces? ``utilgen run`` of a few presets at small
budgets, once with the code of ``--before`` and once with ``--after``, compared.

Each revision is checked out in its own git worktree and run as
``python -m utilgen run PRESET`` with that worktree's ``src`` first on ``PYTHONPATH``
(the virtual environment's editable install is a plain path entry, which PYTHONPATH
precedes), in the same virtual environment, on the same machine and thread count, each with
its own empty generator cache. On one machine with the same threads a run is bit-for-bit
repeatable, so the manifests (every row: id, blob digest, provenance, kept, reason,
utilities) and the ``summary.json`` files must be equal, not merely close.

Presets (issue 28's acceptance): ``digits-static``, ``digits-utilgen`` and
``bbc-news-static``, with the small budgets below (a tiny built-in generator, a few epochs,
few samples and optimisation steps).

Prints one ``<preset>_manifest=same|differs`` and ``<preset>_summary=same|differs`` pair
per preset, then ``unchanged=yes|no`` last; exits 1 when anything differs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

SMALL_DIGITS = [
    "task.epochs=3",
    "generator.builtin.block_out_channels=[8,16]",
    "generator.builtin.norm_num_groups=4",
    "generator.builtin.train_steps=20",
    "generator.builtin.adapt_steps=5",
    "generator.builtin.steps=3",
    "generator.per_class=4",
]
PRESETS: dict[str, list[str]] = {
    "digits-static": SMALL_DIGITS,
    "digits-utilgen": [
        *SMALL_DIGITS,
        "valuation.selection=[{rule: top_k, score: meta_weight, k: 2}]",
        "feedback.diffusion_dpo.steps=3",
        "feedback.prompt_ascent.steps=1",
        "feedback.noise_opt.steps=1",
        "feedback.noise_opt.inversion_fixed_point=1",
    ],
    # Beyond the acceptance's three (pass --presets): hard-sample img2img, the one built-in
    # component that makes a round's requests itself.
    "digits-gendataagent": [*SMALL_DIGITS, "loop.rounds=2", "feedback.hard_samples.k=2"],
    "bbc-news-static": [
        "task.epochs=3",
        "data.max_per_class=30",
        "data.k_shot=4",
        "generator.per_class=2",
        "generator.lm.max_new_tokens=24",
    ],
}


def worktree(repo: Path, rev: str, where: Path) -> Path:
    """A detached checkout of ``rev`` at ``where`` (reused when it is already there)."""
    if not (where / "src" / "utilgen").is_dir():
        subprocess.run(
            ["git", "-C", str(repo), "worktree", "add", "--detach", str(where), rev],
            check=True,
            capture_output=True,
        )
    return where


def run_preset(src: Path, preset: str, sets: list[str], out: Path, cache: Path) -> None:
    """``utilgen run`` with the code under ``src``; skipped when ``out`` has finished."""
    if (out / "summary.json").is_file():
        return
    env = {
        **os.environ,
        "PYTHONPATH": str(src),
        "UTILGEN_CACHE_DIR": str(cache),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    args = [sys.executable, "-m", "utilgen", "--quiet", "run", preset, "--out", str(out)]
    args += ["--no-report", *[a for s in sets for a in ("--set", s)]]
    # the runs' tables go to stderr: the headline is the last line of stdout
    subprocess.run(args, check=True, env=env, cwd=src.parent, stdout=sys.stderr)


def manifest(run_dir: Path) -> pd.DataFrame:
    """The run's manifest, rows by id, columns by name (row order is append order, which
    may legitimately differ between two correct runs only in that)."""
    frame = pd.read_parquet(run_dir / "pool" / "manifest.parquet")
    frame = frame.sort_values("id").reset_index(drop=True)
    return frame[sorted(frame.columns)]


def same_manifest(a: Path, b: Path) -> bool:
    left, right = manifest(a), manifest(b)
    if list(left.columns) != list(right.columns) or len(left) != len(right):
        return False
    return bool(left.equals(right))


def same_summary(a: Path, b: Path) -> bool:
    def read(run_dir: Path) -> dict[str, object]:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        summary.pop("utilgen_version", None)  # a worktree may report another version string
        return dict(summary)

    return read(a) == read(b)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision of the old code")
    parser.add_argument("--after", default="HEAD", help="git revision of the new code")
    parser.add_argument("--out", type=Path, default=Path("/tmp/utilgen-behaviour"))
    parser.add_argument(
        "--presets", nargs="*", default=["digits-static", "digits-utilgen", "bbc-news-static"]
    )
    args = parser.parse_args()
    args.out = args.out.resolve()
    repo = Path(__file__).resolve().parents[1]
    figures: list[str] = []
    unchanged = True
    runs: dict[str, Path] = {}
    for label in ("before", "after"):
        rev = getattr(args, label)
        tree = worktree(repo, rev, args.out / f"tree-{label}")
        for preset in args.presets:
            out = args.out / label / preset
            print(f"{label} ({rev}): {preset}", file=sys.stderr, flush=True)
            run_preset(tree / "src", preset, PRESETS[preset], out, args.out / f"cache-{label}")
            runs[f"{label}/{preset}"] = out
    for preset in args.presets:
        before, after = runs[f"before/{preset}"], runs[f"after/{preset}"]
        rows, summary = same_manifest(before, after), same_summary(before, after)
        unchanged = unchanged and rows and summary
        figures.append(f"{preset}_manifest={'same' if rows else 'differs'}")
        figures.append(f"{preset}_summary={'same' if summary else 'differs'}")
    print(" ".join([*figures, f"unchanged={'yes' if unchanged else 'no'}"]))
    return 0 if unchanged else 1


if __name__ == "__main__":
    sys.exit(main())
