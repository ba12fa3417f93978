"""Bad input through the CLI: exit 2, one line naming the problem and the fix, nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utilgen.cli import main


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    code = exc.value.code
    return int(code) if code is not None else 0, capsys.readouterr().err


def _image_folder(root: Path, classes: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for name, n in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    # Log lines (warnings) may precede it; the error itself is exactly one line.
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, err
    assert lines[0].startswith("utilgen: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def _run_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], preset: str, sets: list[str], *needles: str
) -> None:
    """`utilgen run` with ``sets`` exits 2 with one line naming ``needles``, writing nothing."""
    run = tmp_path / "run"
    args = ["run", preset, "--out", str(run)]
    for item in sets:
        args += ["--set", item]
    _assert_one_line_error(*_cli(args, capsys), *needles)
    assert not run.exists()


def test_missing_data_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    absent = tmp_path / "absent"
    sets = ["data.source=imagefolder", f"data.path={absent}"]
    _run_fails(tmp_path, capsys, "digits-real-only", sets, "absent")


def test_empty_class_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _image_folder(tmp_path / "imgs", {"cat": 6, "dog": 6})
    (data / "empty_class").mkdir()
    sets = ["data.source=imagefolder", f"data.path={data}"]
    _run_fails(tmp_path, capsys, "digits-real-only", sets, "empty_class")


def test_corrupt_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _image_folder(tmp_path / "imgs", {"cat": 6, "dog": 6})
    good = (data / "dog" / "3.png").read_bytes()
    (data / "dog" / "3.png").write_bytes(good[: len(good) // 2])
    sets = ["data.source=imagefolder", f"data.path={data}"]
    _run_fails(tmp_path, capsys, "digits-real-only", sets, "3.png")


def test_non_utf8_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "texts.csv"
    rows = "text,label\n" + "".join(f"good text {i},a\nother text {i},b\n" for i in range(6))
    csv.write_bytes(rows.encode() + "caf\xe9 latin-1,a\n".encode("latin-1"))
    sets = ["data.source=csv", f"data.path={csv}"]
    _run_fails(tmp_path, capsys, "bbc-news-real-only", sets, "texts.csv", "UTF-8")


def test_missing_label_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text("".join(f'{{"text": "t{i}", "category": "a"}}\n' for i in range(6)))
    sets = ["data.source=jsonl", f"data.path={jsonl}"]
    _run_fails(tmp_path, capsys, "bbc-news-real-only", sets, "label", "category")


def test_unknown_config_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run_fails(tmp_path, capsys, "digits-real-only", ["task.epocs=3"], "task.epocs", "task.epochs")


@pytest.mark.parametrize(
    ("points", "needles"),
    [
        # digits-gendataagent trains stage 1 for 40 epochs and filters by VoG
        ("{epochs: [10, 41]}", ("epoch 41 is outside", "1..40")),
        ("41", ("task.epochs=40", "at most 40")),
        ("{fractions: [0.01, 1.0]}", ("rounds to epoch 0",)),
        ("[10, 20]", ("{epochs: [10, 20, 30]}",)),
    ],
)
def test_vog_checkpoints_outside_the_run(
    points: str, needles: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sets = [f"valuation.vog_checkpoints={points}"]
    _run_fails(tmp_path, capsys, "digits-gendataagent", sets, "valuation.vog_checkpoints", *needles)


def test_model_id_not_on_disk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sets = [
        "task.model=hf-text",
        "task.model_path=no-such-org/no-such-model",
        "data.max_per_class=10",
        "data.k_shot=5",  # 10 a class leaves 6 for training
    ]
    _run_fails(
        tmp_path, capsys, "bbc-news-real-only", sets, "no-such-org/no-such-model", "model_path"
    )


def test_validation_too_small_for_the_held_out_meta_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """digits-utilgen reserves meta_per_class validation digits per class for the weight
    net's meta set; 30 would leave a class (26 in validation) none."""
    sets = ["valuation.meta_weight.meta_per_class=30"]
    _run_fails(
        tmp_path,
        capsys,
        "digits-utilgen",
        sets,
        "valuation.meta_weight.meta_per_class=30",
        "at most 25",
        "data.val_fraction",
    )


def test_a_meta_set_that_would_overlap_the_fitted_samples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were the meta set drawn from the training split the judge is fitted on, the plan
    refuses it before anything is written."""
    from dataclasses import replace

    from utilgen.data import Splits, k_shot
    from utilgen.loop import run_splits as splits_module

    def from_train(splits: Splits, per_class: int, seed: int) -> Splits:
        return replace(splits, meta=k_shot(splits.train, per_class, seed))

    monkeypatch.setattr(splits_module, "reserve_meta_set", from_train)
    needles = ("meta set shares 100 sample id(s) with the train split", "meta_set=validation")
    _run_fails(tmp_path, capsys, "digits-utilgen", [], *needles)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    from utilgen.errors import ConfigError

    with pytest.raises(ConfigError):
        main(["run", "digits-real-only", "--set", "task.epocs=3", "--debug"])


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _cli(["no-such-command"], capsys)
    _assert_one_line_error(code, err, "no-such-command")


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    from utilgen import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"utilgen {__version__}"
    for command in (
        ["run"],
        ["train"],
        ["eval"],
        ["pool", "show"],
        ["pool", "verify"],
        ["pool", "export"],
        ["report"],
        ["demo"],
    ):
        with pytest.raises(SystemExit) as exc:
            main([*command, "--help"])
        out = capsys.readouterr().out
        assert exc.value.code == 0
        assert "Usage: utilgen" in out and "Example" in out, command


def test_continued_training_after_the_classes_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """loop.continue_training resumed on data whose classes changed since the last round:
    exit 2, one line, and the run directory is left exactly as it was."""
    from cli_helpers import TINY_BUILTIN

    monkeypatch.setenv("UTILGEN_CACHE_DIR", str(tmp_path / "cache"))
    data = _image_folder(tmp_path / "imgs", {"cat": 14, "dog": 14, "owl": 14})
    run = tmp_path / "run"
    args = ["--quiet", "run", "digits-static", "--out", str(run)]
    for item in [
        "data.source=imagefolder", f"data.path={data}", "data.k_shot=4", "task.epochs=2",
        "generator.per_class=2", "loop.rounds=2", "loop.continue_training=true",
        "valuation.scores=[marginal]", "valuation.selection=[]", *TINY_BUILTIN,
    ]:
        args += ["--set", item]
    assert _cli(args, capsys)[0] == 0
    (run / "rounds/002/metrics.json").unlink()  # round 2 is to be trained again
    _image_folder(data, {"zebra": 14})  # ... on data with a fourth class, sorted last
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "lock"}
    _assert_one_line_error(*_cli(args, capsys), "trained on 3 classes", "now has 4")
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "lock"}
    assert after == before
