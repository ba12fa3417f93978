"""``extends:`` in config files: a parent (preset or YAML path) loaded first, the child's keys
deep-merged over it, then ``--set``, then validation; cycles, missing parents and bad values
refused in one line; the resolved config never holds ``extends``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from utilgen.config import (
    config_from_dict,
    config_to_yaml,
    load_config,
    preset_names,
    preset_path,
    resolve_config,
)
from utilgen.config.load import MAX_EXTENDS, merge_config
from utilgen.errors import ConfigError

PARENT = {
    "name": "parent",
    "seed": 3,
    "task": {"model": "small-cnn", "epochs": 5, "lr": 0.5, "batch_size": 8},
    "valuation": {"scores": ["marginal", "margin", "vog"]},
}


def _write(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj), encoding="utf-8")
    return path


def _error(load: Callable[[], object]) -> str:
    """The message of the ConfigError that ``load`` raises; it is one line."""
    with pytest.raises(ConfigError) as err:
        load()
    message = str(err.value)
    assert "\n" not in message and len(message) < 2000, message
    return message


def test_child_overrides_a_nested_key_and_keeps_the_parents_siblings(tmp_path: Path) -> None:
    _write(tmp_path / "parent.yaml", PARENT)
    child = _write(tmp_path / "child.yaml", {"extends": "parent.yaml", "task": {"epochs": 9}})
    config = load_config(child)
    assert config.task.epochs == 9
    assert (config.task.lr, config.task.batch_size, config.seed) == (0.5, 8, 3)
    assert config.valuation.scores == ["marginal", "margin", "vog"]
    assert config.name == "parent"  # not set by the child: inherited like any other key


def test_a_list_replaces_the_parents_list_whole(tmp_path: Path) -> None:
    _write(tmp_path / "parent.yaml", PARENT)
    child = _write(tmp_path / "child.yaml", {"extends": "parent.yaml", "valuation": {"scores": []}})
    assert load_config(child).valuation.scores == []
    # an ablation's way to switch a preset's components off; the components' settings stay
    no_feedback = _write(
        tmp_path / "no-feedback.yaml",
        {"extends": "digits-gendataagent", "feedback": {"components": []}},
    )
    config, parent = load_config(no_feedback), resolve_config("digits-gendataagent")
    assert config.feedback.components == [] and parent.feedback.components == ["hard_samples"]
    assert config.feedback.hard_samples == parent.feedback.hard_samples


def test_a_chain_of_three_resolves_nearest_first(tmp_path: Path) -> None:
    _write(tmp_path / "c.yaml", {"extends": "digits-real-only", "seed": 7, "task": {"epochs": 1}})
    _write(tmp_path / "b.yaml", {"extends": "c.yaml", "task": {"epochs": 2, "lr": 0.25}})
    a = _write(tmp_path / "a.yaml", {"extends": "b.yaml", "task": {"lr": 0.125}, "name": "a"})
    config = load_config(a)
    assert (config.name, config.seed, config.task.epochs, config.task.lr) == ("a", 7, 2, 0.125)
    preset = resolve_config("digits-real-only")
    assert config.task.batch_size == preset.task.batch_size  # from the preset at the root
    assert config.data == preset.data


def test_a_relative_parent_is_found_from_the_extending_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path / "base" / "root.yaml", PARENT)
    _write(tmp_path / "base" / "parent.yaml", {"extends": "root.yaml", "task": {"lr": 0.25}})
    child = _write(
        tmp_path / "runs" / "child.yaml", {"extends": "../base/parent.yaml", "task": {"epochs": 9}}
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the working directory: the file's own folder
    config = resolve_config(str(child))
    assert (config.seed, config.task.lr, config.task.epochs) == (3, 0.25, 9)


def test_a_mapping_not_read_from_a_file_extends_a_preset_or_a_path_from_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = config_from_dict({"extends": "digits-static", "loop": {"rounds": 2}})
    assert config.loop.rounds == 2
    assert config.model_copy(update={"loop": resolve_config("digits-static").loop}) == (
        resolve_config("digits-static")
    )
    _write(tmp_path / "parent.yaml", PARENT)
    monkeypatch.chdir(tmp_path)
    assert config_from_dict({"extends": "parent.yaml"}).seed == 3


def test_a_cycle_is_refused_in_one_line_naming_the_chain(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.yaml", {"extends": "b.yaml", "seed": 1})
    _write(tmp_path / "b.yaml", {"extends": "a.yaml", "seed": 2})
    line = _error(lambda: load_config(a))
    assert "cycle" in line
    assert f"({a} -> {tmp_path / 'b.yaml'} -> {tmp_path / 'a.yaml'})" in line


def test_a_longer_cycle_below_the_first_file_names_the_whole_chain(tmp_path: Path) -> None:
    top = _write(tmp_path / "top.yaml", {"extends": "a.yaml"})
    _write(tmp_path / "a.yaml", {"extends": "b.yaml"})
    _write(tmp_path / "b.yaml", {"extends": "./a.yaml"})
    line = _error(lambda: load_config(top))
    chain = line.split("(", 1)[1].split(")", 1)[0].split(" -> ")
    assert [Path(p).name for p in chain] == ["top.yaml", "a.yaml", "b.yaml", "a.yaml"]


def test_a_file_that_extends_itself_is_refused_in_one_line(
    tmp_path: Path, cli_error: Callable[[list[str]], str]
) -> None:
    path = _write(tmp_path / "self.yaml", {"extends": "self.yaml", "seed": 1})
    line = _error(lambda: load_config(path))
    assert "cycle" in line and f"({path} -> {path})" in line
    assert "cycle" in cli_error(["config", "show", str(path)])  # exit 2, one line


def test_a_missing_parent_is_refused_in_one_line_with_did_you_mean(
    tmp_path: Path, cli_error: Callable[[list[str]], str]
) -> None:
    typo = _write(tmp_path / "typo.yaml", {"extends": "digits-utilgn"})
    line = _error(lambda: load_config(typo))
    assert "'digits-utilgn', which is neither a file" in line
    assert "did you mean preset 'digits-utilgen'" in line
    assert line.split("presets: ", 1)[1].split(", ") == preset_names()
    assert "did you mean preset 'digits-utilgen'" in cli_error(["config", "show", str(typo)])
    missing = _write(tmp_path / "missing.yaml", {"extends": "nowhere/parent.yaml"})
    line = _error(lambda: load_config(missing))
    assert f"neither a file ({tmp_path / 'nowhere' / 'parent.yaml'}) nor a preset" in line


@pytest.mark.parametrize("value", [3, None, ["digits-static"], {"preset": "digits-static"}])
def test_extends_that_is_not_a_string_is_refused(tmp_path: Path, value: Any) -> None:
    path = _write(tmp_path / "c.yaml", {"extends": value})
    line = _error(lambda: load_config(path))
    assert line.startswith(f"'extends' in config file {path} must be a preset name or the path")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("task: [\n", "is not valid YAML"),
        ("- a list\n", "must hold a mapping of sections at top level"),
        ("seed: " + "[" * 40 + "]" * 40 + "\n", "nests deeper than 32 levels"),
        ("seed: 99999999999999999999\n", "does not fit in 64 bits"),
    ],
)
def test_a_parent_file_gets_the_same_checks_as_the_file_itself(
    tmp_path: Path, text: str, expected: str
) -> None:
    parent = _write(tmp_path / "parent.yaml", text)
    child = _write(tmp_path / "child.yaml", {"extends": "parent.yaml"})
    line = _error(lambda: load_config(child))
    assert expected in line and str(parent) in line


def test_a_chain_longer_than_the_limit_is_refused(tmp_path: Path) -> None:
    for i in range(MAX_EXTENDS + 1):
        _write(tmp_path / f"c{i}.yaml", {"extends": f"c{i + 1}.yaml"})
    _write(tmp_path / f"c{MAX_EXTENDS + 1}.yaml", {"seed": 1})
    line = _error(lambda: load_config(tmp_path / "c0.yaml"))
    assert f"more than {MAX_EXTENDS} configs in a chain" in line
    # at the limit it loads
    assert load_config(tmp_path / "c1.yaml").seed == 1


def test_set_overrides_apply_after_extends(tmp_path: Path) -> None:
    _write(tmp_path / "parent.yaml", PARENT)
    child = _write(tmp_path / "child.yaml", {"extends": "parent.yaml", "task": {"epochs": 9}})
    # (3 epochs, not fewer: the parent scores VoG, 3 evenly spaced checkpoints by default)
    config = resolve_config(str(child), ["task.epochs=3", "seed=4"])
    assert (config.task.epochs, config.seed, config.task.lr) == (3, 4, 0.5)
    # `extends` is not a setting: an override cannot name it
    assert "unknown config key 'extends'" in _error(
        lambda: resolve_config(str(child), ["extends=digits-static"])
    )


def test_errors_after_merging_still_name_the_key(tmp_path: Path) -> None:
    child = _write(tmp_path / "child.yaml", {"extends": "digits-static", "task": {"epoch": 3}})
    assert "did you mean 'task.epochs'?" in _error(lambda: load_config(child))


def test_the_resolved_config_has_no_extends_and_is_the_merged_result(tmp_path: Path) -> None:
    parent_raw = yaml.safe_load(preset_path("digits-utilgen").read_text(encoding="utf-8"))
    child_raw = {
        "extends": "digits-utilgen",
        "name": "mine",
        "feedback": {"components": ["dpo"], "pairs": {"ratio": 0.5}},
    }
    config = load_config(_write(tmp_path / "child.yaml", child_raw))
    written = yaml.safe_load(config_to_yaml(config))
    assert "extends" not in written
    assert written == config.model_dump(mode="json")
    merged = merge_config(parent_raw, {k: v for k, v in child_raw.items() if k != "extends"})
    assert config == config_from_dict(merged)
    assert config.feedback.pairs.ratio == 0.5 and config.feedback.pairs.scheme == "top-bottom"
    # RUN/config.yaml read back (no extends, no parent needed) is the same config
    again = _write(tmp_path / "again" / "config.yaml", config_to_yaml(config))
    assert load_config(again) == config


def test_merge_config_changes_neither_input() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    update = {"a": {"c": [3]}, "e": 2}
    assert merge_config(base, update) == {"a": {"b": 1, "c": [3]}, "d": 1, "e": 2}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1} and update == {"a": {"c": [3]}, "e": 2}


@pytest.mark.parametrize("name", [n for n in preset_names() if "-no-" in n])
def test_every_ablation_preset_extends_its_parent_and_sets_only_what_it_changes(
    name: str,
) -> None:
    raw = yaml.safe_load(preset_path(name).read_text(encoding="utf-8"))
    parent = name.split("-no-")[0]
    assert raw["extends"] == parent
    parent_raw = yaml.safe_load(preset_path(parent).read_text(encoding="utf-8"))
    assert "extends" not in parent_raw
    # name, description, strategy and the ablated sections: nothing copied from the parent
    assert {"extends", "name", "description", "strategy"} <= set(raw)
    assert len(raw) <= 6
    header = preset_path(name).read_text(encoding="utf-8").split("\nextends:", 1)[0]
    assert 1 <= len(header.splitlines()) <= 2 and header.startswith("# Ablation of ")
