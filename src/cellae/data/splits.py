"""Train/test splits that keep every patient on one side, and the file lists that record them.

Cells of one patient share a slide, a stain and a parasite load; a model tested on cells of
patients it was trained on looks better than it is. So the default split puts whole patients
on one side, with about ``test_fraction`` of the images in test and every class on both sides.
A random split by image (stratified by class) is there for comparison.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import get_args

import numpy as np

from cellae.errors import CellaeError
from cellae.sections import SplitMode

SPLITS = get_args(SplitMode)
# random orders of the patients tried; the one whose test share is closest to the target wins
PATIENT_SPLIT_TRIES = 256
# k-fold studies keep their folds fixed across training seeds, so seed spread is model spread
FOLD_SEED = 0


def split_indices(
    patients: Sequence[str] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    test_fraction: float,
    seed: int,
    by: SplitMode = "patient",
    folds: int = 0,
    fold: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted int64 indices of the train and test images, deterministic for a given ``seed``.

    With ``folds`` > 1 the images are cut into that many folds (whole patients each, with
    ``by="patient"``) and fold ``fold`` is the test side; ``test_fraction`` and ``seed`` are
    not used, so every training seed of a k-fold study sees the same folds.
    """
    if by not in SPLITS:
        raise CellaeError(f"data.split must be one of {', '.join(SPLITS)}, got {by!r}")
    if not 0.0 < test_fraction < 1.0:
        raise CellaeError(f"data.test_fraction must be between 0 and 1, got {test_fraction!r}")
    patients = np.asarray(patients).astype(str)
    labels = np.asarray(labels, dtype=np.int64)
    if len(patients) != len(labels):
        raise ValueError(f"{len(patients)} patients but {len(labels)} labels")
    # one class is an unlabelled set (cells segmented from fields): split by patient all the same
    if folds > 1:
        return _fold_split(patients, labels, by, folds, fold)
    rng = np.random.default_rng(seed)
    if by == "image":
        test = _image_split(labels, test_fraction, rng)
    else:
        test = _patient_split(patients, labels, test_fraction, rng)
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test] = True
    return np.flatnonzero(~is_test).astype(np.int64), np.flatnonzero(is_test).astype(np.int64)


def _fold_split(patients: np.ndarray, labels: np.ndarray, by: SplitMode, folds: int,
                fold: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0 <= fold < folds:
        raise CellaeError(f"data.fold must be from 0 to {folds - 1}, got {fold}")
    groups = patients if by == "patient" else None  # None: each image its own group
    n_groups = len(labels) if groups is None else len(np.unique(groups))
    if n_groups < folds:
        unit = "patients" if by == "patient" else "images"
        raise CellaeError(f"data.folds={folds} needs at least {folds} {unit}, found {n_groups}")
    train, test = stratified_folds(labels, groups, folds, FOLD_SEED)[fold]
    for side, rows in (("train", train), ("test", test)):
        missing = sorted(set(np.unique(labels).tolist()) - set(np.unique(labels[rows]).tolist()))
        if missing:
            raise CellaeError(
                f"fold {fold} of {folds} leaves class {missing[0]} out of its {side} side (too "
                f"few patients hold it); use fewer data.folds or add patients"
            )
    return np.sort(train).astype(np.int64), np.sort(test).astype(np.int64)


def stratified_folds(labels: np.ndarray, groups: np.ndarray | None, n_splits: int, seed: int
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every (train, test) row pair of ``n_splits`` folds that balance the class shares: whole
    groups (patients) each where ``groups`` is given, single rows where it is None. A fold may
    lack a class where few groups hold it; the caller decides what that means."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    # StratifiedGroupKFold balances each fold's class shares while keeping a patient whole
    cutter = (StratifiedKFold if groups is None else StratifiedGroupKFold)(
        n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "The least populated class has fewer members than n_splits": the caller checks folds
        warnings.simplefilter("ignore", UserWarning)
        return list(cutter.split(np.zeros(len(labels)), labels, groups))


def class_labels(class_names: Sequence[str], wanted: Sequence[str]) -> list[int]:
    """The labels of the classes ``wanted`` names, matched without regard to case.

    The malaria sources call their classes "uninfected" and "infected" whatever the folders are
    called; "Uninfected", as the Kaggle folder spells it, names the same class.
    """
    names = [str(n).casefold() for n in class_names]
    unknown = [c for c in wanted if str(c).casefold() not in names]
    if unknown:
        raise CellaeError(f"data.train_classes names '{unknown[0]}', which is not a class of "
                          f"this source; its classes: {', '.join(map(str, class_names))}")
    return [names.index(str(c).casefold()) for c in wanted]


def training_rows(train_idx: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                  train_classes: Sequence[str]) -> np.ndarray:
    """The train rows whose class is one of ``train_classes`` (all of them when it is empty).

    The split itself keeps every class: a probe of the latent space still fits on the train
    patients' cells of every class, though the model learnt from some classes only.
    """
    if not train_classes:
        return train_idx
    wanted = np.isin(np.asarray(labels)[train_idx], class_labels(class_names, train_classes))
    if not wanted.any():
        raise CellaeError(f"the train side holds no image of {', '.join(train_classes)}")
    return train_idx[wanted]


def _image_split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    test = []
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        n = int(round(len(members) * fraction))
        if len(members) >= 2:
            n = min(max(n, 1), len(members) - 1)  # the class appears on both sides
        test.append(members[:n])
    return np.concatenate(test)


def _patient_split(
    patients: np.ndarray, labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    names, patient_of = np.unique(patients, return_inverse=True)
    if len(names) < 2:
        raise CellaeError(
            f"a split by patient needs at least 2 patients, found {len(names)}; "
            f"set data.split=image to split by image"
        )
    classes = np.unique(labels)
    # images of each class per patient (P, K)
    counts = np.zeros((len(names), len(classes)), dtype=np.int64)
    np.add.at(counts, (patient_of, np.searchsorted(classes, labels)), 1)
    class_totals = counts.sum(axis=0)
    target = fraction * len(labels)
    best, best_gap = None, np.inf
    for _ in range(PATIENT_SPLIT_TRIES):
        order = rng.permutation(len(names))
        taken = np.cumsum(counts[order], axis=0)  # class counts in test after k+1 patients
        size = taken.sum(axis=1)
        valid = (taken > 0).all(axis=1) & (taken < class_totals).all(axis=1)
        if not valid.any():
            continue
        gaps = np.where(valid, np.abs(size - target), np.inf)
        k = int(np.argmin(gaps))
        if gaps[k] < best_gap:
            best, best_gap = order[: k + 1], gaps[k]
    if best is None:
        single = [
            f"class {int(c)} occurs only in patient {names[counts[:, i] > 0][0]}"
            for i, c in enumerate(classes) if (counts[:, i] > 0).sum() < 2
        ]
        why = f" ({'; '.join(single)})" if single else ""
        raise CellaeError(
            f"cannot split by patient with every class on both sides{why}; "
            f"set data.split=image or add patients"
        )
    return np.flatnonzero(np.isin(patient_of, best))
