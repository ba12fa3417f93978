"""A report as data: sections of blocks, rendered once as HTML and once as Markdown.

Section builders produce :class:`Section` objects and never write markup themselves, so the
two files cannot drift apart. Both renderings are self-contained: every image (a matplotlib
figure or a sample thumbnail, always PNG) is a base64 ``data:`` URI, and the HTML has
inline CSS and no script. Every piece of text that comes from a run (prompts, generated
texts, reasons, class names) is escaped for the format it lands in.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Image:
    """A PNG image and its alternative text."""

    png: bytes
    alt: str

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


Cell = str | Image


@dataclass(frozen=True)
class Text:
    """A paragraph of plain text."""

    text: str


@dataclass(frozen=True)
class NotAvailable:
    """Why a figure or table is missing (the runs do not hold its data)."""

    reason: str


@dataclass(frozen=True)
class Heading:
    """A sub-heading inside a section: level 3 (a dataset, a run) or 4 (a class)."""

    text: str
    level: int = 3


@dataclass(frozen=True)
class Figure:
    """A figure with a caption."""

    image: Image
    caption: str


@dataclass(frozen=True)
class Table:
    """A table of text or image cells; ``wide_text`` columns get room for long text."""

    header: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    wide_text: tuple[int, ...] = ()


@dataclass(frozen=True)
class Gallery:
    """Images side by side, each with lines of text beneath (sample grids)."""

    items: tuple[tuple[Image, tuple[str, ...]], ...]


Block = Text | NotAvailable | Heading | Figure | Table | Gallery


@dataclass(frozen=True)
class Section:
    """A numbered top-level section of the report."""

    anchor: str
    title: str
    blocks: list[Block] = field(default_factory=list)


# -- HTML -----------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } td.wide { max-width: 40em; white-space: pre-wrap; }
figure { margin: 0.8em 0; } figcaption { font-size: 0.85em; color: #555; }
figure img { max-width: 100%; }
.na { color: #a04000; font-style: italic; }
.gallery { display: flex; flex-wrap: wrap; gap: 6px; }
.gallery figure { margin: 0; width: 130px; font-size: 0.75em; }
.gallery img { width: 96px; height: 96px; image-rendering: pixelated; object-fit: contain; }
nav ol { columns: 2; }
"""


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _img_html(image: Image) -> str:
    return f'<img src="{image.data_uri()}" alt="{_esc(image.alt)}">'


def _cell_html(cell: Cell, wide: bool) -> str:
    if isinstance(cell, Image):
        return f"<td>{_img_html(cell)}</td>"
    return f'<td class="wide">{_esc(cell)}</td>' if wide else f"<td>{_esc(cell)}</td>"


def _block_html(block: Block) -> str:
    if isinstance(block, Text):
        return f"<p>{_esc(block.text)}</p>"
    if isinstance(block, NotAvailable):
        return f'<p class="na">not available: {_esc(block.reason)}</p>'
    if isinstance(block, Heading):
        return f"<h{block.level}>{_esc(block.text)}</h{block.level}>"
    if isinstance(block, Figure):
        return (
            f"<figure>{_img_html(block.image)}"
            f"<figcaption>{_esc(block.caption)}</figcaption></figure>"
        )
    if isinstance(block, Table):
        head = "".join(f"<th>{_esc(h)}</th>" for h in block.header)
        body = "".join(
            "<tr>"
            + "".join(_cell_html(c, i in block.wide_text) for i, c in enumerate(row))
            + "</tr>"
            for row in block.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    items = "".join(
        f"<figure>{_img_html(image)}<figcaption>"
        + "<br>".join(_esc(line) for line in lines)
        + "</figcaption></figure>"
        for image, lines in block.items
    )
    return f'<div class="gallery">{items}</div>'


def render_html(title: str, intro: Sequence[Block], sections: Sequence[Section]) -> str:
    """The whole report as one HTML page."""
    toc = "".join(f'<li><a href="#{s.anchor}">{_esc(s.title)}</a></li>' for s in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # An empty icon: without it the browser asks for /favicon.ico and logs an error.
        '<link rel="icon" href="data:,">',
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        *(_block_html(b) for b in intro),
        f"<nav><ol>{toc}</ol></nav>",
    ]
    for section in sections:
        parts.append(f'<section id="{_esc(section.anchor)}"><h2>{_esc(section.title)}</h2>')
        parts += [_block_html(b) for b in section.blocks]
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# -- Markdown -------------------------------------------------------------------------------

_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]<>|#"})


def md_escape(text: str) -> str:
    """``text`` as literal Markdown inline text: special characters backslash-escaped and
    line breaks folded, so that it stays inside one table cell."""
    return " ".join(text.translate(_MD_SPECIAL).split())


def _img_md(image: Image) -> str:
    return f"![{md_escape(image.alt)}]({image.data_uri()})"


def _cell_md(cell: Cell) -> str:
    return _img_md(cell) if isinstance(cell, Image) else md_escape(cell)


def _block_md(block: Block) -> str:
    if isinstance(block, Text):
        return md_escape(block.text)
    if isinstance(block, NotAvailable):
        return f"*not available: {md_escape(block.reason)}*"
    if isinstance(block, Heading):
        return "#" * block.level + f" {md_escape(block.text)}"
    if isinstance(block, Figure):
        return f"{_img_md(block.image)}\n\n*{md_escape(block.caption)}*"
    if isinstance(block, Table):
        lines = [
            "| " + " | ".join(md_escape(h) for h in block.header) + " |",
            "|" + "---|" * len(block.header),
        ]
        lines += ["| " + " | ".join(_cell_md(c) for c in row) + " |" for row in block.rows]
        return "\n".join(lines)
    lines = ["| sample | details |", "|---|---|"]
    lines += [
        f"| {_img_md(image)} | " + "<br>".join(md_escape(t) for t in text) + " |"
        for image, text in block.items
    ]
    return "\n".join(lines)


def render_markdown(title: str, intro: Sequence[Block], sections: Sequence[Section]) -> str:
    """The whole report as GitHub-flavoured Markdown (images as data URIs)."""
    parts = [f"# {md_escape(title)}", *(_block_md(b) for b in intro)]
    for section in sections:
        parts.append(f"## {md_escape(section.title)}")
        parts += [_block_md(b) for b in section.blocks]
    return "\n\n".join(parts) + "\n"
