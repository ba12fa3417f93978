"""Label fidelity of SmolLM2-135M texts on BBC News, per class (issue 5).

Recipe: BBC News with the bbc-news-static split (65/15/20, seed 0, 10 real articles per class
as the task's training set). ``--per-class`` texts per class are generated from U-DPO 2-shot
prompts over those 10 articles (``fewshot_requests``; ``--template``, default the news
wording), by the bundled SmolLM2-135M-Instruct unless ``--model``. A MiniLM + linear head
trained on ALL real BBC training articles (no synthetic data) labels them; label fidelity is
the share it assigns to the class the text was generated for. Reported per class and overall,
for all generated texts and for those the default text filters keep; no target.

    .venv/bin/python benchmarks/text_fidelity.py [--per-class 10] [--max-new-tokens 96]
        [--template u-dpo-news] [--model DIR|FILE.gguf] [--threads 1]

Prints per-class fidelity, generation speed and the classifier's test accuracy, then
``label_fidelity=<x>`` last.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np
import torch

from utilgen.config import (
    CausalLMConfig,
    DataConfig,
    FewShotPromptConfig,
    TaskConfig,
    TextFilterConfig,
)
from utilgen.data import load_data, split_for_config
from utilgen.data.splits import stratified_split
from utilgen.generate.causal_lm import CausalLMGenerator
from utilgen.generate.fewshot import fewshot_requests
from utilgen.generate.text_filters import filter_texts
from utilgen.progress import set_quiet
from utilgen.task import build_task_model, evaluate, train
from utilgen.task.fidelity import label_fidelity

SEED = 0
# The classifier of the bbc-news presets.
CLASSIFIER = TaskConfig(model="minilm", head="linear", epochs=60, batch_size=32, lr=0.01)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--template", default="u-dpo-news")
    parser.add_argument("--model", default=None, help="model dir, .gguf file or cached hub id")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    set_quiet(True)
    if args.threads:
        torch.set_num_threads(args.threads)

    # 1. data: the static preset's 10-shot training set, and all real training articles
    data_cfg = DataConfig(source="bbc-news", val_fraction=0.15, test_fraction=0.2, k_shot=10)
    data = load_data(data_cfg)
    splits = split_for_config(data, data_cfg, seed=SEED)
    full_train = stratified_split(data, data_cfg.val_fraction, data_cfg.test_fraction, SEED).train

    # 2. generate per-class texts from 2-shot prompts
    device = torch.device("cpu")
    generator = CausalLMGenerator.from_config(
        CausalLMConfig(model=args.model, max_new_tokens=args.max_new_tokens),
        device=device,
        batch_size=args.batch_size,
        seed=SEED,
    )
    requests = fewshot_requests(
        splits.train,
        per_class=args.per_class,
        seed=SEED,
        round_index=1,
        cfg=FewShotPromptConfig(template=args.template),
    )
    started = time.perf_counter()
    samples = list(generator.generate(requests, progress=False))
    seconds = time.perf_counter() - started
    tokens = sum(int(s.steps or 0) for s in samples)
    kept = filter_texts(samples, [str(t) for t in splits.train.items], TextFilterConfig())

    # 3. a real-data judge: MiniLM + linear head on every real training article
    judge = build_task_model(
        CLASSIFIER, "text", data.num_classes, full_train.items[:4], device, seed=SEED
    )
    train(judge, full_train, CLASSIFIER, seed=SEED, progress=lambda n: None)
    test_accuracy = evaluate(judge, splits.test)["accuracy"]

    texts = [s.payload.decode("utf-8") for s in samples]
    labels = np.array([s.label for s in samples])
    fidelity = label_fidelity(judge, texts, labels, data.class_names)
    keep = np.array([s.kept for s in kept])
    kept_fidelity = label_fidelity(
        judge, [t for t, k in zip(texts, keep, strict=True) if k], labels[keep], data.class_names
    )
    for name in data.class_names:
        print(
            f"fidelity[{name}]={fidelity.per_class[name]:.3f} "
            f"kept_fidelity[{name}]={kept_fidelity.per_class[name]:.3f}"
        )
    print(
        f"generator={generator.name} template={args.template} n_texts={len(samples)} "
        f"n_kept={int(keep.sum())}"
    )
    print(
        f"generation_seconds={seconds:.1f} new_tokens={tokens} tokens_per_s={tokens / seconds:.2f}"
    )
    print(f"judge_test_accuracy={test_accuracy:.4f} judge_train_size={len(full_train)}")
    print(f"kept_label_fidelity={kept_fidelity.overall:.4f}")
    print(f"label_fidelity={fidelity.overall:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
