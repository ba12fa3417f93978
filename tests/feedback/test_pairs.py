"""Preference pairs from a hand-made score table (issue 7, part 1)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from utilgen.config.feedback import PreferencePairConfig
from utilgen.feedback.pairs import (
    PAIR_COLUMNS,
    PairError,
    build_pairs,
    pair_slots,
    read_pairs,
    write_pairs,
)


def table(rows: list[tuple[str, int, str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["id", "label", "class_name", "prompt", "utility"])


# class a: five samples with utilities 0.9 > 0.7 > 0.5 > 0.3 > 0.1; class b: four samples
SCORES = table(
    [
        ("a3", 0, "a", "p", 0.5),
        ("a1", 0, "a", "p", 0.9),
        ("a5", 0, "a", "p", 0.1),
        ("a2", 0, "a", "p", 0.7),
        ("a4", 0, "a", "p", 0.3),
        ("b1", 1, "b", "q", 2.0),
        ("b2", 1, "b", "q", 1.0),
        ("b3", 1, "b", "q", 0.5),
        ("b4", 1, "b", "q", 0.0),
    ]
)


def test_pair_slots_known_answers() -> None:
    assert pair_slots(1, 0.2, "top-mid") == []
    assert pair_slots(2, 0.2, "top-mid") == [(0, 1)]
    assert pair_slots(5, 0.2, "top-mid") == [(0, 2)]  # best vs the median
    assert pair_slots(10, 0.3, "top-mid") == [(0, 3), (1, 4), (2, 5)]
    assert pair_slots(5, 0.2, "top-bottom") == [(0, 4)]
    assert pair_slots(10, 0.3, "top-bottom") == [(0, 7), (1, 8), (2, 9)]
    assert pair_slots(3, 0.5, "top-bottom") == [(0, 2)]
    assert pair_slots(4, 0.5, "top-mid") == [(0, 2), (1, 3)]


def test_top_mid_pairs_best_with_median_weighted_by_tanh_gap() -> None:
    cfg = PreferencePairConfig(score="margin", scheme="top-mid", ratio=0.2, group_by="class")
    pairs = build_pairs(SCORES, cfg, modality="image")
    assert list(pairs.columns) == PAIR_COLUMNS
    assert list(zip(pairs.chosen_id, pairs.rejected_id, strict=True)) == [
        ("a1", "a3"),  # 0.9 vs the median 0.5
        ("b1", "b2"),  # n=4, k=1: the middle starts at rank max(1, (4-1)//2) = 1
    ]
    a = pairs[pairs.class_name == "a"].iloc[0]
    assert a.gap == pytest.approx(0.4)
    assert a.weight == pytest.approx(math.tanh(0.4))


def test_top_mid_group_of_four_uses_rank_one() -> None:
    # n=4, rho=0.2: k=1, middle start = max(1, (4-1)//2) = 1: best (2.0) vs second (1.0)
    cfg = PreferencePairConfig(score="margin", ratio=0.2, group_by="class")
    pairs = build_pairs(SCORES, cfg, modality="image").set_index("class_name")
    assert (pairs.loc["b", "chosen_id"], pairs.loc["b", "rejected_id"]) == ("b1", "b2")
    assert pairs.loc["b", "weight"] == pytest.approx(math.tanh(1.0))


def test_top_bottom_unweighted() -> None:
    cfg = PreferencePairConfig(score="meta_weight", scheme="top-bottom", ratio=0.5, weighted=False)
    pairs = build_pairs(SCORES, cfg, modality="image")
    got = list(zip(pairs.chosen_id, pairs.rejected_id, strict=True))
    # a: k = floor(0.5*5) = 2 -> (a1, a4), (a2, a5); b: k = 2 -> (b1, b3), (b2, b4)
    assert got == [("a1", "a4"), ("a2", "a5"), ("b1", "b3"), ("b2", "b4")]
    assert (pairs.weight == 1.0).all()
    assert (pairs.gap > 0).all()


def test_group_by_prompt_pairs_within_a_prompt_only() -> None:
    rows = table(
        [
            ("x1", 0, "a", "p1", 0.9),
            ("x2", 0, "a", "p1", 0.1),
            ("y1", 0, "a", "p2", 0.8),
            ("y2", 0, "a", "p2", 0.2),
        ]
    )
    cfg = PreferencePairConfig(score="margin", ratio=0.5)
    by_prompt = build_pairs(rows, cfg, modality="text")  # auto: prompt for texts
    assert set(zip(by_prompt.chosen_id, by_prompt.rejected_id, strict=True)) == {
        ("x1", "x2"),
        ("y1", "y2"),
    }
    assert set(by_prompt.prompt) == {"p1", "p2"}
    by_class = build_pairs(rows, cfg, modality="image")  # auto: class for images
    # ranked x1 .9, y1 .8, y2 .2, x2 .1; k=2, mid start max(2, 1) = 2 -> (x1, y2), (y1, x2)
    assert list(zip(by_class.chosen_id, by_class.rejected_id, strict=True)) == [
        ("x1", "y2"),
        ("y1", "x2"),
    ]


def test_ties_are_broken_by_id_and_tied_pairs_dropped() -> None:
    rows = table(
        [
            ("c", 0, "a", "p", 0.5),
            ("a", 0, "a", "p", 0.5),
            ("b", 0, "a", "p", 0.5),
            ("d", 0, "a", "p", 0.2),
        ]
    )
    cfg = PreferencePairConfig(score="margin", scheme="top-bottom", ratio=0.5)
    pairs = build_pairs(rows, cfg, modality="image")
    # ranked a, b, c (ties by id), d; slots (0, 2) is a tie (a vs c) and is dropped
    assert list(zip(pairs.chosen_id, pairs.rejected_id, strict=True)) == [("b", "d")]
    with pytest.raises(PairError, match="min_gap"):
        build_pairs(rows, cfg.model_copy(update={"min_gap": 0.5}), modality="image")


def test_class_with_one_sample_is_an_error() -> None:
    rows = pd.concat([SCORES, table([("c1", 2, "c", "r", 0.3)])])
    with pytest.raises(PairError, match="class 'c' has 1 scored sample"):
        build_pairs(rows, PreferencePairConfig(), modality="image")


def test_bad_tables() -> None:
    with pytest.raises(PairError, match="missing"):
        build_pairs(SCORES.drop(columns="prompt"), PreferencePairConfig(), modality="image")
    with pytest.raises(PairError, match="no scored samples"):
        build_pairs(SCORES.iloc[:0], PreferencePairConfig(), modality="image")
    bad = SCORES.copy()
    bad.loc[0, "utility"] = float("nan")
    with pytest.raises(PairError, match="non-finite"):
        build_pairs(bad, PreferencePairConfig(), modality="image")


def test_pairs_round_trip(tmp_path) -> None:
    pairs = build_pairs(SCORES, PreferencePairConfig(), modality="image")
    path = tmp_path / "rounds" / "001" / "pairs.parquet"
    write_pairs(pairs, path)
    pd.testing.assert_frame_equal(read_pairs(path), pairs)
