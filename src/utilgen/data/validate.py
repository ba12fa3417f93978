"""Checks on user-supplied data inputs, each failing with a one-line :class:`DataError`.

Paths and class names come from users; every problem is reported with the input it concerns
and how to fix it, never as a raw traceback from the library that tripped over it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from pathlib import Path

from utilgen.data.labelled import Modality
from utilgen.errors import DataError


def require_path(path: str | Path, source: str) -> Path:
    """``path`` with ``~`` expanded; raises when nothing exists there."""
    resolved = Path(path).expanduser()
    try:
        exists = resolved.exists()
    except (OSError, ValueError) as err:  # a name too long, or holding a NUL byte
        reason = err.strerror if isinstance(err, OSError) else str(err)
        raise DataError(
            f"data path {str(resolved)[:200]!r} cannot be used ({reason}); set data.path to the "
            f"{source} data's location"
        ) from None
    if not exists:
        raise DataError(
            f"data path {resolved} does not exist; set data.path to the {source} data's location"
        )
    return resolved


def require_dir(path: str | Path, source: str, expected: str) -> Path:
    """``path`` as an existing directory; ``expected`` describes its layout for the message."""
    resolved = require_path(path, source)
    if not resolved.is_dir():
        raise DataError(
            f"data path {resolved} is a file, but data.source={source} expects a directory "
            f"({expected}); point data.path at that directory"
        )
    return resolved


def require_file(path: str | Path, source: str) -> Path:
    """``path`` as an existing regular file."""
    resolved = require_path(path, source)
    if not resolved.is_file():
        raise DataError(
            f"data path {resolved} is a directory, but data.source={source} expects a single "
            f"{source} file; point data.path at the file"
        )
    return resolved


def check_class_name(name: str, origin: str) -> None:
    """Reject class names that are unsafe as a path component.

    Class names later become folder and file names (exports, reports), so a name that could
    escape a directory or break a file name is refused here, where the user can still rename
    the class, rather than sanitised silently into something they would not recognise.
    """
    problem = None
    if not name:
        problem = "is empty"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator"
    elif name in (".", "..") or ".." in name:
        problem = "contains '..'"
    elif any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in name):
        problem = "contains a control character or line break"
    elif any(unicodedata.category(ch) == "Cs" for ch in name):
        # Only a JSON escape or a file name in another encoding yields one; UTF-8 has none.
        problem = "is not valid Unicode (a file name in another encoding, or a lone \\uXXXX escape)"
    if problem is not None:
        raise DataError(
            f"class name {name!r} from {origin} {problem}; class names are used in file paths, "
            "rename the class (letters, digits, spaces, '-', '_' and single dots are safe)"
        )


def check_enough_classes(class_names: Iterable[str], origin: str) -> None:
    """A classifier needs at least two classes."""
    names = list(class_names)
    if len(names) < 2:
        found = f"only class {names[0]!r}" if names else "no classes"
        raise DataError(
            f"{origin} has {found}; a classifier needs at least 2 classes, "
            "add samples of another class"
        )


def choose_column(
    columns: list[str], text_column: str, image_column: str, origin: str
) -> tuple[Modality, str]:
    """The modality and the column holding the samples: the text column wins if both exist."""
    if text_column in columns:
        return "text", text_column
    if image_column in columns:
        return "image", image_column
    raise DataError(
        f"{origin} has neither text column {text_column!r} nor image column {image_column!r} "
        f"(columns: {', '.join(columns) or 'none'}); set data.text_column or data.image_column"
    )


def require_column(columns: list[str], column: str, role: str, origin: str) -> None:
    """Raise naming ``column`` and the columns that do exist when it is absent."""
    if column not in columns:
        raise DataError(
            f"{origin} has no {role} column {column!r} (columns: {', '.join(columns) or 'none'}); "
            f"set data.{role}_column to one of them"
        )
