"""Acceptance (issues 9 and 11): a run SIGKILLed at any fault point, then re-run with the same
command, ends exactly as an uninterrupted run with the same seed.

For each case, ``utilgen run`` is started in a subprocess with ``UTILGEN_FAULT=<point>[@n]``
(``utilgen.faults``): it must die by SIGKILL (return code -9), which proves the point was
reached. The same command without the variable must then finish (rc 0) with the same run
directory as the uninterrupted reference: the same files, summary.json and every other JSON
file equal but for wall-clock fields, the pool manifest equal row for row and column for
column, checkpoints and the tuned generator byte for byte; every blob present and hashing
to its name, none unreferenced; no temp or partial file anywhere; ``utilgen pool verify``
rc 0. See docs/reliability.md for the table of points and timings.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from kill_resume import (
    differences,
    leftover_temporaries,
    pool_damage,
    run_utilgen,
    verify_command,
    write_config,
)

KILLED = -signal.SIGKILL

# (feedback, fault, where the process dies). 70 samples a round are appended as 64 + 6, and
# each training (stage 1, round 1, round 2) writes 3 checkpoints, so ``@n`` picks a round.
CASES: list[tuple[str, str, str]] = [
    ("dpo", "stage1.pool", "stage 1: real samples in the pool, nothing trained"),
    ("dpo", "train.checkpoint@2", "stage 1 training, after epoch 2 of 3"),
    ("dpo", "stage1.trained", "stage 1 trained, its metrics.json not written"),
    ("dpo", "generate.append", "round 1 generation, after the first 64 of 70 samples"),
    ("dpo", "generate.append@2", "round 1 generation, after the last append"),
    ("dpo", "generate.done", "round 1 generated, nothing valued"),
    ("dpo", "value.scored", "round 1 valuation: scores recorded, selection not applied"),
    ("dpo", "select.applied", "round 1 selection recorded, the student not trained"),
    ("dpo", "train.checkpoint@5", "round 1 training, after epoch 2 of 3"),
    ("dpo", "round.trained", "round 1 student trained, its metrics.json not written"),
    ("dpo", "feedback.pairs", "DPO: preference pairs written, nothing trained"),
    ("dpo", "feedback.trained", "DPO: tuned generator saved, result.json not written"),
    ("dpo", "generate.append@3", "round 2 generation (tuned generator), after 64 of 70"),
    ("dpo", "generate.done@2", "round 2 generated, nothing valued"),
    ("dpo", "value.scored@2", "round 2 valuation: scores recorded, selection not applied"),
    ("dpo", "select.applied@2", "round 2 selection recorded, the student not trained"),
    ("dpo", "train.checkpoint@9", "round 2 training, after its last epoch"),
    ("dpo", "round.trained@2", "round 2 student trained, its metrics.json not written"),
    ("dpo", "control.scored", "control arm generated and judged, not written"),
    ("dpo", "summary.before", "every round finished, summary.json not written"),
    ("dpo", "report.before", "summary.json and report.md written, report.html not"),
    ("instance", "policy.planned", "round 2: prompt ascent + noise optimised, not saved"),
    ("instance", "generate.append@3", "round 2 generation from the saved optimised requests"),
    ("instance", "round.trained@2", "round 2 student trained, its metrics.json not written"),
    ("hard_samples", "generate.append@3", "round 2 img2img generation around hard digits"),
    ("hard_samples", "value.scored@2", "round 2 valuation of the hard-sample images"),
    ("udpo", "generate.append", "round 1 text generation, after the first 64 of 75 texts"),
    ("udpo", "feedback.pairs", "U-DPO: text preference pairs written, nothing trained"),
    ("udpo", "feedback.trained", "U-DPO: LoRA adapter saved, result.json not written"),
    ("udpo", "generate.append@3", "round 2 texts from the DPO-tuned LM, after 64 of 75"),
    ("udpo", "round.trained@2", "round 2 classifier trained, its metrics.json not written"),
]


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Path]]:
    """feedback -> (config, uninterrupted run directory), each run once per session; the
    built-in generator's cache is shared by every run, so only the first one trains it."""
    base = tmp_path_factory.mktemp("kill-resume")
    done: dict[str, tuple[Path, Path]] = {}

    def get(feedback: str) -> tuple[Path, Path]:
        if feedback not in done:
            config = write_config(base, feedback, base / "generator-cache")
            out = base / f"reference-{feedback}"
            first = run_utilgen(config, out)
            assert first.returncode == 0, first.output[-3000:]
            done[feedback] = (config, out)
        return done[feedback]

    return get


# Every case is slow: each runs ``python -m utilgen`` twice (about 10 s of imports alone), so
# even the smallest one takes longer than the default suite allows.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("feedback", "fault"), [(f, p) for f, p, _ in CASES], ids=[f"{f}-{p}" for f, p, _ in CASES]
)
def test_killed_at_a_fault_point_resumes_to_the_uninterrupted_result(
    reference: Callable[[str], tuple[Path, Path]], tmp_path: Path, feedback: str, fault: str
) -> None:
    config, expected = reference(feedback)
    run_dir = tmp_path / "run"

    # 1. the fault point is reached and the process dies there by SIGKILL
    killed = run_utilgen(config, run_dir, fault=fault)
    assert killed.returncode == KILLED, f"{fault} not reached:\n{killed.output[-3000:]}"
    if fault == "report.before":
        assert (run_dir / "summary.json").exists() and not (run_dir / "report.html").exists()
    else:
        assert not (run_dir / "summary.json").exists()

    # 2. the same command, without the fault, finishes the run
    resumed = run_utilgen(config, run_dir)
    assert resumed.returncode == 0, resumed.output[-3000:]

    # 3. ... as the uninterrupted run did, with an intact pool and nothing half-written.
    # Exact: both are the same command on this machine with OMP_NUM_THREADS=1, so a step
    # the resumed run redoes is the same computation on the same numbers.
    assert differences(expected, run_dir) == []
    assert pool_damage(run_dir) == []
    assert leftover_temporaries(run_dir) == []
    verified = verify_command(run_dir)
    assert verified.returncode == 0, verified.output


def test_every_fault_point_is_exercised() -> None:
    from utilgen.faults import POINTS

    assert {fault.partition("@")[0] for _, fault, _ in CASES} == set(POINTS)
