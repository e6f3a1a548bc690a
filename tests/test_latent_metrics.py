"""Latent-space quality: probes, kNN, silhouette, the PCA baseline and t-SNE on built codes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from cellae.errors import CellaeError
from cellae.evaluation.latent import (
    knn_accuracy,
    linear_probe,
    pca_baseline,
    silhouette_by_class,
    tsne_embedding,
)


def clusters(n: int, n_classes: int = 2, dim: int = 6, spread: float = 1.0,
             distance: float = 10.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs, one per class, their centres ``distance`` apart along separate axes."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes
    centres = np.eye(n_classes, dim) * distance
    return centres[labels] + rng.normal(scale=spread, size=(n, dim)), labels


def test_probe_on_linearly_separable_codes_is_perfect() -> None:
    train, train_y = clusters(200, seed=0)
    test, test_y = clusters(100, seed=1)
    result = linear_probe(train, train_y, test, test_y)
    assert result["accuracy"] == 1.0
    assert result["auroc"] == 1.0
    assert result["auroc_note"] is None
    assert (result["n_train"], result["n_test"], result["n_classes"]) == (200, 100, 2)
    assert result["majority_accuracy"] == 0.5


def test_probe_on_random_codes_is_at_chance() -> None:
    rng = np.random.default_rng(0)
    result = linear_probe(rng.normal(size=(2000, 8)), rng.integers(0, 2, 2000),
                          rng.normal(size=(2000, 8)), rng.integers(0, 2, 2000))
    assert result["accuracy"] == pytest.approx(0.5, abs=0.05)
    assert result["auroc"] == pytest.approx(0.5, abs=0.05)


def test_probe_with_three_classes_uses_one_vs_rest_macro_auc() -> None:
    train, train_y = clusters(300, n_classes=3, distance=1.5, seed=0)
    test, test_y = clusters(150, n_classes=3, distance=1.5, seed=1)
    result = linear_probe(train, train_y, test, test_y, seed=0)
    scaler = StandardScaler().fit(train)
    model = LogisticRegression(C=1.0, max_iter=5000).fit(scaler.transform(train), train_y)
    expected = roc_auc_score(test_y, model.predict_proba(scaler.transform(test)),
                             multi_class="ovr", average="macro")
    assert 0.6 < result["auroc"] < 1.0
    assert result["auroc"] == pytest.approx(expected)


def test_probe_auc_is_none_with_a_reason_when_test_has_one_class() -> None:
    train, train_y = clusters(100, seed=0)
    test, test_y = clusters(40, seed=1)
    only_zero = test_y == 0
    result = linear_probe(train, train_y, test[only_zero], test_y[only_zero])
    assert result["auroc"] is None
    assert "single class" in result["auroc_note"]
    assert result["accuracy"] == 1.0


def test_probe_refuses_training_codes_of_one_class() -> None:
    codes, labels = clusters(40)
    with pytest.raises(CellaeError, match="two classes"):
        linear_probe(codes, np.zeros(40, dtype=int), codes, labels)


def test_knn_on_clustered_codes() -> None:
    train, train_y = clusters(90, n_classes=3, seed=0)
    test, test_y = clusters(30, n_classes=3, seed=1)
    assert knn_accuracy(train, train_y, test, test_y, k=15) == 1.0
    # k above the number of training codes shrinks instead of failing
    assert knn_accuracy(train[:6], train_y[:6], test, test_y, k=15) == pytest.approx(1 / 3)


def test_knn_standardises_so_a_huge_noise_dimension_cannot_drown_the_signal() -> None:
    train, train_y = clusters(200, seed=0)
    test, test_y = clusters(100, seed=1)
    rng = np.random.default_rng(2)
    noisy_train = np.column_stack([train, rng.normal(scale=1e4, size=len(train))])
    noisy_test = np.column_stack([test, rng.normal(scale=1e4, size=len(test))])
    assert knn_accuracy(noisy_train, train_y, noisy_test, test_y, k=5) > 0.95


def test_silhouette_is_higher_for_separated_than_for_mixed_classes() -> None:
    separated = silhouette_by_class(*clusters(200, distance=10.0))
    mixed = silhouette_by_class(*clusters(200, distance=0.0))
    assert separated > 0.7
    assert abs(mixed) < 0.1


def test_silhouette_subsamples_deterministically() -> None:
    codes, labels = clusters(400, distance=2.0)
    first = silhouette_by_class(codes, labels, max_points=100, seed=3)
    assert first == silhouette_by_class(codes, labels, max_points=100, seed=3)
    assert first != silhouette_by_class(codes, labels, max_points=100, seed=4)
    assert np.isnan(silhouette_by_class(codes, np.zeros(400, dtype=int)))


def test_pca_baseline_shapes_and_cap() -> None:
    rng = np.random.default_rng(0)
    train, test = rng.random((50, 3, 8, 8)), rng.random((20, 3, 8, 8))
    train_codes, test_codes = pca_baseline(train, test, n_components=8, seed=0)
    assert train_codes.shape == (50, 8) and test_codes.shape == (20, 8)
    train_codes, test_codes = pca_baseline(train[:10], test, n_components=64, seed=0)
    assert train_codes.shape == (10, 10) and test_codes.shape == (20, 10)


def test_pca_baseline_is_fit_on_train_only() -> None:
    rng = np.random.default_rng(0)
    train = rng.random((60, 192))
    codes_a, test_a = pca_baseline(train, rng.random((20, 192)), n_components=5, seed=0)
    codes_b, test_b = pca_baseline(train, rng.random((30, 192)) * 5, n_components=5, seed=0)
    np.testing.assert_allclose(codes_a, codes_b, rtol=1e-5)
    # Test images go through the same fixed map: a training image gets its training code.
    _, again = pca_baseline(train, train[:7], n_components=5, seed=0)
    np.testing.assert_allclose(again, codes_a[:7], rtol=1e-4, atol=1e-5)


def test_tsne_is_finite_and_deterministic_for_a_seed() -> None:
    codes, _ = clusters(150, n_classes=3)
    embedding, chosen = tsne_embedding(codes, max_points=1000, perplexity=30, seed=0)
    assert embedding.shape == (150, 2) and np.isfinite(embedding).all()
    np.testing.assert_array_equal(chosen, np.arange(150))
    again, _ = tsne_embedding(codes, max_points=1000, perplexity=30, seed=0)
    np.testing.assert_array_equal(embedding, again)


def test_tsne_subsamples_and_copes_with_few_points() -> None:
    codes, _ = clusters(200)
    embedding, chosen = tsne_embedding(codes, max_points=12, perplexity=30, seed=1)
    assert embedding.shape == (12, 2) and np.isfinite(embedding).all()
    assert len(np.unique(chosen)) == 12 and np.all(np.diff(chosen) > 0)
    with pytest.raises(CellaeError, match="at least"):
        tsne_embedding(codes[:3], max_points=100, perplexity=30, seed=0)
