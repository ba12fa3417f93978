"""The run directory's paths (docs/architecture.md, "The run directory"): :class:`RunLayout`
names every one of them, so that no module builds them itself.

```
RUN/
  config.yaml              the resolved config, as run
  lock                     held while a process writes the run
  pool/manifest.parquet    one row per sample
  pool/manifest.d/         rows appended since manifest.parquet was last rewritten
  pool/blobs/ab/abcd...    payloads, named by their SHA-256
  rounds/NNN/              one folder per round (:class:`RoundLayout`): metrics.json,
                           scores.parquet, training_set.parquet, checkpoints/,
                           pairs.parquet, adapters/dpo/, control.parquet, hard_samples.json,
                           instance_requests.{json,safetensors},
                           meta_weight_net.safetensors
  feedback_effect.json     with feedback_effect.png and feedback_control.png
  summary.json             written last
  repair.json              what `utilgen run --repair` changed
  efficiency.json          `utilgen efficiency` (efficiency.partial.json while it runs)
  report.md, report.html
```

The pool package is the lowest one that knows the run directory, so every package above it
(value, feedback, report, loop, cli) can import the layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# RUN/
CONFIG_FILE = "config.yaml"
LOCK_FILE = "lock"
POOL_DIR = "pool"
ROUNDS_DIR = "rounds"
SUMMARY_FILE = "summary.json"
REPORT_HTML = "report.html"
REPORT_MD = "report.md"
FEEDBACK_EFFECT_FILE = "feedback_effect.json"
FEEDBACK_EFFECT_PLOT = "feedback_effect.png"
FEEDBACK_CONTROL_PLOT = "feedback_control.png"
REPAIR_RECORD = "repair.json"
EFFICIENCY_FILE = "efficiency.json"
EFFICIENCY_PARTIAL_FILE = "efficiency.partial.json"
# RUN/pool/
MANIFEST_FILE = "manifest.parquet"
SEGMENTS_DIR = "manifest.d"
BLOBS_DIR = "blobs"
# RUN/rounds/NNN/
METRICS_FILE = "metrics.json"
SCORES_FILE = "scores.parquet"
TRAINING_SET_FILE = "training_set.parquet"
CHECKPOINTS_DIR = "checkpoints"
PAIRS_FILE = "pairs.parquet"
DPO_ADAPTER_DIR = "adapters/dpo"
# RUN/rounds/NNN/adapters/dpo/, written by feedback.training_log beside the trained weights
TRAINING_LOG_FILE = "log.jsonl"
TRAINING_RESULT_FILE = "result.json"
CONTROL_FILE = "control.parquet"
HARD_SAMPLE_PLAN = "hard_samples.json"
INSTANCE_REQUESTS = "instance_requests"  # + .json and .safetensors
META_WEIGHT_NET = "meta_weight_net.safetensors"

_ROUND_NAME = re.compile(r"^\d{3}$")


def round_name(round_index: int) -> str:
    """``NNN``: round ``round_index``'s folder name (zero-padded to three digits)."""
    return f"{round_index:03d}"


@dataclass(frozen=True)
class RoundLayout:
    """The files of one round folder, ``RUN/rounds/NNN``."""

    path: Path

    @property
    def metrics(self) -> Path:
        """``metrics.json``: written last, it marks the round finished."""
        return self.path / METRICS_FILE

    @property
    def scores(self) -> Path:
        """``scores.parquet``: one row per scored sample (:mod:`utilgen.value.record`)."""
        return self.path / SCORES_FILE

    @property
    def training_set(self) -> Path:
        """``training_set.parquet``: the synthetic samples the round trained on."""
        return self.path / TRAINING_SET_FILE

    @property
    def checkpoints(self) -> Path:
        """``checkpoints/``: one ``epoch-NNN.safetensors`` per epoch."""
        return self.path / CHECKPOINTS_DIR

    @property
    def pairs(self) -> Path:
        """``pairs.parquet``: the preference pairs ``dpo`` feedback trains on."""
        return self.path / PAIRS_FILE

    @property
    def dpo_adapter(self) -> Path:
        """``adapters/dpo/``: what the round's ``dpo`` feedback trained."""
        return self.path / DPO_ADAPTER_DIR

    @property
    def dpo_log(self) -> Path:
        """``adapters/dpo/log.jsonl``: the dpo feedback's training log, a line per step."""
        return self.dpo_adapter / TRAINING_LOG_FILE

    @property
    def dpo_result(self) -> Path:
        """``adapters/dpo/result.json``: written last, it marks the dpo feedback done."""
        return self.dpo_adapter / TRAINING_RESULT_FILE

    @property
    def control(self) -> Path:
        """``control.parquet``: the control arm (``feedback.control``)."""
        return self.path / CONTROL_FILE

    @property
    def hard_sample_plan(self) -> Path:
        """``hard_samples.json``: hard-sample parents and their prompts."""
        return self.path / HARD_SAMPLE_PLAN

    @property
    def instance_requests(self) -> Path:
        """``instance_requests``: the stem of the optimised requests' ``.json`` and
        ``.safetensors`` (:mod:`utilgen.generate.request_io` adds the suffixes)."""
        return self.path / INSTANCE_REQUESTS

    @property
    def meta_weight_net(self) -> Path:
        """``meta_weight_net.safetensors``: the weight net the round's ``meta_weight``
        valuation trained (:mod:`utilgen.value.weight_net_file`)."""
        return self.path / META_WEIGHT_NET


@dataclass(frozen=True, init=False)
class RunLayout:
    """Every path of the run directory ``root`` (see the module docstring)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        """``RUN/config.yaml``."""
        return self.root / CONFIG_FILE

    @property
    def lock(self) -> Path:
        """``RUN/lock``."""
        return self.root / LOCK_FILE

    @property
    def pool_dir(self) -> Path:
        """``RUN/pool``."""
        return self.root / POOL_DIR

    @property
    def manifest(self) -> Path:
        """``RUN/pool/manifest.parquet``."""
        return self.pool_dir / MANIFEST_FILE

    @property
    def segments_dir(self) -> Path:
        """``RUN/pool/manifest.d``: rows appended since the base was last written
        (:mod:`utilgen.pool.manifest_log`)."""
        return self.pool_dir / SEGMENTS_DIR

    @property
    def blobs_dir(self) -> Path:
        """``RUN/pool/blobs``."""
        return self.pool_dir / BLOBS_DIR

    def blob(self, digest: str) -> Path:
        """``RUN/pool/blobs/<first two hex chars>/<digest>``: 256 folders keep listings
        short."""
        return self.blobs_dir / digest[:2] / digest

    @property
    def rounds_dir(self) -> Path:
        """``RUN/rounds``."""
        return self.root / ROUNDS_DIR

    def round_dir(self, round_index: int) -> Path:
        """``RUN/rounds/NNN``."""
        return self.rounds_dir / round_name(round_index)

    def round(self, round_index: int) -> RoundLayout:
        """The files of ``RUN/rounds/NNN``."""
        return RoundLayout(self.round_dir(round_index))

    def round_dirs(self) -> list[tuple[int, Path]]:
        """``(round index, RUN/rounds/NNN)`` for every round folder that exists, in round
        order (anything else in ``RUN/rounds`` is ignored)."""
        if not self.rounds_dir.is_dir():
            return []
        found = [
            (int(p.name), p)
            for p in self.rounds_dir.iterdir()
            if p.is_dir() and _ROUND_NAME.match(p.name)
        ]
        return sorted(found)

    @property
    def summary(self) -> Path:
        """``RUN/summary.json``: written last, it marks the run finished."""
        return self.root / SUMMARY_FILE

    @property
    def report_html(self) -> Path:
        """``RUN/report.html``."""
        return self.root / REPORT_HTML

    @property
    def report_md(self) -> Path:
        """``RUN/report.md``."""
        return self.root / REPORT_MD

    @property
    def feedback_effect(self) -> Path:
        """``RUN/feedback_effect.json``."""
        return self.root / FEEDBACK_EFFECT_FILE

    @property
    def feedback_effect_plot(self) -> Path:
        """``RUN/feedback_effect.png``."""
        return self.root / FEEDBACK_EFFECT_PLOT

    @property
    def feedback_control_plot(self) -> Path:
        """``RUN/feedback_control.png``."""
        return self.root / FEEDBACK_CONTROL_PLOT

    @property
    def repair_record(self) -> Path:
        """``RUN/repair.json``."""
        return self.root / REPAIR_RECORD

    @property
    def efficiency(self) -> Path:
        """``RUN/efficiency.json``."""
        return self.root / EFFICIENCY_FILE

    @property
    def efficiency_partial(self) -> Path:
        """``RUN/efficiency.partial.json``: the points computed so far."""
        return self.root / EFFICIENCY_PARTIAL_FILE


# Shorthands for the pool's own paths, kept for their importers.
def manifest_path(run_dir: str | Path) -> Path:
    """``RUN/pool/manifest.parquet``."""
    return RunLayout(run_dir).manifest


def segments_dir(run_dir: str | Path) -> Path:
    """``RUN/pool/manifest.d``."""
    return RunLayout(run_dir).segments_dir


def blob_path(run_dir: str | Path, blob: str) -> Path:
    """``RUN/pool/blobs/<first two hex chars>/<blob>``."""
    return RunLayout(run_dir).blob(blob)
