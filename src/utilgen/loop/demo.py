"""``utilgen demo``: every strategy available today on the bundled datasets.

Layout (a contract later strategies extend): ``DIR/<dataset>/<strategy>/`` is a run
directory. Today's strategies are ``real-only`` (k real samples per class: the baseline
synthetic data has to beat), ``static`` (the same k real samples plus synthetic ones
generated once from class prompts: the built-in diffusion model on digits, SmolLM2 on BBC
News) and ``real-only-full`` (all real training data: the ceiling).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from utilgen.config import RunConfig, load_config, preset_path
from utilgen.loop.run import RunResult, run

log = logging.getLogger(__name__)

DEMO_DATASETS = ("digits", "bbc-news")

# --fast generates fewer samples (SmolLM2 writes a few texts a second on a laptop CPU).
FAST_STATIC: dict[str, tuple[str, ...]] = {
    "digits": (),
    "bbc-news": ("generator.per_class=4", "generator.lm.max_new_tokens=64"),
}


@dataclass(frozen=True)
class DemoEntry:
    """One run of the demo: dataset, strategy and the preset it starts from."""

    dataset: str
    strategy: str
    preset: str
    overrides: tuple[str, ...] = ()


def demo_plan(fast: bool) -> list[DemoEntry]:
    """The runs of the demo; ``fast`` trims BBC News (MiniLM encoding and SmolLM2 writing are
    the slow parts on CPU) and generates fewer texts."""
    plan: list[DemoEntry] = []
    for dataset in DEMO_DATASETS:
        preset = f"{dataset}-real-only"
        fast_overrides: tuple[str, ...] = ()
        if fast and dataset == "bbc-news":
            # Encoding every article with MiniLM dominates the demo's time on CPU.
            fast_overrides = ("data.max_per_class=120", "task.max_length=128")
        plan.append(DemoEntry(dataset, "real-only", preset, fast_overrides))
        static_overrides = fast_overrides + (FAST_STATIC[dataset] if fast else ())
        plan.append(DemoEntry(dataset, "static", f"{dataset}-static", static_overrides))
        plan.append(
            DemoEntry(dataset, "real-only-full", preset, (*fast_overrides, "data.k_shot=null"))
        )
    return plan


def demo_config(entry: DemoEntry) -> RunConfig:
    """The resolved config of one demo run."""
    return load_config(
        preset_path(entry.preset),
        [*entry.overrides, f"strategy={entry.strategy}", f"name={entry.dataset}-{entry.strategy}"],
    )


def run_demo(out: str | Path = "utilgen-demo", fast: bool = False) -> list[RunResult]:
    """Run every demo entry into ``out/<dataset>/<strategy>/``; returns their results."""
    out = Path(out)
    results = []
    for entry in demo_plan(fast):
        log.info("demo: %s / %s", entry.dataset, entry.strategy)
        results.append(run(demo_config(entry), out / entry.dataset / entry.strategy))
    return results
