"""Errors of the feedback trainers (user input: pairs, adapters, lengths, settings)."""

from __future__ import annotations

from utilgen.errors import UtilgenError


class FeedbackError(UtilgenError):
    """Feedback cannot run on the given pairs, adapter or settings; nothing was written."""
