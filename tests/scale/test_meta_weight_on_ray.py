"""``meta_weight`` on the Ray path: it trains in the driver, as ``score_samples`` does, with
the same held-out meta set and the same refusal of a meta set the model was fitted on. No
actor is involved, so no Ray session is needed (the slow tests compare every score)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from utilgen.config import TaskConfig, ValuationConfig
from utilgen.config.valuation import MetaWeightConfig
from utilgen.data.bundled import load_digits
from utilgen.scale.valuation import score_samples_on_ray
from utilgen.task import build_task_model
from utilgen.value import ValuationError, score_samples

pytestmark = pytest.mark.usefixtures("quiet_one_thread")

NO_ACTORS: Any = None  # meta_weight never reaches the executor


def test_the_ray_path_trains_on_the_same_meta_set_and_guards_it() -> None:
    digits = load_digits()
    real, meta = digits.subset(range(0, 100)), digits.subset(range(100, 140))
    candidates = digits.subset(range(140, 200))
    model = build_task_model(
        TaskConfig(model="small-cnn", image_size=8), "image", 10, real.items[:1], "cpu", 0
    )
    cfg = ValuationConfig(
        scores=["meta_weight"], meta_weight=MetaWeightConfig(epochs=1, batch_size=32)
    )
    held_out = {"real_train": real, "meta_set": meta, "fitted_ids": real.ids}
    local = score_samples(cfg, model, candidates, **held_out)
    remote = score_samples_on_ray(NO_ACTORS, cfg, model, candidates, **held_out)
    pd.testing.assert_frame_equal(remote, local)
    drawn = score_samples_on_ray(NO_ACTORS, cfg, model, candidates, real_train=real)
    assert not drawn["meta_weight"].equals(local["meta_weight"])  # the meta set is used
    with pytest.raises(ValuationError, match="fitted on"):
        score_samples_on_ray(
            NO_ACTORS, cfg, model, candidates, real_train=real, meta_set=real, fitted_ids=real.ids
        )
