"""The whole report over three tiny real runs (real-only, static, dpo): every section is there
and holds what the runs hold, in both files."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

from conftest import SECTION_TITLES
from PIL import Image


def _sections(page: str) -> dict[str, str]:
    """Section title -> its HTML."""
    parts = re.split(r'<section id="[^"]+"><h2>', page)[1:]
    return {part.split("</h2>", 1)[0]: part for part in parts}


def test_every_section_shows_what_the_runs_hold(tiny_report: tuple[Path, Path]) -> None:
    html_path, md_path = tiny_report
    page = html_path.read_text(encoding="utf-8")
    sections = _sections(page)
    assert tuple(sections) == SECTION_TITLES
    comparison = sections["1. Comparison of strategies"]
    for strategy in ("real-only", "static", "dpo"):
        assert f"<td>digits</td><td>{strategy}</td><td>1</td>" in comparison
    assert "the best utility-guided strategy, dpo" in comparison
    # per-run figures: the dpo run has them all; the others say why they have none
    dpo_figures = {
        "4. Utility distributions per round": "utility scores of the kept samples",
        "5. Margin distributions before and after DPO": "margin of round 1 (before DPO)",
        "6. DPO reward accuracy": "DPO training (after round 1: 3 steps)",
        "7. t-SNE of real and synthetic samples": "t-SNE of ",
    }
    for title, caption in dpo_figures.items():
        assert f"<figcaption>dpo (digits, seed 0): {caption}" in sections[title], title
    assert (
        "not available: real-only (digits, seed 0): no DPO feedback"
        in sections["5. Margin distributions before and after DPO"]
    )
    samples = sections["8. Generated samples"]
    assert samples.count("<h4>class ") == 20  # static and dpo, 10 digits each
    assert "round 2" in samples and "parent: none (class prompt)" in samples
    cost = sections["9. Cost: time and samples per stage"]
    assert cost.count("<tr><td>dpo (digits, seed 0)</td>") == 3  # stage 1 and two rounds
    for uri in re.findall(r'src="data:image/png;base64,([^"]+)"', page):
        Image.open(io.BytesIO(base64.b64decode(uri))).verify()
    markdown = md_path.read_text(encoding="utf-8")
    assert [line[3:] for line in markdown.splitlines() if line.startswith("## ")] == list(
        SECTION_TITLES
    )
    assert markdown.count("data:image/png;base64,") == page.count("data:image/png;base64,")
