"""RunConfig: YAML loading, overrides, one-line validation errors, presets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from utilgen.config import (
    RunConfig,
    apply_overrides,
    config_from_dict,
    config_to_yaml,
    load_config,
    preset_names,
    resolve_config,
    save_config,
)
from utilgen.errors import ConfigError


def _write(tmp_path: Path, obj: object, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(obj), encoding="utf-8")
    return path


def test_defaults_validate_and_have_every_section() -> None:
    cfg = RunConfig()
    assert set(RunConfig.model_fields) >= {
        "data",
        "task",
        "generator",
        "valuation",
        "feedback",
        "loop",
    }
    assert cfg.data.source == "digits" and cfg.task.trust_remote_code is False


def test_yaml_and_overrides_are_applied_with_yaml_types(tmp_path: Path) -> None:
    path = _write(tmp_path, {"seed": 3, "task": {"epochs": 5}})
    cfg = load_config(path, ["task.lr=0.5", "data.k_shot=7", "data.k_shot=null", "name=x"])
    assert cfg.seed == 3 and cfg.task.epochs == 5
    assert cfg.task.lr == 0.5 and isinstance(cfg.task.lr, float)
    assert cfg.data.k_shot is None  # the later override wins, and null is None
    assert cfg.name == "x"


def test_overrides_do_not_mutate_the_input() -> None:
    raw = {"task": {"epochs": 5}}
    apply_overrides(raw, ["task.epochs=9"])
    assert raw == {"task": {"epochs": 5}}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.sorce=csv"], "unknown config key 'data.sorce': did you mean 'data.source'?"),
        (["taks.epochs=3"], "unknown config key 'taks': did you mean 'task'?"),
        (["task.learning_rate=0.1"], "unknown config key 'task.learning_rate'"),
        (["task.epochs=abc"], "invalid value for 'task.epochs'"),
        (["task.epochs=0"], "invalid value for 'task.epochs'"),
        (["task.lr=-1"], "invalid value for 'task.lr'"),
        (["data.source=imagenet"], "invalid value for 'data.source'"),
        (["task.model=resnet"], "invalid value for 'task.model'"),
        (["data.source=csv"], "data.path is required"),
        (["seed"], "must look like section.key=value"),
        (["task=3", "task.epochs=2"], "'task' is a value, not a section"),
        (["feedback.control=true"], "feedback.control compares the last round with the "
         "generator before dpo feedback: add dpo to feedback.components"),
        (["loop.device=gpu"], "'gpu' is not a device; use auto, cpu, cuda, cuda:N or mps"),
        (["data.k_shot=some"], "data.k_shot must be a whole number of samples per class"),
        (["valuation.selection=[{rule: top_k, scor: marginal, k: 3}]"],
         "did you mean 'valuation.selection.0.score'?"),
        (["generator.kind=causal-lm", "generator.per_class=2", "loop.rounds=2",
          "feedback.components=[dpo]", "valuation.scores=[margin]",
          "feedback.pairs.score=margin", "generator.lm.backend=vllm"],
         "generator.lm.backend=vllm holds none"),
    ],
)
def test_bad_config_fails_in_one_line_naming_the_key(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({}, overrides)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_unknown_key_lists_the_valid_keys_of_its_section() -> None:
    with pytest.raises(ConfigError, match=r"valid keys here: .*epochs.*batch_size"):
        config_from_dict({"task": {"epoch": 3}})


def test_wrong_type_for_a_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'data'"):
        load_config(_write(tmp_path, {"data": [1, 2]}))


def test_missing_file_bad_yaml_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [1,\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad)
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_write(tmp_path, [1, 2], "list.yaml"))


def test_resolved_config_round_trips_through_yaml(tmp_path: Path) -> None:
    cfg = config_from_dict({"data": {"source": "csv", "path": "x.csv"}, "seed": 4})
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(path)
    assert again == cfg
    assert yaml.safe_load(config_to_yaml(cfg))["data"]["path"] == "x.csv"


def test_presets_load_and_typos_suggest_the_preset() -> None:
    assert {"digits-real-only", "bbc-news-real-only"} <= set(preset_names())
    for name in preset_names():
        assert isinstance(resolve_config(name), RunConfig)
    with pytest.raises(ConfigError, match="did you mean preset 'digits-real-only'"):
        resolve_config("digits-realonly")
