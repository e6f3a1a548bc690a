"""The report's Markdown twin: the same tables (best in bold, unfinished runs' numbers in
italics), the same figures as files in ``<stem>_files/``, and the same run sections."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cellae import runs
from cellae.report.collect import RunSummary, anchor
from cellae.report.figures import ReportFigure
from cellae.report.tables import COLUMN_NOTE, MARKING_NOTE, MISSING, Cell, Table, run_facts


def md_escape(value: Any) -> str:
    text = str(value)
    for char in "\\`*_[]<>|#":
        text = text.replace(char, "\\" + char)
    return text.replace("\n", " ")


def _cell(cell: Cell, flagged: bool, numeric: bool) -> str:
    if cell.links:
        return ", ".join(f"[{md_escape(text)}](#{target})" for text, target in cell.links)
    text = md_escape(cell.text)
    if cell.best:
        return f"**{text}**"
    if flagged and numeric and cell.text != MISSING:
        return f"*{text}*"
    return text


def _table(table: Table) -> list[str]:
    lines = ["| " + " | ".join(md_escape(h.title) for h in table.headers) + " |",
             "|" + "|".join("---:" if h.numeric else "---" for h in table.headers) + "|"]
    for row in table.rows:
        cells = [_cell(c, row.flagged, h.numeric) for c, h in zip(row.cells, table.headers,
                                                                   strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _link(path: Path, out: Path, alt: str) -> str:
    return f"![{md_escape(alt)}]({path.relative_to(out.parent).as_posix()})"


def _report_figure(figure: ReportFigure, files_dir: Path, out: Path) -> list[str]:
    lines = [f"## {md_escape(figure.title)}", ""]
    if figure.png is not None:
        files_dir.mkdir(parents=True, exist_ok=True)
        runs.write_atomic(files_dir / figure.name, figure.png)
        lines += [_link(files_dir / figure.name, out, figure.title), "",
                  f"*{md_escape(figure.caption)}*", ""]
    return lines + [f"> {md_escape(n)}\n" for n in figure.notes]


def _run_section(index: int, summary: RunSummary, data_line: str, notes: list[str],
                 files_dir: Path, out: Path) -> list[str]:
    target = files_dir / f"{index:02d}-{runs.safe_folder_name(summary.name)}"
    lines = [f'<a id="{anchor(index, summary.name)}"></a>', "", f"### {md_escape(summary.name)}",
             "", md_escape(run_facts(summary)), "", md_escape(data_line), ""]
    lines += [f"> {md_escape(n)}\n" for n in notes]
    for figure in summary.figures:
        target.mkdir(parents=True, exist_ok=True)
        runs.write_atomic(target / figure.name, figure.read_bytes())
        label = figure.stem.replace("_", " ")
        lines += [_link(target / figure.name, out, f"{label} — {summary.name}"), ""]
    return lines


# the first line of every report.md: the next report may replace a file that starts with it
MARK = "<!-- written by cellae report -->"


def render(title: str, summaries: Sequence[RunSummary], tables: tuple[Table, Table],
           figures: Sequence[ReportFigure], sections: Sequence[tuple[str, list[str]]],
           settings_note: str, files_dir: Path, out: Path) -> str:
    """The Markdown, in the page's order; writes its figures into ``files_dir`` as it goes."""
    settings, runs_ = tables
    lines = [MARK, f"# {md_escape(title)}", "",
             f"{len(summaries)} runs in {len(settings.rows)} settings. Best value per column in "
             "**bold** (among comparable runs only); unfinished runs' numbers in *italics*.", "",
             "## Settings: mean ± standard deviation over seeds and patient folds", "", md_escape(settings_note), "",
             *_table(settings), "## Runs", "", *_table(runs_),
             md_escape(MARKING_NOTE), "", md_escape(COLUMN_NOTE), ""]
    for figure in figures:
        lines += _report_figure(figure, files_dir, out)
    lines += ["## Each run", ""]
    for index, summary in enumerate(summaries):
        lines += _run_section(index, summary, *sections[index], files_dir, out)
    return "\n".join(lines)
