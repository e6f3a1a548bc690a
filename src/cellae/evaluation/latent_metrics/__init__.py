"""Latent metrics as plug-ins: numbers about a latent space, chosen by ``eval.metrics``.

A metric is a :class:`LatentMetric`: a name, a function of a :class:`LatentSplit` returning
numbers, and the report columns it adds. Evaluation computes every chosen metric on the latent
codes (``probe`` block of ``metrics.json``) and on the PCA baseline (``pca_baseline`` block). A
new built-in metric is a new module of this package calling ``METRICS.register``; one of the
user's own is named in the config as ``module:NAME`` or ``file.py:NAME``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cellae.columns import Column
from cellae.registry import Registry
from cellae.sections import EvalConfig


@dataclass
class LatentSplit:
    """Codes and labels of both sides of a split: what every latent metric is computed from."""

    train_codes: np.ndarray
    train_labels: np.ndarray
    test_codes: np.ndarray
    test_labels: np.ndarray
    eval: EvalConfig
    seed: int
    # the train codes' patients, for metrics that choose a setting on inner folds of the train
    # side (the probe's ``eval.probe_c: auto``); None where there are none
    train_groups: np.ndarray | None = None


@dataclass(frozen=True)
class LatentMetric:
    """``compute`` returns keys of the ``probe`` (and ``pca_baseline``) block; ``columns`` name
    the ones the comparison report shows, by their dotted path (``probe.accuracy``)."""

    name: str
    compute: Callable[[LatentSplit], dict[str, Any]]
    columns: tuple[Column, ...] = ()


METRICS: Registry[LatentMetric] = Registry(
    "metrics", __name__, "eval.metrics", name_attribute="name",
    is_plugin=lambda item: isinstance(item, LatentMetric),
)


def check_metric_names(names: list[str]) -> None:
    """Refuse, before anything runs, a name of ``eval.metrics`` that names no metric."""
    for name in names:
        METRICS.get(name)


__all__ = ["METRICS", "LatentMetric", "LatentSplit", "check_metric_names"]
