"""The training log and result writer both DPO trainers share: file names, line format,
TensorBoard tags, a fresh log per training, and nothing written off the main process."""

from __future__ import annotations

import json
from pathlib import Path

from utilgen.feedback.training_log import (
    LOG_FILE,
    RESULT_FILE,
    TENSORBOARD_DIR,
    TrainingLog,
    write_result,
)


def _tags(directory: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return set(events.Tags()["scalars"])


def test_records_go_to_log_jsonl_and_tensorboard(tmp_path: Path) -> None:
    log = TrainingLog(tmp_path, enabled=True, scalar_prefix="train")
    log.write({"step": 1.0, "loss": 0.5, "epoch": 0.0})
    log.write({"step": 2.0, "loss": 0.25, "epoch": 0.0})
    log.close()
    lines = (tmp_path / LOG_FILE).read_text().splitlines()
    # in the record's order, one JSON object per line
    assert lines[0] == '{"step": 1.0, "loss": 0.5, "epoch": 0.0}'
    assert [json.loads(line) for line in lines] == log.history
    # step and epoch are the axes, not scalars
    assert _tags(tmp_path / TENSORBOARD_DIR) == {"train/loss"}


def test_sorted_keys_and_a_fresh_log_each_training(tmp_path: Path) -> None:
    (tmp_path / LOG_FILE).write_text('{"step": 9.0}\n')
    (tmp_path / TENSORBOARD_DIR).mkdir()
    (tmp_path / TENSORBOARD_DIR / "stale").write_text("x")
    log = TrainingLog(tmp_path, enabled=True, scalar_prefix="p", sort_keys=True)
    log.write({"step": 1.0, "b": 2.0, "a": 1.0})
    log.close()
    assert (tmp_path / LOG_FILE).read_text() == '{"a": 1.0, "b": 2.0, "step": 1.0}\n'
    assert not (tmp_path / TENSORBOARD_DIR / "stale").exists()


def test_other_processes_keep_history_and_write_nothing(tmp_path: Path) -> None:
    log = TrainingLog(tmp_path, enabled=False, scalar_prefix="p")
    log.write({"step": 1.0, "loss": 1.0})
    log.close()
    write_result(tmp_path, {"steps": 1}, enabled=False)
    assert log.history == [{"step": 1.0, "loss": 1.0}] and list(tmp_path.iterdir()) == []
    write_result(tmp_path, {"steps": 1})
    assert json.loads((tmp_path / RESULT_FILE).read_text()) == {"steps": 1}
