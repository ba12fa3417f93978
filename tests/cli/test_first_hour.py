"""A new user's first mistakes and first looks (issue 27): each mistake exits 2 with one line
and writes nothing, the checks that need no model fail before any model loads (a spy on the
task-model and generator builders), and the inspect commands (`presets`, `config show`,
`config validate`, `run --dry-run`) print what they promise without writing anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from utilgen.cli import main
from utilgen.config import RunConfig, preset_names, resolve_config, save_config


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(["--quiet", *args])
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


@pytest.fixture
def no_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a task model or a generator is built."""

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was loaded before the checks that need none")

    monkeypatch.setattr("utilgen.loop.run.build_task_model", boom)
    monkeypatch.setattr("utilgen.loop.run.build_generator", boom)


def _fails(capsys: pytest.CaptureFixture[str], args: list[str], *needles: str) -> str:
    code, _, err = _cli(args, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("utilgen: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _run(tmp_path: Path, preset: str, *sets: str, extra: tuple[str, ...] = ()) -> list[str]:
    args = ["run", preset, "--out", str(tmp_path / "run"), *extra]
    return args + [a for s in sets for a in ("--set", s)]


# -- section 2: mistakes caught early ---------------------------------------------------


@pytest.mark.usefixtures("no_models")
def test_device_that_is_not_a_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(
        capsys, _run(tmp_path, "digits-real-only", "loop.device=gpu"),
        "'gpu' is not a device", "cuda:N", "devices here: auto, cpu",
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
@pytest.mark.usefixtures("no_models")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_on_a_machine_without_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], device: str
) -> None:
    _fails(
        capsys, _run(tmp_path, "digits-real-only", f"loop.device={device}"),
        f"loop.device={device} is not available", "0 CUDA GPU(s)", "set loop.device=auto or cpu",
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.usefixtures("no_models")
def test_k_shot_larger_than_a_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # digits' smallest training class after the 15/20 % split has 113 images (seed 0)
    _fails(
        capsys, _run(tmp_path, "digits-static", "data.k_shot=500"),
        "data.k_shot=500", "class '", "training sample(s)", "data.k_shot=all",
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.usefixtures("no_models")
def test_more_shots_than_the_k_shot_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sets = ("data.k_shot=1", "generator.text_prompt.shots=2")
    _fails(capsys, _run(tmp_path, "bbc-news-static", *sets), "shots=2", "1 real training text")
    assert not (tmp_path / "run").exists()


@pytest.mark.usefixtures("no_models")
def test_budget_below_round_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(
        capsys, _run(tmp_path, "digits-static", "loop.budget.synthetic_samples=5"),
        "loop.budget.synthetic_samples=5", "makes 100",
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.usefixtures("no_models")
def test_resume_with_another_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    save_config(resolve_config("digits-real-only"), run / "config.yaml")
    before = (run / "config.yaml").read_bytes()
    _fails(
        capsys, _run(tmp_path, "digits-real-only", "task.epochs=3"),
        "was started with a different config", "task.epochs",
    )
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]
    assert (run / "config.yaml").read_bytes() == before


@pytest.mark.usefixtures("no_models")
def test_two_unnamed_configs_share_the_default_run_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(yaml.safe_dump({"task": {"epochs": 2}}), encoding="utf-8")
    second.write_text(yaml.safe_dump({"task": {"epochs": 3}}), encoding="utf-8")
    save_config(resolve_config(str(first)), tmp_path / "runs" / "run" / "config.yaml")
    _fails(
        capsys, ["run", str(second)],
        "runs/run was started with a different config", "give this one a name:",
    )


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--report", "--no-report"], "--report and --no-report both given"),
        (["--out", "a", "--out=b"], "--out given twice (--out, --out)"),
        (["-o", "a", "--out", "b"], "--out given twice (-o, --out)"),
    ],
)
def test_conflicting_flags_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    flags: list[str], needle: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    _fails(capsys, ["run", "digits-real-only", *flags], needle)
    assert list(tmp_path.iterdir()) == []


def test_repeatable_set_is_not_a_conflict(capsys: pytest.CaptureFixture[str]) -> None:
    # --set may repeat; its value may even look like another option
    _fails(
        capsys, ["config", "show", "digits-real-only", "--set", "seed=1", "-s", "tsak.epochs=2"],
        "did you mean 'task'",
    )


def test_typo_inside_a_list_item_gets_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    _fails(
        capsys,
        ["config", "validate", "digits-gendataagent",
         "--set", "valuation.selection=[{rule: drop_lowest, scor: vog}]"],
        "unknown config key 'valuation.selection.0.scor'",
        "did you mean 'valuation.selection.0.score'?",
    )


# -- section 3: inspect before running --------------------------------------------------


def test_presets_lists_every_preset_with_its_description(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _cli(["presets"], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == len(preset_names())
    for name, line in zip(preset_names(), lines, strict=True):
        assert line.split()[0] == name
        assert line.endswith(resolve_config(name).description)


def test_config_show_prints_the_resolved_config(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(["config", "show", "digits-static", "--set", "seed=3"], capsys)
    assert code == 0
    shown = RunConfig.model_validate(yaml.safe_load(out))
    assert shown == resolve_config("digits-static", ["seed=3"])


def test_config_show_help_keys_gives_meaning_and_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _cli(["config", "show", "digits-static", "--help-keys"], capsys)
    assert code == 0
    lines = out.splitlines()
    at = lines.index("data.k_shot: 10")
    assert "Real training samples kept per class" in lines[at + 1]
    assert lines[at + 1].endswith("(default: null)")
    assert "loop.budget.synthetic_samples: null" in lines
    keys = [line for line in lines if not line.startswith(" ")]
    assert len(keys) * 2 == len(lines)  # every key has its description line


@pytest.mark.usefixtures("no_models")
def test_config_validate_checks_against_the_data(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _cli(["config", "validate", "digits-static"], capsys)
    assert code == 0
    assert "digits-static: valid" in out and "round 1 makes 100 synthetic samples" in out
    _fails(capsys, ["config", "validate", "digits-static", "--set", "data.k_shot=500"], "k_shot")


@pytest.mark.usefixtures("no_models")
def test_dry_run_prints_the_plan_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    code, out, err = _cli(["run", "digits-utilgen", "--out", str(run), "--dry-run"], capsys)
    assert code == 0, err
    assert not run.exists()
    assert "train 100 (k_shot 10 a class)" in out
    assert "round 1: generates 300 samples (300 generator calls)" in out
    # round 2 also pays for prompt ascent (10 steps) and noise optimisation (1 + 10) a request
    assert "round 2: generates 300 samples (6600 generator calls)" in out
    assert "Diffusion-DPO (lora), 200 optimiser steps" in out
    assert f"{run}/rounds/000..002/" in out
    assert "round 3" not in out


@pytest.mark.usefixtures("no_models")
def test_dry_run_shows_where_the_budget_stops_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    args = _run(tmp_path, "digits-gendataagent", "loop.budget.synthetic_samples=250")
    code, out, err = _cli([*args, "--dry-run"], capsys)
    assert code == 0, err
    assert "(40 epochs, a checkpoint each; VoG reads epochs 13, 27, 40)" in out
    assert "round 2: generates 100 samples" in out
    assert "round 3: not run, it would exceed budget:synthetic_samples" in out
    assert not (tmp_path / "run").exists()


def test_dry_run_refuses_repair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(capsys, _run(tmp_path, "digits-static", extra=("--dry-run", "--repair")), "--repair")
    assert not (tmp_path / "run").exists()


COMMANDS = [
    [], ["run"], ["train"], ["eval"], ["report"], ["efficiency"], ["compare"], ["demo"],
    ["feedback"], ["presets"], ["pool"], ["pool", "show"], ["pool", "verify"],
    ["pool", "export"], ["config"], ["config", "show"], ["config", "validate"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_help_names_values_in_words(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli([*command, "--help"], capsys)
    assert code == 0 and out.startswith("Usage: utilgen")
    for typer_style in ("{", "<str>", "<path>", "<int>", "<list[", "<text>", "<integer>"):
        assert typer_style not in out, out


def test_root_and_pool_help_give_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ([], ["pool"], ["config"]):
        _, out, _ = _cli([*command, "--help"], capsys)
        assert "Examples:" in out and "utilgen " in out.split("Examples:")[1]
