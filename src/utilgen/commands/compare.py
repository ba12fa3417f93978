"""``utilgen compare``: several configs over several seeds, then one comparison.

Run ``i`` of config ``c`` is ``run(c with seed=i)`` in ``OUT/<c.name>/seed-<i>/``; every run
resumes like ``utilgen run`` does, so re-running the same command after a crash finishes
what was left and recomputes only the comparison. The comparison (``OUT/comparison.json``
and ``.md``, :mod:`utilgen.report.comparison_stats`) groups the runs by dataset and strategy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from utilgen.commands.parallel import PlannedRun, WorkerPool, run_jobs_for, run_key
from utilgen.config import RunConfig, resolve_config
from utilgen.errors import ConfigError
from utilgen.loop.results import Summary
from utilgen.loop.run import RunResult, check_run
from utilgen.report.comparison_stats import compare_summaries, write_comparison

log = logging.getLogger(__name__)


def seed_configs(
    configs: Sequence[str], seeds: int, overrides: Sequence[str] = ()
) -> list[RunConfig]:
    """Every (config, seed) pair's resolved config, seeds 0..``seeds``-1, validated before
    any run starts (a typo in the last config must not wait for the first to finish).

    Raises:
        ConfigError: ``seeds`` < 1, two configs with one name (their runs would share a
            directory), or any config error.
    """
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    out: list[RunConfig] = []
    names: dict[str, str] = {}
    for config in configs:
        first = resolve_config(config, [*overrides, "seed=0"])
        if first.name in names:
            raise ConfigError(
                f"configs {names[first.name]!r} and {config!r} are both named {first.name!r}; "
                "give one another name with --set name=..."
            )
        names[first.name] = config
        rest = [resolve_config(config, [*overrides, f"seed={s}"]) for s in range(1, seeds)]
        out += [first, *rest]
    return out


def run_comparison(
    configs: Sequence[RunConfig], out: str | Path, jobs: int = 1
) -> tuple[list[RunResult], dict[str, Any]]:
    """Run (or resume) every config into ``out/<name>/seed-<seed>/`` (``jobs`` runs at a time
    in worker processes, :mod:`utilgen.commands.parallel`), then compare them and write
    ``out/comparison.json`` and ``out/comparison.md``."""
    out = Path(out)
    planned = [PlannedRun(cfg, out / cfg.name / f"seed-{cfg.seed}") for cfg in configs]
    for item in planned:  # every run's data-level checks before any model loads or run starts
        check_run(item.config, item.run_dir)
    log.info("compare: %d run(s), %d at a time", len(planned), jobs)
    with WorkerPool(jobs) as pool:
        summaries = pool.run(run_jobs_for(planned, report=True))
    results = [
        RunResult(p.run_dir, Summary.from_dict(summaries[run_key(p.run_dir)])) for p in planned
    ]
    comparison = compare_summaries([r.summary.to_dict() for r in results])
    write_comparison(out, comparison)
    return results, comparison
