"""Every figure of a run, one function each; each writes one PNG and keeps nothing open.

Figures are built on ``matplotlib.figure.Figure`` directly (Agg rendering, no pyplot), so
plotting never touches a display or a global figure list, and nothing needs closing.
Images come as arrays (N, C, H, W), uint8 or float in [0, 1]: C = 1 (grey), 3 (RGB), or any
other count (fluorescence channels, shown mixed in colours: :func:`cellae.images.display_rgb`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from cellae.explorer import CATEGORY_MAX, numeric_values
from cellae.files import write_atomic
from cellae.images import display_rgb, to_uint8, unit_float_array
from cellae.naming import natural_key

DPI = 130
GRID_COLUMNS = 8
PATIENT_LEGEND_MAX = 20
# later epochs drawn on less than this share of a curve's y-axis read as a flat line
FLATTENED = 0.25
# metrics.csv columns that are neither a loss nor a loss weight
NOT_SCHEDULES = ("epoch", "lr", "seconds", "images_per_second")
SCHEDULE_COLOURS = ("tab:purple", "tab:brown", "tab:pink", "tab:olive")


def save(fig: Figure, path: Path) -> Path:
    """Rendered in memory and written atomically, so a half-written PNG never has the real name."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, format="png", facecolor="white")
    write_atomic(Path(path), buffer.getvalue())
    return Path(path)


def _uint8(images: np.ndarray) -> np.ndarray:
    array = to_uint8(images)
    if array.ndim != 4 or array.shape[1] < 1:
        raise ValueError(f"expected images shaped (N, C, H, W), got {array.shape}")
    return array


def show_image(ax: Axes, image: np.ndarray) -> None:
    """One (C, H, W) uint8 image, pixels kept sharp, no ticks or frame."""
    if image.shape[0] == 1:
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(display_rgb(image).transpose(1, 2, 0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


# On an image grid: inches a tile is drawn wide, and the space a one-line caption takes, in
# tile heights
TILE_INCHES = 1.2
CAPTION = 0.22


class _Mosaic:
    """Image tiles pasted into one RGB canvas on white, drawn as one image on one axes.

    A grid of 32 cells as 32 axes took 0.63 s to build and render (each axes makes its own
    ticks and frame); one canvas with text laid over it draws the same grid in 0.25 s.
    ``rows`` are (N, C, H, W) arrays of one tile size. Positions are in canvas pixels;
    ``above`` leaves room over each row (for captions, in tile heights), ``bottom`` under the
    last row, ``left`` a margin for row labels.
    """

    def __init__(self, rows: Sequence[np.ndarray], above: Sequence[float], *,
                 left: float = 0.0, bottom: float = 0.0) -> None:
        self.height, self.width = rows[0].shape[2:]
        height, width = self.height, self.width
        self.gap = max(1, width // 10)
        self.left = round(left * width)
        self.tops: list[int] = []
        y = 0
        for space in above:
            y += round(space * height)
            self.tops.append(y)
            y += height
        columns = max(len(row) for row in rows)
        self.canvas = np.full((y + round(bottom * height), self.x(columns), 3), 255, np.uint8)
        for r, row in enumerate(rows):
            for c, image in enumerate(row):
                y0, x0 = self.tops[r], self.x(c)
                rgb = display_rgb(image)
                self.canvas[y0:y0 + height, x0:x0 + width] = rgb.transpose(1, 2, 0)

    def x(self, column: int) -> int:
        return self.left + column * (self.width + self.gap)

    def figure(self, title: str, fontsize: float = 12) -> tuple[Figure, Axes]:
        """A figure that fits the canvas at ``TILE_INCHES`` a tile, titled over it."""
        inches = TILE_INCHES / self.width
        canvas_h, canvas_w = self.canvas.shape[:2]
        title_inches = 0.25 + 0.22 * (title.count("\n") + 1)
        fig = Figure(figsize=(canvas_w * inches + 0.2, canvas_h * inches + title_inches))
        width, height = fig.get_size_inches()
        ax = fig.add_axes((0.1 / width, 0.0, canvas_w * inches / width,
                           canvas_h * inches / height))
        ax.imshow(self.canvas, interpolation="nearest")
        ax.set_axis_off()
        fig.suptitle(title, fontsize=fontsize, y=1 - 0.12 / height, va="top")
        return fig, ax

    def caption(self, ax: Axes, row: int, column: int, text: str, *, below: bool = False,
                **style: Any) -> None:
        """``text`` centred over (or under) the tile at ``row``, ``column``."""
        y = self.tops[row] + self.height + 2 if below else self.tops[row] - 2
        ax.text(self.x(column) + self.width / 2, y, text, ha="center",
                va="top" if below else "bottom", **{"fontsize": 9} | style)

    def row_label(self, ax: Axes, row: int, text: str) -> None:
        ax.text(self.left - self.gap, self.tops[row] + self.height / 2, text, rotation=90,
                ha="right", va="center", fontsize=10)


def _class_colours(n: int) -> list[Any]:
    palette = colormaps["tab10"]
    return [palette(i % 10) for i in range(n)]


def _patient_colours(n: int) -> list[Any]:
    """tab10 for up to 10; beyond, tab20's dark shades first then its light ones, cycling."""
    if n <= 10:
        return _class_colours(n)
    palette = colormaps["tab20"]
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return [palette(order[i % 20]) for i in range(n)]


def class_name(class_names: Sequence[str], label: int) -> str:
    return class_names[label] if 0 <= label < len(class_names) else f"class {label}"


def balanced_pick(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Positions of up to ``n`` items taking turns between classes, drawn by seed."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    picked: list[int] = []
    while len(picked) < min(n, len(labels)):
        for pool in pools:
            if pool and len(picked) < n:
                picked.append(int(pool.pop()))
    return np.array(picked, dtype=np.int64)


def plot_inputs(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    path: Path,
    *,
    run: str,
    n: int = 32,
    seed: int = 0,
) -> Path:
    """A grid of up to ``n`` test input images, balanced across classes, each titled with its class.

    What the model is asked to reconstruct, before any output of it: a first look at the data.
    """
    images, labels = _uint8(images), np.asarray(labels)
    if len(images) == 0:
        raise ValueError("no images to plot")
    picked = balanced_pick(labels, n, seed)
    picked = picked[np.argsort(labels[picked], kind="stable")]
    columns = min(GRID_COLUMNS, len(picked))
    rows = [images[picked[i:i + columns]] for i in range(0, len(picked), columns)]
    mosaic = _Mosaic(rows, [CAPTION] * len(rows))
    counts = ", ".join(
        f"{int((labels[picked] == c).sum())} {class_name(class_names, int(c))}"
        for c in np.unique(labels[picked])
    )
    fig, ax = mosaic.figure(f"{run}: test inputs drawn at random ({counts})")
    colours = _class_colours(len(class_names))
    for k, i in enumerate(picked):
        label = int(labels[i])
        mosaic.caption(ax, k // columns, k % columns, class_name(class_names, label),
                       color=colours[label % len(colours)] if colours else "black")
    return save(fig, path)


def _column(rows: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    """One metric across rows as floats; missing, empty or non-numeric cells become NaN."""
    values = []
    for row in rows:
        try:
            value = float(row.get(key))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            value = math.nan
        values.append(value)
    return np.array(values, dtype=np.float64)


def _share(later: np.ndarray, every: np.ndarray, log: bool) -> float:
    """The share of the y-axis that the later epochs get when the axis spans every epoch."""
    if log:
        later, every = np.log(later), np.log(every)
    span = float(np.ptp(every))
    return 1.0 if span == 0 else float(np.ptp(later)) / span


def _limits(values: np.ndarray, log: bool) -> tuple[float, float]:
    """The y-limits of ``values`` with a margin; a constant still gets a visible height."""
    low, high = float(values.min()), float(values.max())
    if log:
        pad = max((high / low) ** 0.06, 1.05)
        return low / pad, high * pad
    pad = 0.06 * (high - low) or 0.05 * abs(high) or 1.0
    return low - pad, high + pad


def _fit_y_axis(ax: Axes, epochs: np.ndarray, series: Mapping[str, tuple[np.ndarray, Any]]) -> bool:
    """Scale the y-axis so that the later epochs are not flattened by the first one.

    The first epoch's loss is often many times the rest. A log scale is taken when the values
    span more than a factor of 10 and it gives the later epochs at least ``FLATTENED`` of the
    axis; otherwise, if the first epoch would squeeze them below that, the axis is fitted to
    the later epochs, the first epoch's points are marked at its edge and their values named
    in the legend. Returns whether the scale is logarithmic.
    """
    finite = [values[np.isfinite(values)] for values, _ in series.values()]
    every = np.concatenate(finite)
    later = np.concatenate([values[1:][np.isfinite(values[1:])] for values, _ in series.values()])
    if len(every) == 0:
        return False
    positive = every.min() > 0
    if positive and every.max() / every.min() > 10 and (
        len(later) < 2 or _share(later, every, log=True) >= FLATTENED
    ):
        ax.set_yscale("log")
        return True
    if len(later) < 2 or _share(later, every, log=False) >= FLATTENED:
        return False
    log = bool(later.min() > 0 and later.max() / later.min() > 10)
    if log:
        ax.set_yscale("log")
    bottom, top = _limits(later, log)
    ax.set_ylim(bottom, top)
    off = []
    for name, (values, colour) in series.items():
        first = values[0]
        if np.isfinite(first) and not bottom <= first <= top:
            # drawn on the edge, outside the clip box, so the point is seen to be off the axis
            edge, marker = (top, "^") if first > top else (bottom, "v")
            ax.plot([epochs[0]], [edge], marker, color=colour, markersize=8, clip_on=False,
                    zorder=6)
            off.append(f"{name} {first:.4g}")
    if off:
        ax.plot([], [], "^", color="dimgray", markersize=8,
                label=f"epoch {epochs[0]:g} off the axis: {', '.join(off)}")
    return log


def _curve_panel(ax: Axes, epochs: np.ndarray, train: np.ndarray, test: np.ndarray,
                 title: str, ylabel: str) -> None:
    if np.isfinite(train).any():
        ax.plot(epochs, train, "o-", color="tab:blue", markersize=4, label="train")
    if np.isfinite(test).any():
        ax.plot(epochs, test, "s-", color="tab:orange", markersize=4, label="test")
    log = _fit_y_axis(ax, epochs, {"train": (train, "tab:blue"), "test": (test, "tab:orange")})
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel + (" (log scale)" if log else ""))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    # Half an epoch of margin keeps a single epoch from getting a 0.001-wide axis.
    ax.set_xlim(np.nanmin(epochs) - 0.5, np.nanmax(epochs) + 0.5)
    ax.grid(alpha=0.3)


def _legend_below(ax: Axes, *twins: Axes) -> None:
    """Under the axes: a vertical best-epoch line leaves no free corner inside them.

    ``twins`` (a right-hand axis over the same panel) add their entries to the same legend.
    """
    handles, labels = ax.get_legend_handles_labels()
    for twin in twins:
        more = twin.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    if handles:
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16),
                  ncol=min(2, len(handles)), fontsize=9, frameon=False)


def loss_terms_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The loss terms ``metrics.csv`` carries (its ``train_<term>`` columns with a value),
    besides the total and the per-pixel figure."""
    keys = list(rows[0]) if rows else []
    return [k.removeprefix("train_") for k in keys
            if k.startswith("train_") and k not in ("train_loss", "train_recon_per_pixel")
            and np.isfinite(_column(rows, k)).any()]


def schedule_columns_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The loss weights ``metrics.csv`` carries (a KL warm-up's ``kl_weight``): the columns that
    are neither a loss (``train_*``, ``test_*``) nor the epoch, learning rate or a timing."""
    keys = list(rows[0]) if rows else []
    return [k for k in keys if k not in NOT_SCHEDULES and not k.startswith(("train_", "test_"))
            and np.isfinite(_column(rows, k)).any()]


def _draw_schedules(panels: Mapping[str, Axes], epochs: np.ndarray,
                    rows: Sequence[dict[str, Any]]) -> dict[Axes, Axes]:
    """Each loss weight that changes, on a right-hand axis of its term's panel.

    A weight ``<term>_weight`` goes over its term's panel, where one sees the term answer it;
    any other goes over the total loss (key ""). A weight that never changes says nothing the
    config does not, and is left out. Returns the right-hand axis of each panel that got one.
    """
    twins: dict[Axes, Axes] = {}
    changing = [c for c in schedule_columns_of(rows)
                if np.nanmax(_column(rows, c)) > np.nanmin(_column(rows, c))]
    for i, column in enumerate(changing):
        term = next((t for t in panels if t and column.startswith(f"{t}_")), "")
        ax = panels[term]
        if ax not in twins:
            twins[ax] = ax.twinx()
        twin = twins[ax]
        values = _column(rows, column)
        twin.plot(epochs, values, "D--", color=SCHEDULE_COLOURS[i % len(SCHEDULE_COLOURS)],
                  markersize=3, linewidth=1.2,
                  label=f"{column} (right axis, mean over the epoch)")
        twin.set_ylim(0, max(1.0, float(np.nanmax(values))) * 1.05)
        twin.set_ylabel("loss weight", color="dimgray")
    return twins


def plot_learning_curves(
    rows: Sequence[dict[str, Any]], path: Path, best_epoch: int | None, *, run: str,
    terms: Sequence[str] | None = None, titles: Mapping[str, str] | None = None,
) -> Path:
    """Train and test loss per epoch with the best epoch marked, then one panel per loss term.

    ``rows`` are ``metrics.csv`` rows (``epoch``, ``train_loss``, ``test_loss`` and
    ``train_<term>``, ``test_<term>`` for each of ``terms``, by default every term the rows
    carry), each titled by ``titles`` (the family's words) or its own name; missing values are
    skipped. A lone reconstruction term is the loss itself and gets no panel of its own. Loss
    weights that change over training (a KL warm-up) are drawn over their term's panel.
    """
    if not rows:
        raise ValueError("no epochs to plot")
    terms = list(loss_terms_of(rows) if terms is None else terms)
    if terms == ["recon"]:
        terms = []
    epochs = _column(rows, "epoch")
    if not np.isfinite(epochs).all():
        epochs = np.arange(1, len(rows) + 1, dtype=np.float64)
    panels = 1 + len(terms)
    fig = Figure(figsize=(5.2 * panels, 4.6))
    axes = fig.subplots(1, panels, squeeze=False)[0]

    train_loss, test_loss = _column(rows, "train_loss"), _column(rows, "test_loss")
    _curve_panel(axes[0], epochs, train_loss, test_loss,
                 "total loss: " + " + ".join(t if t == "recon" else f"w·{t}" for t in terms)
                 if terms else "loss", "loss per image")
    if best_epoch is not None:
        at = np.flatnonzero(epochs == best_epoch)
        best_value = test_loss[at[0]] if len(at) else math.nan
        label = f"best epoch {best_epoch}" + (
            f" (test loss {best_value:.4g})" if np.isfinite(best_value) else ""
        )
        axes[0].axvline(best_epoch, color="tab:green", linestyle=":", linewidth=1.5)
        if np.isfinite(best_value):
            axes[0].plot([best_epoch], [best_value], "*", color="tab:green", markersize=15,
                         markeredgecolor="black", zorder=5)
        # One legend entry for line and star together.
        axes[0].plot([], [], ":*", color="tab:green", markersize=12, label=label)

    for ax, term in zip(axes[1:], terms, strict=True):
        title = (titles or {}).get(term, term)
        _curve_panel(ax, epochs, _column(rows, f"train_{term}"), _column(rows, f"test_{term}"),
                     f"{title} term", f"{title} per image")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="tab:green", linestyle=":", linewidth=1.5)
    twins = _draw_schedules(dict(zip(["", *terms], axes, strict=True)), epochs, rows)
    for ax in axes:
        _legend_below(ax, *([twins[ax]] if ax in twins else []))
    fig.suptitle(f"{run}: learning curves", fontsize=13)
    fig.tight_layout()
    return save(fig, path)


def plot_latent_tsne(
    embedding: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    patients: np.ndarray,
    path: Path,
    *,
    run: str,
    method: str = "t-SNE",
) -> Path:
    """The 2-D map (t-SNE or UMAP: ``method``) of test codes twice: coloured by class, and
    coloured by patient (slide).

    The second panel shows whether the latent space groups images by the slide they come from
    rather than by infection. Up to 20 patients get a legend; more share 20 repeating colours.
    """
    embedding = np.asarray(embedding, dtype=np.float64)
    labels = np.asarray(labels)
    patients = np.asarray(patients).astype(str)
    if embedding.ndim != 2 or embedding.shape[1] != 2 or not (
        len(embedding) == len(labels) == len(patients)
    ):
        raise ValueError(
            f"expected an (M, 2) embedding with M labels and patients, got {embedding.shape}, "
            f"{labels.shape}, {patients.shape}"
        )
    m = len(embedding)
    size = float(np.clip(4000 / max(m, 1), 3, 30))
    # One shuffled draw order for all points, so no class or patient is painted over the rest.
    order = np.random.default_rng(0).permutation(m)
    fig = Figure(figsize=(14, 6.4))
    by_class, by_patient = fig.subplots(1, 2)

    colours = _class_colours(max(len(class_names), int(labels.max(initial=0)) + 1))
    by_class.scatter(*embedding[order].T, s=size, c=[colours[int(v)] for v in labels[order]],
                     alpha=0.75, linewidths=0)
    handles = [
        Line2D([], [], marker="o", linestyle="", color=colours[int(c)], markersize=8,
               label=f"{class_name(class_names, int(c))} ({int((labels == c).sum())})")
        for c in np.unique(labels)
    ]
    by_class.legend(handles=handles, title="class (images)", fontsize=9, loc="best")
    by_class.set_title("coloured by class", fontsize=11)

    names = sorted(set(patients.tolist()), key=natural_key)
    patient_colour = dict(zip(names, _patient_colours(len(names)), strict=True))
    by_patient.scatter(*embedding[order].T, s=size, c=[patient_colour[p] for p in patients[order]],
                       alpha=0.75, linewidths=0)
    if len(names) <= PATIENT_LEGEND_MAX:
        handles = [
            Line2D([], [], marker="o", linestyle="", color=patient_colour[name], markersize=7,
                   label=name)
            for name in names
        ]
        by_patient.legend(handles=handles, title="patient", fontsize=8, loc="center left",
                          bbox_to_anchor=(1.01, 0.5), ncol=1 if len(names) <= 10 else 2)
        by_patient.set_title(f"coloured by patient ({len(names)})", fontsize=11)
    else:
        by_patient.set_title(
            f"coloured by patient ({len(names)} patients, colours repeat every 20)", fontsize=11
        )
    for ax in (by_class, by_patient):
        _map_axes(ax, method)
    fig.suptitle(f"{run}: {method} of test latent codes ({m} images)", fontsize=13)
    fig.text(0.5, 0.01, "Classes apart on the left = the codes know the class. "
             "Patches of one colour on the right = the codes group by slide.",
             ha="center", fontsize=9, color="dimgray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return save(fig, path)


def _map_axes(ax: Axes, method: str) -> None:
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")


def plot_latent_by_column(embedding: np.ndarray, values: np.ndarray, column: str, path: Path, *,
                          run: str, method: str = "t-SNE") -> Path:
    """The 2-D map of the test codes coloured by one column of the cells' metadata: a colour
    scale for a number, a legend of the commonest values for a category."""
    embedding = np.asarray(embedding, dtype=np.float64)
    if len(embedding) != len(values):
        raise ValueError(f"{len(embedding)} points but {len(values)} values")
    m = len(embedding)
    size = float(np.clip(4000 / max(m, 1), 3, 30))
    order = np.random.default_rng(0).permutation(m)
    fig = Figure(figsize=(8.5, 6.4))
    ax = fig.subplots()
    numbers = numeric_values(values)
    if numbers is not None:
        points = ax.scatter(*embedding[order].T, s=size, c=numbers[order], cmap="viridis",
                            alpha=0.8, linewidths=0)
        fig.colorbar(points, ax=ax, label=column)
    else:
        text = np.asarray(values).astype(str)
        names, counts = np.unique(text, return_counts=True)
        named = [n for _, n in sorted(zip(-counts, names, strict=True))][:CATEGORY_MAX]
        colour = dict(zip(named, _patient_colours(len(named)), strict=True))
        grey = (0.75, 0.75, 0.75, 1.0)
        ax.scatter(*embedding[order].T, s=size, c=[colour.get(v, grey) for v in text[order]],
                   alpha=0.8, linewidths=0)
        handles = [Line2D([], [], marker="o", linestyle="", color=colour[n], markersize=7,
                          label=f"{n or '(empty)'} ({int((text == n).sum())})")
                   for n in sorted(named, key=natural_key)]
        if len(names) > len(named):
            handles.append(Line2D([], [], marker="o", linestyle="", color=grey, markersize=7,
                                  label=f"{len(names) - len(named)} others"))
        ax.legend(handles=handles, title=column, fontsize=8, loc="center left",
                  bbox_to_anchor=(1.01, 0.5))
    _map_axes(ax, method)
    fig.suptitle(f"{run}: {method} of test latent codes ({m} images) by {column}", fontsize=12)
    fig.tight_layout()
    return save(fig, path)


def plot_reconstructions(
    originals: np.ndarray,
    recons: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    path: Path,
    *,
    run: str,
) -> Path:
    """Originals with their reconstructions directly below, the class over each column.

    More than 8 images wrap into further original/reconstruction row pairs. Under each
    reconstruction: its MSE against the original (data range 1).
    """
    originals, recons, labels = _uint8(originals), _uint8(recons), np.asarray(labels)
    if originals.shape != recons.shape or len(originals) == 0:
        raise ValueError(f"originals and reconstructions must match and be non-empty, got "
                         f"{originals.shape} and {recons.shape}")
    n = len(originals)
    columns = min(GRID_COLUMNS, n)
    rows, above = [], []
    for start in range(0, n, columns):
        rows += [originals[start:start + columns], recons[start:start + columns]]
        # room for the class over each original, and for the MSE under each reconstruction
        # of the block before
        above += [CAPTION if start == 0 else 2 * CAPTION + 0.1, 0.06]
    mosaic = _Mosaic(rows, above, left=0.3, bottom=CAPTION)
    fig, ax = mosaic.figure(f"{run}: test images (original) and their reconstructions")
    colours = _class_colours(len(class_names))
    for i in range(n):
        block, column = divmod(i, columns)
        label = int(labels[i])
        mosaic.caption(ax, 2 * block, column, class_name(class_names, label),
                       color=colours[label % len(colours)] if colours else "black")
        error = np.mean((originals[i] / 255.0 - recons[i] / 255.0) ** 2)
        mosaic.caption(ax, 2 * block + 1, column, f"MSE {error:.4f}", below=True, fontsize=8)
        if column == 0:
            mosaic.row_label(ax, 2 * block, "original")
            mosaic.row_label(ax, 2 * block + 1, "reconstruction")
    return save(fig, path)


def plot_image_grid(images: np.ndarray, path: Path, title: str, *, run: str,
                    nrow: int | None = None) -> Path:
    """Images tiled on white, ``nrow`` images per row (default: up to 8), under
    "``run``: ``title``"."""
    images = _uint8(images)
    if len(images) == 0:
        raise ValueError("no images to plot")
    n = len(images)
    per_row = max(1, min(nrow or GRID_COLUMNS, n))
    rows = [images[i:i + per_row] for i in range(0, n, per_row)]
    mosaic = _Mosaic(rows, [0.0] + [0.1] * (len(rows) - 1))
    fig, _ = mosaic.figure(f"{run}: {title}")
    return save(fig, path)


def plot_traversals(
    grid: np.ndarray, dims: Sequence[int], values: Sequence[float], path: Path, *, run: str,
    kl: Sequence[float], base: str,
) -> Path:
    """Latent traversals: row r decodes a base code with dimension ``dims[r]`` set to each of
    ``values``; ``base`` says which code that is (as "the mean test code").

    ``grid`` is (n_dims, n_steps, C, H, W); the rows come ordered by their KL ``kl[r]`` (nats,
    highest first), so the dimensions that carry the most information lead. Each row is
    labelled ``z[d]`` with its KL, each column with the value.
    """
    grid = np.asarray(grid)
    if grid.ndim != 5 or grid.shape[0] != len(dims) or grid.shape[1] != len(values):
        raise ValueError(
            f"expected a grid shaped ({len(dims)}, {len(values)}, C, H, W), got {grid.shape}"
        )
    if len(kl) != len(dims):
        raise ValueError(f"expected a KL value for each of the {len(dims)} rows, got {len(kl)}")
    n_dims, n_steps = grid.shape[:2]
    images = _uint8(grid.reshape(n_dims * n_steps, *grid.shape[2:])).reshape(grid.shape)
    fig = Figure(figsize=(1.2 * n_steps + 1.4, 1.25 * n_dims + 1.5))
    axes = fig.subplots(n_dims, n_steps, squeeze=False)
    for r, (dim, nats) in enumerate(zip(dims, kl, strict=True)):
        for c, value in enumerate(values):
            ax = axes[r, c]
            show_image(ax, images[r, c])
            if r == 0:
                ax.set_title(f"{value:+.2f}", fontsize=10)
        axes[r, 0].set_ylabel(f"z[{dim}]\nKL {nats:.3g}", fontsize=10, rotation=0, ha="right",
                              va="center")
    fig.suptitle(f"{run}: latent traversals from {base}\n"
                 "rows: latent dimensions by KL, highest first; columns: the value that "
                 "dimension is set to, the others stay at the base", fontsize=11)
    fig.tight_layout()
    return save(fig, path)


def plot_error_maps(originals: np.ndarray, recons: np.ndarray, masks: np.ndarray,
                    labels: np.ndarray, class_names: Sequence[str], path: Path, *,
                    run: str, scores: Sequence[float], score: str = "interior error") -> Path:
    """Each test cell over its reconstruction over the map of its squared error inside the cell.

    The error maps share one colour scale, so a cell the model failed on stands out; each
    cell's anomaly score (``scores``, of the kind ``score`` names) is written under its map.
    """
    a, b = unit_float_array(originals), unit_float_array(recons)
    inside = np.asarray(masks) != 0
    maps = ((a - b) ** 2).mean(axis=1) * inside
    top = float(np.quantile(maps[inside], 0.99)) if inside.any() else 1.0
    n = len(a)
    columns = min(GRID_COLUMNS, n)
    blocks = math.ceil(n / columns)
    # constrained layout makes room for the colour bar beside the grid, not over it
    fig = Figure(figsize=(1.45 * columns + 1.6, 4.6 * blocks + 0.6), layout="constrained")
    heights = ([1.0, 1.0, 1.0, 0.25] * blocks)[:-1]
    axes = fig.subplots(len(heights), columns, squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax in axes.flat:
        ax.set_axis_off()
    image = None
    for i in range(n):
        block, column = divmod(i, columns)
        first, second, third = (axes[4 * block + r, column] for r in range(3))
        for ax, picture in ((first, originals[i]), (second, recons[i])):
            ax.set_axis_on()
            show_image(ax, picture)
        third.set_axis_on()
        image = third.imshow(maps[i], cmap="magma", vmin=0.0, vmax=max(top, 1e-6))
        third.set_xticks([])
        third.set_yticks([])
        label = int(labels[i])
        first.set_title(class_name(class_names, label), fontsize=9, pad=3)
        third.set_xlabel(f"score {scores[i]:.4f}", fontsize=8, labelpad=2)
        if column == 0:
            first.set_ylabel("original", fontsize=10)
            second.set_ylabel("reconstruction", fontsize=10)
            third.set_ylabel("squared error", fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.5, label="squared error inside the cell")
    fig.suptitle(f"{run}: where the reconstruction fails (interior only); under each map its "
                 f"anomaly score, the {score}", fontsize=12)
    return save(fig, path)
