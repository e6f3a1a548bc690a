"""Gather what a report shows from run folders: status, headline numbers, config keys, figures.

Everything is read through :mod:`cellae.runs` as plain values, so a report never imports the
plug-ins a run names and opens a run folder whose family it does not know.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from cellae import runs
from cellae.columns import SAME_IMAGES, SAME_OBJECTIVE, SAME_TEST_CELLS, Column, metric_value
from cellae.errors import CellaeError
from cellae.sections import SYNTHETIC, DataConfig, TrainConfig

# the study's order: latent map, reconstructions, curves; then the rest. The evaluation's grid of
# inputs was called samples.png before it was called inputs.png: a report reads runs of both.
FIGURE_ORDER = ("latent_tsne.png", "latent_umap.png", "reconstructions.png", "error_maps.png", "learning_curves.png", "inputs.png",
                "samples.png", "prior_samples.png", "traversals.png")
FINISHED = "finished"
# a figure larger than this is not one cellae drew (they are well under 1 MB)
MAX_FIGURE_BYTES = 20 * 2**20

# the report's own first column, from metrics.csv: what training minimised
TEST_LOSS = Column("test_loss", "test loss", "lower", 4, SAME_OBJECTIVE)
# from run.json, after the evaluation's columns: never marked, they describe the run's cost
RUN_COLUMNS = (
    Column("run.epochs_completed", "epochs", "", 0),
    Column("run.fit_seconds", "fit time (s)", "", 1),
    Column("run.parameters", "parameters", "", 0),
)
# The columns cellae's own evaluation and families declare today. Runs evaluated before columns
# said what they compare within get these, so that, say, their PCA numbers are not marked best.
# Spelled here because importing the evaluation or the families would import plug-in code.
KNOWN_COLUMNS = {c.key: c for c in (
    Column("reconstruction.psnr_interior", "PSNR interior (dB)", "higher", 2, SAME_IMAGES),
    Column("reconstruction.ssim", "SSIM", "higher", 3, SAME_IMAGES),
    Column("probe.majority_accuracy", "majority rate", "", 3, baseline=True),
    Column("probe.accuracy", "probe accuracy", "higher", 3, SAME_TEST_CELLS),
    Column("probe.auroc", "probe AUROC", "higher", 3, SAME_TEST_CELLS),
    Column("pca_baseline.accuracy", "PCA accuracy", "higher", 3, baseline=True),
    Column("pca_baseline.auroc", "PCA AUROC", "higher", 3, baseline=True),
    Column("probe.knn_accuracy", "kNN accuracy", "higher", 3, SAME_TEST_CELLS),
    Column("vae.elbo", "ELBO (VAE)", "higher", 2, SAME_IMAGES + ("model.loss",)),
    Column("vae.kl", "KL (VAE)", "", 2),
    Column("vae.active_units", "active units (VAE)", "", 0),
)}
# what a report of cellae 0.1.0 showed, for runs evaluated before metrics.json named its columns
COLUMNS_OF_0_1_0 = tuple(KNOWN_COLUMNS[k] for k in (
    "reconstruction.psnr_interior", "reconstruction.ssim", "probe.accuracy", "probe.auroc",
    "pca_baseline.accuracy", "pca_baseline.auroc", "probe.knn_accuracy", "vae.active_units",
))


@dataclass
class RunSummary:
    """One run folder as the report shows it. ``name`` is unique within a report."""

    name: str
    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    info: dict[str, Any]
    rows: list[dict[str, float]]  # metrics.csv, for the overlaid learning curves
    test_loss: float | None
    data: dict[str, Any]
    figures: list[Path] = field(default_factory=list)
    columns: list[Column] = field(default_factory=list)  # what its evaluation declared

    @property
    def status(self) -> str:
        status = self.info.get("status")
        return status if isinstance(status, str) and status else "unknown"

    @property
    def finished(self) -> bool:
        """Only a finished run's numbers are final, so only they compete for best."""
        return self.status == FINISHED

    @property
    def evaluated(self) -> bool:
        return bool(self.metrics)

    @property
    def epochs_completed(self) -> int:
        """run.json's count once training ended; the rows written so far before that."""
        recorded = self.info.get("epochs_completed")
        return int(recorded) if isinstance(recorded, int | float) else len(self.rows)

    @property
    def epochs_planned(self) -> int | None:
        planned = (self.config.get("train") or {}).get("epochs")
        return planned if isinstance(planned, int) else None

    def number(self, key: str) -> float | None:
        """The number a column shows for this run, or None when the run has none."""
        if key == TEST_LOSS.key:
            value = self.test_loss
        elif key == "run.epochs_completed":
            value = self.epochs_completed
        elif key.startswith("run."):
            value = metric_value(self.info, key.removeprefix("run."))
        else:
            value = metric_value(self.metrics, key)
        return value if value is not None and math.isfinite(value) else None


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def _declared_columns(metrics: dict[str, Any]) -> list[Column]:
    """The columns metrics.json declares; one declared before columns said what they compare
    within (no ``compare_within``, no ``baseline``) is read as cellae declares it today."""
    columns = []
    for values in metrics.get("columns", []):
        if not isinstance(values, dict) or not isinstance(values.get("key"), str):
            continue
        column = Column.from_dict(values)
        if "compare_within" not in values and "baseline" not in values:
            column = KNOWN_COLUMNS.get(column.key, column)
        columns.append(column)
    return columns


EXPLORER_FILE = "explorer.html"
# an explorer of 20,000 cells at 64 px is some 60 MB; anything far larger is not one
MAX_EXPLORER_BYTES = 256 * 2**20


def own_explorer(run_dir: Path) -> Path | None:
    """The run's ``figures/explorer.html`` where it is a regular file of its own of bounded
    size that cellae's explorer wrote (the same guards as a figure's), else None."""
    path = run_dir / runs.FIGURES_DIR / EXPLORER_FILE
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_EXPLORER_BYTES:
            return None
        if not path.resolve().is_relative_to(run_dir.resolve()):
            return None
        with path.open("rb") as handle:
            head = handle.read(4096)
    except OSError:
        return None
    return path if b"cellaeExplorer" in head or head.startswith(b"<!DOCTYPE html>") else None


def _is_own_png(path: Path, run_root: Path) -> bool:
    """Whether ``path`` may go into a report: a regular file (no link, FIFO or device), inside
    the run folder however its parents are spelled, of bounded size, that decodes as a PNG.

    A run folder may come from anyone; a link in it to a private file would otherwise be
    embedded in the page, a FIFO would hang the report and /dev/zero would fill its memory.
    """
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_FIGURE_BYTES:
            return False
        if not path.resolve().is_relative_to(run_root):
            return False
        with Image.open(path, formats=["PNG"]) as image:
            image.verify()
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        return False
    return True


def _figures(run_dir: Path) -> list[Path]:
    folder = run_dir / runs.FIGURES_DIR
    root = run_dir.resolve()
    if folder.is_symlink() or not folder.is_dir():
        return []
    named = [folder / n for n in FIGURE_ORDER]
    found = named + sorted(p for p in folder.glob("*.png") if p.name not in FIGURE_ORDER)
    return [p for p in found if _is_own_png(p, root)]


def _with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the data and train keys an older cellae did not write set to their
    defaults (``data.normalize: none``), so old and new runs compare where they agree."""
    filled = dict(config)
    for section, defaults in (("data", DataConfig()), ("train", TrainConfig())):
        given = config.get(section)
        if isinstance(given, dict):
            filled[section] = {**dataclasses.asdict(defaults), **given}
    return filled


def summarise_run(run_dir: Path) -> RunSummary:
    runs.require_run_dir(run_dir)
    # plain values: a report never imports the plug-ins a run names
    config = _with_defaults(runs.read_config_values(run_dir))
    metrics = runs.read_evaluation(run_dir)
    try:
        info = runs.read_run_info(run_dir)
    except CellaeError:
        info = {}  # a damaged run.json leaves the run's status unknown, so it competes for nothing
    info = info if isinstance(info, dict) else {}
    rows = runs.read_metrics(run_dir)
    finite = [r["test_loss"] for r in rows if math.isfinite(r.get("test_loss", math.nan))]
    data = dict(metrics.get("data") or info.get("data") or {})
    data["source"] = (config.get("data") or {}).get("source", SYNTHETIC)
    return RunSummary(
        name=run_dir.name, path=run_dir, config=config, metrics=metrics, info=info, rows=rows,
        test_loss=min(finite) if finite else metric_value(metrics, "reconstruction.loss"), data=data,
        figures=_figures(run_dir), columns=_declared_columns(metrics),
    )


def summarise_runs(run_dirs: list[Path]) -> list[RunSummary]:
    """Each run summarised; folders of one name (``ae`` in two sweeps) are named by their parent
    too, so that every row, line and section names one run."""
    summaries = [summarise_run(p) for p in run_dirs]
    counts: dict[str, int] = {}
    for s in summaries:
        counts[s.name] = counts.get(s.name, 0) + 1
    taken: set[str] = set()
    for s in summaries:
        name = f"{s.path.parent.name}/{s.name}" if counts[s.name] > 1 else s.name
        unique, number = name, 2
        while unique in taken:
            unique, number = f"{name} ({number})", number + 1
        s.name = unique
        taken.add(unique)
    return summaries


def anchor(index: int, name: str) -> str:
    """An HTML id for a run's section: ASCII only, so it needs no escaping in a link."""
    return f"run-{index + 1}-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "run")


def report_columns(summaries: list[RunSummary]) -> list[Column]:
    """The test loss, every column any run declares (each once, in the order declared), then the
    run's cost from run.json. Runs evaluated before metrics.json named its columns get those of
    cellae 0.1.0."""
    seen: dict[str, Column] = {TEST_LOSS.key: TEST_LOSS}
    for summary in summaries:
        declared = summary.columns or (COLUMNS_OF_0_1_0 if summary.evaluated else ())
        for column in declared:
            seen.setdefault(column.key, column)
    return list(seen.values()) + list(RUN_COLUMNS)


def expand_run_dirs(paths: list[Path]) -> list[Path]:
    """Run folders from run and sweep folders (and folders of sweeps), in the order given, each
    once."""
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


def differing_keys(configs: list[dict[str, Any]], ignore: tuple[str, ...] = ("name",)) -> list[str]:
    """Config keys whose values are not the same in every config (``ignore`` aside)."""
    flats = [_flatten(c) for c in configs]
    keys = sorted({k for f in flats for k in f} - set(ignore))
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]


def flatten_config(config: dict[str, Any]) -> dict[str, Any]:
    return _flatten(config)


def config_value(config: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted key, or None where the config has none. A loss named alone
    (``loss: mse``) and as a section with only its name (``loss: {name: mse}``) are the same."""
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if isinstance(value, dict) and set(value) == {"name"}:
        return value["name"]
    return value
