"""Bad input to the diffusers backend: a one-line UtilgenError naming the problem and the
fix; through the CLI, exit code 2 and no run directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_sd import save_tiny_sd, tiny_sd_pipeline

from utilgen.cli import main
from utilgen.config import DiffusersConfig, config_from_dict
from utilgen.errors import ConfigError, ModelNotFoundError, UtilgenError
from utilgen.generate import GenerationError, GenerationRequest
from utilgen.generate.diffusers_backend import DiffusersGenerator
from utilgen.generate.prompts import class_prompt_requests
from utilgen.generate.schedulers import UnknownSchedulerError, make_scheduler

CPU = torch.device("cpu")


def _one_line(err: pytest.ExceptionInfo[UtilgenError], *needles: str) -> None:
    message = str(err.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message


def _cli_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sets: list[str], *needles: str
) -> None:
    """``utilgen run digits-static`` with the diffusers generator and ``sets`` exits 2 with
    one error line naming ``needles``, and writes no run directory."""
    run = tmp_path / "run"
    args = ["run", "digits-static", "--out", str(run), "--set", "generator.kind=diffusers"]
    for item in sets:
        args += ["--set", item]
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("utilgen: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not run.exists()


@pytest.mark.parametrize(
    ("key", "value", "needles"),
    [
        ("strength", 1.5, ("generator.diffusers.strength", "1.5")),
        ("strength", -0.1, ("generator.diffusers.strength",)),
        ("guidance_scale", -1, ("generator.diffusers.guidance_scale",)),
        ("scheduler", "eular", ("unknown scheduler 'eular'", "did you mean 'euler'?", "unipc")),
        ("image_size", 30, ("multiple of 8", "try 32")),
        ("dtype", "float8", ("generator.diffusers.dtype",)),
    ],
)
def test_bad_config_values_are_one_line_config_errors(
    key: str, value: object, needles: tuple[str, ...]
) -> None:
    raw = {"generator": {"kind": "diffusers", "per_class": 1, "diffusers": {key: value}}}
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    _one_line(err, *needles)


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ({"lora": {"train": True, "path": "a.safetensors"}}, "not both"),
        ({"textual_inversion": {"path": "tokens"}}, "textual_inversion.classes"),
        ({"captions_file": "c.json", "captioner": "blip2"}, "not both"),
        ({"prompt_template": "a photo of a {class}"}, "{caption}"),
        ({"lora": {"rank": 0}}, "generator.diffusers.lora.rank"),
    ],
)
def test_conflicting_settings_are_config_errors(section: dict, needle: str) -> None:  # type: ignore[type-arg]
    raw = {"generator": {"kind": "diffusers", "per_class": 1, "diffusers": section}}
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    _one_line(err, needle)


def test_scheduler_aliases_are_accepted() -> None:
    cfg = DiffusersConfig(scheduler="DPMSolverMultistepScheduler")
    assert cfg.scheduler == "dpm++"
    assert DiffusersConfig(scheduler="Euler_A").scheduler == "euler-a"


def test_requests_outside_their_ranges_are_generation_errors() -> None:
    with pytest.raises(GenerationError) as err:
        GenerationRequest(label=0, class_name="cat", seed=0, strength=1.2)
    _one_line(err, "strength must be in [0, 1]")
    with pytest.raises(GenerationError) as err:
        GenerationRequest(label=0, class_name="cat", seed=0, guidance_scale=-2.0)
    _one_line(err, "guidance scale must be >= 0")


def test_unknown_scheduler_given_to_the_generator(tmp_path: Path) -> None:
    with pytest.raises(UnknownSchedulerError) as err:
        DiffusersGenerator(tiny_sd_pipeline(), model="m", scheduler="dpm+")
    _one_line(err, "did you mean 'dpm++'?")
    with pytest.raises(UnknownSchedulerError):
        make_scheduler("nope", tiny_sd_pipeline().scheduler.config)


def test_models_that_are_not_on_disk(tmp_path: Path) -> None:
    def load(model: str | None) -> None:
        DiffusersGenerator.from_config(
            DiffusersConfig(model=model), device=CPU, batch_size=1, seed=0
        )

    with pytest.raises(ModelNotFoundError) as err:
        load("nobody/absent-model")
    _one_line(err, "nor in the offline Hugging Face cache", "generator.diffusers.model=DIR")
    with pytest.raises(ModelNotFoundError) as err:
        load(str(tmp_path / "absent"))
    _one_line(err, "model_index.json")
    (tmp_path / "unet-only").mkdir()
    with pytest.raises(ModelNotFoundError) as err:
        load(str(tmp_path / "unet-only"))
    _one_line(err, "has no model_index.json", "whole diffusers pipeline")
    with pytest.raises(ConfigError) as err:
        load(None)
    _one_line(err, "generator.diffusers.model")
    assert list(tmp_path.iterdir()) == [tmp_path / "unet-only"]


def test_missing_adapter_file(tmp_path: Path) -> None:
    gen = DiffusersGenerator(tiny_sd_pipeline(), model="m")
    with pytest.raises(ModelNotFoundError) as err:
        gen.load_lora(tmp_path / "absent.safetensors")
    _one_line(err, "lora.path", "save_lora_weights")


def test_class_missing_from_the_prompt_map() -> None:
    cfg = DiffusersConfig(prompt_map={"cat": "tabby cat"})
    with pytest.raises(ConfigError) as err:
        class_prompt_requests(("cat", "dog"), per_class=1, seed=0, round_index=1, cfg=cfg)
    _one_line(err, "prompt_map has no entry for class 'dog'")


def test_cli_model_not_on_disk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sets = ["generator.diffusers.model=nobody/absent-model"]
    _cli_fails(tmp_path, capsys, sets, "nobody/absent-model", "generator.diffusers.model=DIR")


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ("generator.diffusers.strength=1.5", "generator.diffusers.strength"),
        ("generator.diffusers.guidance_scale=-1", "generator.diffusers.guidance_scale"),
        ("generator.diffusers.scheduler=eular", "did you mean 'euler'?"),
    ],
)
def test_cli_bad_values(
    item: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _cli_fails(tmp_path, capsys, [item], needle)


def test_cli_class_missing_from_the_prompt_map(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = save_tiny_sd(tmp_path / "tiny-sd")
    sets = [f"generator.diffusers.model={model}", 'generator.diffusers.prompt_map={"0": zero}']
    _cli_fails(tmp_path, capsys, sets, "prompt_map has no entry for class '1'")
