"""Anomaly mode: a model that learnt one kind of cell scores each cell by how badly it
reconstructs the cell's interior.

Trained on uninfected cells only (``data.train_classes: [Uninfected]``), an autoencoder has
never had to draw a parasite; where one lies, its reconstruction fails. The ROC AUC says how
well a score tells the classes the model never saw from those it did, on the test patients.

The headline score (``anomaly.auroc``) is ``eval.anomaly_score``, by default the mean squared
error over the interior pixels (the outline and the padding, which every cell has, do not
count). Every evaluation scores the same cells all five ways (``anomaly.scores``), so that
they compare on the same runs: the largest local error (a parasite is a few pixels: a mean over the whole
interior dilutes it), the error where the cell is dark (parasites are darker than the
cytoplasm), and two scores of the latent code alone, how far it lies from the codes of the
training side's normal cells (the mean distance to its nearest ones, and a Gaussian's
Mahalanobis distance).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, get_args

import numpy as np
from scipy import ndimage
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

from cellae.columns import SAME_TEST_CELLS, Column
from cellae.data.splits import class_labels
from cellae.errors import CellaeError
from cellae.evaluation.metrics import interior_mse
from cellae.evaluation.spot_features import interior_z
from cellae.images import unit_float_array
from cellae.sections import AnomalyScore

# each score (eval.anomaly_score), its title in reports
SCORES = {
    "interior_mean": "interior error",
    "local_max": "largest local error",
    "dark_error": "error where dark",
    "latent_knn": "latent distance (kNN)",
    "latent_gaussian": "latent distance (Gaussian)",
}
# the side of the window the local error is averaged over: 3 px at 32 px, a parasite's size,
# and the same share of the cell at any other size (6 px at 64); the kNN distance's neighbours
LOCAL_WINDOW_AT_32PX = 3
LATENT_NEIGHBOURS = 15
_SAME_CELLS = SAME_TEST_CELLS + ("data.train_classes",)
if tuple(SCORES) != get_args(AnomalyScore):
    raise AssertionError("SCORES must name every eval.anomaly_score, in its order")


def columns(headline: str = "interior_mean") -> tuple[Column, ...]:
    """The report's anomaly columns: the headline score, then each of the others."""
    return (
        Column("anomaly.auroc", f"anomaly AUROC ({SCORES[headline]})", "higher", 3,
               _SAME_CELLS + ("eval.anomaly_score",)),
        *(Column(f"anomaly.scores.{name}", f"anomaly AUROC ({title})", "higher", 3, _SAME_CELLS)
          for name, title in SCORES.items() if name != headline),
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


def error_scores(originals: np.ndarray, recons: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
    """The reconstruction-error scores of each image (N, C, H, W) with masks (N, H, W)."""
    a, b = unit_float_array(originals), unit_float_array(recons)
    inside = np.asarray(masks) != 0
    squared = ((a - b) ** 2).mean(axis=1)  # (N, H, W)
    side = max(1, round(LOCAL_WINDOW_AT_32PX * a.shape[-1] / 32))
    window = (1, side, side)
    # the window's mean over the interior pixels it covers, so the rim is not diluted by the
    # padding around the cell
    covered = ndimage.uniform_filter(inside.astype(np.float64), window, mode="constant")
    local = ndimage.uniform_filter(np.where(inside, squared, 0.0), window, mode="constant")
    local = np.where(inside, local / np.maximum(covered, 1e-12), -np.inf).reshape(len(a), -1)
    # how many spreads below the cell's mean a pixel is: 0 for the cell's lighter half
    darkness = np.where(inside, np.clip(-interior_z(a, inside, 1e-6), 0.0, None), 0.0)
    dark = (darkness * squared).sum(axis=(1, 2)) / np.maximum(darkness.sum(axis=(1, 2)), 1e-12)
    empty = ~inside.any(axis=(1, 2))
    return {
        "interior_mean": interior_errors(a, b, masks),
        "local_max": np.where(empty, squared.reshape(len(a), -1).mean(axis=1), local.max(axis=1)),
        "dark_error": dark,
    }


def latent_scores(normal_codes: np.ndarray, codes: np.ndarray) -> dict[str, np.ndarray]:
    """How far each code lies from ``normal_codes`` (the training side's normal cells): the
    mean distance to its nearest ones, and the Mahalanobis distance of a Gaussian fit to them
    (Ledoit-Wolf's shrunk covariance), both on codes scaled by the normal codes' spread."""
    normal_codes = np.asarray(normal_codes, np.float64)
    codes = np.asarray(codes, np.float64)
    centre, scale = normal_codes.mean(axis=0), normal_codes.std(axis=0) + 1e-8
    fitted, scored = (normal_codes - centre) / scale, (codes - centre) / scale
    neighbours = NearestNeighbors(n_neighbors=min(LATENT_NEIGHBOURS, len(fitted))).fit(fitted)
    distances, _ = neighbours.kneighbors(scored)
    gaussian = LedoitWolf().fit(fitted)
    return {"latent_knn": distances.mean(axis=1), "latent_gaussian": gaussian.mahalanobis(scored)}


def anomaly_numbers(errors: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                    normal_classes: Sequence[str], scores: dict[str, np.ndarray] | None = None,
                    headline: str = "interior_mean") -> dict[str, Any]:
    """ROC AUC for "not one of ``normal_classes``" of the ``headline`` score (the interior
    errors ``errors``, or one of ``scores``: name -> a score per image, higher: more
    anomalous), with the mean interior errors; and of every score under ``scores``."""
    scores = {"interior_mean": errors, **(scores or {})}
    if headline not in scores:
        raise CellaeError(f"eval.anomaly_score is '{headline}', which this evaluation could not "
                          f"compute (it needs at least two normal cells on the training side)")
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
        result["auroc"] = float(roc_auc_score(~normal, scores[headline]))
    result["score"] = headline
    result["scores"] = {name: None if result["auroc"] is None
                        else float(roc_auc_score(~normal, values))
                        for name, values in scores.items()}
    return result
