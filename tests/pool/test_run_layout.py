"""``RunLayout`` names every path of the run-directory contract (docs/architecture.md,
docs/architecture.md), and no other module builds those paths itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import utilgen
from utilgen.pool import layout as layout_module
from utilgen.pool.layout import RoundLayout, RunLayout, blob_path, manifest_path, segments_dir

DIGEST = "ab" + "0" * 62

# Every path of the contract, relative to the run directory, as the docs write it.
RUN_PATHS = {
    "config": "config.yaml",
    "lock": "lock",
    "pool_dir": "pool",
    "manifest": "pool/manifest.parquet",
    "segments_dir": "pool/manifest.d",
    "blobs_dir": "pool/blobs",
    "rounds_dir": "rounds",
    "summary": "summary.json",
    "report_html": "report.html",
    "report_md": "report.md",
    "feedback_effect": "feedback_effect.json",
    "feedback_effect_plot": "feedback_effect.png",
    "feedback_control_plot": "feedback_control.png",
    "repair_record": "repair.json",
    "efficiency": "efficiency.json",
    "efficiency_partial": "efficiency.partial.json",
}
ROUND_PATHS = {
    "metrics": "metrics.json",
    "scores": "scores.parquet",
    "training_set": "training_set.parquet",
    "checkpoints": "checkpoints",
    "pairs": "pairs.parquet",
    "dpo_adapter": "adapters/dpo",
    "dpo_log": "adapters/dpo/log.jsonl",
    "dpo_result": "adapters/dpo/result.json",
    "control": "control.parquet",
    "hard_sample_plan": "hard_samples.json",
    "instance_requests": "instance_requests",  # + .json / .safetensors
    "meta_weight_net": "meta_weight_net.safetensors",
}


@pytest.mark.parametrize(("name", "relative"), sorted(RUN_PATHS.items()))
def test_run_paths_are_the_documented_ones(name: str, relative: str, tmp_path: Path) -> None:
    assert getattr(RunLayout(tmp_path), name) == tmp_path / relative


@pytest.mark.parametrize(("name", "relative"), sorted(ROUND_PATHS.items()))
@pytest.mark.parametrize(("index", "folder"), [(0, "000"), (7, "007"), (12, "012"), (123, "123")])
def test_round_paths_are_the_documented_ones(
    name: str, relative: str, index: int, folder: str, tmp_path: Path
) -> None:
    layout = RunLayout(tmp_path)
    assert layout.round_dir(index) == tmp_path / "rounds" / folder
    assert layout.round(index) == RoundLayout(tmp_path / "rounds" / folder)
    assert getattr(layout.round(index), name) == tmp_path / "rounds" / folder / relative


def test_every_path_is_covered_here() -> None:
    """A path added to the layout gets its documented value pinned above."""
    run = {n for n, v in vars(RunLayout).items() if isinstance(v, property)}
    rounds = {n for n, v in vars(RoundLayout).items() if isinstance(v, property)}
    assert run == set(RUN_PATHS)
    assert rounds == set(ROUND_PATHS)


def test_blobs_are_sharded_by_their_first_two_hex_chars(tmp_path: Path) -> None:
    assert RunLayout(tmp_path).blob(DIGEST) == tmp_path / "pool/blobs/ab" / DIGEST


def test_string_root_and_the_pool_shorthands(tmp_path: Path) -> None:
    layout = RunLayout(str(tmp_path))
    assert layout.root == tmp_path
    assert layout == RunLayout(tmp_path)
    assert manifest_path(tmp_path) == layout.manifest
    assert segments_dir(tmp_path) == layout.segments_dir
    assert blob_path(tmp_path, DIGEST) == layout.blob(DIGEST)


def test_layout_is_frozen(tmp_path: Path) -> None:
    with pytest.raises(AttributeError):
        RunLayout(tmp_path).root = Path("elsewhere")  # type: ignore[misc]


def test_round_dirs_lists_round_folders_in_order(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    assert layout.round_dirs() == []  # no rounds/ yet
    for name in ("010", "002", "000"):
        (tmp_path / "rounds" / name).mkdir(parents=True)
    (tmp_path / "rounds" / "notes").mkdir()
    (tmp_path / "rounds" / "01").mkdir()
    (tmp_path / "rounds" / "003").write_text("a file, not a round")
    assert layout.round_dirs() == [
        (0, layout.round_dir(0)),
        (2, layout.round_dir(2)),
        (10, layout.round_dir(10)),
    ]


# -- no module but the layout builds a run-directory path ------------------------------------

SOURCE = Path(utilgen.__file__).parent
LAYOUT_FILE = Path(layout_module.__file__)
# Directories that are not run directories, though they reuse some of its file names.
NOT_RUN_DIRECTORIES = {
    "commands/train_eval.py": "`utilgen train --out DIR`: config.yaml, checkpoints/, metrics.json",
}


def _contract_names() -> list[str]:
    """Every file and folder name the layout defines (its str constants), split at '/'."""
    names = {
        part
        for key, value in vars(layout_module).items()
        if key.isupper() and isinstance(value, str)
        for part in value.split("/")
    }
    return sorted(names)


def _forbidden() -> re.Pattern[str]:
    names = "|".join(re.escape(n) for n in _contract_names())
    return re.compile(
        # `x / "rounds"`, `x / 'report.html'`, `x.joinpath("adapters", ...)`
        rf"""(?:/|joinpath\()\s*f?["'](?:{names})["']"""
        # `x / f"{i:03d}"`: a round folder's name
        r"""|/\s*f["']\{[^}"']*:03d\}["']"""
    )


def test_the_forbidden_pattern_catches_path_joins() -> None:
    pattern = _forbidden()
    for line in (
        'run_dir / "rounds" / f"{i:03d}"',
        'Path(run_dir) / "summary.json"',
        "out / 'report.html'",
        'directory / "checkpoints" / name',
        'run.round_dir(r).joinpath("adapters", "dpo")',
        'x / f"{round_index:03d}"',
    ):
        assert pattern.search(line), line
    for line in (
        'f"utility_r{round_index:03d}_{method}"',  # a column name, not a path
        '"rounds": metrics["round"] + 1',  # a JSON key
        "layout.round(i).metrics",
    ):
        assert not pattern.search(line), line


def test_no_module_builds_run_directory_paths_itself() -> None:
    pattern = _forbidden()
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        relative = path.relative_to(SOURCE).as_posix()
        if path == LAYOUT_FILE or relative in NOT_RUN_DIRECTORIES:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if pattern.search(code):
                found.append(f"{relative}:{number}: {line.strip()}")
    assert not found, "build these paths with utilgen.pool.layout.RunLayout:\n" + "\n".join(found)


def test_the_scan_still_sees_the_excepted_modules() -> None:
    """The exceptions are real: each still holds the names it is excepted for (drop it
    from NOT_RUN_DIRECTORIES when it does not)."""
    pattern = _forbidden()
    for relative in NOT_RUN_DIRECTORIES:
        assert pattern.search((SOURCE / relative).read_text(encoding="utf-8")), relative
