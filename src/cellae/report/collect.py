"""Gather what a report shows from run folders: headline numbers, differing config keys, figures."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellae import runs
from cellae.columns import SAME_OBJECTIVE, Column
from cellae.config import SYNTHETIC
from cellae.errors import CellaeError

# the study's order: latent map, reconstructions, curves; then the rest
FIGURE_ORDER = ("latent_tsne.png", "reconstructions.png", "learning_curves.png", "samples.png",
                "prior_samples.png", "traversals.png")


# the report's own first column, from metrics.csv: what training minimised
TEST_LOSS = Column("test_loss", "test loss", "lower", 4, SAME_OBJECTIVE)
# what a report of cellae 0.1.0 showed, for runs evaluated before metrics.json named its columns
COLUMNS_OF_0_1_0 = (
    Column("reconstruction.psnr_interior", "PSNR interior (dB)", "higher", 2),
    Column("reconstruction.ssim", "SSIM", "higher", 3),
    Column("probe.accuracy", "probe accuracy", "higher"),
    Column("probe.auroc", "probe AUROC", "higher"),
    Column("pca_baseline.accuracy", "PCA accuracy", "higher"),
    Column("pca_baseline.auroc", "PCA AUROC", "higher"),
    Column("probe.knn_accuracy", "kNN accuracy", "higher"),
    Column("vae.active_units", "active units (VAE)", "", 0),
)


@dataclass
class RunSummary:
    name: str
    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    test_loss: float | None
    data: dict[str, Any]
    figures: list[Path] = field(default_factory=list)
    evaluated: bool = True
    columns: list[Column] = field(default_factory=list)  # what its evaluation declared

    def number(self, key: str) -> float | None:
        """The number a column shows for this run, or None when the run has none."""
        return self.test_loss if key == TEST_LOSS.key else _lookup(self.metrics, key)


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def _lookup(values: dict[str, Any], dotted: str) -> float | None:
    for part in dotted.split("."):
        if not isinstance(values, dict) or part not in values:
            return None
        values = values[part]
    return values if isinstance(values, int | float) and not isinstance(values, bool) else None


def summarise_run(run_dir: Path) -> RunSummary:
    runs.require_run_dir(run_dir)
    # plain values: a report never imports the plug-ins a run names
    config = runs.read_config_values(run_dir)
    metrics = runs.read_evaluation(run_dir)
    info = runs.read_run_info(run_dir)
    columns = [Column.from_dict(c) for c in metrics.get("columns", []) if isinstance(c, dict)
               and isinstance(c.get("key"), str)]
    finite = [r["test_loss"] for r in runs.read_metrics(run_dir) if r.get("test_loss") == r.get("test_loss")]
    figures_dir = run_dir / runs.FIGURES_DIR
    figures = [figures_dir / n for n in FIGURE_ORDER if (figures_dir / n).is_file()]
    figures += sorted(p for p in figures_dir.glob("*.png") if p.name not in FIGURE_ORDER)
    data = dict(metrics.get("data") or info.get("data") or {})
    data["source"] = (config.get("data") or {}).get("source", SYNTHETIC)
    return RunSummary(
        name=run_dir.name, path=run_dir, config=config, metrics=metrics,
        test_loss=min(finite) if finite else _lookup(metrics, "reconstruction.loss"), data=data,
        figures=figures, evaluated=bool(metrics), columns=columns,
    )


def report_columns(summaries: list[RunSummary]) -> list[Column]:
    """The test loss, then every column any run declares, each once, in the order declared.

    Runs evaluated before metrics.json named its columns get those of cellae 0.1.0.
    """
    seen: dict[str, Column] = {TEST_LOSS.key: TEST_LOSS}
    for summary in summaries:
        declared = summary.columns or (COLUMNS_OF_0_1_0 if summary.evaluated else ())
        for column in declared:
            seen.setdefault(column.key, column)
    return list(seen.values())


def expand_run_dirs(paths: list[Path]) -> list[Path]:
    """Run folders from run and sweep folders, in the order given, each once."""
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise CellaeError(f"no such run or sweep folder: {path}")
        if runs.is_run_dir(path):
            candidates = [path]
        else:
            candidates = runs.run_dirs_in(path)
            if not candidates:
                raise CellaeError(f"{path} holds no cellae run folders")
        found += [c for c in candidates if c.resolve() not in {f.resolve() for f in found}]
    return found


def differing_keys(summaries: list[RunSummary]) -> list[str]:
    """Config keys whose values are not the same in every run (``name`` aside)."""
    flats = [_flatten(s.config) for s in summaries]
    keys = sorted({k for f in flats for k in f} - {"name"})
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]


def best_values(summaries: list[RunSummary], columns: list[Column]) -> dict[str, float]:
    best: dict[str, float] = {}
    for column in columns:
        values = [s.number(column.key) for s in summaries]
        values = [v for v in values if isinstance(v, int | float)]
        if column.better and values and len(summaries) > 1:
            best[column.key] = max(values) if column.better == "higher" else min(values)
    return best


def flatten_config(config: dict[str, Any]) -> dict[str, Any]:
    return _flatten(config)
