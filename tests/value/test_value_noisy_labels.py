"""The noisy-label acceptance check, one seed (slow: about half a minute)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_meta_weights_detect_flipped_labels() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "noisy_labels.py"), "--seeds", "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    last = out.stdout.strip().splitlines()[-1]
    assert out.returncode == 0, out.stdout + out.stderr
    values = dict(pair.split("=") for pair in last.split())
    assert float(values["noisy_auroc"]) >= 0.85
    assert float(values["weighted_acc"]) > float(values["unweighted_acc"])
