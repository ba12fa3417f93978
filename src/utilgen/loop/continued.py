"""Continued training (``loop.continue_training``): a round's classifier starts from the
previous round's, as GenDataAgent fine-tunes its model on-the-fly (Algorithm 1, line 16:
f_θ(iter+1) ← f_θ(iter)(D)).

Round r's student is a freshly built task model with round r-1's last checkpoint loaded
(stage 1's for round 1), bit for bit, before the round generates anything: a checkpoint that
does not fit the model (the data's classes changed since it was written) fails the round
before it writes a sample.
"""

from __future__ import annotations

from utilgen.config import RunConfig, TaskConfig
from utilgen.errors import UtilgenError
from utilgen.pool import RunLayout
from utilgen.pool.layout import round_name
from utilgen.task import TaskModel
from utilgen.task.checkpoint import list_checkpoints, load_checkpoint, read_sidecar


def continue_from_previous(student: TaskModel, layout: RunLayout, round_index: int) -> str:
    """Load round ``round_index - 1``'s last checkpoint into ``student``; returns that
    round's name (``"000"`` for stage 1).

    Raises:
        UtilgenError: the previous round left no checkpoint, or its checkpoint was written
            for another number of classes or another model.
    """
    previous = layout.round(round_index - 1)
    found = list_checkpoints(previous.checkpoints)
    if not found:
        raise UtilgenError(
            f"loop.continue_training starts round {round_index} from round "
            f"{round_index - 1}'s classifier, but {previous.checkpoints} holds no checkpoint; "
            f"delete {previous.metrics} and re-run to retrain that round"
        )
    saved = read_sidecar(found[-1]).get("num_classes")
    if saved is not None and int(saved) != student.num_classes:
        raise UtilgenError(
            f"loop.continue_training cannot start round {round_index} from {found[-1]}: it "
            f"classifies {saved} classes and the data now has {student.num_classes}; the "
            "classes changed since that round, so start a new run directory (--out)"
        )
    load_checkpoint(student, found[-1])  # any other mismatch: its own one-line error
    return round_name(round_index - 1)


def round_task_config(config: RunConfig) -> TaskConfig:
    """The task section a generation round trains with: ``loop.continue_epochs`` replaces
    ``task.epochs`` for a continued round."""
    if config.loop.continue_training and config.loop.continue_epochs is not None:
        return config.task.model_copy(update={"epochs": config.loop.continue_epochs})
    return config.task
