"""Anomaly mode: a model that learnt one kind of cell scores each cell by how badly it
reconstructs the cell's interior.

Trained on uninfected cells only (``data.train_classes: [Uninfected]``), an autoencoder has
never had to draw a parasite; where one lies, its reconstruction fails. The score of a cell is
its mean squared error over the interior pixels (the outline and the padding, which every cell
has, do not count), and the ROC AUC says how well that score tells the classes the model never
saw from those it did, on the test patients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

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
