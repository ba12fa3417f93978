"""Tiny finished run directories for the report tests, made once per session.

Three real runs through the run engine on digits (5 shots, 2 epochs): ``real-only``,
``static`` and ``dpo`` (two rounds with Diffusion-DPO between them). The two generating runs
use the untrained ~40k-parameter built-in generator of the loop tests (its images are
noise, which is all a report needs), so the three take a few seconds.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "loop"))

from tiny_builtin import tiny_generator

PER_CLASS = 4
SMALL = (
    "task.epochs=2",
    "data.k_shot=5",
    "data.max_per_class=40",
    f"generator.per_class={PER_CLASS}",
)
DPO = (
    "valuation.scores=[marginal,margin]",
    "valuation.selection=[]",
    "feedback.pairs.score=marginal",
    "feedback.pairs.ratio=0.5",
    "feedback.diffusion_dpo.steps=3",
    "feedback.diffusion_dpo.batch_size=4",
)
RUNS = {
    "real-only": ("digits-real-only", ()),
    "static": ("digits-static", ()),
    "dpo": ("digits-dpo", DPO),
}


def tiny_run(preset: str, strategy: str, out: Path, overrides: tuple[str, ...] = ()) -> Path:
    """Run ``preset`` (small, seed 0, ``strategy``) into ``out`` with the tiny generator."""
    from utilgen.config import resolve_config
    from utilgen.generate.builtin import builtin_class_requests
    from utilgen.loop.run import prepare, run

    cfg = resolve_config(preset, [*SMALL, f"strategy={strategy}", *overrides])
    prepared = prepare(cfg, with_generator=False)
    if cfg.generator.kind != "none":
        names = prepared.splits.train.class_names
        requests = builtin_class_requests(
            names, per_class=PER_CLASS, seed=cfg.seed, round_index=1, cfg=cfg.generator.builtin
        )
        prepared = replace(
            prepared,
            generator=tiny_generator(names),
            requests=tuple(requests),
            base_generator=lambda: tiny_generator(names),
        )
    run(cfg, out, prepared=prepared)
    return out


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """strategy -> a finished run directory (real-only, static, dpo)."""
    import torch

    from utilgen.progress import is_quiet, set_quiet

    root = tmp_path_factory.mktemp("report-runs")
    was, threads = is_quiet(), torch.get_num_threads()
    set_quiet(True)
    torch.set_num_threads(1)
    try:
        return {
            strategy: tiny_run(preset, strategy, root / strategy, overrides)
            for strategy, (preset, overrides) in RUNS.items()
        }
    finally:
        torch.set_num_threads(threads)
        set_quiet(was)


SECTION_TITLES = (
    "1. Comparison of strategies",
    "2. Per-class accuracy",
    "3. Accuracy vs number of synthetic samples",
    "4. Utility distributions per round",
    "5. Margin distributions before and after DPO",
    "6. DPO reward accuracy",
    "7. t-SNE of real and synthetic samples",
    "8. Generated samples",
    "9. Cost: time and samples per stage",
)


@pytest.fixture(scope="session")
def tiny_report(
    tiny_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """(report.html, report.md) over the tiny runs, built through the public API."""
    import torch

    from utilgen.report.html import build_report

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_report(list(tiny_runs.values()), tmp_path_factory.mktemp("report"))
    finally:
        torch.set_num_threads(threads)
