"""Anomaly mode: a model that learnt one kind of cell scores each cell by how badly it
reconstructs the cell's interior.

Trained on uninfected cells only (``data.train_classes: [Uninfected]``), an autoencoder has
never had to draw a parasite; where one lies, its reconstruction fails. The score of a cell is
its mean squared error over the interior pixels (the outline and the padding, which every cell
has, do not count), and the ROC AUC says how well that score tells the classes the model never
saw from those it did, on the test patients.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import cm
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score

from cellae import plots
from cellae.columns import SAME_TEST_CELLS, Column
from cellae.data.splits import class_labels
from cellae.evaluation.metrics import interior_mse
from cellae.images import unit_float_array

COLUMNS = (
    Column("anomaly.auroc", "anomaly AUROC (interior error)", "higher", 3,
           SAME_TEST_CELLS + ("data.train_classes",)),
)


def interior_errors(originals: np.ndarray, recons: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Mean squared error of each image (N, C, H, W) over its interior pixels and channels.

    An image with an empty mask is scored over all its pixels.
    """
    interior = interior_mse(originals, recons, masks)
    empty = np.isnan(interior)
    if empty.any():
        a, b = unit_float_array(originals[empty]), unit_float_array(recons[empty])
        interior[empty] = ((a - b) ** 2).mean(axis=(1, 2, 3))
    return interior


def anomaly_numbers(errors: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                    normal_classes: Sequence[str]) -> dict[str, Any]:
    """ROC AUC of the interior error for "not one of ``normal_classes``", with the mean errors."""
    normal = np.isin(np.asarray(labels), class_labels(class_names, normal_classes))
    result: dict[str, Any] = {
        "normal_classes": list(normal_classes),
        "n_normal": int(normal.sum()),
        "n_anomalous": int((~normal).sum()),
        "mean_error_normal": float(errors[normal].mean()) if normal.any() else None,
        "mean_error_anomalous": float(errors[~normal].mean()) if (~normal).any() else None,
    }
    if normal.all() or not normal.any():
        result["auroc"] = None
        result["auroc_note"] = "undefined: the test images hold only one of normal and anomalous"
    else:
        result["auroc"] = float(roc_auc_score(~normal, errors))
    return result


def plot_error_maps(originals: np.ndarray, recons: np.ndarray, masks: np.ndarray,
                    labels: np.ndarray, class_names: Sequence[str], path: Path, *,
                    run: str) -> Path:
    """Each test cell over its reconstruction over the map of its squared error inside the cell.

    The error maps share one colour scale, so a cell the model failed on stands out; the
    interior error (the anomaly score) is written under each map.
    """
    a, b = unit_float_array(originals), unit_float_array(recons)
    inside = np.asarray(masks) != 0
    maps = ((a - b) ** 2).mean(axis=1) * inside
    errors = interior_errors(a, b, masks)
    top = float(np.quantile(maps[inside], 0.99)) if inside.any() else 1.0
    n = len(a)
    columns = min(plots.GRID_COLUMNS, n)
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
            plots.show_image(ax, picture)
        third.set_axis_on()
        image = third.imshow(maps[i], cmap=cm.magma, vmin=0.0, vmax=max(top, 1e-6))
        third.set_xticks([])
        third.set_yticks([])
        label = int(labels[i])
        first.set_title(plots.class_name(class_names, label), fontsize=9, pad=3)
        third.set_xlabel(f"score {errors[i]:.4f}", fontsize=8, labelpad=2)
        if column == 0:
            first.set_ylabel("original", fontsize=10)
            second.set_ylabel("reconstruction", fontsize=10)
            third.set_ylabel("squared error", fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.5, label="squared error inside the cell")
    fig.suptitle(f"{run}: where the reconstruction fails (interior only)", fontsize=12)
    return plots.save(fig, path)
