# SPDX-License-Identifier: Apache-2.0
"""A static, self-contained HTML report page (no server, no JavaScript libraries).

The page references its PNG figures by relative path so the folder can be copied or zipped.
A few lines of script record how many figures actually loaded (``data-figures-loaded`` on
``<body>``), which the report test reads from a headless browser.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mtl_perception.core.atomic_io import write_text

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2rem; } .sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6rem 0 1.4rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; } figure { margin: 0 0 1.6rem; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9rem; }
.ok { color: #1a7f37; } .fail { color: #b42318; }
"""

_SCRIPT = """
window.addEventListener('load', () => {
  const imgs = Array.from(document.querySelectorAll('figure img'));
  const loaded = imgs.filter((img) => img.complete && img.naturalWidth > 0).length;
  document.body.setAttribute('data-figures-loaded', String(loaded));
  document.body.setAttribute('data-figures-total', String(imgs.length));
});
"""


@dataclass(frozen=True)
class Table:
    """A titled table: header row plus body rows (cells already formatted as text)."""

    title: str
    header: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass(frozen=True)
class Figure:
    """A figure: PNG file name relative to the report folder, title and caption."""

    file: str
    title: str
    caption: str = ""


def _table_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
        for row in table.rows
    )
    return f"<h2>{html.escape(table.title)}</h2>\n<table><tr>{head}</tr>{body}</table>"


def _figure_html(figure: Figure) -> str:
    return (
        f"<figure><h2>{html.escape(figure.title)}</h2>"
        f'<img src="{html.escape(figure.file)}" alt="{html.escape(figure.title)}">'
        f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>"
    )


def write_page(
    path: Path,
    title: str,
    subtitle: str,
    tables: Sequence[Table],
    figures: Sequence[Figure],
    notes: Mapping[str, str] | None = None,
) -> Path:
    """Write the report page atomically; tables first, then figures, then notes."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>",
        f"<h1>{html.escape(title)}</h1><p class='sub'>{html.escape(subtitle)}</p>",
    ]
    parts += [_table_html(t) for t in tables]
    parts += [_figure_html(f) for f in figures]
    for heading, text in (notes or {}).items():
        parts.append(f"<h2>{html.escape(heading)}</h2><p>{html.escape(text)}</p>")
    parts.append("</body></html>")
    write_text(path, "\n".join(parts))
    return path
