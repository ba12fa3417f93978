"""What a DPO trainer writes beside the weights it trains: ``log.jsonl``, ``tensorboard/``
and ``result.json``.

Both trainers (:mod:`utilgen.feedback.lm_dpo` and :mod:`utilgen.feedback.diffusion_dpo`)
write into their ``out_dir`` (``RUN/rounds/NNN/adapters/dpo`` in a run):

* ``log.jsonl``: one JSON object per logged optimiser step, written and flushed line by
  line, with ``step`` (a float) and the step's metrics;
* ``tensorboard/``: the same metrics as TensorBoard scalars ``<prefix>/<key>`` at ``step``;
* ``result.json``: what the training did, written atomically and last: its presence marks
  the feedback as done (a resumed run restores instead of training again).

Only the main process writes (under ``accelerate launch`` every process trains); the others
keep the history in memory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

from utilgen.atomic import write_json_atomic
from utilgen.faults import fault_point
from utilgen.pool.layout import TRAINING_LOG_FILE as LOG_FILE
from utilgen.pool.layout import TRAINING_RESULT_FILE as RESULT_FILE

TENSORBOARD_DIR = "tensorboard"
# Record keys that are coordinates, not metrics: not sent to TensorBoard as scalars.
AXES = ("step", "epoch")


class TrainingLog:
    """Per-step records to ``log.jsonl`` and TensorBoard (see the module docstring).

    Args:
        out_dir: the training's output directory (exists on the main process).
        enabled: write files (the main process); otherwise only :attr:`history` is kept.
        scalar_prefix: the TensorBoard tag prefix (``train`` gives ``train/loss``).
        sort_keys: write each ``log.jsonl`` line with sorted keys (U-DPO's format) instead
            of in the record's order (Diffusion-DPO's: ``step`` first).

    Use it as a context manager (or call :meth:`close`). A fresh training run owns its
    log: opening one drops the ``log.jsonl`` and TensorBoard
    events an interrupted attempt left behind (a run killed before ``result.json`` trains
    again on resume).
    """

    def __init__(
        self, out_dir: Path, *, enabled: bool, scalar_prefix: str, sort_keys: bool = False
    ) -> None:
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.scalar_prefix = scalar_prefix
        self.sort_keys = sort_keys
        self.history: list[dict[str, float]] = []
        self._writer: Any = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        (self.out_dir / LOG_FILE).unlink(missing_ok=True)
        shutil.rmtree(self.out_dir / TENSORBOARD_DIR, ignore_errors=True)
        self._writer = SummaryWriter(log_dir=str(self.out_dir / TENSORBOARD_DIR))

    def write(self, record: dict[str, float]) -> None:
        """Keep ``record`` (it must hold ``step``) and, when enabled, append it to the files."""
        self.history.append(record)
        if not self.enabled:
            return
        with open(self.out_dir / LOG_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=self.sort_keys) + "\n")
            f.flush()
        step = int(record["step"])
        for key, value in record.items():
            if key not in AXES:
                self._writer.add_scalar(f"{self.scalar_prefix}/{key}", value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()

    def __enter__(self) -> TrainingLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def write_result(out_dir: Path, record: dict[str, Any], *, enabled: bool = True) -> None:
    """Write ``out_dir/result.json`` atomically (when ``enabled``: the main process), after
    the fault point ``feedback.trained`` (the weights are saved, the result is not)."""
    fault_point("feedback.trained")
    if enabled:
        write_json_atomic(Path(out_dir) / RESULT_FILE, record)
