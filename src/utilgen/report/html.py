"""``utilgen report``: one self-contained HTML page and its Markdown twin over many runs.

:func:`build_report` reads finished run directories and writes ``OUT/report.html`` and
``OUT/report.md`` with, in order: the multi-seed comparison, per-class accuracy, accuracy
against synthetic samples (rounds and efficiency curves), utility histograms per round,
margins before and after DPO, DPO training curves, t-SNE of real and synthetic samples,
generated samples with provenance, and the cost of each stage (:mod:`.sections`). Figures
are matplotlib PNGs embedded as data URIs; the page loads nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from utilgen.atomic import write_text_atomic
from utilgen.errors import UtilgenError
from utilgen.pool.layout import REPORT_HTML, REPORT_MD, RunLayout
from utilgen.report.comparison_stats import compare_summaries
from utilgen.report.document import Section, Text, render_html, render_markdown
from utilgen.report.runs import ReportRun, check_unique, comparison_problem, read_run
from utilgen.report.sections import (
    accuracy_curve_section,
    comparison_section,
    cost_section,
    dpo_section,
    margin_section,
    per_class_section,
    samples_section,
    tsne_section,
    utility_section,
)

log = logging.getLogger(__name__)

TITLE = "utilgen report"


def check_out_dir(out_dir: Path) -> None:
    """Refuse an output path that exists and is not a directory (before any work)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UtilgenError(f"--out {out_dir} is a file; pass a directory for the report")


def comparison_of(runs: Sequence[ReportRun]) -> dict[str, Any]:
    """:func:`compare_summaries` of the runs' summaries, as a one-line error when a
    summary lacks a field the comparison needs."""
    try:
        return compare_summaries([r.summary for r in runs])
    except KeyError as missing:
        raise UtilgenError(
            f"a summary.json lacks {missing}; re-run that run with this utilgen to rewrite it"
        ) from None


def report_sections(runs: Sequence[ReportRun], comparison: Mapping[str, Any]) -> list[Section]:
    """The report's sections in order (:mod:`utilgen.report.sections`)."""
    builders = [
        lambda: comparison_section(comparison),
        lambda: per_class_section(runs),
        lambda: accuracy_curve_section(runs),
        lambda: utility_section(runs),
        lambda: margin_section(runs),
        lambda: dpo_section(runs),
        lambda: tsne_section(runs),
        lambda: samples_section(runs),
        lambda: cost_section(runs),
    ]
    return [build() for build in builders]


def _intro(runs: Sequence[ReportRun]) -> Text:
    datasets = sorted({r.dataset for r in runs})
    strategies = sorted({r.strategy for r in runs})
    return Text(
        f"{len(runs)} run(s) of {len(strategies)} strateg{'y' if len(strategies) == 1 else 'ies'} "
        f"({', '.join(strategies)}) on {', '.join(datasets)}. Figures of single runs show the "
        "lowest seed of each strategy."
    )


def write_report(
    runs: Sequence[ReportRun], out_dir: Path, comparison: Mapping[str, Any] | None = None
) -> tuple[Path, Path]:
    """Build every section from ``runs`` and write both files atomically; returns them."""
    if not runs:
        raise UtilgenError("no run to report on; pass at least one finished run directory")
    check_out_dir(out_dir)
    check_unique(runs)
    if comparison is None:
        comparison = comparison_of(runs)
    elif (problem := comparison_problem(comparison)) is not None:
        raise UtilgenError(
            f"the comparison passed to the report is not compare_summaries' output ({problem}); "
            "pass utilgen.report.comparison_stats.compare_summaries(...) or None"
        )
    sections = report_sections(runs, comparison)
    intro = [_intro(runs)]
    # the same names as a run's own report.html and report.md, in a directory of its own
    html_path = write_text_atomic(out_dir / REPORT_HTML, render_html(TITLE, intro, sections))
    md_path = write_text_atomic(out_dir / REPORT_MD, render_markdown(TITLE, intro, sections))
    log.info("report written to %s and %s", html_path, md_path)
    return html_path, md_path


def build_report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    comparison: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """``out_dir/report.html`` and ``out_dir/report.md`` over the finished runs
    ``run_dirs``; ``comparison`` (as :func:`~utilgen.report.comparison_stats.compare_summaries`
    returns it) is computed from the runs' summaries when None. Returns (html, md)."""
    runs = [read_run(d) for d in run_dirs]
    return write_report(runs, Path(out_dir), comparison)


def build_run_html(run_dir: str | Path) -> Path:
    """``RUN/report.html``: every section of the report for the one finished run in
    ``run_dir`` (its ``report.md`` stays the short summary the loop writes). Returns it."""
    runs = [read_run(run_dir)]
    sections = report_sections(runs, comparison_of(runs))
    page = render_html(TITLE, [_intro(runs)], sections)
    path = write_text_atomic(RunLayout(run_dir).report_html, page)
    log.info("run report written to %s", path)
    return path
