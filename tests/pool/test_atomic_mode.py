"""Atomic writes get the mode a plain open() would give, not mkstemp's private 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from utilgen.atomic import write_text_atomic


def test_atomic_write_respects_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "report.html", "<html></html>")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o077)
        path = write_text_atomic(tmp_path / "private.json", "{}")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)
