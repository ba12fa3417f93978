"""Shared by the CLI tests: the command in-process with its exit code, ``--set`` arguments,
and the settings of a built-in generator that trains in seconds."""

from __future__ import annotations

import pytest

from utilgen.cli import main

TINY_BUILTIN = [
    # a tiny built-in generator that trains in seconds (cached under UTILGEN_CACHE_DIR)
    "generator.builtin.block_out_channels=[8,16]", "generator.builtin.norm_num_groups=4",
    "generator.builtin.train_steps=5", "generator.builtin.adapt_steps=0",
    "generator.builtin.steps=3",
]


def utilgen(*args: str) -> int:
    """``utilgen --quiet ARGS`` in this process; returns its exit code."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--quiet", *args])
    return int(exit_info.value.code or 0)


def sets(values: list[str]) -> list[str]:
    """``--set V`` for each value."""
    return [arg for value in values for arg in ("--set", value)]
