"""Compare runs in one page: ``cellae report RUN_OR_SWEEP_DIR... --out report.html``.

The HTML file is self-contained (figures embedded as data URIs, no external scripts), so it opens
offline; ``report.md`` beside it holds the same content with the figures as files in
``<stem>_files/``. Every string that comes from a run, a config or a file name is escaped.

The page shows runs grouped into settings (configs equal but for the seed and fold) with mean ± standard
deviation, every run's numbers and status, the learning curves of all runs on one plot, the same
test cells reconstructed by every run, and a section per run with its own figures. A number is
marked best only among runs it can be compared with (see :mod:`cellae.report.compare`).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from cellae import runs
from cellae.errors import CellaeError
from cellae.files import remove_stale_temporaries
from cellae.report import markdown, page
from cellae.report.collect import (
    RunSummary,
    expand_run_dirs,
    own_explorer,
    report_columns,
    summarise_runs,
)
from cellae.report.compare import group_settings
from cellae.report.figures import learning_curves, same_cells
from cellae.report.tables import runs_table, settings_table

__all__ = ["write_report"]

# marks a figures folder as a report's own, which the next report may replace
FILES_MARK = ".cellae-report"
# a page of 1,000 runs with their figures was 1.24 GB; a comparison of more is not read anyway
MAX_RUNS = 200


def _data_line(summary: RunSummary) -> str:
    d = summary.data
    parts = [f"source {d.get('source')}"]
    for side in ("train", "test"):
        if isinstance(d.get(side), dict):
            parts.append(f"{side}: {d[side].get('images')} images of {d[side].get('patients')} patients")
    return "; ".join(parts)


def _run_notes(summary: RunSummary) -> list[str]:
    notes = []
    if not summary.finished:
        notes.append(f"this run is {summary.status}, not finished: its numbers are not final and "
                     "compete for nothing")
    if not summary.evaluated:
        notes.append("not evaluated yet: run cellae evaluate on it")
    return notes


def _settings_note(n_runs: int, n_settings: int) -> str:
    if n_settings == n_runs:
        return ("Every setting has one run, so there is no spread to show; runs that differ only in "
                "seed or patient fold are averaged here.")
    return ("Runs whose configs differ only in seed, patient fold (data.fold) and name form one "
            "setting; n counts the finished runs averaged, ± is their sample standard deviation.")


def _written_by_older_report(folder: Path) -> bool:
    """Whether ``folder`` holds only what a report before the mark wrote: PNG figures, and
    folders ``NN-<run>`` of PNG figures, with no link among them."""
    for entry in folder.iterdir():
        if entry.is_symlink():
            return False
        if entry.is_dir():
            if not re.fullmatch(r"\d{2}-.+", entry.name) or not all(
                    f.is_file() and not f.is_symlink() and f.suffix == ".png"
                    for f in entry.iterdir()):
                return False
        elif entry.suffix != ".png":
            return False
    return True


def _own_files_dir(out: Path) -> Path:
    """The folder of the Markdown's figures beside ``out``, emptied if an earlier report made it.

    A report replaces only what a report wrote (its folder holds ``FILES_MARK``); any other
    folder of that name, a run folder say, is someone's work and is refused in one line.
    """
    if out.suffix.lower() not in (".html", ".htm"):
        raise CellaeError(f"--out must name an .html file (report.md is written beside it), "
                          f"got {out}")
    files_dir = out.with_name(f"{out.stem}_files")
    if files_dir.is_symlink() or (files_dir.exists() and not files_dir.is_dir()):
        raise CellaeError(f"{files_dir} is in the way of the report's figures and was not "
                          f"written by cellae report; move it or choose another --out")
    if files_dir.is_dir():
        if not (files_dir / FILES_MARK).is_file() and not _written_by_older_report(files_dir):
            raise CellaeError(f"{files_dir} exists and was not written by cellae report, so it "
                              f"is left as it is; move it or choose another --out")
        shutil.rmtree(files_dir)
    return files_dir


def _refuse_others_files(out: Path, overwrite: bool) -> None:
    """A report replaces its own page and Markdown; any other file at those names (a user's
    ``index.html`` or ``report.md``) only with ``overwrite``."""
    if out.is_dir():
        raise CellaeError(f"--out {out} is a folder; name the report's .html file in it")
    for path, mark in ((out, page.GENERATOR.encode()), (out.with_suffix(".md"),
                                                      markdown.MARK.encode())):
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise CellaeError(f"{path} is in the way of the report and not a plain file; move "
                              "it or choose another --out")
        if path.is_file() and not overwrite:
            try:
                with path.open("rb") as handle:
                    head = handle.read(4096)
            except OSError as exc:
                raise CellaeError(f"cannot read {path}: {exc.strerror}") from exc
            if mark not in head:
                raise CellaeError(f"{path} exists and was not written by cellae report; pass "
                                  "--overwrite to replace it, or choose another --out")


def write_report(paths: list[Path], out: Path, title: str | None = None,
                 overwrite: bool = False) -> Path:
    """Write ``out`` (HTML) and the same content as Markdown beside it; return the HTML path.

    A file at either name that an earlier report did not write is replaced only with
    ``overwrite``."""
    run_dirs = expand_run_dirs(paths)
    if len(run_dirs) > MAX_RUNS:
        raise CellaeError(f"{len(run_dirs):,} runs found; a report compares at most {MAX_RUNS} "
                          f"(each brings its figures into the page): name fewer run or sweep folders")
    summaries = summarise_runs(run_dirs)
    settings = group_settings(summaries)
    columns = report_columns(summaries)
    tables = (settings_table(summaries, settings, columns), runs_table(summaries, columns))
    figures = [learning_curves(summaries), same_cells(summaries)]
    sections = [(_data_line(s), _run_notes(s)) for s in summaries]
    note = _settings_note(len(summaries), len(settings))
    title = title or ("cellae report: " + ", ".join(p.name for p in paths))
    files_dir = _own_files_dir(out)
    _refuse_others_files(out, overwrite)
    remove_stale_temporaries(out.parent, depth=0)
    # each run's explorer is copied beside the report, so that the report's folder travels whole
    explorers = [own_explorer(s.path) for s in summaries]
    links = [f"{files_dir.name}/explorer-{i + 1}.html" if e else None
             for i, e in enumerate(explorers)]
    out.parent.mkdir(parents=True, exist_ok=True)
    runs.write_atomic(out, page.render(title, summaries, tables, figures, sections, note,
                                       explorers=links))
    files_dir.mkdir()
    (files_dir / FILES_MARK).write_text("written by cellae report; replaced by the next one\n")
    for i, explorer in enumerate(explorers):
        if explorer is not None:
            runs.write_atomic(files_dir / f"explorer-{i + 1}.html", explorer.read_bytes())
    text = markdown.render(title, summaries, tables, figures, sections, note, files_dir, out)
    runs.write_atomic(out.with_suffix(".md"), text)
    return out
