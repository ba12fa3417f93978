"""Cutting a round's requests into shards that the actors generate exactly as locally.

A generator batches a request list's outputs ("rows": output ``i`` of request ``r``) by a
sequential rule: consecutive rows fill a batch until it holds ``batch_size`` of them, and the
built-in generator also starts a new batch where steps or img2img strength change (one
timestep schedule per batch). Generated alone, a slice of the request list is batched the
same way as inside the whole list if, and only if, it starts where the whole list starts a
batch. A shard therefore always begins at a request boundary that is also a local batch
boundary, and every sample an actor makes came out of the very batch it would have come out
of locally: same seeds, same batch neighbours, same floating-point sums, same bytes.

The rule is sequential for the built-in generator and causal LMs. The diffusers generator
groups by settings across the whole list; with one setting for all requests (the usual
round) its batches are consecutive rows too, with mixed settings its per-output seeds keep
samples equal up to float noise of a different batch composition.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from utilgen.generate import GenerationRequest, Generator


def batch_key(generator: Generator, request: GenerationRequest) -> Hashable:
    """What must agree between rows of one batch of ``generator``, beyond the batch size.

    The built-in generator needs one (steps, img2img strength) per batch, with the request
    defaults filled in as ``BuiltinDiffusionGenerator._batches`` fills them; other
    generators batch any consecutive rows.
    """
    from utilgen.generate.builtin import BuiltinDiffusionGenerator

    if isinstance(generator, BuiltinDiffusionGenerator):
        steps = (
            generator.steps if request.num_inference_steps is None else request.num_inference_steps
        )
        strength = request.strength if request.init_image is not None else None
        return (int(steps), strength)
    return None


def local_batch_starts(
    generator: Generator, requests: Sequence[GenerationRequest], batch_size: int
) -> list[bool]:
    """For each request, whether ``generator`` (batching ``batch_size`` rows) starts a new
    batch at its first output when generating ``requests`` in one call."""
    starts: list[bool] = []
    filled, key = 0, None
    for request in requests:
        this_key = batch_key(generator, request)
        starts.append(filled == 0 or filled == batch_size or this_key != key)
        for _ in range(request.num_outputs):
            if filled and (filled == batch_size or this_key != key):
                filled = 0
            filled += 1
            key = this_key
    return starts


def plan_shards(
    generator: Generator,
    requests: Sequence[GenerationRequest],
    *,
    generator_batch_size: int,
    shard_rows: int,
) -> list[list[GenerationRequest]]:
    """``requests`` cut, in order, into shards of at least ``shard_rows`` outputs (the last
    may be smaller), each starting where the local generator starts a batch.

    ``generator_batch_size`` is the generator's own batch size (rows per batch locally).
    Concatenated, the shards are ``requests``.
    """
    if generator_batch_size < 1 or shard_rows < 1:
        raise ValueError(f"batch sizes must be >= 1, got {generator_batch_size}, {shard_rows}")
    starts = local_batch_starts(generator, requests, generator_batch_size)
    shards: list[list[GenerationRequest]] = []
    current: list[GenerationRequest] = []
    rows = 0
    for request, starts_batch in zip(requests, starts, strict=True):
        if current and starts_batch and rows >= shard_rows:
            shards.append(current)
            current, rows = [], 0
        current.append(request)
        rows += request.num_outputs
    if current:
        shards.append(current)
    return shards
