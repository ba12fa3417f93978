"""Generated samples with their provenance and scores: image grids and text tables.

A few samples per class are taken from the pool, spread over the rounds and over kept and
dropped samples, so that a reader sees what each round made and what the selection threw
away. Each carries its round, its utility scores in that round (the manifest's
``utility_rNNN_<score>`` columns), whether it was kept and why not, and where it came from
(``parent_id``: the real sample an img2img request started from; the prompt for texts).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

import pandas as pd
from PIL import Image as PILImage

from utilgen.pool import PoolStore
from utilgen.report.document import Block, Gallery, Heading, Image, Table, Text
from utilgen.report.runs import MissingData, ReportRun

IMAGES_PER_CLASS = 6
TEXTS_PER_CLASS = 2
THUMBNAIL = 96  # px, the longer side
TEXT_EXCERPT = 300  # characters
PROMPT_EXCERPT = 160


def excerpt(text: str, limit: int) -> str:
    """``text`` with runs of white space folded, cut to ``limit`` characters with an
    ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def spread_pick(frame: pd.DataFrame, per_class: int) -> pd.DataFrame:
    """Up to ``per_class`` rows per class, taken in turn from each (round, kept) group in
    id order, so that every round and both kept and dropped samples show when they exist."""
    picked = []
    for _, rows in frame.groupby("label", sort=True):
        groups = [g.sort_values("id") for _, g in rows.groupby(["round", "kept"], sort=True)]
        taken: list[pd.Series] = []
        depth = 0
        while len(taken) < per_class and any(depth < len(g) for g in groups):
            taken += [g.iloc[depth] for g in groups if depth < len(g)][: per_class - len(taken)]
            depth += 1
        picked += taken
    return pd.DataFrame(picked)


def round_scores(row: Mapping[str, Any]) -> dict[str, float]:
    """Score name -> value for the sample's own round (``utility_rNNN_<score>`` columns);
    scores the sample was not given are left out."""
    prefix = f"utility_r{int(row['round']):03d}_"
    out = {}
    for key, value in row.items():
        if str(key).startswith(prefix) and value is not None and not _is_nan(value):
            out[str(key)[len(prefix) :]] = float(value)
    return out


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def scores_text(row: Mapping[str, Any]) -> str:
    """``marginal 0.531, vog 1.2`` (3 significant digits), or ``not scored``."""
    scores = round_scores(row)
    return ", ".join(f"{k} {v:.3g}" for k, v in scores.items()) or "not scored"


def decision_text(row: Mapping[str, Any]) -> str:
    """``kept`` or ``dropped: <reason>`` (a kept sample's reason is shown too when set)."""
    reason = str(row.get("reason") or "")
    if bool(row["kept"]):
        return f"kept ({reason})" if reason else "kept"
    return f"dropped: {reason or 'no reason recorded'}"


def thumbnail(png: bytes, size: int = THUMBNAIL) -> bytes:
    """The image scaled so that its longer side is ``size`` px, as PNG: nearest-neighbour
    when enlarging (8x8 digits stay crisp), Lanczos when shrinking (keeps the report
    small for 512 px diffusion images)."""
    image = PILImage.open(io.BytesIO(png))
    scale = size / max(image.size)
    target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = PILImage.Resampling.NEAREST if scale >= 1 else PILImage.Resampling.LANCZOS
    out = io.BytesIO()
    image.resize(target, resample).save(out, format="PNG")
    return out.getvalue()


def synthetic_rows(run: ReportRun) -> tuple[PoolStore, pd.DataFrame]:
    """The run's pool and its synthetic manifest rows.

    Raises:
        MissingData: the run generated no sample.
    """
    store = PoolStore(run.run_dir)
    manifest = store.manifest()
    rows = manifest[manifest["source"] == "synthetic"]
    if rows.empty:
        raise MissingData("the run generated no sample")
    return store, rows


def image_grids(
    store: PoolStore, rows: pd.DataFrame, per_class: int = IMAGES_PER_CLASS
) -> list[Block]:
    """One gallery per class of the synthetic manifest ``rows``: thumbnails with round,
    scores, decision and parent beneath."""
    blocks: list[Block] = []
    picked = spread_pick(rows, per_class)
    for class_name, group in picked.groupby("class_name", sort=False):
        items = []
        for row in group.to_dict(orient="records"):
            image = Image(thumbnail(store.read_payload(row["blob"])), f"{class_name} sample")
            lines = (
                f"round {row['round']}",
                scores_text(row),
                decision_text(row),
                f"parent: {row['parent_id'] or 'none (class prompt)'}",
            )
            items.append((image, lines))
        blocks += [Heading(f"class {class_name}", level=4), Gallery(tuple(items))]
    return blocks


def text_table(
    store: PoolStore, rows: pd.DataFrame, per_class: int = TEXTS_PER_CLASS
) -> list[Block]:
    """A table of the synthetic manifest ``rows``' texts with label, round, scores, decision
    and provenance."""
    picked = spread_pick(rows, per_class)
    table_rows = []
    for row in picked.to_dict(orient="records"):
        text = store.read_payload(row["blob"]).decode("utf-8", errors="replace")
        provenance = f"{row['generator']}; prompt: {excerpt(str(row['prompt']), PROMPT_EXCERPT)}"
        if row["parent_id"]:
            provenance += f"; parent: {row['parent_id']}"
        table_rows.append(
            (
                excerpt(text, TEXT_EXCERPT),
                str(row["class_name"]),
                str(row["round"]),
                scores_text(row),
                decision_text(row),
                provenance,
            )
        )
    header = ("text", "label", "round", "scores", "decision", "provenance")
    return [
        Text(f"{len(picked)} of the run's {len(rows)} generated texts."),
        Table(header, tuple(table_rows), wide_text=(0, 5)),
    ]


def sample_blocks(run: ReportRun) -> list[Block]:
    """Image grids or a text table, by the pool's modality."""
    store, rows = synthetic_rows(run)
    if str(rows["modality"].iloc[0]) == "image":
        return image_grids(store, rows)
    return text_table(store, rows)
