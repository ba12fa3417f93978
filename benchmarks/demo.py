"""The demo as the issue's acceptance measures it (issue 9): wall time on a fresh machine,
the comparison, sample efficiency and the report.

Runs ``python -m utilgen --quiet demo [--fast] --out OUT`` in a subprocess with an empty
generator cache (as on a fresh machine: the built-in diffusion model of every seed is
trained inside the timed run), then checks what it wrote:

- wall time against the target (full demo 30 min, ``--fast`` 8 min, on 2 CPU cores);
- ``comparison.json``: every dataset and strategy with its seeds; per dataset the best
  utility-guided strategy's mean top-1 against ``static``'s (the acceptance asks that it
  wins on at least one dataset);
- ``sample_efficiency``: a row per dataset;
- ``report.html``: the nine sections, and every embedded figure decodes as a PNG.

    .venv/bin/python benchmarks/demo.py [--fast] [--jobs 2] [--out DIR] [--warm-cache]

Prints the per-dataset verdicts, then ``name=value`` headline figures last; exits 1 when a
target is missed.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

TARGET_SECONDS = {"fast": 8 * 60, "full": 30 * 60}
SECTIONS = 9
BASELINES = ("real-only", "static")
_IMG = re.compile(r'<img[^>]*src="data:image/png;base64,([^"]+)"')


def _run_demo(out: Path, fast: bool, jobs: int, cache: Path | None) -> tuple[int, float, float]:
    """(return code, wall seconds, CPU seconds of the demo and its workers)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if cache is not None:
        env["UTILGEN_CACHE_DIR"] = str(cache)
    command = [sys.executable, "-m", "utilgen", "--quiet", "demo", "--out", str(out)]
    command += ["--jobs", str(jobs)] + (["--fast"] if fast else [])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return done.returncode, wall, cpu


def _verdicts(comparison: dict[str, Any]) -> dict[str, tuple[str, float, float]]:
    """Per dataset: (best guided strategy, its mean top-1, static's mean top-1)."""
    out = {}
    groups = comparison["groups"]
    for dataset in sorted({g["dataset"] for g in groups}):
        mine = [g for g in groups if g["dataset"] == dataset]
        static = next(g for g in mine if g["strategy"] == "static")
        guided = [g for g in mine if g["strategy"] not in BASELINES]
        best = max(guided, key=lambda g: g["accuracy"]["mean"])
        out[dataset] = (best["strategy"], best["accuracy"]["mean"], static["accuracy"]["mean"])
    return out


def _figures(html: str) -> tuple[int, int]:
    """(embedded PNGs, those that decode)."""
    payloads = _IMG.findall(html)
    good = 0
    for payload in payloads:
        try:
            with Image.open(io.BytesIO(base64.b64decode(payload))) as image:
                image.load()
            good += image.width > 0 and image.height > 0
        except (OSError, ValueError):
            pass
    return len(payloads), good


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="default: a temporary dir")
    parser.add_argument(
        "--warm-cache",
        action="store_true",
        help="use the usual generator cache instead of an empty one",
    )
    args = parser.parse_args()
    mode = "fast" if args.fast else "full"
    with tempfile.TemporaryDirectory(prefix="utilgen-demo-bench-") as tmp:
        out = args.out or Path(tmp) / "demo"
        cache = None if args.warm_cache else Path(tmp) / "cache"
        code, wall, cpu = _run_demo(out, args.fast, args.jobs, cache)
        if code != 0:
            print(f"demo_exit_code={code}")
            return 1
        comparison = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
        html = (out / "report.html").read_text(encoding="utf-8")

    verdicts = _verdicts(comparison)
    for dataset, (strategy, best, static) in verdicts.items():
        word = "beats" if best > static else "does not beat"
        print(f"{dataset}: {strategy} {best:.4f} {word} static {static:.4f} ({best - static:+.4f})")
    wins = sum(best > static for _, best, static in verdicts.values())
    efficiency_rows = len(comparison.get("sample_efficiency", []))
    sections = html.count("<h2")
    figures, decoded = _figures(html)
    target = TARGET_SECONDS[mode]
    fresh = cache is not None
    print(f"mode={mode} jobs={args.jobs} cpu_count={os.cpu_count()} fresh_cache={fresh}")
    print(f"runs={sum(g['n'] for g in comparison['groups'])} efficiency_rows={efficiency_rows}")
    print(f"sections={sections} figures={figures} figures_decoded={decoded}")
    print(f"cpu_seconds={cpu:.0f} target_seconds={target} datasets_beating_static={wins}")
    print(f"wall_seconds={wall:.0f}")
    missed = [
        wall > target,
        # over 3 seeds the acceptance asks for a win on one dataset; one --fast seed is noise
        mode == "full" and wins < 1,
        efficiency_rows < len(verdicts),
        sections != SECTIONS,
        figures == 0 or decoded != figures,
    ]
    return 1 if any(missed) else 0


if __name__ == "__main__":
    sys.exit(main())
