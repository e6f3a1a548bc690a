"""Logistic regression on the codes, fit on train patients, scored on test patients."""

from __future__ import annotations

from typing import Any

from cellae.columns import SAME_TEST_CELLS, Column
from cellae.evaluation.latent import linear_probe
from cellae.evaluation.latent_metrics import METRICS, LatentMetric, LatentSplit


def _linear_probe(split: LatentSplit) -> dict[str, Any]:
    return linear_probe(split.train_codes, split.train_labels, split.test_codes,
                        split.test_labels, seed=split.seed, c=split.eval.probe_c,
                        train_groups=split.train_groups)


METRICS.register(LatentMetric("linear_probe", _linear_probe, (
    Column("probe.majority_accuracy", "majority rate", "", 3, baseline=True),
    Column("probe.accuracy", "probe accuracy", "higher", 3, SAME_TEST_CELLS),
    Column("probe.auroc", "probe AUROC", "higher", 3, SAME_TEST_CELLS),
    Column("pca_baseline.accuracy", "PCA accuracy", "higher", 3, baseline=True),
    Column("pca_baseline.auroc", "PCA AUROC", "higher", 3, baseline=True),
)))
