"""Sample-efficiency arithmetic on curves whose answers are worked out by hand."""

from __future__ import annotations

import pytest

from utilgen.errors import UtilgenError
from utilgen.report.efficiency_curves import (
    compare_to_static,
    efficiency_ratio,
    mean_curve,
    ratio_text,
    samples_to_reach,
)


def curve(*pairs: tuple[float, float], n_max: int = 100) -> list[dict[str, float]]:
    """Points (n_synthetic, accuracy), fractions n / n_max, worst-class ratio = accuracy / 2."""
    return [
        {"fraction": n / n_max, "n_synthetic": n, "accuracy": a, "worst_class_ratio": a / 2}
        for n, a in pairs
    ]


STATIC = curve((0, 0.80), (25, 0.82), (50, 0.86), (100, 0.90))
# reaches 0.90 between 25 (0.88) and 50 (0.92): 25 + (0.02 / 0.04) * 25 = 37.5
GUIDED = curve((0, 0.80), (25, 0.88), (50, 0.92), (100, 0.91))


def test_samples_to_reach_interpolates_the_first_crossing() -> None:
    assert samples_to_reach(GUIDED, 0.90) == pytest.approx(37.5)
    # 0.84 lies between 25 (0.82) and 50 (0.86): halfway
    assert samples_to_reach(STATIC, 0.84) == pytest.approx(37.5)
    # the first crossing counts, not a later dip and rise
    wobbly = curve((0, 0.5), (10, 0.7), (20, 0.6), (40, 0.9))
    assert samples_to_reach(wobbly, 0.65) == pytest.approx(7.5)
    # a point exactly on the target needs no interpolation
    assert samples_to_reach(STATIC, 0.86) == 50


def test_samples_to_reach_edge_cases() -> None:
    assert samples_to_reach(STATIC, 0.80) == 0  # real data alone reach it
    assert samples_to_reach(STATIC, 0.95) is None  # never reached
    # the order of the points does not matter, n_synthetic does
    assert samples_to_reach(list(reversed(GUIDED)), 0.90) == pytest.approx(37.5)


def test_efficiency_ratio_against_static_final_accuracy() -> None:
    out = efficiency_ratio(STATIC, GUIDED)
    assert out["target_accuracy"] == 0.90
    assert out["static_samples"] == 100
    assert out["other_samples"] == pytest.approx(37.5)
    assert out["ratio"] == pytest.approx(0.375)
    worse = curve((0, 0.80), (50, 0.85), (100, 0.88))
    assert efficiency_ratio(STATIC, worse)["other_samples"] is None
    assert efficiency_ratio(STATIC, worse)["ratio"] is None
    # static already at its final accuracy with real data only: no meaningful ratio
    flat = curve((0, 0.90), (100, 0.90))
    assert efficiency_ratio(flat, GUIDED) == {
        "target_accuracy": 0.90,
        "static_samples": 0,
        "other_samples": pytest.approx(37.5),
        "ratio": None,
    }
    # what the tables print for the three cases
    assert ratio_text(out) == "0.375"
    assert ratio_text(efficiency_ratio(STATIC, worse)) == "never"
    assert ratio_text(efficiency_ratio(flat, GUIDED)) == "undefined"


def test_efficiency_ratio_needs_the_fraction_one_point() -> None:
    with pytest.raises(UtilgenError, match=r"fraction 1\.0"):
        efficiency_ratio(STATIC[:-1], GUIDED)


def test_mean_curve_averages_by_fraction() -> None:
    seed0 = curve((0, 0.80), (20, 0.90), n_max=20)
    seed1 = list(reversed(curve((0, 0.70), (30, 0.80), n_max=30)))  # order does not matter
    mean = mean_curve([seed0, seed1])
    assert [p["fraction"] for p in mean] == [0.0, 1.0]
    assert mean[0] == pytest.approx(
        {
            "fraction": 0.0,
            "n_synthetic": 0,
            "accuracy": 0.75,
            "worst_class_ratio": 0.375,
            "n_runs": 2,
        }
    )
    assert mean[1]["n_synthetic"] == 25 and mean[1]["accuracy"] == pytest.approx(0.85)
    with pytest.raises(UtilgenError, match="different fractions"):
        mean_curve([seed0, curve((0, 0.7), (10, 0.8), (30, 0.9), n_max=30)])
    with pytest.raises(UtilgenError, match="no curve"):
        mean_curve([])


def test_compare_to_static_groups_by_dataset_and_strategy() -> None:
    runs = [
        {"dataset": "digits", "strategy": "static", "points": STATIC},
        {"dataset": "digits", "strategy": "static", "points": STATIC},
        {"dataset": "digits", "strategy": "gendataagent", "points": GUIDED},
        {"dataset": "bbc", "strategy": "udpo", "points": GUIDED},  # no static to compare with
    ]
    rows = compare_to_static(runs)
    assert len(rows) == 1
    row = rows[0]
    assert (row["dataset"], row["strategy"], row["n_runs"], row["n_static_runs"]) == (
        "digits",
        "gendataagent",
        1,
        2,
    )
    assert row["ratio"] == pytest.approx(0.375)
