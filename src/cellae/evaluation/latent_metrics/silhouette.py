"""The silhouette of the test codes with the classes as clusters."""

from __future__ import annotations

from typing import Any

from cellae.evaluation.latent import silhouette_by_class
from cellae.evaluation.latent_metrics import METRICS, LatentMetric, LatentSplit


def _silhouette(split: LatentSplit) -> dict[str, Any]:
    return {"silhouette": silhouette_by_class(split.test_codes, split.test_labels, seed=split.seed)}


METRICS.register(LatentMetric("silhouette", _silhouette))
