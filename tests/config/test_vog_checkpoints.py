"""``valuation.vog_checkpoints``: the stage-1 epochs VoG reads, given as a count of evenly
spaced points, as shares of the run or as epochs, resolved against ``task.epochs``; every
bad value is a one-line ConfigError naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from utilgen.config import load_config
from utilgen.config.load import config_to_yaml
from utilgen.config.valuation import (
    ValuationConfig,
    VoGEpochs,
    VoGFractions,
    rounded_share,
    vog_epochs,
)
from utilgen.errors import ConfigError

VOG = "valuation.scores=[marginal, vog]"


@pytest.mark.parametrize(
    ("count", "epochs", "expected"),
    [
        (3, 30, (10, 20, 30)),  # GenDataAgent: 3 checkpoints, epochs 10, 20, 30
        (3, 40, (13, 27, 40)),  # 13.33 -> 13, 26.67 -> 27
        (3, 10, (3, 7, 10)),
        (4, 10, (3, 5, 8, 10)),  # 2.5 -> 3 and 7.5 -> 8: halves round up
        (2, 3, (2, 3)),  # 1.5 -> 2
        (2, 2, (1, 2)),
        (5, 5, (1, 2, 3, 4, 5)),
    ],
)
def test_a_count_is_evenly_spaced_epochs_ending_at_the_last(
    count: int, epochs: int, expected: tuple[int, ...]
) -> None:
    assert vog_epochs(count, epochs) == expected


def test_every_count_gives_distinct_epochs_ending_at_the_last() -> None:
    for total in range(2, 60):
        for count in range(2, total + 1):
            picked = vog_epochs(count, total)
            assert len(set(picked)) == count and picked[-1] == total and picked[0] >= 1
            assert list(picked) == sorted(picked)


def test_fractions_round_half_up_exactly_in_decimal() -> None:
    assert vog_epochs(VoGFractions(fractions=[0.33, 0.67, 1.0]), 30) == (10, 20, 30)
    assert vog_epochs(VoGFractions(fractions=[0.25, 0.75]), 10) == (3, 8)  # 2.5, 7.5 up
    # 0.29 * 50 is 14.5 exactly; in floating point 14.499999999999998
    assert vog_epochs(VoGFractions(fractions=[0.29, 1.0]), 50) == (15, 50)
    assert rounded_share(0.29, 50) == 15 and rounded_share(0.25, 1) == 0
    # given in any order, read in training order
    assert vog_epochs(VoGFractions(fractions=[1.0, 0.5]), 8) == (4, 8)


def test_epochs_are_read_as_given_in_training_order() -> None:
    assert vog_epochs(VoGEpochs(epochs=[20, 5, 10]), 20) == (5, 10, 20)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, (10, 20, 30)),  # the default: 3 evenly spaced (task.epochs 30)
        ({"vog_checkpoints": 4}, (8, 15, 23, 30)),
        ({"vog_checkpoints": {"fractions": [0.5, 1]}}, (15, 30)),
        ({"vog_checkpoints": {"epochs": [1, 29]}}, (1, 29)),
    ],
)
def test_each_form_loads_and_round_trips(
    raw: dict[str, Any], expected: tuple[int, ...], tmp_path: Path
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"valuation": {"scores": ["vog"], **raw}}))
    config = load_config(path)
    assert config.task.epochs == 30
    assert config.valuation.vog_epochs(config.task.epochs) == expected
    again = tmp_path / "again.yaml"
    again.write_text(config_to_yaml(config))
    assert load_config(again) == config
    written = yaml.safe_load(config_to_yaml(config))["valuation"]["vog_checkpoints"]
    assert written == raw.get("vog_checkpoints", 3)


def test_a_unit_can_be_set_on_the_command_line() -> None:
    config = load_config(None, [VOG, "valuation.vog_checkpoints.epochs=[2, 4]"])
    assert config.valuation.vog_checkpoints == VoGEpochs(epochs=[2, 4])
    config = load_config(None, [VOG, "valuation.vog_checkpoints={fractions: [0.1, 0.2]}"])
    assert config.valuation.vog_epochs(30) == (3, 6)


def test_the_points_are_only_checked_against_the_run_when_vog_is_scored() -> None:
    # unused without vog: a short run without VoG does not have to change the default
    assert load_config(None, ["task.epochs=2"]).valuation.vog_checkpoints == 3
    with pytest.raises(ConfigError, match=r"task\.epochs=2"):
        load_config(None, ["task.epochs=2", VOG])


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["valuation.vog_checkpoints=1"], ["needs at least 2"]),
        (["valuation.vog_checkpoints=[10, 20]"], ["{epochs: [10, 20, 30]}"]),
        (["valuation.vog_checkpoints={epoch: [1, 2]}"], ["a count (3: evenly spaced)"]),
        (["valuation.vog_checkpoints={epochs: [3]}"], ["at least 2"]),
        (["valuation.vog_checkpoints={epochs: [3, 3]}"], ["listed twice"]),
        (["valuation.vog_checkpoints={epochs: [0, 3]}"], ["0 is not a stage-1 epoch"]),
        (["valuation.vog_checkpoints={epochs: [1.5, 3]}"], ["1.5 is not a stage-1 epoch"]),
        (["valuation.vog_checkpoints={fractions: [0.5, 1.5]}"], ["1.5 is not a share"]),
        (["valuation.vog_checkpoints={fractions: [0, 1]}"], ["0 is not a share"]),
        # against the run: task.epochs 30 (default), VoG scored
        ([VOG, "valuation.vog_checkpoints=31"], ["task.epochs=30", "at most 30"]),
        ([VOG, "valuation.vog_checkpoints={epochs: [10, 40]}"], ["epoch 40 is outside", "1..30"]),
        ([VOG, "valuation.vog_checkpoints={fractions: [0.01, 1.0]}"], ["rounds to epoch 0"]),
        (
            [VOG, "valuation.vog_checkpoints={fractions: [0.5, 0.51, 1.0]}"],
            ["0.5 and 0.51", "both round to epoch 15"],
        ),
        ([VOG, "task.epochs=2"], ["valuation.vog_checkpoints=3", "task.epochs=2"]),
    ],
)
def test_bad_points_are_one_line_errors_naming_the_key(
    overrides: list[str], needles: list[str]
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    message = str(err.value)
    assert "\n" not in message and "valuation.vog_checkpoints" in message, message
    for needle in needles:
        assert needle in message, message


def test_the_section_alone_checks_the_form() -> None:
    assert ValuationConfig(vog_checkpoints=3.0).vog_checkpoints == 3
    with pytest.raises(ValueError, match="a count"):
        ValuationConfig(vog_checkpoints=True)
