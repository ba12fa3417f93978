"""Checks on raw text items."""

from __future__ import annotations

from collections.abc import Sequence

from utilgen.data.labelled import Item


def as_texts(items: Sequence[Item]) -> list[str]:
    """``items`` as a list of str.

    Raises:
        TypeError: an item is not a str (an image given to a text model).
    """
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"text models take str items, got {type(item).__name__}")
    return [str(item) for item in items]
