"""RunLock: one writer per run directory, across processes, surviving a killed holder."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pool_samples import batch

from utilgen.errors import RunLockedError
from utilgen.pool import PoolStore, RunLock

HOLD_LOCK = (
    "import sys\n"
    "from utilgen.pool import RunLock\n"
    "lock = RunLock(sys.argv[1]); lock.acquire()\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"  # hold until the parent closes stdin or kills us
)


@pytest.fixture
def holder(run_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """A child process that holds the lock of ``run_dir`` until killed."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "locked"
    yield child
    child.kill()
    child.wait()


def test_second_writer_gets_a_one_line_error_naming_the_holder(
    holder: subprocess.Popen[str], run_dir: Path
) -> None:
    with pytest.raises(RunLockedError) as err:
        RunLock(run_dir).acquire()
    message = str(err.value)
    assert f"process {holder.pid}" in message and "wait for it to finish or stop it" in message
    assert "\n" not in message
    with pytest.raises(RunLockedError, match=str(holder.pid)):
        PoolStore.open(run_dir, writable=True).__enter__()


def test_readers_need_no_lock(holder: subprocess.Popen[str], run_dir: Path) -> None:
    holder.kill()
    holder.wait()
    with PoolStore.open(run_dir, writable=True) as store:
        store.append(batch(0))
        # another reader in the meantime (same or other process) is fine
        assert len(PoolStore(run_dir)) == 6


def test_a_lock_left_by_a_killed_process_does_not_block(
    holder: subprocess.Popen[str], run_dir: Path
) -> None:
    holder.kill()  # SIGKILL: no cleanup runs; the kernel drops the flock
    holder.wait()
    assert (run_dir / "lock").read_text().strip() == str(holder.pid)
    with RunLock(run_dir) as lock:
        assert lock.held
        assert (run_dir / "lock").read_text().strip() == str(os.getpid())


def test_lock_is_released_on_exit_and_not_reentrant(run_dir: Path) -> None:
    with RunLock(run_dir) as lock, pytest.raises(RunLockedError, match="this process"):
        RunLock(run_dir).acquire()
    assert not lock.held
    with RunLock(run_dir) as again:
        assert again.held
    assert (run_dir / "lock").exists()  # the file stays; only the flock matters
