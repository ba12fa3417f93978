"""A generator that replays held-out real images: a real ``Generator`` (its samples go
through ``make_sample`` and the pool like any backend's) whose outputs are known, so loop
tests can predict label fidelity and compare resumed runs sample by sample."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np

from utilgen.config import RunConfig
from utilgen.data import LabelledData
from utilgen.generate import GenerationRequest, make_sample
from utilgen.generate.builtin import builtin_class_requests
from utilgen.loop.run import Prepared, prepare
from utilgen.pool import Sample, encode_image


class ReplayGenerator:
    """Returns held-out real images of the requested class; optionally dies mid-way."""

    modality = "image"
    name = "replay-test"

    def __init__(self, source: LabelledData, fail_after: int | None = None) -> None:
        self.source = source
        self.fail_after = fail_after
        self.generated = 0

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        round_index: int = 1,
        progress: bool = True,
    ) -> Iterator[Sample]:
        for request in requests:
            members = np.flatnonzero(self.source.labels == request.label)
            for i in range(request.num_outputs):
                if self.fail_after is not None and self.generated >= self.fail_after:
                    raise RuntimeError("simulated crash")
                pick = members[(request.seed + i) % len(members)]
                self.generated += 1
                yield make_sample(
                    request, i, encode_image(self.source.items[pick]),
                    modality="image", generator=self.name, round_index=round_index,
                    guidance=None, steps=None,
                )


def replay_prepared(config: RunConfig, per_class: int) -> Prepared:
    """``prepare(config)`` without building a generator: the replay generator over the
    digits the k-shot split leaves out, with the built-in kind's round-1 requests."""
    base = prepare(config, with_generator=False)
    assert base.splits.unused_train is not None
    requests = builtin_class_requests(
        base.splits.train.class_names,
        per_class=per_class,
        seed=config.seed,
        round_index=1,
        cfg=config.generator.builtin,
    )
    return replace(
        base, generator=ReplayGenerator(base.splits.unused_train), requests=tuple(requests)
    )
