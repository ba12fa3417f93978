"""User-facing errors.

Every error a user can cause is a :class:`UtilgenError` with a one-line message that names
the input and the fix. The CLI prints the message without a traceback and exits with
:data:`EXIT_USER_ERROR`; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno

EXIT_USER_ERROR = 2


class UtilgenError(Exception):
    """Base class of errors caused by user input (config, data, paths, models)."""


class ConfigError(UtilgenError):
    """The config file or a ``--set`` override is invalid."""


class DataError(UtilgenError):
    """A dataset cannot be read: missing path, empty class, corrupt file, wrong column."""


class ModelNotFoundError(UtilgenError):
    """A model id or path is not available offline."""


class PoolError(UtilgenError):
    """The sample pool of a run directory is missing, corrupt or inconsistent."""


class RunLockedError(UtilgenError):
    """Another process holds the run directory's lock."""


# errno values that mean "the file system refused more data": full disk or exhausted quota.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full_message(err: OSError) -> str:
    """The one line the CLI prints when a write fails for lack of space."""
    where = f" writing {err.filename}" if err.filename else ""
    return (
        f"no space left on the device{where} ({err.strerror or 'disk full'}); everything "
        "finished before this step is intact: free space (or point --out and "
        "UTILGEN_CACHE_DIR elsewhere) and re-run the same command to resume"
    )


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message, surrounding whitespace stripped; its type's name
    when the message is empty (for one-line errors that quote the cause)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
