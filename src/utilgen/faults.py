"""Fault points: named places where a test can kill the process, as a crash would.

A run is only as resumable as its worst-placed crash. The reliability tests start
``utilgen run`` in a subprocess with ``UTILGEN_FAULT=<point>`` (or ``<point>@<n>``: the n-th
time the point is reached, counted from 1) and the process SIGKILLs itself there: no
``finally``, no atexit, no flush, exactly like a power cut or the OOM killer. Re-running the
same command must then finish with the same pool and metrics as an uninterrupted run.

``UTILGEN_FAULT=enospc@<n>`` instead makes the n-th atomic write of the process
(:mod:`utilgen.atomic`, counted from 1) fail half-way with ``OSError(ENOSPC)``, as a full
disk would: the tests then check that the run stops with a one-line message, leaves no
partial file and resumes once there is space again.

Without the variable (every normal run) :func:`fault_point` is one dictionary lookup.
The points (``POINTS``) sit just after a durable write and just before the next one, where
a crash leaves the most half-finished state behind.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "UTILGEN_FAULT"

POINTS: dict[str, str] = {
    "stage1.pool": "real samples appended to the pool, stage 1 not trained",
    "train.checkpoint": "a task-model checkpoint written, more epochs to go",
    "stage1.trained": "stage 1 trained and checkpointed, metrics.json not written",
    "generate.append": "a batch of generated samples appended to the pool",
    "generate.done": "the round's samples all generated, nothing valued",
    "value.scored": "the round's scores recorded, selection not applied",
    "select.applied": "selection recorded in the pool, the student not trained",
    "round.trained": "the round's student trained, metrics.json not written",
    "feedback.pairs": "preference pairs written, the DPO adapter not trained",
    "feedback.trained": "the DPO adapter trained and saved, result.json not written",
    "policy.planned": "instance-level requests computed, not yet saved",
    "control.scored": "the control arm generated and judged, control.parquet not written",
    "summary.before": "every round finished, summary.json not written",
    "report.before": "summary.json and report.md written, report.html not",
}

DISK_FULL = "enospc"

_reached: dict[str, int] = {}


def fault_point(name: str) -> None:
    """SIGKILL this process if ``UTILGEN_FAULT`` names this point (and visit count)."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition("@")
    if point != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == (int(nth) if nth else 1):
        os.kill(os.getpid(), signal.SIGKILL)


def write_fault(path: os.PathLike[str] | str) -> None:
    """Raise ``OSError(ENOSPC)`` for ``path`` if ``UTILGEN_FAULT=enospc@<n>`` and this is
    the n-th atomic write of the process (called by :mod:`utilgen.atomic` mid-write)."""
    wanted = os.environ.get(ENV)
    if not wanted or not wanted.startswith(DISK_FULL):
        return
    _, _, nth = wanted.partition("@")
    _reached[DISK_FULL] = _reached.get(DISK_FULL, 0) + 1
    if _reached[DISK_FULL] == (int(nth) if nth else 1):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
