"""Compare runs in one page: ``cellae report RUN_OR_SWEEP_DIR... --out report.html``.

The HTML file is self-contained (figures embedded as data URIs, no external scripts), so it opens
offline; ``report.md`` beside it holds the same content with the figures as files in
``<stem>_files/``. Every string that comes from a run, a config or a file name is escaped.
"""

from __future__ import annotations

import base64
import html
import json
import shutil
import time
from pathlib import Path
from typing import Any

from cellae import __version__, runs
from cellae.columns import Column
from cellae.report.collect import (
    RunSummary,
    best_values,
    differing_keys,
    expand_run_dirs,
    flatten_config,
    report_columns,
    summarise_run,
)

__all__ = ["write_report"]

_STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2rem; color: #222; }
h1 { margin-bottom: 0.2rem; } .sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: right; }
th { background: #f3f3f3; cursor: pointer; user-select: none; position: relative; }
th.sorted-asc::after { content: ' \\25B2'; } th.sorted-desc::after { content: ' \\25BC'; }
td.name, th.name { text-align: left; } td.best { background: #d8f3d8; font-weight: 600; }
.figures { display: flex; gap: 0.8rem; overflow-x: auto; align-items: flex-start; }
.figures figure { margin: 0; } .figures img { max-height: 330px; border: 1px solid #ddd; }
figcaption { font-size: 0.8rem; color: #555; text-align: center; }
section.run { margin: 1.5rem 0; padding-top: 0.5rem; border-top: 1px solid #ddd; }
.note { color: #666; font-size: 0.85rem; }
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


def _format(value: Any, digits: int) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _md_escape(value: Any) -> str:
    text = str(value)
    for char in "\\`*_[]<>|":
        text = text.replace(char, "\\" + char)
    return text


def _data_line(summary: RunSummary) -> str:
    d = summary.data
    parts = [f"source {summary.data.get('source')}"]
    for side in ("train", "test"):
        if isinstance(d.get(side), dict):
            parts.append(f"{side}: {d[side].get('images')} images of {d[side].get('patients')} patients")
    return "; ".join(parts)


def _config_cell(flat: dict[str, Any], key: str) -> str:
    """A config value as a table shows it; "–" where the run's family has no such key."""
    if key not in flat:
        return "–"
    value = flat[key]
    return json.dumps(value) if isinstance(value, list) else str(value)


def _evaluation_note(summary: RunSummary) -> str:
    if not summary.evaluated:
        return "not evaluated yet: run cellae evaluate on it"
    return ""


def _html(summaries: list[RunSummary], columns: list[Column], keys: list[str],
          best: dict[str, float], title: str) -> str:
    flats = [flatten_config(s.config) for s in summaries]
    head = ['<th class="name">run</th>'] + [f"<th>{_e(k)}</th>" for k in keys]
    head += [f"<th>{_e(c.title)}</th>" for c in columns]
    body = []
    for summary, flat in zip(summaries, flats, strict=True):
        cells = [f'<td class="name" data-value="{_e(summary.name)}">{_e(summary.name)}</td>']
        for key in keys:
            value = _config_cell(flat, key)
            cells.append(f'<td data-value="{_e(value)}">{_e(value)}</td>')
        for column in columns:
            value = summary.number(column.key)
            marked = ' class="best"' if column.key in best and value == best[column.key] else ""
            raw = "" if value is None else value
            cells.append(f'<td{marked} data-value="{_e(raw)}">{_e(_format(value, column.digits))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    sections = []
    for summary in summaries:
        figures = "".join(
            f'<figure><img src="{_data_uri(p)}" alt="{_e(p.stem)} of {_e(summary.name)}">'
            f"<figcaption>{_e(p.stem.replace('_', ' '))}</figcaption></figure>"
            for p in summary.figures
        )
        missing = _evaluation_note(summary)
        missing = f'<p class="note">{_e(missing)}</p>' if missing else ""
        sections.append(
            f'<section class="run"><h3>{_e(summary.name)}</h3>'
            f'<p class="note">{_e(_data_line(summary))}</p>{missing}'
            f'<div class="figures">{figures}</div></section>'
        )
    stamp = time.strftime("%Y-%m-%d %H:%M")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{_e(title)}</h1><p class=\"sub\">{len(summaries)} runs, written {stamp} by cellae {__version__}. "
        "Click a column title to sort; the best value of each column is marked green.</p>"
        "<h2>Headline numbers</h2>"
        '<table class="sortable" id="runs"><thead><tr>' + "".join(head) + "</tr></thead><tbody>"
        + "".join(body) + "</tbody></table>"
        '<p class="note">test loss: lowest per-image test loss over epochs; probe: logistic regression '
        "on the latent codes, fit on train patients, scored on test patients; PCA: the same probe on "
        "PCA of the raw pixels with as many dimensions as the latent space.</p>"
        "<h2>Runs</h2>" + "".join(sections)
        + f"<script>{_SORT_SCRIPT}</script></body></html>\n"
    )


def _markdown(summaries: list[RunSummary], columns: list[Column], keys: list[str],
              best: dict[str, float], title: str, files_dir: Path, out: Path) -> str:
    flats = [flatten_config(s.config) for s in summaries]
    header = ["run", *keys, *(c.title for c in columns)]
    lines = [f"# {_md_escape(title)}", "", f"{len(summaries)} runs. Best value per column in **bold**.", "",
             "| " + " | ".join(_md_escape(h) for h in header) + " |",
             "|" + "|".join(["---"] * len(header)) + "|"]
    for summary, flat in zip(summaries, flats, strict=True):
        cells = [_md_escape(summary.name)] + [_md_escape(_config_cell(flat, k)) for k in keys]
        for column in columns:
            value = summary.number(column.key)
            text = _format(value, column.digits)
            cells.append(f"**{text}**" if column.key in best and value == best[column.key] else text)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Runs", ""]
    for index, summary in enumerate(summaries):
        lines += [f"### {_md_escape(summary.name)}", "", _md_escape(_data_line(summary)), ""]
        target = files_dir / f"{index:02d}-{runs.safe_folder_name(summary.name)}"
        target.mkdir(parents=True, exist_ok=True)
        for figure in summary.figures:
            shutil.copyfile(figure, target / figure.name)
            relative = (target / figure.name).relative_to(out.parent)
            lines.append(f"![{figure.stem.replace('_', ' ')}]({relative.as_posix()})")
        lines.append("")
    return "\n".join(lines)


def write_report(paths: list[Path], out: Path, title: str | None = None) -> Path:
    """Write ``out`` (HTML) and the same content as Markdown beside it; return the HTML path."""
    summaries = [summarise_run(p) for p in expand_run_dirs(paths)]
    keys = differing_keys(summaries)
    columns = report_columns(summaries)
    best = best_values(summaries, columns)
    title = title or ("cellae report: " + ", ".join(p.name for p in paths))
    out.parent.mkdir(parents=True, exist_ok=True)
    runs.write_atomic(out, _html(summaries, columns, keys, best, title))
    files_dir = out.with_name(f"{out.stem}_files")
    if files_dir.exists():
        shutil.rmtree(files_dir)
    runs.write_atomic(out.with_suffix(".md"), _markdown(summaries, columns, keys, best, title, files_dir, out))
    return out
