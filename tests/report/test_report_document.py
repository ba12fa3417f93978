"""Rendering the report document: self-contained, and text from runs escaped in both formats."""

from __future__ import annotations

import base64
import re

from utilgen.report.document import (
    Figure,
    Gallery,
    Heading,
    Image,
    NotAvailable,
    Section,
    Table,
    Text,
    md_escape,
    render_html,
    render_markdown,
)

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGP4DwABAQEAWMGq9QAAAABJRU5ErkJggg=="
)
HOSTILE = 'a <script>alert("x")</script> | b\nc & d'


def _sections() -> list[Section]:
    return [
        Section(
            "one",
            "1. First",
            [
                Text(HOSTILE),
                Table(("text", "image"), ((HOSTILE, Image(PNG, "pic")),), wide_text=(0,)),
                NotAvailable("no run used DPO"),
            ],
        ),
        Section(
            "two",
            "2. Second",
            [
                Heading("a run"),
                Heading("class <3>", level=4),
                Figure(Image(PNG, "fig"), "caption"),
                Gallery(((Image(PNG, "s"), ("round 1", HOSTILE)),)),
            ],
        ),
    ]


def test_html_escapes_run_text_and_embeds_every_image() -> None:
    page = render_html("report", [Text("intro")], _sections())
    assert "<script" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "<h4>class &lt;3&gt;</h4>" in page
    assert '<p class="na">not available: no run used DPO</p>' in page
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 3
    assert all(base64.b64decode(s.split(",", 1)[1]) == PNG for s in sources)
    # nothing is loaded from elsewhere: every src/href is a data URI or an in-page anchor
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert all(link.startswith(("data:", "#")) for link in links), links
    assert page.index('id="one"') < page.index('id="two"')


def test_markdown_keeps_each_table_row_on_one_line() -> None:
    text = render_markdown("report", [], _sections())
    row = next(line for line in text.splitlines() if line.startswith("| a "))
    # the pipe and the newline of the hostile text must not split the row into more cells
    assert row.count(" | ") == 1
    assert "\\<script\\>" in row and "\\| b c & d" in row
    assert "## 1. First" in text and "#### class \\<3\\>" in text
    assert "*not available: no run used DPO*" in text
    assert text.count("data:image/png;base64,") == 3


def test_md_escape() -> None:
    assert md_escape("a|b *c*\n_d_ [e](f)") == "a\\|b \\*c\\* \\_d\\_ \\[e\\](f)"
