"""How much a latent space knows about the labels: probe, kNN, silhouette, PCA baseline, t-SNE.

Evaluation computes them through the latent-metric plug-ins of
:mod:`cellae.evaluation.latent_metrics`.

Every function takes plain arrays of codes (N, D) and integer labels (N,); the caller decides
which images are train and which are test (for cell images: split by patient, so a probe cannot
score by recognising the slide).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score, silhouette_score
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from cellae.data.splits import stratified_folds
from cellae.errors import CellaeError

PROBE_MAX_ITER = 5000
# the probe's inverse regularisation strengths ``eval.probe_c: auto`` chooses among, and the
# inner folds it chooses with (over the train side's patients, so the choice, too, is scored on
# patients the fit did not see)
PROBE_C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
PROBE_INNER_FOLDS = 5
MIN_TSNE_POINTS = 5


def _codes(codes: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(codes, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be shaped (N, D), got {array.shape}")
    return array


def _standardised(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scaler = StandardScaler().fit(train)
    return scaler.transform(train), scaler.transform(test)


def _require_two_classes(labels: np.ndarray, what: str) -> None:
    present = np.unique(labels)
    if len(present) < 2:
        raise CellaeError(
            f"{what} needs at least two classes among the training images, got only class "
            f"{present.tolist()}; use more images or another split"
        )


def _inner_folds(labels: np.ndarray, groups: np.ndarray | None, seed: int
                 ) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """The train side's inner folds for choosing C, and how they were cut: by group (patient)
    where there are two groups or more, else by cell; fewer folds where the rarest class or
    the groups are too few for :data:`PROBE_INNER_FOLDS`."""
    classes, counts = np.unique(labels, return_counts=True)
    n_groups = 0 if groups is None else len(np.unique(groups))
    if n_groups >= 2:
        n = min(PROBE_INNER_FOLDS, n_groups)
        folds = stratified_folds(labels, groups, n, seed)
        how = f"{n} folds of the train side's {n_groups} patients"
    else:
        n = max(2, min(PROBE_INNER_FOLDS, int(counts.min())))
        folds = stratified_folds(labels, None, n, seed)
        how = f"{n} folds of the train side's cells (no patients to group by)"
    # a fold whose fit side lacks a class cannot be scored by log loss; such folds are dropped
    kept = [(fit, held) for fit, held in folds if len(np.unique(labels[fit])) == len(classes)
            and len(np.unique(labels[held])) == len(classes)]
    return kept, how


def _probe_model(train_x: np.ndarray, train_y: np.ndarray, c: float | str,
                 groups: np.ndarray | None, seed: int) -> tuple[LogisticRegression, str | None]:
    """The fitted logistic regression, and how its C was chosen (None: C given)."""
    def logistic(strength: float) -> LogisticRegression:
        return LogisticRegression(C=strength, max_iter=PROBE_MAX_ITER, random_state=seed)

    if c != "auto":
        return logistic(float(c)).fit(train_x, train_y), None
    folds, how = _inner_folds(train_y, groups, seed)
    if len(folds) < 2:
        return logistic(1.0).fit(train_x, train_y), (
            f"C = 1: {how} leave fewer than 2 with every class on both sides")
    search = GridSearchCV(logistic(1.0), {"C": list(PROBE_C_GRID)}, scoring="neg_log_loss",
                          cv=folds).fit(train_x, train_y)
    return search.best_estimator_, f"the lowest log loss over {how}"


def linear_probe(
    train_codes: np.ndarray,
    train_labels: np.ndarray,
    test_codes: np.ndarray,
    test_labels: np.ndarray,
    seed: int = 0,
    c: float | str = 1.0,
    train_groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """Logistic regression on standardised codes, fit on train, scored on test.

    ``c`` is its inverse regularisation strength, or ``"auto"``: chosen from
    :data:`PROBE_C_GRID` by the log loss of inner folds of the train side, grouped by
    ``train_groups`` (the train codes' patients) where given, so the test side plays no part.

    Returns ``accuracy``, ``auroc`` (ROC AUC from predicted probabilities; one-vs-rest macro
    average over the test classes when there are more than two), ``auroc_note`` (why ``auroc``
    is None, else None), ``majority_accuracy`` (accuracy of always answering the most common
    test class: the floor to beat), ``c`` (the C used), ``c_choice`` (how an ``auto`` C was
    chosen; None when given), ``n_train``, ``n_test``, ``n_classes``.
    """
    train_x, test_x = _standardised(
        _codes(train_codes, "train codes"), _codes(test_codes, "test codes")
    )
    train_y, test_y = np.asarray(train_labels), np.asarray(test_labels)
    _require_two_classes(train_y, "the linear probe")
    groups = None if train_groups is None else np.asarray(train_groups)
    if groups is not None and len(groups) != len(train_y):
        raise ValueError(f"train_groups has {len(groups)} entries for {len(train_y)} train codes")
    model, c_choice = _probe_model(train_x, train_y, c, groups, seed)
    proba = model.predict_proba(test_x)
    test_classes, test_counts = np.unique(test_y, return_counts=True)
    result: dict[str, Any] = {
        "accuracy": float(accuracy_score(test_y, model.predict(test_x))),
        "auroc": None,
        "auroc_note": None,
        "majority_accuracy": float(test_counts.max() / len(test_y)),
        "c": float(model.C),
        "c_choice": c_choice,
        "n_train": int(len(train_y)),
        "n_test": int(len(test_y)),
        "n_classes": int(len(model.classes_)),
    }
    unseen = np.setdiff1d(test_classes, model.classes_)
    if len(test_classes) < 2:
        result["auroc_note"] = f"undefined: the test images hold a single class ({test_classes[0]})"
    elif len(unseen):
        result["auroc_note"] = f"undefined: test classes {unseen.tolist()} never occur in training"
    else:
        column = {c: i for i, c in enumerate(model.classes_)}
        # One class against the rest for each class present in test; for two classes the
        # average of the two equals the usual binary AUC.
        aucs = [roc_auc_score(test_y == c, proba[:, column[c]]) for c in test_classes]
        result["auroc"] = float(np.mean(aucs))
    return result


def knn_accuracy(
    train_codes: np.ndarray,
    train_labels: np.ndarray,
    test_codes: np.ndarray,
    test_labels: np.ndarray,
    k: int = 15,
) -> float:
    """Accuracy of a k-nearest-neighbour vote, Euclidean, on codes standardised by train statistics.

    ``k`` shrinks to the number of training codes when there are fewer.
    """
    train_x, test_x = _standardised(
        _codes(train_codes, "train codes"), _codes(test_codes, "test codes")
    )
    model = KNeighborsClassifier(n_neighbors=min(k, len(train_x)))
    model.fit(train_x, np.asarray(train_labels))
    return float(accuracy_score(np.asarray(test_labels), model.predict(test_x)))


def _subsample(n: int, max_points: int, seed: int) -> np.ndarray:
    """All indices, or ``max_points`` of them drawn by seed, sorted."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def silhouette_by_class(
    codes: np.ndarray, labels: np.ndarray, max_points: int = 5000, seed: int = 0
) -> float:
    """Mean silhouette of the codes (Euclidean, as they are) with the classes as clusters.

    Near 1: classes form separate tight groups; near 0: they overlap; below 0: mixed. Above
    ``max_points`` codes a seeded subsample is used (the score costs N^2). NaN when undefined:
    fewer than two classes, or no class with two members.
    """
    codes = _codes(codes, "codes")
    chosen = _subsample(len(codes), max_points, seed)
    x, y = codes[chosen], np.asarray(labels)[chosen]
    n_classes = len(np.unique(y))
    if n_classes < 2 or n_classes >= len(y):
        return float("nan")
    return float(silhouette_score(x, y, metric="euclidean"))


def pca_baseline(
    train_pixels: np.ndarray, test_pixels: np.ndarray, n_components: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Codes of the same size from PCA on raw pixels, fit on train only: the baseline to beat.

    Pixels are flattened images as float in [0, 1], (N, C*H*W) (or (N, C, H, W), flattened here).
    ``n_components`` is capped at min(n_train, n_features). Randomised SVD, seeded.
    """
    train = np.asarray(train_pixels, dtype=np.float32).reshape(len(train_pixels), -1)
    test = np.asarray(test_pixels, dtype=np.float32).reshape(len(test_pixels), -1)
    if train.shape[1] != test.shape[1]:
        raise ValueError(
            f"train and test pixels differ in size: {train.shape[1]} vs {test.shape[1]}"
        )
    n = max(1, min(int(n_components), *train.shape))
    pca = PCA(n_components=n, svd_solver="randomized", random_state=seed).fit(train)
    return pca.transform(train), pca.transform(test)


# openTSNE's own switch-over point between its two gradient methods
FFT_FROM_POINTS = 10_000
# Exact nearest neighbours (scikit-learn's) up to here, Annoy's approximate ones above.
# Measured on 2 cores, 20-dimensional codes: 0.11 s against 0.78 s at 3,000 points, 1.4 s
# against 6.7 s at 20,000, 6.3 s against 19.5 s at 50,000 (and 2.5 s against 7.1 s with 128
# dimensions at 20,000): exact is both faster and right at every size a run's map draws.
EXACT_NEIGHBOURS_UP_TO = 50_000
# width of one FFT grid interval, in map units: openTSNE's default 1 spent half of a
# 20,000-point map's time on a grid finer than the map needs (trustworthiness 0.9752
# against 0.9755 with 2)
FFT_INTS_IN_INTERVAL = 2


def tsne_embedding(
    codes: np.ndarray, max_points: int, perplexity: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """2-D openTSNE embedding (seeded, on every core) of at most ``max_points`` codes.

    Returns the embedding (M, 2) and the indices into ``codes`` it belongs to (sorted; a seeded
    subsample above ``max_points``). The perplexity shrinks below (M - 1) / 3 for few points.
    """
    from openTSNE import TSNE  # slow to import; only evaluation needs it

    from cellae.machine import available_cores

    codes = _codes(codes, "codes")
    chosen = _subsample(len(codes), max_points, seed)
    m = len(chosen)
    if m < MIN_TSNE_POINTS:
        raise CellaeError(f"t-SNE needs at least {MIN_TSNE_POINTS} latent codes, got {m}")
    effective = min(float(perplexity), 0.99 * (m - 1) / 3)
    tsne = TSNE(
        n_components=2,
        perplexity=effective,
        # Barnes-Hut below 10,000 points, FFT interpolation above: measured in
        # benchmarks/run.py, FFT's fixed grid cost made the sample's 900-point maps 4x slower
        negative_gradient_method="bh" if m < FFT_FROM_POINTS else "fft",
        ints_in_interval=FFT_INTS_IN_INTERVAL,
        neighbors="exact" if m <= EXACT_NEIGHBOURS_UP_TO else "annoy",
        random_state=seed,
        n_jobs=available_cores(),
        verbose=False,
    )
    embedding = np.asarray(tsne.fit(codes[chosen]), dtype=np.float64)
    return embedding, chosen


# UMAP's own default; its neighbour graph needs a few more points than that
UMAP_NEIGHBOURS = 15
MAP_TITLES = {"tsne": "t-SNE", "umap": "UMAP"}


def umap_embedding(codes: np.ndarray, max_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """2-D UMAP (umap-learn, the ``umap`` extra) of at most ``max_points`` codes, seeded; the
    same rows as :func:`tsne_embedding` would take."""
    try:
        import umap
    except ModuleNotFoundError as exc:
        raise CellaeError("eval.maps: umap needs umap-learn: pip install 'cellae[umap]'") from exc
    import warnings

    codes = _codes(codes, "codes")
    chosen = _subsample(len(codes), max_points, seed)
    m = len(chosen)
    if m < MIN_TSNE_POINTS:
        raise CellaeError(f"UMAP needs at least {MIN_TSNE_POINTS} latent codes, got {m}")
    reducer = umap.UMAP(n_components=2, n_neighbors=min(UMAP_NEIGHBOURS, m - 1),
                        random_state=seed, init="spectral" if m > UMAP_NEIGHBOURS + 2 else "random")
    with warnings.catch_warnings():
        # a seeded UMAP runs on one thread and says so; that is the price of reproducibility
        warnings.filterwarnings("ignore", message=".*n_jobs.*")
        embedding = np.asarray(reducer.fit_transform(codes[chosen]), dtype=np.float64)
    return embedding, chosen


def map_embedding(method: str, codes: np.ndarray, max_points: int, perplexity: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The 2-D map ``method`` (``tsne`` or ``umap``) of the codes, and the rows it shows."""
    if method == "umap":
        return umap_embedding(codes, max_points, seed)
    return tsne_embedding(codes, max_points, perplexity, seed)
