"""Test-wide settings: offline hub, no tokenizer threads, quiet progress."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


from collections.abc import Callable, Iterator

import pytest


@pytest.fixture()
def quiet_one_thread() -> Iterator[None]:
    """No progress bars, and torch on one thread: tiny models' convolutions and matmuls run
    far slower under thread contention on a busy two-core machine than on one thread."""
    import torch

    from utilgen.progress import is_quiet, set_quiet

    was, threads = is_quiet(), torch.get_num_threads()
    set_quiet(True)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        set_quiet(was)


@pytest.fixture()
def cli_error(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], str]:
    """Run the CLI with ``args`` and return its one error line, asserting exit code 2, a
    single ``utilgen: error:`` line and no traceback (the contract for bad input)."""
    from utilgen.cli import main

    def run(args: list[str]) -> str:
        with pytest.raises(SystemExit) as exc:
            main(args)
        err = capsys.readouterr().err
        assert exc.value.code == 2, err
        lines = [line for line in err.splitlines() if "error" in line.lower()]
        assert len(lines) == 1 and lines[0].startswith("utilgen: error: "), err
        assert "Traceback" not in err
        return lines[0]

    return run
