"""The ``utilgen`` command line: a thin typer app over importable functions.

User errors (:class:`~utilgen.errors.UtilgenError`, bad usage) print one line and exit 2;
``--debug`` anywhere on the line shows the traceback instead. ``--quiet`` silences progress
bars and info logs.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from utilgen import __version__
from utilgen.cli_args import plain_words, repeated_option
from utilgen.config import RunConfig, resolve_config
from utilgen.errors import (
    DISK_FULL_ERRNOS,
    EXIT_USER_ERROR,
    UtilgenError,
    disk_full_message,
)
from utilgen.progress import set_quiet
from utilgen.report.efficiency_curves import DEFAULT_FRACTIONS

GLOBAL_FLAGS = ("--debug", "--quiet")

app = typer.Typer(
    name="utilgen",
    help="Utility-guided synthetic training data: generate, value, select, feed back.\n\n"
    "Global flags, accepted anywhere on the line: --debug (tracebacks), --quiet (no progress).",
    epilog="Examples:\n\n"
    "  utilgen presets\n\n"
    "  utilgen config show digits-static --help-keys\n\n"
    "  utilgen run digits-static --dry-run\n\n"
    "  utilgen run digits-static --out runs/static --set seed=1\n\n"
    "  utilgen compare digits-static digits-gendataagent --seeds 3 --out runs/cmp\n\n"
    "  utilgen demo --fast",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
pool_app = typer.Typer(
    help="Inspect, verify and export a run's sample pool.",
    epilog="Examples:\n\n"
    "  utilgen pool show runs/static --limit 5\n\n"
    "  utilgen pool verify runs/static\n\n"
    "  utilgen pool export runs/static --format imagefolder --out exported/ --source synthetic",
    no_args_is_help=True,
)
app.add_typer(pool_app, name="pool")
config_app = typer.Typer(
    help="Show or check a config before running it.",
    epilog="Examples:\n\n"
    "  utilgen config show digits-static --set seed=1\n\n"
    "  utilgen config show digits-static --help-keys\n\n"
    "  utilgen config validate my-config.yaml",
    no_args_is_help=True,
)
app.add_typer(config_app, name="config")

# Piped output has no terminal width; a results table must not be squeezed to 80 columns.
out_console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

ConfigArg = Annotated[
    str,
    typer.Argument(
        help="YAML config file, or the name of a shipped preset (`utilgen presets`).",
        show_default=False,
        metavar="CONFIG",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override a config key: section.key=value (repeatable).",
        metavar="KEY=VALUE",
    ),
]
RunArg = Annotated[Path, typer.Argument(help="A run directory.", show_default=False, metavar="RUN")]


def _resolve_config(config: str, overrides: list[str] | None) -> RunConfig:
    return resolve_config(config, overrides or [])


def _version(value: bool) -> None:
    if value:
        out_console.print(f"utilgen {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """utilgen: utility-guided synthetic training data."""


@app.command(
    "run",
    epilog="Examples:\n\n"
    "  utilgen run configs/digits-real-only.yaml --out runs/digits\n\n"
    "  utilgen run bbc-news-real-only --set data.k_shot=20 --set seed=1\n\n"
    "  utilgen run digits-gendataagent --dry-run",
)
def run_cmd(
    config: ConfigArg,
    set_: SetOpt = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Run directory (default runs/<name>).", metavar="DIR"),
    ] = None,
    report: Annotated[
        bool,
        typer.Option(
            "--report/--no-report",
            help="Write RUN/report.html (figures and a t-SNE: seconds to a minute).",
        ),
    ] = True,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Check the config against its data, print the plan (rounds, samples and "
            "generator calls per round, feedback steps, files) and exit without loading a "
            "model or creating the run directory.",
        ),
    ] = False,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Repair a damaged run directory before resuming (see `utilgen pool verify`): "
            "real samples are restored from the dataset, other damaged samples dropped "
            "(synthetic ones of finished rounds are not regenerated), steps whose checkpoints "
            "are damaged run again, an unreadable manifest is set aside and the rounds rerun; "
            "logged in RUN/repair.json.",
        ),
    ] = False,
) -> None:
    """Run (or resume) a config into a run directory and print its results. A damaged run
    directory is refused unless --repair is given."""
    cfg = _resolve_config(config, set_)  # validate before the heavy imports
    run_dir = out or Path("runs") / cfg.name
    if dry_run:
        if repair:
            raise UtilgenError("--dry-run writes nothing and --repair writes: give one of them")
        from utilgen.loop.dry_run import describe_plan
        from utilgen.loop.run import check_run

        out_console.print(describe_plan(check_run(cfg, run_dir), run_dir), markup=False)
        return
    from utilgen.loop.run import run
    from utilgen.pool.layout import RunLayout
    from utilgen.report import RunSummary, fidelity_rich_table, to_rich_table

    result = run(cfg, run_dir, report=report, repair=repair)
    summary = RunSummary(result.run_dir, result.summary.to_dict())
    fidelity = fidelity_rich_table(summary)
    if fidelity is not None:
        out_console.print(fidelity)
    out_console.print(to_rich_table([summary]))
    out_console.print(f"run directory: {result.run_dir}")
    if report:
        out_console.print(f"report: {RunLayout(result.run_dir).report_html}")


@app.command(
    "train",
    epilog="Example:\n\n  utilgen train digits-real-only --out models/digits --set task.epochs=10",
)
def train_cmd(
    config: ConfigArg,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Directory for checkpoints + metrics.", metavar="DIR"),
    ],
    set_: SetOpt = None,
) -> None:
    """Train the configured task model on the real training split (checkpoint per epoch)."""
    cfg = _resolve_config(config, set_)
    from utilgen.commands.train_eval import train_task

    metrics = train_task(cfg, out)
    out_console.print(f"validation accuracy {metrics['val']['accuracy']:.4f}; checkpoints in {out}")


@app.command(
    "eval",
    epilog="Example:\n\n"
    "  utilgen eval digits-real-only --checkpoint models/digits/checkpoints/epoch-040.safetensors",
)
def eval_cmd(
    config: ConfigArg,
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", "-c", help="A .safetensors checkpoint.", metavar="FILE")
    ],
    split: Annotated[str, typer.Option(help="train | val | test.", metavar="SPLIT")] = "test",
    set_: SetOpt = None,
) -> None:
    """Evaluate a checkpoint on a split of the configured data; prints metrics as JSON."""
    cfg = _resolve_config(config, set_)
    from utilgen.commands.train_eval import eval_checkpoint

    metrics = eval_checkpoint(cfg, checkpoint, split)
    out_console.print_json(json.dumps(metrics))


@pool_app.command("show", epilog="Example:\n\n  utilgen pool show runs/digits --limit 5")
def pool_show(
    run_dir: RunArg,
    limit: Annotated[int, typer.Option(help="Rows of the manifest to print.", metavar="N")] = 10,
) -> None:
    """Counts per source, class and kept flag, then the first rows of the manifest."""
    from utilgen.pool import PoolStore

    frame = PoolStore(run_dir).manifest()
    counts = frame.groupby(["source", "class_name", "kept"]).size().rename("n").reset_index()
    out_console.print(counts.to_string(index=False))
    columns = [
        c for c in ("id", "source", "split", "label", "class_name", "round", "blob") if c in frame
    ]
    out_console.print(frame[columns].head(limit).to_string(index=False))


@pool_app.command(
    "verify",
    epilog="Examples:\n\n  utilgen pool verify runs/digits\n\n"
    "  utilgen run digits-static --out runs/digits --repair   (repairs, then resumes)",
)
def pool_verify(run_dir: RunArg) -> None:
    """Re-hash every blob, check the manifest against them and open every checkpoint a
    finished round names; exit 0 when intact, 1 when damaged. Verifying only reads: repair
    with `utilgen run CONFIG --out RUN --repair`, which needs the run's config and data to
    restore real samples and redo damaged steps."""
    from utilgen.pool import verify_pool

    report = verify_pool(run_dir)
    out_console.print(report.describe())
    if not report.ok:
        raise typer.Exit(1)


@pool_app.command(
    "export",
    epilog="Examples:\n\n"
    "  utilgen pool export runs/digits --format imagefolder --out exported/\n\n"
    "  utilgen pool export runs/bbc --format parquet --out bbc.parquet",
)
def pool_export(
    run_dir: RunArg,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Destination file or directory.", metavar="PATH")
    ],
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="imagefolder | jsonl | parquet.", metavar="FORMAT")
    ] = "parquet",
    kept_only: Annotated[bool, typer.Option(help="Export only kept samples.")] = True,
    source: Annotated[
        str | None,
        typer.Option(help="Only samples of this source: real | synthetic.", metavar="SOURCE"),
    ] = None,
) -> None:
    """Export the pool to an ImageFolder, JSONL, or a `datasets`-loadable Parquet file."""
    from utilgen.pool import export_pool

    written = export_pool(run_dir, out, fmt, kept_only=kept_only, source=source)
    out_console.print(f"exported to {written}")


@app.command(
    "report",
    epilog="Examples:\n\n  utilgen report runs/compare --out runs/compare\n\n"
    "  utilgen report runs/digits-static runs/digits-gendataagent --out report",
)
def report_cmd(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="Run directories, or directories of runs (`utilgen compare`, `utilgen demo`).",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Directory for report.html and report.md.", metavar="DIR"),
    ] = Path("utilgen-report"),
) -> None:
    """Write a self-contained HTML + Markdown report over finished runs: multi-seed comparison,
    per-class accuracy, accuracy vs synthetic samples, utilities, DPO, t-SNE, samples, cost."""
    from utilgen.report import RunSummary, to_rich_table
    from utilgen.report.html import check_out_dir, write_report
    from utilgen.report.runs import collect_runs

    check_out_dir(out)
    inputs = collect_runs(runs)  # every path checked before anything is written
    html_path, md_path = write_report(inputs.runs, out, inputs.comparison)
    out_console.print(to_rich_table([RunSummary(r.run_dir, r.summary) for r in inputs.runs]))
    out_console.print(f"report: {html_path} (and {md_path})")


def _fractions(text: str) -> tuple[float, ...]:
    from utilgen.report.efficiency_curves import check_fractions

    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UtilgenError(
            f"--fractions {text!r} is not a comma-separated list of numbers; "
            "e.g. --fractions 0,0.25,0.5,1"
        ) from None
    return check_fractions(values)


@app.command(
    "efficiency",
    epilog="Example:\n\n"
    "  utilgen efficiency runs/digits-static runs/digits-gendataagent --fractions 0,0.25,0.5,1",
)
def efficiency_cmd(
    runs: Annotated[
        list[Path], typer.Argument(help="Finished run directories.", show_default=False)
    ],
    fractions: Annotated[
        str,
        typer.Option(
            "--fractions",
            help="Shares of each run's synthetic samples, in [0, 1], with 1.",
            metavar="LIST",
        ),
    ] = ",".join(f"{f:g}" for f in DEFAULT_FRACTIONS),
) -> None:
    """Accuracy vs synthetic samples per run (retrained on nested stratified subsets; writes
    RUN/efficiency.json), and the samples each strategy needs to reach static's accuracy."""
    wanted = _fractions(fractions)  # validate before the heavy imports
    from utilgen.commands.efficiency import efficiency_curve
    from utilgen.report import load_summary
    from utilgen.report.efficiency_curves import compare_to_static, curve_table, ratio_table

    for run_dir in runs:
        load_summary(run_dir)  # every run finished, before any is computed
    curves = [efficiency_curve(run_dir, wanted) for run_dir in runs]
    for curve in curves:
        out_console.print(curve_table(curve))
    rows = compare_to_static(curves)
    if rows:
        out_console.print(ratio_table(rows))


@app.command(
    "compare",
    epilog="Example:\n\n  utilgen compare digits-real-only digits-static --seeds 3 --out cmp",
)
def compare_cmd(
    configs: Annotated[
        list[str], typer.Argument(help="Config files or preset names.", show_default=False)
    ],
    seeds: Annotated[
        int, typer.Option("--seeds", help="Seeds 0..N-1 per config.", metavar="N")
    ] = 3,
    set_: SetOpt = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Comparison directory.", metavar="DIR")
    ] = Path("runs/compare"),
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            help="Runs at once, each in its own process (default 1).",
            metavar="N",
        ),
    ] = 1,
) -> None:
    """Run each config over N seeds (resumable) and compare: mean, 95% CI, paired t-tests."""
    from utilgen.commands.compare import run_comparison, seed_configs

    cfgs = seed_configs(configs, seeds, set_ or [])  # validate all before any run
    _, comparison = run_comparison(cfgs, out, jobs=jobs)
    from utilgen.report.comparison_stats import comparison_markdown

    out_console.print(comparison_markdown(comparison))
    out_console.print(f"runs under {out}/<name>/seed-<n>/; table in {out}/comparison.md")


@app.command("demo", epilog="Examples:\n\n  utilgen demo\n\n  utilgen demo --fast --out /tmp/demo")
def demo_cmd(
    fast: Annotated[
        bool, typer.Option("--fast", help="One seed, smaller budgets: a few minutes on 2 cores.")
    ] = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="Demo directory.", metavar="DIR")] = Path(
        "utilgen-demo"
    ),
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            help="Runs at once (default: one per core, at most 2).",
            metavar="N",
        ),
    ] = None,
) -> None:
    """Run real-only, static and every utility-guided strategy on the bundled datasets
    (digits, BBC News) over 3 seeds (--fast: 1), compare them and write the report."""
    from utilgen.commands.demo import run_demo
    from utilgen.commands.parallel import default_jobs
    from utilgen.report.comparison_stats import comparison_markdown
    from utilgen.report.efficiency_curves import ratio_table

    result = run_demo(out, fast=fast, jobs=jobs or default_jobs())
    out_console.print(comparison_markdown(result.comparison))
    if result.efficiency:
        out_console.print(ratio_table(result.efficiency))
    out_console.print(
        f"runs under {out}/<dataset>/<strategy>/; comparison in {out}/comparison.json; "
        f"report: {result.report}"
    )


@app.command(
    "feedback",
    epilog="Example (data-parallel DPO on 4 GPUs, then continue the run):\n\n"
    "  accelerate launch --num_processes 4 -m utilgen feedback runs/bbc --round 1\n\n"
    "  utilgen run bbc-news-udpo --out runs/bbc",
)
def feedback_cmd(
    run_dir: RunArg,
    round_: Annotated[
        int, typer.Option("--round", "-r", help="The round whose scores feed back.", metavar="N")
    ],
) -> None:
    """Train one round's model-level (DPO) feedback; runs under `accelerate launch`."""
    from utilgen.loop.feedback_step import train_round_feedback

    result = train_round_feedback(run_dir, round_)
    out_console.print_json(json.dumps(result))


@app.command("presets", epilog="Example:\n\n  utilgen presets")
def presets_cmd() -> None:
    """List the shipped presets (configs by name) with what each runs."""
    from utilgen.config import preset_names, resolve_config

    names = preset_names()
    width = max(len(n) for n in names)
    for name in names:
        out_console.print(f"{name:<{width}}  {resolve_config(name).description}", markup=False)


@config_app.command("show")
def config_show(
    config: ConfigArg,
    set_: SetOpt = None,
    help_keys: Annotated[
        bool,
        typer.Option("--help-keys", help="Print every key with its meaning and default."),
    ] = False,
) -> None:
    """Print the fully resolved config (preset or file, plus overrides) as YAML, as a run
    would write it to RUN/config.yaml."""
    from utilgen.config import config_to_yaml
    from utilgen.config.keys import describe_keys

    cfg = _resolve_config(config, set_)
    text = describe_keys(cfg) if help_keys else config_to_yaml(cfg).rstrip()
    out_console.print(text, markup=False, highlight=False, soft_wrap=True)


@config_app.command("validate")
def config_validate(config: ConfigArg, set_: SetOpt = None) -> None:
    """Check a config against its data without loading a model or training: the keys, the
    device, the data and its splits (k-shot against the class sizes), round 1's requests
    and the budget. Exit 0 when it would start, 2 with the problem otherwise."""
    from utilgen.loop.run import plan_run, projected_cost

    plan = plan_run(_resolve_config(config, set_))
    train = plan.splits.train
    first = projected_cost(plan, 1).synthetic_samples if plan.config.loop.rounds else 0
    out_console.print(
        f"{config}: valid ({train.name}: {train.num_classes} classes, {len(train)} training "
        f"samples; round 1 makes {first} synthetic samples)",
        markup=False,
    )


def _setup_logging(quiet: bool) -> None:
    from rich.logging import RichHandler

    level = logging.WARNING if quiet else logging.INFO
    handler = RichHandler(console=err_console, show_path=False, show_time=False)
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s", force=True)


def _fail(message: str) -> NoReturn:
    """Print ``message`` as the one error line (line breaks in a user's path or key
    escaped) and exit with the user-error code."""
    from utilgen.config.load import one_line

    err_console.print(
        f"utilgen: error: {one_line(message)}", markup=False, highlight=False, soft_wrap=True
    )
    sys.exit(EXIT_USER_ERROR)


def main(argv: list[str] | None = None) -> Any:
    """Entry point: run the app, turning user errors into one line and exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug, quiet = ("--debug" in args), ("--quiet" in args)
    args = [a for a in args if a not in GLOBAL_FLAGS]
    set_quiet(quiet)
    _setup_logging(quiet)
    command = plain_words(typer.main.get_command(app))
    repeated = repeated_option(command, args)
    if repeated is not None:
        _fail(repeated)
    try:
        code = command.main(args=args, prog_name="utilgen", standalone_mode=False)
    except UtilgenError as err:
        if debug:
            raise
        _fail(str(err))
    except typer.TyperException as err:
        if type(err).__name__ == "NoArgsIsHelpError":
            # `utilgen` or `utilgen pool` alone: the help text is the answer, not an error.
            out_console.print(err.format_message(), markup=False, highlight=False)
            sys.exit(0)
        if debug:
            raise
        _fail(f"{err.format_message()} (see `utilgen --help`)")
    except OSError as err:
        # A full disk is the user's to fix; any other OSError keeps its traceback.
        if debug or err.errno not in DISK_FULL_ERRNOS:
            raise
        _fail(disk_full_message(err))
    except typer.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
