"""Images/s through utilgen's DiffusersGenerator vs the same diffusers pipeline called directly.

Both sides use one pipeline object (same weights, scheduler, steps, guidance, batch size,
prompts, negative prompts and per-image seeds). The direct side is what a user would write:
``pipe(prompts, negative_prompt=..., generator=[one per image], output_type="pil")``. The
utilgen side is the whole ``generate()``: request checks, batching, the same pipeline call,
uint8 conversion, PNG encoding, hashing and provenance, ending in pool ``Sample`` objects.
Nothing of utilgen's work is excluded; its PNG share is printed on its own.

Protocol: one warm-up run each, then ``--repeats`` rounds, each timing both sides in
alternating order (ABBA), medians of images/s; peak memory of each side (CUDA:
``max_memory_allocated``; CPU: peak RSS above the start of the call, sampled every 2 ms,
plus the tracemalloc peak of Python objects).

Models are built from config with random weights (no download): the default is a small
Stable Diffusion (UNet2DConditionModel 64/128 channels, 4-block VAE, 2-layer CLIP text
encoder; 128 px images) that runs a CPU benchmark in about a minute or two. ``--sd-size``
builds Stable Diffusion 1.5's architecture (860M-parameter U-Net, full VAE and CLIP ViT-L
text encoder) in fp16 on CUDA, 512 px.

    python benchmarks/generation.py [--sd-size] [--batch 4] [--images 8] [--steps 10]

The last line is ``generation_ratio=<utilgen images/s ÷ direct images/s>``; exit code 1 when
it is below 0.95.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import psutil
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from utilgen.config import DEFAULT_NEGATIVE_PROMPT
from utilgen.generate import GenerationRequest
from utilgen.generate.diffusers_backend import DiffusersGenerator
from utilgen.pool.payload import encode_image

TARGET = 0.95
TOKENIZER = Path(__file__).resolve().parents[1] / "tests/generate/fixtures/tiny-clip-tokenizer"
CLASSES = ["cat", "dog", "bird", "car", "ship", "truck", "horse", "frog"]


def build_pipeline(sd_size: bool, device: torch.device, dtype: torch.dtype) -> Any:
    """A Stable Diffusion pipeline with random weights: small, or SD 1.5's architecture."""
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)
    special_ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    torch.manual_seed(0)
    if sd_size:
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
        )
        text = CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            vocab_size=49408,
            max_position_embeddings=77,
            **special_ids,
        )
    else:
        unet = UNet2DConditionModel(
            block_out_channels=(64, 128),
            layers_per_block=1,
            sample_size=16,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=64,
            attention_head_dim=8,
            norm_num_groups=16,
        )
        vae = AutoencoderKL(
            block_out_channels=(16, 32, 32, 32),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=128,
        )
        text = CLIPTextConfig(
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            **special_ids,
        )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=CLIPTextModel(text),
        tokenizer=tokenizer,
        scheduler=DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    return pipe.to(dtype=dtype) if dtype != torch.float32 else pipe


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory of one call above its start, in MiB: the CUDA allocator's peak, or on CPU
    the process RSS sampled every 2 ms (run in a fresh process, before any warm-up, so the
    allocator has no freed memory to reuse)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - start) / 2**20
    process = psutil.Process()
    start = process.memory_info().rss
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    fn()
    stop.set()
    sampler.join()
    return (max(peak[0], process.memory_info().rss) - start) / 2**20


def python_peak_mib(fn: Callable[[], object]) -> float:
    """tracemalloc's peak of Python-object memory during ``fn`` (PIL images, PNG bytes,
    samples), in MiB."""
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sd-size", action="store_true", help="SD 1.5 architecture, fp16, CUDA")
    parser.add_argument("--batch", type=int, default=4, help="images per pipeline call")
    parser.add_argument("--images", type=int, default=8, help="images per timed run")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (10; SD: 30)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median taken)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--memory-of", choices=["direct", "utilgen"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.sd_size and device.type != "cuda":
        parser.error("--sd-size needs a CUDA device")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    steps = args.steps or (30 if args.sd_size else 10)
    pipe = build_pipeline(args.sd_size, device, dtype)
    gen = DiffusersGenerator(pipe, model="bench-sd", batch_size=args.batch, steps=steps)
    size = gen.image_size
    prompts = [f"a photo of a {CLASSES[i % len(CLASSES)]}" for i in range(args.images)]
    requests = [
        GenerationRequest(
            label=i % len(CLASSES),
            class_name=CLASSES[i % len(CLASSES)],
            seed=1000 + i,
            prompt=p,
            negative_prompt=DEFAULT_NEGATIVE_PROMPT,
        )
        for i, p in enumerate(prompts)
    ]

    def direct() -> list[Any]:
        images: list[Any] = []
        for start in range(0, args.images, args.batch):
            chunk = range(start, min(start + args.batch, args.images))
            out = pipe(
                [prompts[i] for i in chunk],
                negative_prompt=[DEFAULT_NEGATIVE_PROMPT] * len(chunk),
                num_inference_steps=steps,
                guidance_scale=gen.guidance_scale,
                height=size,
                width=size,
                generator=[torch.Generator("cpu").manual_seed(1000 + i) for i in chunk],
                output_type="pil",
            )
            images += out.images
        return images

    def through_utilgen() -> list[Any]:
        return list(gen.generate(requests, progress=False))

    def timed(fn: Callable[[], list[Any]]) -> tuple[float, float]:
        """Images per second of wall-clock time and of this process's CPU time."""
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        n = len(fn())
        if device.type == "cuda":
            torch.cuda.synchronize()
        return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)

    if args.memory_of:  # child process: one cold run of one side, print its peak memory
        fn = direct if args.memory_of == "direct" else through_utilgen
        print(f"peak_mib={peak_memory_mib(fn, device):.1f}")
        return 0
    print(
        f"device={device.type} dtype={str(dtype).removeprefix('torch.')} image={size}px "
        f"steps={steps} batch={args.batch} images={args.images} repeats={args.repeats} "
        f"threads={torch.get_num_threads()} "
        f"unet_params={sum(p.numel() for p in pipe.unet.parameters())}",
        flush=True,
    )
    # 1. warm-up (kernels, allocator)
    direct()
    samples = through_utilgen()
    # 2. interleaved timed rounds, alternating which side goes first
    rates: dict[str, list[float]] = {"direct": [], "utilgen": []}
    cpu_rates: dict[str, list[float]] = {"direct": [], "utilgen": []}
    for r in range(args.repeats):
        order = [("direct", direct), ("utilgen", through_utilgen)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            wall_rate, cpu_rate = timed(fn)
            rates[name].append(wall_rate)
            cpu_rates[name].append(cpu_rate)
        print(
            f"round {r}: direct {rates['direct'][-1]:.3f} img/s, "
            f"utilgen {rates['utilgen'][-1]:.3f} img/s (wall clock)",
            flush=True,
        )
    # 3. peak memory: each side once, cold, in a fresh process; Python objects here
    memory = {}
    for side in ("direct", "utilgen"):
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                *(argv if argv is not None else sys.argv[1:]),
                "--memory-of",
                side,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        memory[side] = float(child.stdout.strip().splitlines()[-1].split("=")[1])
    direct_py, utilgen_py = python_peak_mib(direct), python_peak_mib(through_utilgen)
    # 4. utilgen's own work: PNG encoding of one run's images, as a share of its time
    arrays = [np.asarray(img) for img in direct()]
    start = time.perf_counter()
    for a in arrays:
        encode_image(a)
    png_s_per_image = (time.perf_counter() - start) / len(arrays)
    direct_rate = statistics.median(rates["direct"])
    utilgen_rate = statistics.median(rates["utilgen"])
    ratio = utilgen_rate / direct_rate
    kind = "cuda_max_allocated" if device.type == "cuda" else "rss_above_start"
    png_mean = sum(len(s.payload) for s in samples) / len(samples)
    print(f"samples_per_run={len(samples)} png_bytes_mean={png_mean:.0f}")
    print(f"png_encode_share={png_s_per_image * utilgen_rate:.4f}")
    print(f"direct_peak_{kind}_mib={memory['direct']:.1f}")
    print(f"utilgen_peak_{kind}_mib={memory['utilgen']:.1f}")
    print(f"direct_tracemalloc_peak_mib={direct_py:.2f}")
    print(f"utilgen_tracemalloc_peak_mib={utilgen_py:.2f}")
    cpu_ratio = statistics.median(cpu_rates["utilgen"]) / statistics.median(cpu_rates["direct"])
    print(f"generation_ratio_cpu_time={cpu_ratio:.4f}")
    print(f"direct_images_per_s={direct_rate:.4f}")
    print(f"utilgen_images_per_s={utilgen_rate:.4f}")
    print(f"generation_ratio={ratio:.4f}")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
