"""The report's tables as plain data (cells with their text, sort value and marks), so the page
and its Markdown twin render one content and cannot drift apart."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cellae.columns import Column
from cellae.repeats import REPEAT_KEYS
from cellae.report.collect import RunSummary, anchor, config_value, differing_keys
from cellae.report.compare import RunRow, Setting, Spread, best_rows

MISSING = "–"
MARKING_NOTE = (
    "A value is marked best only among runs that can be compared: those whose configs agree on "
    "every key the column compares within (hover a column title to see them). Baselines (PCA of "
    "the pixels, the majority rate) are never marked, nor is a run alone in its comparison, and a "
    "run that did not finish competes for nothing: its status is flagged and its numbers greyed."
)
COLUMN_NOTE = (
    "test loss: lowest per-image test loss over epochs; probe: logistic regression on the latent "
    "codes, fit on train patients, scored on test patients; PCA: the same probe on PCA of the raw "
    "pixels with as many dimensions as the latent space."
)


@dataclass
class Cell:
    """``links`` (text, section id) make a name cell; ``sort`` is what sorting compares."""

    text: str
    sort: str | float = ""
    best: bool = False
    warn: bool = False  # a status that is not "finished"
    links: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Header:
    title: str
    tooltip: str = ""
    numeric: bool = True


@dataclass
class Row:
    cells: list[Cell]
    flagged: bool = False  # not finished: its numbers are not final


@dataclass
class Table:
    id: str
    headers: list[Header]
    rows: list[Row]


def format_number(value: float | None, digits: int) -> str:
    """Every value of a column with the column's decimals; counts get thousands separators."""
    if value is None:
        return MISSING
    return f"{value:,.0f}" if digits == 0 else f"{value:.{digits}f}"


def _format_spread(spread: Spread | None, digits: int, runs: int) -> str:
    if spread is None:
        return MISSING
    text = format_number(spread.mean, digits)
    if spread.sd is not None:
        text += f" ± {format_number(spread.sd, digits)}"
    return text + (f" (n={spread.n})" if spread.n != runs else "")


def _column_tooltip(column: Column) -> str:
    if column.baseline:
        return "a baseline for reference: never marked"
    if not column.better:
        return "not ranked"
    if not column.compare_within:
        return f"{column.better} is better; best among all finished runs"
    return f"{column.better} is better; best among runs with the same " + ", ".join(
        column.compare_within)


def _config_text(config: dict[str, Any], key: str) -> str:
    """A config value as a table shows it; "–" where the run's family has no such key."""
    value = config_value(config, key)
    if value is None:
        return MISSING
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def status_text(summary: RunSummary) -> str:
    """The status, with how far an unfinished run got."""
    if summary.finished:
        return summary.status
    planned = summary.epochs_planned
    done = f"{summary.epochs_completed} of {planned}" if planned else str(summary.epochs_completed)
    return f"⚠ {summary.status} ({done} epochs)"


def run_facts(summary: RunSummary) -> str:
    """One line under a run's heading: what it is and what it cost."""
    parts = [status_text(summary), f"seed {summary.config.get('seed', MISSING)}",
             f"{summary.epochs_completed} epochs"]
    if (seconds := summary.number("run.fit_seconds")) is not None:
        parts.append(f"fit in {seconds:.1f} s")
    if (parameters := summary.number("run.parameters")) is not None:
        parts.append(f"{parameters:,.0f} parameters")
    return " · ".join(parts)


def _header(keys: Sequence[str], columns: Sequence[Column], first: Sequence[Header]) -> list[Header]:
    # numbers before config keys: two sweeps can differ in a dozen keys, pushing them off-screen
    return ([*first] + [Header(c.title, _column_tooltip(c)) for c in columns]
            + [Header(k, "config key", numeric=False) for k in keys])


def runs_table(summaries: Sequence[RunSummary], columns: Sequence[Column]) -> Table:
    """One row per run: its status, the config keys that differ between runs, every column."""
    keys = differing_keys([s.config for s in summaries])
    competitors = [RunRow(s) for s in summaries]
    best = {c.key: best_rows(competitors, c) for c in columns}
    rows = []
    for index, summary in enumerate(summaries):
        cells = [Cell(summary.name, summary.name, links=[(summary.name, anchor(index, summary.name))]),
                 Cell(status_text(summary), summary.status, warn=not summary.finished)]
        for column in columns:
            value = summary.number(column.key)
            cells.append(Cell(format_number(value, column.digits), "" if value is None else value,
                              best=index in best[column.key]))
        cells += [Cell(t, t) for t in (_config_text(summary.config, k) for k in keys)]
        rows.append(Row(cells, flagged=not summary.finished))
    first = [Header("run", numeric=False), Header("status", "from run.json", numeric=False)]
    return Table("runs", _header(keys, columns, first), rows)


def _runs_cell(setting: Setting, summaries: Sequence[RunSummary]) -> Cell:
    links = [(s.name, anchor(summaries.index(s), s.name)) for s in setting.runs]
    return Cell(", ".join(s.name for s in setting.runs), setting.runs[0].name, links=links)


def _count_cell(setting: Setting) -> Cell:
    n, unfinished = len(setting.finished), len(setting.runs) - len(setting.finished)
    text = str(n) + (f" (+{unfinished} not finished)" if unfinished else "")
    return Cell(text, n, warn=bool(unfinished))


def settings_table(summaries: Sequence[RunSummary], settings: Sequence[Setting],
                   columns: Sequence[Column]) -> Table:
    """One row per setting: its runs, the keys that differ between settings, how many finished
    runs it averages, and mean ± standard deviation over them for every column."""
    keys = differing_keys([s.config for s in settings], ignore=REPEAT_KEYS)
    best = {c.key: best_rows(settings, c) for c in columns}
    rows = []
    for index, setting in enumerate(settings):
        seeds = ", ".join(str(r.config.get("seed", MISSING)) for r in setting.runs)
        cells = [_runs_cell(setting, summaries), _count_cell(setting), Cell(seeds, seeds)]
        for column in columns:
            spread = setting.spread(column.key)
            cells.append(Cell(_format_spread(spread, column.digits, len(setting.finished)),
                              "" if spread is None else spread.mean,
                              best=index in best[column.key]))
        cells += [Cell(t, t) for t in (_config_text(setting.config, k) for k in keys)]
        rows.append(Row(cells, flagged=not setting.competes))
    first = [Header("runs", numeric=False),
             Header("n", "finished runs averaged; unfinished runs are left out"),
             Header("seeds", numeric=False)]
    return Table("settings", _header(keys, columns, first), rows)
