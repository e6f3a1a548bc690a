"""Gather what a report shows from run folders: headline numbers, differing config keys, figures."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellae import runs
from cellae.errors import CellaeError
from cellae.sweep import sweep_run_dirs

# the study's order: latent map, reconstructions, curves; then the rest
FIGURE_ORDER = ("latent_tsne.png", "reconstructions.png", "learning_curves.png", "samples.png",
                "prior_samples.png", "traversals.png")


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    better: str  # "higher", "lower" or "" when there is no better
    digits: int = 3


COLUMNS = (
    Column("test_loss", "test loss", "lower", 4),
    Column("psnr_interior", "PSNR interior (dB)", "higher", 2),
    Column("ssim", "SSIM", "higher", 3),
    Column("probe_accuracy", "probe accuracy", "higher", 3),
    Column("probe_auroc", "probe AUROC", "higher", 3),
    Column("pca_accuracy", "PCA accuracy", "higher", 3),
    Column("pca_auroc", "PCA AUROC", "higher", 3),
    Column("knn_accuracy", "kNN accuracy", "higher", 3),
    Column("active_units", "active units (VAE)", "", 0),
)


@dataclass
class RunSummary:
    name: str
    path: Path
    config: dict[str, Any]
    numbers: dict[str, float | None]
    data: dict[str, Any]
    figures: list[Path] = field(default_factory=list)
    evaluated: bool = True


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def _numbers(metrics: dict[str, Any], rows: list[dict[str, float]]) -> dict[str, float | None]:
    rec = metrics.get("reconstruction", {})
    probe = metrics.get("probe", {})
    pca = metrics.get("pca_baseline", {})
    finite = [r["test_loss"] for r in rows if r.get("test_loss") == r.get("test_loss")]
    return {
        "test_loss": min(finite) if finite else rec.get("loss"),
        "psnr_interior": rec.get("psnr_interior"),
        "ssim": rec.get("ssim"),
        "probe_accuracy": probe.get("accuracy"),
        "probe_auroc": probe.get("auroc"),
        "pca_accuracy": pca.get("accuracy"),
        "pca_auroc": pca.get("auroc"),
        "knn_accuracy": probe.get("knn_accuracy"),
        "active_units": metrics.get("vae", {}).get("active_units"),
    }


def summarise_run(run_dir: Path) -> RunSummary:
    runs.require_run_dir(run_dir)
    config = runs.read_config(run_dir).to_dict()
    metrics_path = run_dir / runs.EVAL_DIR / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    info = runs.read_run_info(run_dir)
    figures_dir = run_dir / runs.FIGURES_DIR
    figures = [figures_dir / n for n in FIGURE_ORDER if (figures_dir / n).is_file()]
    figures += sorted(p for p in figures_dir.glob("*.png") if p.name not in FIGURE_ORDER)
    data = dict(metrics.get("data") or info.get("data") or {})
    data["source"] = config["data"]["source"]
    return RunSummary(
        name=run_dir.name, path=run_dir, config=config,
        numbers=_numbers(metrics, runs.read_metrics(run_dir)), data=data, figures=figures,
        evaluated=bool(metrics),
    )


def expand_run_dirs(paths: list[Path]) -> list[Path]:
    """Run folders from run and sweep folders, in the order given, each once."""
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise CellaeError(f"no such run or sweep folder: {path}")
        if runs.is_run_dir(path):
            candidates = [path]
        else:
            candidates = sweep_run_dirs(path)
            if not candidates:
                raise CellaeError(f"{path} holds no cellae run folders")
        found += [c for c in candidates if c.resolve() not in {f.resolve() for f in found}]
    return found


def differing_keys(summaries: list[RunSummary]) -> list[str]:
    """Config keys whose values are not the same in every run (``name`` aside)."""
    flats = [_flatten(s.config) for s in summaries]
    keys = sorted({k for f in flats for k in f} - {"name"})
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]


def best_values(summaries: list[RunSummary]) -> dict[str, float]:
    best: dict[str, float] = {}
    for column in COLUMNS:
        values = [s.numbers.get(column.key) for s in summaries]
        values = [v for v in values if isinstance(v, int | float)]
        if column.better and values and len(summaries) > 1:
            best[column.key] = max(values) if column.better == "higher" else min(values)
    return best


def flatten_config(config: dict[str, Any]) -> dict[str, Any]:
    return _flatten(config)
