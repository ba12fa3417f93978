"""Bad text-generation input through the CLI: exit 2, one line naming the problem and the fix,
nothing written (issue 5 acceptance)."""

from __future__ import annotations

from pathlib import Path

import pytest

from utilgen.cli import main


def _run_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sets: list[str], *needles: str
) -> None:
    run = tmp_path / "run"
    args = ["run", "bbc-news-static", "--out", str(run)]
    for item in sets:
        args += ["--set", item]
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, err
    assert lines[0].startswith("utilgen: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not run.exists()


def test_model_not_on_disk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run_fails(
        tmp_path, capsys, ["generator.lm.model=some-org/not-downloaded-lm"],
        "some-org/not-downloaded-lm", "generator.lm.model=DIR",
    )


def test_missing_gguf_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    absent = tmp_path / "absent.gguf"
    _run_fails(tmp_path, capsys, [f"generator.lm.model={absent}"], "absent.gguf")


def test_template_without_placeholders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run_fails(
        tmp_path, capsys, ["generator.text_prompt.template=Write a news article about {label}."],
        "generator.text_prompt.template", "{examples}",
    )


def test_class_with_fewer_texts_than_shots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # bbc-news-static keeps 10 real articles per class.
    _run_fails(
        tmp_path, capsys, ["generator.text_prompt.shots=11"],
        "has 10 real training text(s)", "generator.text_prompt.shots=11",
    )
