"""Preference pairs from a hand-made score table (issue 7, part 1; issue 29, item 5: U-DPO
ranks by margin and weighs by the composite gap)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from utilgen.config import config_from_dict
from utilgen.config.feedback import PreferencePairConfig
from utilgen.errors import ConfigError, UtilgenError
from utilgen.feedback.model_level import scored_table
from utilgen.feedback.pairs import (
    PAIR_COLUMNS,
    WEIGHT_COLUMN,
    PairError,
    build_pairs,
    describe_pairs,
    pair_slots,
    read_pairs,
    write_pairs,
)
from utilgen.pool import RunLayout


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


# -- U-DPO (Sec. 3.3-3.4): rank by margin, weigh by the composite gap ------------------------

# One prompt of six texts. By margin: s1 .9 > s2 .8 > s3 .6 > s4 .5 > s5 .3 > s6 .1; by
# composite: s4 .9 > s1 .6 > s6 .4 > s2 .3 > s3 .2 > s5 .1, so the two rankings pair
# different texts, and s2 (margin above s4) has the lower composite.
MARGIN = {"s1": 0.9, "s2": 0.8, "s3": 0.6, "s4": 0.5, "s5": 0.3, "s6": 0.1}
COMPOSITE = {"s1": 0.6, "s2": 0.3, "s3": 0.2, "s4": 0.9, "s5": 0.1, "s6": 0.4}
ORDER = ["s4", "s6", "s1", "s3", "s5", "s2"]  # table order is not rank order


def udpo_table(ranking: dict[str, float], weighing: dict[str, float] | None) -> pd.DataFrame:
    rows = table([(i, 0, "a", "p", ranking[i]) for i in ORDER])
    if weighing is not None:
        rows[WEIGHT_COLUMN] = [weighing[i] for i in ORDER]
    return rows


def test_udpo_pairs_ranked_by_margin_weighted_by_composite_gap() -> None:
    # n = 6, rho 0.34: k = 2, the middle starts at rank max(2, (6-2)//2) = 2: ranks (0, 2), (1, 3)
    cfg = PreferencePairConfig(score="margin", weight_score="composite", ratio=0.34)
    pairs = build_pairs(udpo_table(MARGIN, COMPOSITE), cfg, modality="text")
    assert list(pairs.columns) == PAIR_COLUMNS
    assert list(zip(pairs.chosen_id, pairs.rejected_id, strict=True)) == [
        ("s1", "s3"),
        ("s2", "s4"),
    ]
    # chosen_/rejected_utility and gap are the ranking score (margin) ...
    assert pairs.chosen_utility.tolist() == [0.9, 0.8]
    assert pairs.rejected_utility.tolist() == [0.6, 0.5]
    assert pairs.gap.tolist() == pytest.approx([0.3, 0.3])
    # ... weight_gap is composite(x+) - composite(x-): negative where x+ has the lower r_util,
    # and Eq. 5 weighs by its absolute value
    assert pairs.weight_gap.tolist() == pytest.approx([0.6 - 0.2, 0.3 - 0.9])
    assert pairs.weight.tolist() == pytest.approx([math.tanh(0.4), math.tanh(0.6)])
    assert describe_pairs(cfg) == (
        "pairs ranked by margin (top-mid, rho 0.34), weighted by tanh(|delta composite|)"
    )

    unweighted = cfg.model_copy(update={"weighted": False})
    same = build_pairs(udpo_table(MARGIN, COMPOSITE), unweighted, modality="text")
    assert (same.weight == 1.0).all()  # exact: unweighted pairs get the literal 1.0
    assert same.chosen_id.tolist() == ["s1", "s2"]


def test_composite_ranking_stays_an_option() -> None:
    # ranked and weighed by the composite alone: other texts pair, weights from the same gap
    cfg = PreferencePairConfig(score="composite", ratio=0.34)
    pairs = build_pairs(udpo_table(COMPOSITE, None), cfg, modality="text")
    assert list(zip(pairs.chosen_id, pairs.rejected_id, strict=True)) == [
        ("s4", "s6"),
        ("s1", "s2"),
    ]
    assert pairs.weight.tolist() == pytest.approx([math.tanh(0.5), math.tanh(0.3)])
    assert pairs.weight_gap.tolist() == pairs.gap.tolist()


def test_min_gap_applies_to_the_ranking_score() -> None:
    # both margin gaps are 0.3: min_gap 0.35 drops them though |composite gap| is 0.4 and 0.6
    cfg = PreferencePairConfig(score="margin", weight_score="composite", ratio=0.34, min_gap=0.35)
    with pytest.raises(PairError, match=r"margin gap <= 0\.35"):
        build_pairs(udpo_table(MARGIN, COMPOSITE), cfg, modality="text")
    cfg = cfg.model_copy(update={"min_gap": 0.25})
    assert len(build_pairs(udpo_table(MARGIN, COMPOSITE), cfg, modality="text")) == 2


def test_weight_score_unset_gives_todays_pairs() -> None:
    # today's rule: rank and weigh by one score, weight = tanh(|gap|), bit for bit
    utility = dict(zip(SCORES.id, SCORES.utility, strict=True))
    expected = pd.DataFrame(
        [
            {
                "class_name": c[0],
                "label": 0 if c[0] == "a" else 1,
                "group": 0 if c[0] == "a" else 1,
                "prompt": "p" if c[0] == "a" else "q",
                "chosen_id": c,
                "rejected_id": r,
                "chosen_utility": utility[c],
                "rejected_utility": utility[r],
                "gap": utility[c] - utility[r],
                "weight_gap": utility[c] - utility[r],
                "weight": math.tanh(abs(utility[c] - utility[r])),
            }
            for c, r in [("a1", "a3"), ("a2", "a4"), ("b1", "b3"), ("b2", "b4")]
        ],
        columns=PAIR_COLUMNS,
    )
    cfg = PreferencePairConfig(ratio=0.5)
    assert cfg.weight_score is None
    pairs = build_pairs(SCORES, cfg, modality="image")
    pd.testing.assert_frame_equal(pairs, expected, check_exact=True)
    # naming the ranking score as the weight score, or a stray weight column, changes nothing
    stray = SCORES.assign(**{WEIGHT_COLUMN: 100.0})
    for same in (
        build_pairs(SCORES, cfg.model_copy(update={"weight_score": "composite"}), modality="image"),
        build_pairs(stray, cfg, modality="image"),
    ):
        pd.testing.assert_frame_equal(same, expected, check_exact=True)


def test_weight_score_needs_its_column_and_finite_values() -> None:
    cfg = PreferencePairConfig(score="margin", weight_score="composite", ratio=0.34)
    with pytest.raises(PairError, match=f"missing \\['{WEIGHT_COLUMN}'\\]"):
        build_pairs(udpo_table(MARGIN, None), cfg, modality="text")
    bad = udpo_table(MARGIN, COMPOSITE)
    bad.loc[2, WEIGHT_COLUMN] = float("inf")
    with pytest.raises(PairError, match="sample 's1' has a non-finite composite"):
        build_pairs(bad, cfg, modality="text")


@pytest.mark.parametrize("key", ["score", "weight_score"])
def test_pair_scores_must_be_valuation_scores(key: str) -> None:
    overrides = [
        "generator.kind=causal-lm", "generator.per_class=2", "loop.rounds=2",
        "feedback.components=[dpo]", "valuation.scores=[margin]",
        "feedback.pairs.score=margin", "feedback.pairs.weight_score=margin",
        f"feedback.pairs.{key}=composite",
    ]  # fmt: skip
    with pytest.raises(ConfigError) as err:
        config_from_dict({}, overrides)
    message = str(err.value)
    assert f"feedback.pairs.{key}='composite' is not among valuation.scores" in message
    assert "\n" not in message


class _Manifest:
    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame

    def manifest(self) -> pd.DataFrame:
        return self.frame


def test_scored_table_reads_the_ranking_and_the_weight_score(tmp_path: Path) -> None:
    ids = ["s1", "s2", "s3"]
    path = RunLayout(tmp_path).round(1).scores
    path.parent.mkdir(parents=True)
    scores = pd.DataFrame(
        {"id": ids, "margin": [0.9, 0.8, 0.6], "composite": [0.6, 0.3, 0.2], "similarity": 0.0}
    )
    pq.write_table(pa.Table.from_pandas(scores, preserve_index=False), path)
    store = _Manifest(pd.DataFrame({"id": ids[::-1], "label": 0, "class_name": "a", "prompt": "p"}))
    rows = scored_table(store, tmp_path, 1, "margin", "composite")  # type: ignore[arg-type]
    assert rows.id.tolist() == ids
    assert rows.utility.tolist() == [0.9, 0.8, 0.6]
    assert rows[WEIGHT_COLUMN].tolist() == [0.6, 0.3, 0.2]
    for weight_score in (None, "margin"):  # one score: no weight column
        one = scored_table(store, tmp_path, 1, "margin", weight_score)  # type: ignore[arg-type]
        assert WEIGHT_COLUMN not in one.columns
    with pytest.raises(UtilgenError, match=r"set feedback\.pairs\.weight_score to one of"):
        scored_table(store, tmp_path, 1, "margin", "meta_weight")  # type: ignore[arg-type]


def test_pairs_written_before_weight_score_read_back(tmp_path: Path) -> None:
    pairs = build_pairs(SCORES, PreferencePairConfig(), modality="image")
    path = tmp_path / "pairs.parquet"
    old = pairs.drop(columns="weight_gap")
    pq.write_table(pa.Table.from_pandas(old, preserve_index=False), path)
    pd.testing.assert_frame_equal(read_pairs(path), pairs)
