"""A k-nearest-neighbour vote on the codes: does the neighbourhood of a cell know its class?"""

from __future__ import annotations

from typing import Any

from cellae.columns import SAME_TEST_CELLS, Column
from cellae.evaluation.latent import knn_accuracy
from cellae.evaluation.latent_metrics import METRICS, LatentMetric, LatentSplit


def _knn(split: LatentSplit) -> dict[str, Any]:
    k = split.eval.knn_k
    accuracy = knn_accuracy(split.train_codes, split.train_labels, split.test_codes,
                            split.test_labels, k=k)
    return {"knn_accuracy": accuracy, "knn_k": k}


METRICS.register(LatentMetric("knn", _knn, (Column("probe.knn_accuracy", "kNN accuracy", "higher", 3,
                                                      SAME_TEST_CELLS),)))
