"""The public Python API: the README's example runs as written, `import utilgen` stays light,
and the typed results read what the run wrote."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import utilgen

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def _readme_python() -> str:
    """The README's Python API example: the first ```python block, the one that runs as
    written (the next, on registering one's own parts, names the user's classes)."""
    blocks = _readme_blocks()
    assert blocks and "utilgen.run(" in blocks[0], "the README's first Python block is the API"
    return str(blocks[0])


def test_readme_registration_example_names_real_registries() -> None:
    from utilgen import registry

    blocks = _readme_blocks()
    assert len(blocks) == 2
    code = blocks[1]
    compile(code, "README.md", "exec")
    names = re.findall(r"^([A-Z_]+)\.register\(", code, re.M)
    assert len(names) == 3
    for name in names:
        assert isinstance(getattr(registry, name), registry.Registry), name


def test_readme_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_python(), "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    run_dir = tmp_path / "runs" / "api-example"
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    first = lines[0].split()
    assert float(first[0]) == pytest.approx(summary["accuracy"])
    assert first[-1] == summary["stop"]["reason"] == "max_rounds"
    assert [line.split()[0] for line in lines[1:]] == ["0"]  # stage 1 only: a real-only run
    metrics = json.loads((run_dir / "rounds" / "000" / "metrics.json").read_text())
    assert float(lines[1].split()[2]) == pytest.approx(metrics["test"]["accuracy"])
    assert lines[1].split()[3] == "None"  # no label fidelity without generation


def test_results_are_typed_views_of_the_files(tmp_path: Path) -> None:
    cfg = utilgen.load_config("digits-real-only", overrides=["task.epochs=2", "name=typed"])
    result = utilgen.run(cfg, tmp_path / "run")
    written = json.loads((tmp_path / "run" / "summary.json").read_text(encoding="utf-8"))
    assert isinstance(result.summary, utilgen.Summary)
    # Exact below: every value is the one written to JSON in this process and read back
    # (float repr round-trips exactly), or the stored metrics a resume reads; nothing is
    # recomputed.
    assert result.summary.to_dict() == written
    assert result.summary.name == "typed" and result.summary.seed == 0
    assert result.summary.per_class_accuracy == written["per_class_accuracy"]
    assert result.summary.stop == utilgen.StopRecord.from_dict(written["stop"])
    assert result.summary.label_fidelity is None
    assert [r.round for r in result.rounds] == [0]
    assert result.rounds[0].test_accuracy == written["accuracy"]  # real-only: stage 1 is last
    # A resumed run reads the same results back from the files.
    again = utilgen.run(cfg, tmp_path / "run")
    assert again.summary == result.summary and again.rounds == result.rounds


def test_import_is_light_and_every_export_resolves() -> None:
    code = "import sys, utilgen; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    for name in utilgen.__all__:
        assert getattr(utilgen, name) is not None
    assert set(dir(utilgen)) >= set(utilgen.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = utilgen.nope  # type: ignore[attr-defined]


def test_load_config_errors_are_one_line() -> None:
    from utilgen.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean preset 'digits-static'"):
        utilgen.load_config("digits-statik")
