"""Shards start where the local generator starts a batch, so Ray actors batch every sample
as the local backend does (checked against the generators' own batching)."""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_builtin import tiny_generator as build_tiny_generator
from tiny_lm import one_thread, tiny_llama

from utilgen.config import TextFilterConfig
from utilgen.generate import GenerationRequest
from utilgen.generate.builtin import BuiltinDiffusionGenerator
from utilgen.generate.causal_lm import CausalLMGenerator
from utilgen.generate.causal_lm_sampling import SamplingSettings
from utilgen.scale import local_batch_starts, plan_shards
from utilgen.scale.valuation import slice_bounds

NAMES = ("zero", "one", "two")


@cache
def tiny_generator(names: tuple[str, ...]) -> BuiltinDiffusionGenerator:
    """One tiny built-in generator for the module (hypothesis calls this per example)."""
    return build_tiny_generator(names)


def _requests(outputs: list[int], steps: list[int | None] | None = None) -> list[GenerationRequest]:
    steps = steps or [None] * len(outputs)
    return [
        GenerationRequest(
            label=i % 3, class_name=NAMES[i % 3], seed=10 * i, num_outputs=n, num_inference_steps=s
        )
        for i, (n, s) in enumerate(zip(outputs, steps, strict=True))
    ]


def _builtin_starts(requests: list[GenerationRequest], batch_size: int) -> list[bool]:
    """Per request, whether BuiltinDiffusionGenerator's own batching opens a batch with it."""
    generator = tiny_generator(NAMES)
    generator.batch_size = batch_size
    openers = {id(batch[0][0]) for batch in generator._batches(requests) if batch[0][1] == 0}
    return [id(r) in openers for r in requests]


@settings(max_examples=60, deadline=None)
@given(
    outputs=st.lists(st.integers(1, 5), min_size=1, max_size=12),
    steps=st.lists(st.sampled_from([None, 2, 3]), min_size=12, max_size=12),
    batch_size=st.integers(1, 6),
)
def test_batch_starts_match_the_builtin_generator(
    outputs: list[int], steps: list[int | None], batch_size: int
) -> None:
    requests = _requests(outputs, steps[: len(outputs)])
    generator = tiny_generator(NAMES)
    assert local_batch_starts(generator, requests, batch_size) == _builtin_starts(
        requests, batch_size
    )


@settings(max_examples=60, deadline=None)
@given(
    outputs=st.lists(st.integers(1, 5), min_size=1, max_size=12),
    batch_size=st.integers(1, 6),
    shard_rows=st.integers(1, 20),
)
def test_shards_cover_the_requests_in_order_and_open_local_batches(
    outputs: list[int], batch_size: int, shard_rows: int
) -> None:
    requests = _requests(outputs)
    generator = tiny_generator(NAMES)
    shards = plan_shards(
        generator, requests, generator_batch_size=batch_size, shard_rows=shard_rows
    )
    assert [r for shard in shards for r in shard] == requests
    starts = dict(zip(map(id, requests), _builtin_starts(requests, batch_size), strict=True))
    assert all(starts[id(shard[0])] for shard in shards)
    assert all(sum(r.num_outputs for r in shard) >= shard_rows for shard in shards[:-1])


def test_a_request_split_across_batches_keeps_the_shard_open() -> None:
    # Batch size 4: batches open at rows 0, 4 and 8; requests start at rows 0, 3, 6 and 8.
    # Only rows 0 and 8 are both, so requests 0-2 make one shard and request 3 another.
    requests = _requests([3, 3, 2, 1])
    shards = plan_shards(tiny_generator(NAMES), requests, generator_batch_size=4, shard_rows=1)
    assert [len(s) for s in shards] == [3, 1]


def test_a_change_of_steps_opens_a_batch() -> None:
    requests = _requests([1, 1, 1], [2, 2, 3])
    shards = plan_shards(tiny_generator(NAMES), requests, generator_batch_size=8, shard_rows=1)
    assert [len(s) for s in shards] == [2, 1]
    # Requests without steps take the generator's (3): same key as an explicit 3.
    same = _requests([1, 1], [None, 3])
    assert local_batch_starts(tiny_generator(NAMES), same, 8) == [True, False]


def test_sharded_generation_equals_one_call(quiet_one_thread: None) -> None:
    """What the actors do, in-process: each shard generated alone gives the bytes of the
    whole request list generated at once."""
    generator = tiny_generator(NAMES)
    generator.batch_size = 4
    requests = _requests([3, 1, 2, 2, 1, 3], [None, None, 2, 2, None, None])
    whole = list(generator.generate(requests, progress=False))
    shards = plan_shards(generator, requests, generator_batch_size=4, shard_rows=4)
    assert len(shards) > 1
    parts = [s for shard in shards for s in generator.generate(shard, progress=False)]
    assert [s.id for s in parts] == [s.id for s in whole]
    # Exact: shards cut at batch starts run the very batches of the one call (same process,
    # one thread). A shard cut mid-batch would differ by float noise only, which a
    # grey-level tolerance would let through.
    assert [s.payload for s in parts] == [s.payload for s in whole]


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="batch sizes must be >= 1"):
        plan_shards(tiny_generator(NAMES), _requests([1]), generator_batch_size=0, shard_rows=1)
    assert local_batch_starts(tiny_generator(NAMES), [], 2) == []
    assert plan_shards(tiny_generator(NAMES), [], generator_batch_size=2, shard_rows=2) == []


def test_sharded_lm_generation_equals_one_call() -> None:
    """The causal LM batches rows in chunks of batch_size: shards cut at those chunk starts
    reproduce the one-call texts, left padding and all."""
    model, tokenizer = tiny_llama()
    raw = TextFilterConfig(strip_prefixes=[], stop_patterns=[], trim_incomplete=False)
    generator = CausalLMGenerator(
        model, tokenizer, batch_size=3, sampling=SamplingSettings(max_new_tokens=6), cleaning=raw
    )
    prompts = ["the film was", "match", "the government said growth in the economy was"]
    requests = [
        GenerationRequest(label=i % 3, class_name=NAMES[i % 3], seed=7 * i, prompt=p, num_outputs=n)
        for i, (p, n) in enumerate(zip(prompts * 2, [2, 1, 3, 1, 2, 1], strict=True))
    ]
    with one_thread():
        whole = list(generator.generate(requests, progress=False))
        shards = plan_shards(generator, requests, generator_batch_size=3, shard_rows=3)
        parts = [s for shard in shards for s in generator.generate(shard, progress=False)]
    # Rows per request 2,1,3,1,2,1: batches open at rows 0, 3, 6, 9, which requests 0, 2, 3
    # and 5 start on.
    assert [len(s) for s in shards] == [2, 1, 2, 1]
    # exact: the same batches, padding included, on one thread (see above)
    assert [(s.id, s.payload) for s in parts] == [(s.id, s.payload) for s in whole]


@pytest.mark.parametrize(
    ("n", "eval_batch", "rows", "expected"),
    [
        (90, 16, 20, [(0, 32), (32, 64), (64, 90)]),  # 20 rounds up to two batches of 16
        (10, 16, 20, [(0, 10)]),
        (64, 16, 16, [(0, 16), (16, 32), (32, 48), (48, 64)]),
        (0, 16, 16, []),
    ],
)
def test_valuation_slices_are_whole_eval_batches(
    n: int, eval_batch: int, rows: int, expected: list[tuple[int, int]]
) -> None:
    assert slice_bounds(n, eval_batch, rows) == expected
