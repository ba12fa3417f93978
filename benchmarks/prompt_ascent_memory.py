"""Peak memory of prompt-embedding ascent vs plain generation on the tiny Stable Diffusion.

Issue 8's memory target: UtilGen's prompt-embedding ascent through a diffusers pipeline
(``utilgen.feedback.prompt_ascent.ascend_prompts`` on a ``DiffusersSampler``) keeps peak
memory within 2x of plain generation (``DiffusersGenerator.generate``) of the same requests
(``--requests`` x ``--outputs`` images, one batch on both sides).

Workloads, each in its own fresh subprocess, one after another:

* ``generate``: the requests through ``DiffusersGenerator.generate`` (PNG samples);
* ``ascent``: ``ascend_prompts`` with the default gradient path (U-Net checkpointing,
  backpropagation through every step), a small-cnn task model's log p(y|x) as utility;
* ``ascent-no-checkpointing``, ``ascent-last-2``: without checkpointing, and with it but a
  graph through the last two steps only (context, not the target).

A child builds the pipeline (the tests' tiny SD, U-Net ``--width`` channels, ``--image-size``
px images) and the classifier, then runs the workload twice. Before each run it takes the
resident set size (RSS) as the baseline; during it, it samples RSS every millisecond. It
reports, in MiB: ``cold`` above loaded (first run's peak minus the RSS with the models
loaded: includes one-time costs such as kernel caches), ``warm`` above baseline (second
run's peak minus the RSS before it: the workload's own memory), and ``ru_maxrss`` (the
process's absolute peak, ``resource.getrusage``). On CUDA also
``torch.cuda.max_memory_allocated`` above the allocation before the warm run.

Each pair runs under two allocator settings: ``live`` (glibc's mmap threshold pinned at
64 KiB, so freed tensors go back to the OS and RSS follows live tensors, as CUDA's
allocation counter does) and ``glibc`` (the default, whose dynamic threshold keeps freed
blocks in the heap: the RSS a user sees, inflated by allocation churn).

    python benchmarks/prompt_ascent_memory.py [--requests 4] [--outputs 2] [--steps 10]
        [--adam-steps 1] [--width 64] [--image-size 64] [--device cpu] [--threads 1]

The last line starts with ``prompt_ascent_memory_ratio=<ascent / generate, live, warm
above baseline>``, followed by the cold, absolute-peak and glibc ratios and the MiB figures;
exit code 1 when the headline ratio exceeds 2.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TARGET = 2.0
WORKLOADS = ("generate", "ascent", "ascent-no-checkpointing", "ascent-last-2")
MIB = 2**20
# "live": every allocation of 64 KiB or more gets its own mmap, returned to the OS when freed,
# so RSS follows the live tensors (what CUDA's max_memory_allocated counts). "glibc": the
# default allocator, whose dynamic mmap threshold keeps freed tensors in the heap for reuse:
# the RSS a user sees, but inflated by how often a workload allocates and frees.
ALLOCATORS = {
    "live": {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"},
    "glibc": {},
}
# The tiny pipeline is the tests' (diffusers' get_dummy_components pattern, random weights).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "generate"))


def _rss() -> int:
    """Current resident set size of this process, bytes."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def _max_rss(who: int) -> int:
    """``ru_maxrss`` in bytes (Linux reports KiB)."""
    return resource.getrusage(who).ru_maxrss * 1024


class _RssPeak:
    """Samples this process's RSS every millisecond on a thread; ``peak`` in bytes."""

    def __init__(self) -> None:
        self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss())

    def __enter__(self) -> _RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def child(workload: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one workload in this process and return its memory figures (MiB)."""
    import torch
    from tiny_sd import random_images, tiny_sd_pipeline

    from utilgen.config import PromptAscentConfig, TaskConfig
    from utilgen.feedback.prompt_ascent import ascend_prompts
    from utilgen.feedback.utility import LogProbUtility
    from utilgen.generate import GenerationRequest
    from utilgen.generate.diffusers_backend import DiffusersGenerator
    from utilgen.generate.diffusers_differentiable import DiffusersSampler
    from utilgen.progress import set_quiet
    from utilgen.task import build_task_model

    set_quiet(True)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = DiffusersGenerator(
        tiny_sd_pipeline(0, width=args.width),
        model="tiny-sd",
        batch_size=args.requests * args.outputs,
        steps=args.steps,
        guidance_scale=7.5,
        image_size=args.image_size,
        device=device,
    )
    requests = [
        GenerationRequest(
            label=i % 2,
            class_name=("cat", "dog")[i % 2],
            seed=100 * i,
            prompt=f"a photo of a {('cat', 'dog')[i % 2]}",
            negative_prompt="blurry",
            num_outputs=args.outputs,
        )
        for i in range(args.requests)
    ]
    examples = random_images(4, size=args.image_size)
    task = build_task_model(
        TaskConfig(model="small-cnn"), "image", 2, list(examples), device, seed=0
    )
    utility = LogProbUtility(task)
    sampler = DiffusersSampler(generator)
    cfg = PromptAscentConfig(
        steps=args.adam_steps,
        batch_size=args.requests,
        gradient_checkpointing=workload != "ascent-no-checkpointing",
        backprop_steps=2 if workload == "ascent-last-2" else None,
    )

    def run() -> None:
        if workload == "generate":
            samples = list(generator.generate(requests, progress=False))
            assert len(samples) == args.requests * args.outputs
        else:
            result = ascend_prompts(sampler, utility, requests, cfg, progress=False)
            assert len(result.requests) == args.requests

    cuda = device.type == "cuda"

    def measured() -> dict[str, float]:
        """Peak RSS during one ``run()`` and above the RSS just before it (MiB); on CUDA
        also the peak allocation above the allocation before it."""
        gc.collect()
        baseline = _rss()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            cuda_base = torch.cuda.memory_allocated()
        with _RssPeak() as sampled:
            run()
        out = {
            "baseline_mib": baseline / MIB,
            "peak_mib": sampled.peak / MIB,
            "above_baseline_mib": (sampled.peak - baseline) / MIB,
        }
        if cuda:
            torch.cuda.synchronize()
            out["cuda_above_baseline_mib"] = (torch.cuda.max_memory_allocated() - cuda_base) / MIB
        return out

    # The first (cold) call also pays one-time costs (kernel and allocator caches, autograd
    # engine state); the second (warm) one measures the workload alone.
    cold = measured()
    warm = measured()
    result: dict[str, Any] = {"workload": workload}
    result.update({f"cold_{k}": v for k, v in cold.items()})
    result.update({f"warm_{k}": v for k, v in warm.items()})
    result["ru_maxrss_mib"] = _max_rss(resource.RUSAGE_SELF) / MIB
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4, help="requests (one batch)")
    parser.add_argument("--outputs", type=int, default=2, help="outputs per request")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps")
    parser.add_argument("--adam-steps", type=int, default=1, help="ascent steps per request")
    parser.add_argument("--width", type=int, default=64, help="U-Net's widest block")
    parser.add_argument("--image-size", type=int, default=64, help="image side in px")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child")
    parser.add_argument("--child", choices=WORKLOADS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args)))
        return 0

    forwarded = list(argv if argv is not None else sys.argv[1:])
    results: dict[tuple[str, str], dict[str, Any]] = {}
    runs = [("live", w) for w in WORKLOADS] + [("glibc", "generate"), ("glibc", "ascent")]
    for allocator, workload in runs:
        env = {**os.environ, **ALLOCATORS[allocator]}
        done = subprocess.run(
            [sys.executable, __file__, "--child", workload, *forwarded],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        r = results[(allocator, workload)] = json.loads(done.stdout.strip().splitlines()[-1])
        line = (
            f"{allocator:5s} {workload:23s} loaded {r['cold_baseline_mib']:6.1f} MiB  "
            f"peak {r['ru_maxrss_mib']:7.1f} MiB  cold above loaded "
            f"{r['cold_above_baseline_mib']:7.1f} MiB  warm above warm baseline "
            f"{r['warm_above_baseline_mib']:7.1f} MiB"
        )
        if "warm_cuda_above_baseline_mib" in r:
            line += f"  cuda warm above baseline {r['warm_cuda_above_baseline_mib']:7.1f} MiB"
        print(line, flush=True)
    children = _max_rss(resource.RUSAGE_CHILDREN) / MIB
    print(f"RUSAGE_CHILDREN ru_maxrss {children:.1f} MiB (the largest child)")

    def ratio(allocator: str, key: str) -> float:
        gen, asc = results[(allocator, "generate")], results[(allocator, "ascent")]
        return float(asc[key] / max(gen[key], 1e-9))

    live = {w: results[("live", w)]["warm_above_baseline_mib"] for w in WORKLOADS}
    above = ratio("live", "warm_above_baseline_mib")
    print(
        f"prompt_ascent_memory_ratio={above:.3f} "
        f"cold_ratio={ratio('live', 'cold_above_baseline_mib'):.3f} "
        f"peak_ratio={ratio('live', 'ru_maxrss_mib'):.3f} "
        f"glibc_ratio={ratio('glibc', 'warm_above_baseline_mib'):.3f} "
        f"glibc_cold_ratio={ratio('glibc', 'cold_above_baseline_mib'):.3f} "
        f"glibc_peak_ratio={ratio('glibc', 'ru_maxrss_mib'):.3f} "
        f"generate_mib={live['generate']:.1f} ascent_mib={live['ascent']:.1f} "
        f"no_checkpointing_mib={live['ascent-no-checkpointing']:.1f} "
        f"last2_mib={live['ascent-last-2']:.1f}"
    )
    return 0 if above <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
