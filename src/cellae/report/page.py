"""The report as one self-contained HTML page: figures as data URIs, the only script the page's
own column sorting, and every string that comes from a run escaped."""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Sequence
from typing import Any

from cellae import __version__
from cellae.report.collect import RunSummary, anchor
from cellae.report.figures import ReportFigure, png_size
from cellae.report.tables import COLUMN_NOTE, MARKING_NOTE, Cell, Row, Table, run_facts

# a figure this much wider than tall gets the page's full width rather than half of it
WIDE = 1.8

_STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2rem; color: #222; }
h1 { margin-bottom: 0.2rem; } .sub { color: #666; margin-top: 0; }
h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; cursor: pointer; user-select: none; }
th.sorted-asc::after { content: ' \\25B2'; } th.sorted-desc::after { content: ' \\25BC'; }
td.text, th.text { text-align: left; } td.best { background: #d8f3d8; font-weight: 600; }
td.warn { background: #ffe2a8; color: #6b4200; font-weight: 600; }
tr.unfinished td.num { color: #9a9a9a; font-style: italic; }
.figures { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 1rem;
           align-items: start; }
.figures figure.wide { grid-column: 1 / -1; }
figure { margin: 0.8rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 0.85rem; color: #555; }
section.run { margin: 1.5rem 0; padding-top: 0.5rem; border-top: 1px solid #ddd; }
section.run h3 a.top { font-size: 0.8rem; font-weight: normal; margin-left: 0.6rem; }
.note { color: #666; font-size: 0.85rem; } .warn-note { color: #6b4200; }
"""

_SORT_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var asc = !th.classList.contains('sorted-asc');
      table.querySelectorAll('th').forEach(function (h) { h.classList.remove('sorted-asc', 'sorted-desc'); });
      th.classList.add(asc ? 'sorted-asc' : 'sorted-desc');
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute('data-value'), y = b.cells[col].getAttribute('data-value');
        var nx = parseFloat(x), ny = parseFloat(y);
        var bothNumbers = !isNaN(nx) && !isNaN(ny);
        if (x === '' && y !== '') return 1;
        if (y === '' && x !== '') return -1;
        var order = bothNumbers ? nx - ny : x.localeCompare(y);
        return asc ? order : -order;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _cell(cell: Cell, numeric: bool) -> str:
    classes = ["num" if numeric else "text"] + ["best"] * cell.best + ["warn"] * cell.warn
    content = ", ".join(f'<a href="#{_e(target)}">{_e(text)}</a>' for text, target in cell.links)
    return (f'<td class="{" ".join(classes)}" data-value="{_e(cell.sort)}">'
            f"{content or _e(cell.text)}</td>")


def _row(row: Row, table: Table) -> str:
    cells = "".join(_cell(c, h.numeric) for c, h in zip(row.cells, table.headers, strict=True))
    return ('<tr class="unfinished">' if row.flagged else "<tr>") + cells + "</tr>"


def _table(table: Table) -> str:
    head = "".join(f'<th class="{"num" if h.numeric else "text"}" title="{_e(h.tooltip)}">'
                   f"{_e(h.title)}</th>" for h in table.headers)
    body = "".join(_row(r, table) for r in table.rows)
    return (f'<div class="table-wrap"><table class="sortable" id="{_e(table.id)}"><thead><tr>'
            f"{head}</tr></thead><tbody>{body}</tbody></table></div>")


def _notes(notes: Sequence[str], warn: bool = False) -> str:
    kind = "note warn-note" if warn else "note"
    return "".join(f'<p class="{kind}">{_e(n)}</p>' for n in notes)


def _report_figure(figure: ReportFigure) -> str:
    image = ""
    if figure.png is not None:
        image = (f'<figure><img id="{_e(figure.name.removesuffix(".png"))}" '
                 f'src="{_data_uri(figure.png)}" alt="{_e(figure.title)}">'
                 f"<figcaption>{_e(figure.caption)}</figcaption></figure>")
    return f"<h2>{_e(figure.title)}</h2>{image}{_notes(figure.notes, warn=True)}"


def _run_figure(png: bytes, label: str, run: str) -> str:
    size = png_size(png)
    wide = size is not None and size[0] > WIDE * size[1]
    return (('<figure class="wide">' if wide else "<figure>") + f'<img src="{_data_uri(png)}" '
            f'alt="{_e(label)} of {_e(run)}"><figcaption>{_e(label)} — {_e(run)}</figcaption>'
            "</figure>")


def _run_section(index: int, summary: RunSummary, data_line: str, notes: list[str],
                 explorer: str | None = None) -> str:
    figures = "".join(_run_figure(p.read_bytes(), p.stem.replace("_", " "), summary.name)
                      for p in summary.figures)
    link = (f'<p class="note"><a class="explorer" href="{_e(explorer)}">open the embedding '
            "explorer</a>: the latent map with each test cell's thumbnail, colour by any "
            "column, click for the cell and its reconstruction</p>") if explorer else ""
    return (f'<section class="run" id="{_e(anchor(index, summary.name))}">'
            f'<h3>{_e(summary.name)}<a class="top" href="#runs">↑ runs table</a></h3>'
            f'<p class="note">{_e(run_facts(summary))}</p><p class="note">{_e(data_line)}</p>'
            f'{link}{_notes(notes, warn=True)}<div class="figures">{figures}</div></section>')


# in every report page's head: the next report may replace a page that has it
GENERATOR = '<meta name="generator" content="cellae report">'


def render(title: str, summaries: Sequence[RunSummary], tables: tuple[Table, Table],
           figures: Sequence[ReportFigure], sections: Sequence[tuple[str, list[str]]],
           settings_note: str, explorers: Sequence[str | None] = ()) -> str:
    """The page: settings, runs, the figures across runs, then one section per run.

    ``sections`` holds each run's data line and notes, in the order of ``summaries``;
    ``explorers`` each run's explorer page relative to the report (or None).
    """
    settings, runs_ = tables
    stamp = time.strftime("%Y-%m-%d %H:%M")
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">' + GENERATOR,
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1><p class=\"sub\">{len(summaries)} runs in {len(settings.rows)} "
        f"settings, written {stamp} by cellae {__version__}. Click a column title to sort; a "
        "run's name leads to its section.</p>",
        "<h2>Settings: mean ± standard deviation over seeds and patient folds</h2>",
        _notes([settings_note]), _table(settings),
        "<h2>Runs</h2>", _table(runs_), _notes([MARKING_NOTE, COLUMN_NOTE]),
        *(_report_figure(f) for f in figures),
        "<h2>Each run</h2>",
        *(_run_section(i, s, *sections[i], explorers[i] if i < len(explorers) else None)
          for i, s in enumerate(summaries)),
        f"<script>{_SORT_SCRIPT}</script></body></html>\n",
    ]
    return "".join(parts)
