"""The report's own figures, drawn across runs: the learning curves of every run on one plot,
and the same test cells reconstructed by every run.

Built on ``matplotlib.figure.Figure`` (Agg, no pyplot) like :mod:`cellae.plots`, and returned
as PNG bytes: the page embeds them and the Markdown twin writes them beside itself.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from cellae import runs
from cellae.columns import SAME_OBJECTIVE
from cellae.plots import show_image
from cellae.report.collect import RunSummary, config_value

DPI = 110
MAX_CELLS = 8
NO_CELLS = "no drawn test cells recorded (eval/reconstructions.npz)"


@dataclass
class ReportFigure:
    """A figure of the page, or why there is none (``png`` None); notes say what to keep in
    mind when reading it."""

    name: str  # the file name in the Markdown's files folder, and the image's id in the page
    title: str
    caption: str
    png: bytes | None
    notes: list[str] = field(default_factory=list)


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, format="png", facecolor="white", bbox_inches="tight")
    return buffer.getvalue()


def png_size(png: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's header, or None for anything else: the page lays out wide
    figures across the page without decoding them."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def _colours(n: int) -> list[Any]:
    palette = colormaps["tab10" if n <= 10 else "tab20"]
    return [palette(i % palette.N) for i in range(n)]


def _series(rows: Sequence[dict[str, float]], key: str) -> np.ndarray:
    return np.array([row.get(key, math.nan) for row in rows], dtype=np.float64)


def _log_if_wide(ax: Axes, values: list[np.ndarray]) -> bool:
    """Log scale when the losses span more than a factor of 10, so late epochs stay readable."""
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.array([])
    if len(finite) and finite.min() > 0 and finite.max() / finite.min() > 10:
        ax.set_yscale("log")
        return True
    return False


def _label(summary: RunSummary) -> str:
    return summary.name if summary.finished else f"{summary.name} ({summary.status})"


def learning_curves(summaries: Sequence[RunSummary]) -> ReportFigure:
    """Test (solid) and train (dashed) loss per epoch of every run, its best epoch dotted."""
    figure = ReportFigure("learning_curves_all.png", "Learning curves of all runs",
                          "loss per image by epoch: test solid, train dashed, • lowest test loss",
                          None)
    drawn = [s for s in summaries if np.isfinite(_series(s.rows, "test_loss")).any()
             or np.isfinite(_series(s.rows, "train_loss")).any()]
    missing = [s.name for s in summaries if all(d is not s for d in drawn)]
    if missing:
        figure.notes.append("no epochs in metrics.csv for " + ", ".join(missing))
    if not drawn:
        return figure
    fig = Figure(figsize=(10, 5.2))
    ax = fig.subplots()
    plotted = []
    for summary, colour in zip(drawn, _colours(len(drawn)), strict=True):
        epochs = _series(summary.rows, "epoch")
        if not np.isfinite(epochs).all():
            epochs = np.arange(1, len(summary.rows) + 1, dtype=np.float64)
        test, train = _series(summary.rows, "test_loss"), _series(summary.rows, "train_loss")
        ax.plot(epochs, test, "-", color=colour, linewidth=1.8, label=_label(summary))
        ax.plot(epochs, train, "--", color=colour, linewidth=1.2, alpha=0.8)
        if np.isfinite(test).any():
            best = int(np.nanargmin(test))
            ax.plot(epochs[best], test[best], "o", color=colour, markersize=6)
        plotted += [test, train]
    log = _log_if_wide(ax, plotted)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per image" + (" (log scale)" if log else ""))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3, which="both" if log else "major")
    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="grey", linestyle="-"), Line2D([], [], color="grey", linestyle="--")]
    labels += ["test", "train"]
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9,
              frameon=False, ncol=1 if len(labels) <= 24 else 2)
    figure.png = png_bytes(fig)
    objectives = {str([config_value(s.config, k) for k in SAME_OBJECTIVE]) for s in drawn}
    if len(objectives) > 1:
        figure.notes.append("these runs minimise different objectives (family, loss, weights "
                            "or image preprocessing differ): their losses are not on one scale")
    return figure


@dataclass
class _Drawn:
    """One run's drawn test cells, indexed by file name."""

    summary: RunSummary
    arrays: dict[str, np.ndarray]
    row_of: dict[str, int]


def _drawn_cells(summary: RunSummary) -> _Drawn | None:
    """The run's reconstructions.npz if it holds what the figure needs, shaped as it should be."""
    arrays = runs.read_reconstructions(summary.path)
    files = arrays.get("files")
    originals, recons = arrays.get("originals"), arrays.get("reconstructions")
    if files is None or originals is None or recons is None:
        return None
    shapes_ok = (files.ndim == 1 and originals.ndim == recons.ndim == 4 and originals.shape[1] in (1, 3)
                 and recons.shape[1] in (1, 3) and len(originals) == len(recons) == len(files))
    if not shapes_ok:
        return None
    arrays = {**arrays, "originals": originals.astype(np.uint8, copy=False),
              "reconstructions": recons.astype(np.uint8, copy=False)}
    return _Drawn(summary, arrays, {str(f): i for i, f in enumerate(files.tolist())})


def _class_of(first: _Drawn, row: int) -> str:
    labels, names = first.arrays.get("labels"), first.arrays.get("class_names")
    if labels is None or row >= len(labels):
        return ""
    try:
        label = int(labels[row])
    except (TypeError, ValueError):
        return str(labels[row])
    return str(names[label]) if names is not None and 0 <= label < len(names) else f"class {label}"


def _same_inputs(drawn: Sequence[_Drawn], files: Sequence[str]) -> bool:
    first = drawn[0]
    reference = first.arrays["originals"][[first.row_of[f] for f in files]]
    return all(
        np.array_equal(reference, d.arrays["originals"][[d.row_of[f] for f in files]])
        for d in drawn[1:]
    )


def _mse(original: np.ndarray, recon: np.ndarray) -> str:
    if original.shape != recon.shape:
        return ""
    return f"MSE {np.mean((original / 255.0 - recon / 255.0) ** 2):.4f}"


def _draw_same_cells(drawn: Sequence[_Drawn], files: Sequence[str], input_label: str) -> bytes:
    """A row of inputs, then one row per run; under each reconstruction its MSE against the
    run's own input of that cell."""
    first = drawn[0]
    fig = Figure(figsize=(1.35 * len(files) + 1.6, 1.4 * (len(drawn) + 1) + 0.6))
    axes = fig.subplots(len(drawn) + 1, len(files), squeeze=False)
    for column, name in enumerate(files):
        show_image(axes[0, column], first.arrays["originals"][first.row_of[name]])
        axes[0, column].set_title(_class_of(first, first.row_of[name]), fontsize=9)
        for line, d in enumerate(drawn, start=1):
            row = d.row_of[name]
            recon = d.arrays["reconstructions"][row]
            show_image(axes[line, column], recon)
            axes[line, column].set_xlabel(_mse(d.arrays["originals"][row], recon), fontsize=7,
                                          labelpad=1)
    labels = [input_label] + [_label(d.summary) for d in drawn]
    for line, label in enumerate(labels):
        axes[line, 0].set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center")
    fig.suptitle("The same test cells reconstructed by every run", fontsize=12)
    fig.tight_layout()
    return png_bytes(fig)


def same_cells(summaries: Sequence[RunSummary]) -> ReportFigure:
    """The test cells every run drew (in the first run's order, up to 8), reconstructed by each."""
    figure = ReportFigure("same_test_cells.png", "The same test cells, every run",
                          "top row: the input; below, each run's reconstruction (MSE against "
                          "that run's own input)", None)
    drawn = [d for s in summaries if (d := _drawn_cells(s)) is not None]
    lacking = [s.name for s in summaries if all(d.summary is not s for d in drawn)]
    if lacking:
        figure.notes.append(f"{NO_CELLS} for {', '.join(lacking)}; re-run cellae evaluate on "
                            + ("it" if len(lacking) == 1 else "them"))
    if not drawn:
        return figure
    common = set.intersection(*(set(d.row_of) for d in drawn))
    files = [f for f in drawn[0].row_of if f in common][:MAX_CELLS]
    if not files:
        figure.notes.append("the runs drew no test cells in common (their splits or seeds "
                            "differ), so there is nothing to show side by side")
        return figure
    same = _same_inputs(drawn, files)
    if not same:
        figure.notes.append(f"the runs' inputs of these cells differ (preprocessing such as "
                            f"data.background or the image size): the top row is "
                            f"{drawn[0].summary.name}'s")
    figure.png = _draw_same_cells(drawn, files, "input" if same else "input (first run)")
    return figure
