"""A round's valuation candidates do not shrink once its selection is recorded.

Selection overwrites the manifest's ``kept`` column. A run killed after that (fault points
``select.applied``, ``train.checkpoint`` in the round, ``round.trained``) values the round
again on resume; if it took the *kept* samples as candidates it would score and select only
the first attempt's survivors (found by test_kill_resume.py: round 1's scores.parquet held
30 rows instead of 70, the DPO pairs 10 instead of 30, and round 2 diverged).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from utilgen.config.valuation import SelectionRule
from utilgen.data.bundled import load_digits
from utilgen.pool import PoolStore, samples_from_labelled
from utilgen.value import (
    apply_selection,
    build_selector,
    record_scores,
    scored_samples,
    selection_candidates,
)


def test_candidates_are_the_filtered_samples_before_and_after_selection(tmp_path: Path) -> None:
    digits = load_digits()
    data = digits.subset(
        np.concatenate([np.flatnonzero(digits.labels == c)[:3] for c in range(10)])
    )
    names = data.class_names
    with PoolStore.open(tmp_path / "run", writable=True) as store:
        store.append(samples_from_labelled(data, "", source="synthetic", round=1))
        # another round's samples and a filter's verdict are never candidates of round 1
        later = replace(data, ids=tuple(f"r2/{i}" for i in data.ids))
        store.append(samples_from_labelled(later, "", source="synthetic", round=2))
        dropped_by_filter = data.ids[0]
        store.set_kept({dropped_by_filter: (False, "filter: empty")})

        before = selection_candidates(store, 1, names)
        assert list(before.ids) == list(data.ids[1:])

        scores = pd.DataFrame({"id": list(before.ids), "margin": np.arange(len(before.ids))})
        record_scores(store, 1, scores)
        rule = SelectionRule(rule="top_k", score="margin", k=1)
        selection = build_selector([rule]).select(scored_samples(before, scores))
        apply_selection(store, 1, selection)
        assert len(selection.kept_ids()) == 10  # one per class: the selection did drop some

        after = selection_candidates(store, 1, names)
        assert list(after.ids) == list(before.ids)
        np.testing.assert_array_equal(after.labels, before.labels)
        # ... and selecting again from them decides exactly as the first time
        again = build_selector([rule]).select(scored_samples(after, scores))
        assert again.kept_and_reasons() == selection.kept_and_reasons()
