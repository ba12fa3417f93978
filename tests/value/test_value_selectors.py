"""Selectors: ties broken by id, per-class counts, composition, frozen decisions, bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from utilgen.config.valuation import SelectionRule
from utilgen.value import (
    BottomK,
    Chain,
    DropLowest,
    HardReal,
    KeepAll,
    KeepRatio,
    ScoredSamples,
    SelectionError,
    Threshold,
    TopK,
    Weighting,
    build_selector,
)

CLASSES = ("cat", "dog")


def samples(ids: list[str], labels: list[int], **scores: list[float]) -> ScoredSamples:
    return ScoredSamples(
        ids=tuple(ids),
        labels=np.array(labels),
        scores={k: np.array(v, dtype=float) for k, v in scores.items()},
        class_names=CLASSES,
    )


# Class cat: c1..c4 with s = 0.5, 0.9, 0.5, 0.1; class dog: d1, d2 tied at 0.7.
TABLE = samples(
    ["c3", "d2", "c1", "c2", "d1", "c4"],
    [0, 1, 0, 0, 1, 0],
    s=[0.5, 0.7, 0.5, 0.9, 0.7, 0.1],
)


def test_top_k_breaks_ties_by_id() -> None:
    # cat: c2 (0.9), then c1 beats c3 at 0.5 by id; dog keeps both
    assert sorted(TopK("s", 2).select(TABLE).kept_ids()) == ["c1", "c2", "d1", "d2"]
    # dog: d1 beats d2 at 0.7 by id
    assert sorted(TopK("s", 1).select(TABLE).kept_ids()) == ["c2", "d1"]


def test_bottom_k_breaks_ties_by_id_too() -> None:
    assert sorted(BottomK("s", 2).select(TABLE).kept_ids()) == ["c1", "c4", "d1", "d2"]
    assert sorted(BottomK("s", 1).select(TABLE).kept_ids()) == ["c4", "d1"]
    assert sorted(HardReal(1, score="s").select(TABLE).kept_ids()) == ["c4", "d1"]


def test_selection_does_not_depend_on_input_order() -> None:
    order = [5, 2, 0, 4, 1, 3]
    shuffled = TABLE.subset(np.array(order))
    for selector in (TopK("s", 2), BottomK("s", 1), KeepRatio("s", 0.5), DropLowest("s", 0.5)):
        assert selector.select(shuffled).kept_and_reasons() == {
            i: d for i, d in selector.select(TABLE).kept_and_reasons().items()
        }


def test_overall_ranking_without_classes() -> None:
    assert sorted(TopK("s", 3, per_class=False).select(TABLE).kept_ids()) == ["c2", "d1", "d2"]


def test_threshold_keeps_equal_scores() -> None:
    selection = Threshold("s", 0.5).select(TABLE)
    assert sorted(selection.kept_ids()) == ["c1", "c2", "c3", "d1", "d2"]
    assert "0.1 < 0.5" in selection.decisions["c4"].reason


def test_keep_ratio_and_drop_lowest_round_half_up_per_class() -> None:
    # cat has 4 samples: 50% -> 2; dog has 2: 50% -> 1
    assert sorted(KeepRatio("s", 0.5).select(TABLE).kept_ids()) == ["c1", "c2", "d1"]
    # drop 25% of cat (1: c4) and round(0.5) = 1 of dog (the lowest by tie-break: d1)
    dropped = DropLowest("s", 0.25).select(TABLE)
    assert sorted(set(TABLE.ids) - set(dropped.kept_ids())) == ["c4", "d1"]
    assert dropped.decisions["c4"].reason.startswith("dropped by drop_lowest")
    assert dropped.decisions["c4"].weight == 0.0 and dropped.decisions["c2"].weight == 1.0


def test_drop_lowest_drops_the_configured_share_of_each_class_half_up() -> None:
    """Known answer: classes of 1, 2, 3, 4, 6, 7 and 50 samples, fraction 0.25 and 0.29; a
    class of n drops round_half_up(fraction * n), computed in decimal, of its lowest."""
    sizes = [1, 2, 3, 4, 6, 7, 50]
    names = tuple(f"k{n}" for n in sizes)
    ids = [f"{name}-{i:02d}" for name, n in zip(names, sizes, strict=True) for i in range(n)]
    labels = [c for c, n in enumerate(sizes) for _ in range(n)]
    # within a class the score falls with the index: the last ids are the lowest
    score = [-float(i) for n in sizes for i in range(n)]
    table = ScoredSamples(tuple(ids), np.array(labels), {"vog": np.array(score)}, names)
    expected = {
        0.25: [0, 1, 1, 1, 2, 2, 13],  # 0.25, 0.5, 0.75, 1, 1.5, 1.75, 12.5
        # 0.29 * 50 is 14.5 in decimal (15 dropped), 14.499999999999998 in floating point
        0.29: [0, 1, 1, 1, 2, 2, 15],  # 0.29, 0.58, 0.87, 1.16, 1.74, 2.03, 14.5
    }
    for fraction, drops in expected.items():
        for selector in (
            DropLowest("vog", fraction),
            build_selector([SelectionRule(rule="drop_lowest", score="vog", fraction=fraction)]),
        ):
            selection = selector.select(table)
            for c, (name, n) in enumerate(zip(names, sizes, strict=True)):
                members = [i for i, label in zip(ids, labels, strict=True) if label == c]
                dropped = [i for i in members if not selection.decisions[i].kept]
                assert dropped == members[n - drops[c] :], (fraction, name)
        reason = DropLowest("vog", fraction).select(table).decisions["k6-05"].reason
        assert f"the lowest {fraction} ({drops[4]} of 6) of class 'k6'" in reason, reason
        # keep_ratio counts the same way
        kept = KeepRatio("vog", fraction).select(table).kept_ids()
        assert len(kept) == sum(drops)


def test_weighting_keeps_everything() -> None:
    raw = Weighting("s").select(TABLE)
    assert len(raw.kept_ids()) == len(TABLE)
    assert raw.weights()["c2"] == pytest.approx(0.9)
    normalised = Weighting("s", normalize=True).select(TABLE).weights()
    assert normalised["c2"] == 1.0 and normalised["c4"] == 0.0
    assert normalised["c1"] == pytest.approx(0.5)
    assert normalised["d1"] == normalised["d2"] == 1.0  # a constant class keeps weight 1
    with pytest.raises(SelectionError, match="negative values"):
        Weighting("s").select(samples(["a"], [0], s=[-1.0]))


def test_chain_applies_rules_in_order() -> None:
    table = samples(
        ["c1", "c2", "c3", "c4", "d1", "d2"],
        [0, 0, 0, 0, 1, 1],
        vog=[0.0, 1.0, 2.0, 3.0, 5.0, 4.0],
        margin=[0.9, 0.1, 0.5, 0.3, 0.2, 0.2],
    )
    chain = Chain(DropLowest("vog", 0.25), TopK("margin", 1), Weighting("margin"))
    selection = chain.select(table)
    # VoG drops c1 and d2; of the rest the best margin per class is c3 and d1
    assert sorted(selection.kept_ids()) == ["c3", "d1"]
    assert selection.decisions["c1"].reason.startswith("dropped by drop_lowest")
    assert selection.decisions["c2"].reason.startswith("dropped by top_k")
    kept = selection.decisions["c3"]
    assert kept.weight == pytest.approx(0.5)
    assert kept.reason.count(";") == 2  # one reason per rule
    assert list(selection.decisions) == list(table.ids)


def test_decisions_are_frozen() -> None:
    selection = TopK("s", 1).select(TABLE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        selection.decisions["c1"].kept = True  # type: ignore[misc]
    with pytest.raises(TypeError):
        selection.decisions["c1"] = selection.decisions["c2"]  # type: ignore[index]


def test_a_class_without_samples_has_nothing_to_select() -> None:
    # a global hard-sample round may generate no sample of an easy class
    only_cats = samples(["c1", "c2"], [0, 0], s=[0.1, 0.2])
    assert TopK("s", 1).select(only_cats).kept_ids() == ["c2"]
    assert TopK("s", 1, per_class=False).select(only_cats).kept_ids() == ["c2"]
    assert DropLowest("s", 0.5).select(only_cats).kept_ids() == ["c2"]


def test_missing_or_non_finite_score_is_an_error() -> None:
    with pytest.raises(SelectionError, match="reads score 'vog' but the samples have s"):
        DropLowest("vog", 0.25).select(TABLE)
    bad = samples(["a", "b"], [0, 1], s=[np.nan, 1.0])
    with pytest.raises(SelectionError, match="of sample 'a' is nan"):
        TopK("s", 1).select(bad)
    with pytest.raises(SelectionError, match="k >= 1"):
        TopK("s", 0)
    with pytest.raises(SelectionError, match=r"fraction in \[0, 1\]"):
        KeepRatio("s", 1.5)


def test_build_selector_from_config_rules() -> None:
    rules = [
        SelectionRule(rule="drop_lowest", score="vog", fraction=0.25),
        SelectionRule(rule="top_k", score="margin", k=1),
    ]
    table = samples(
        ["c1", "c2", "c3", "c4", "d1", "d2"],
        [0, 0, 0, 0, 1, 1],
        vog=[0.0, 1.0, 2.0, 3.0, 5.0, 4.0],
        margin=[0.9, 0.1, 0.5, 0.3, 0.2, 0.2],
    )
    assert sorted(build_selector(rules).select(table).kept_ids()) == ["c3", "d1"]
    everything = build_selector([]).select(table)
    assert isinstance(build_selector([]), KeepAll)
    assert everything.kept_ids() == list(table.ids)


def test_fraction_rules_take_nothing_from_a_class_without_samples() -> None:
    """Per class, a fraction of an empty class is 0 of 0 and it has nothing to weigh (a round
    whose global hard-sample parents left a class out still filters the others); a count
    rule keeps up to its count of the classes that have samples."""
    only_cats = samples(["c1", "c2", "c3", "c4"], [0, 0, 0, 0], s=[0.5, 0.9, 0.5, 0.1])
    dropped = DropLowest("s", 0.25).select(only_cats)
    assert sorted(dropped.kept_ids()) == ["c1", "c2", "c3"]
    assert sorted(KeepRatio("s", 0.5).select(only_cats).kept_ids()) == ["c1", "c2"]
    # exact: the maximum normalises to (max - min) / (max - min), which IEEE makes 1.0
    assert Weighting("s", normalize=True).select(only_cats).weights()["c2"] == 1.0
    assert TopK("s", 1).select(only_cats).kept_ids() == ["c2"]
