"""Throughput of ``CausalLMGenerator.generate`` against a plain ``model.generate`` (issue 5).

Recipe: one model (the bundled SmolLM2-135M-Instruct GGUF unless ``--model``), loaded once
and shared by both sides. The inputs are U-DPO 2-shot prompts built from BBC News
(``fewshot_requests``, shots cut to ``--example-words`` words), one output per prompt,
``--batch-size`` prompts per batch.

* utilgen: ``CausalLMGenerator.generate(requests)``, end to end: chat template,
  tokenisation, per-output seeded sampling, decoding, cleaning and the pool samples.
* raw: ``model.generate(**inputs, do_sample=True, ...)`` on the same chat-formatted prompts,
  tokenised and left-padded beforehand (outside the timing).

Both sample with the same temperature, top-p, top-k (off) and token limits; end-of-text is
suppressed until ``--max-new-tokens`` (``min_new_tokens``), so every row of both sides
generates exactly that many tokens and tokens/s compare like with like. After one warm-up
run each, the two sides alternate (``--repeats`` times, the order flipped every repeat, so
drift in a shared machine's load hits both alike); the medians are compared. Target: the
utilgen/raw ratio of tokens/s >= 0.95.

    .venv/bin/python benchmarks/text_generation.py [--model DIR|FILE.gguf] [--batch-size 8]
        [--max-new-tokens 32] [--repeats 5] [--threads 1]

Prints one line per run, the two medians, then ``text_generation_ratio=<x>`` last; exits 1
when the ratio is below 0.95.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from typing import Any

import torch

from utilgen.config import CausalLMConfig, FewShotPromptConfig
from utilgen.data.bundled import load_bbc_news
from utilgen.generate import GenerationRequest
from utilgen.generate.causal_lm import CausalLMGenerator, SamplingSettings, load_causal_lm
from utilgen.generate.fewshot import fewshot_requests
from utilgen.progress import set_quiet

TARGET = 0.95


def _requests(batch_size: int, example_words: int) -> list[GenerationRequest]:
    """``batch_size`` single-output 2-shot requests, cycling over the BBC classes."""
    bbc = load_bbc_news()
    cfg = FewShotPromptConfig(
        template="u-dpo-news", outputs_per_prompt=1, max_example_words=example_words
    )
    per_class = -(-batch_size // bbc.num_classes)
    by_class = fewshot_requests(bbc, per_class=per_class, seed=0, round_index=1, cfg=cfg)
    # Interleave classes so that any batch size mixes prompt lengths (left padding).
    order = sorted(range(len(by_class)), key=lambda i: (i % per_class, i // per_class))
    return [by_class[i] for i in order][:batch_size]


def _run_utilgen(gen: CausalLMGenerator, requests: list[GenerationRequest]) -> tuple[float, int]:
    start = time.perf_counter()
    samples = list(gen.generate(requests, progress=False))
    seconds = time.perf_counter() - start
    return seconds, sum(int(s.steps or 0) for s in samples)


def _run_raw(
    model: Any, inputs: dict[str, torch.Tensor], settings: SamplingSettings, pad_id: int
) -> tuple[float, int]:
    prompt_len = inputs["input_ids"].shape[1]
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            do_sample=True,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=0,
            max_new_tokens=settings.max_new_tokens,
            min_new_tokens=settings.min_new_tokens,
            pad_token_id=pad_id,
        )
    seconds = time.perf_counter() - start
    return seconds, int(out.shape[0] * (out.shape[1] - prompt_len))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model dir, .gguf file or cached hub id")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--example-words", type=int, default=40)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: torch's default)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    set_quiet(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.temperature <= 0:
        parser.error("--temperature must be > 0: the benchmark compares sampling")

    # 1. one model for both sides
    device = torch.device("cpu")
    cfg = CausalLMConfig(
        model=args.model,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.max_new_tokens,
    )
    model, tokenizer, name = load_causal_lm(cfg, device)
    settings = SamplingSettings.from_config(cfg)
    gen = CausalLMGenerator(
        model, tokenizer, name=name, device=device, batch_size=args.batch_size,
        sampling=settings,
    )

    # 2. the same prompts, chat-formatted and left-padded for the raw side
    requests = _requests(args.batch_size, args.example_words)
    inputs = gen._encode([gen.format_prompt(r.prompt) for r in requests])
    pad_id = int(tokenizer.pad_token_id)
    print(
        f"model={name} batch={args.batch_size} prompt_tokens={inputs['input_ids'].shape[1]} "
        f"max_new_tokens={args.max_new_tokens} temperature={args.temperature} "
        f"top_p={args.top_p} threads={torch.get_num_threads()} repeats={args.repeats}"
    )

    # 3. warm-up, then interleaved timed runs
    _run_utilgen(gen, requests)
    _run_raw(model, inputs, settings, pad_id)
    rates: dict[str, list[float]] = {"utilgen": [], "raw": []}
    for repeat in range(args.repeats):
        sides = ["utilgen", "raw"] if repeat % 2 == 0 else ["raw", "utilgen"]
        for side in sides:
            if side == "utilgen":
                seconds, tokens = _run_utilgen(gen, requests)
            else:
                seconds, tokens = _run_raw(model, inputs, settings, pad_id)
            rates[side].append(tokens / seconds)
            print(f"repeat={repeat} side={side} tokens={tokens} seconds={seconds:.2f} "
                  f"tokens_per_s={tokens / seconds:.2f}")

    utilgen = statistics.median(rates["utilgen"])
    raw = statistics.median(rates["raw"])
    ratio = utilgen / raw
    print(f"utilgen_tokens_per_s={utilgen:.2f} raw_tokens_per_s={raw:.2f}")
    print(f"text_generation_ratio={ratio:.3f}")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
