"""``RunLock``: one writer per run directory.

The lock is an ``flock`` on ``RUN/lock``, held for as long as a process writes the run.
The kernel releases it when the holder exits or is killed, so a crashed run never leaves
a lock that blocks the next one; the pid written into the file is only there to tell a
second writer whom it is waiting for.

``flock`` locks belong to an open file, not to a process: a second ``RunLock`` on the same
run directory fails even inside the process that holds the first. ``flock`` is not
reliable on some network file systems (NFS); keep run directories on a local disk.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

from utilgen.errors import RunLockedError
from utilgen.pool.layout import RunLayout


def _read_holder(fd: int) -> int | None:
    """The pid recorded in the lock file, or None if it is empty or unreadable."""
    try:
        text = os.pread(fd, 64, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class RunLock:
    """Exclusive, non-blocking lock on a run directory; use as a context manager.

    ``with RunLock(run_dir):`` creates ``run_dir`` if needed, takes the lock or raises
    :class:`RunLockedError` at once (it never waits), and releases it on exit.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = RunLayout(self.run_dir).lock
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object currently holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock; raises RunLockedError naming the holder's pid if another has it."""
        if self._fd is not None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # The file is opened in place, never replaced: the lock lives on this inode, so the
        # atomic temp-and-rename used for every other file would defeat it.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_holder(fd)
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunLockedError(self._locked_message(holder)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (a no-op if not held). The file stays: deleting it would race
        with a process that has just opened it."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _locked_message(self, holder: int | None) -> str:
        if holder == os.getpid():
            return (
                f"run directory {self.run_dir} is already locked by this process (pid "
                f"{holder}); open it for writing once and pass that store around"
            )
        who = f"process {holder}" if holder is not None else "another process"
        stop = f" (kill {holder})" if holder is not None else ""
        return (
            f"run directory {self.run_dir} is locked by {who}, which is writing it; "
            f"wait for it to finish or stop it{stop}, then re-run"
        )

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
