"""``cellae evaluate``: compute a run's numbers, draw its figures, write its files.

Evaluation reads only the run folder (its config, split, checkpoint and metrics) and the
cache its data summary names, so a run can be moved and evaluated again. It runs in three
steps: :func:`compute` gives an :class:`Evaluation` (every number, the latent codes and what
the figures show), :func:`draw` turns it into figures (every figure, the families' too, is a
function of :mod:`cellae.plots`) and :func:`write` into ``metrics.json`` and ``latents.npz``.
The measures themselves are the :mod:`cellae.evaluation` package; this module only drives them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch

from cellae import explorer, plots, runs
from cellae.api import LoadedRun, load_run
from cellae.columns import SAME_IMAGES, Column
from cellae.config import SYNTHETIC, Config
from cellae.data.augment import N_SYMMETRIES, every_symmetry
from cellae.data.cache import CellCache, prepare_cache
from cellae.data.splits import class_labels, split_indices
from cellae.errors import CellaeError
from cellae.evaluation import anomaly, latent, metrics
from cellae.evaluation.latent_metrics import METRICS, LatentSplit
from cellae.evaluation.spot_features import COLUMNS as SPOT_COLUMNS
from cellae.evaluation.spot_features import spot_features
from cellae.files import remove_stale_temporaries
from cellae.images import to_uint8, unit_float
from cellae.models import CellAutoencoder, FamilyEvaluation
from cellae.models.base import mask_argument
from cellae.naming import displayable, safe_name
from cellae.run_inputs import run_cache, split_rows
from cellae.sections import CodeViews

BATCH = 256
# top-level keys of metrics.json that are not a family's numbers
RESERVED_KEYS = ("columns", "figures", "seconds", "seconds_by_part")
# the reconstruction numbers every run shows in a report, before its latent metrics
RECONSTRUCTION_COLUMNS = (
    Column("reconstruction.psnr_interior", "PSNR interior (dB)", "higher", 2, SAME_IMAGES),
    Column("reconstruction.ssim", "SSIM", "higher", 3, SAME_IMAGES),
)


@dataclass
class Evaluation:
    """What one evaluation computed. ``metrics`` is ``metrics.json``; the rest feeds the figures
    and ``latents.npz``."""

    metrics: dict[str, Any]
    codes: np.ndarray  # train codes then test codes
    rows: np.ndarray  # the cache rows of ``codes``
    n_train: int
    maps: dict[str, np.ndarray]  # eval.maps' 2-D maps (M, 2) of the test codes at map_rows
    map_rows: np.ndarray  # positions within the test side
    test_errors: np.ndarray  # each test cell's mean squared error inside it
    shown_rows: np.ndarray  # cache rows whose reconstructions are drawn
    reconstructions: np.ndarray  # uint8, of shown_rows
    family_view: FamilyEvaluation = field(repr=False)
    # seconds spent in each part, so a slow evaluation says which part to blame
    seconds_by_part: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def _timed(parts: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        parts[name] = round(parts.get(name, 0.0) + time.perf_counter() - started, 3)


def source_cache(config: Config, source: str | None, channels: int | None = None) -> CellCache:
    """The run's own cache (rebuilt if it was deleted), or ``source`` preprocessed the run's
    way; with ``channels`` (the model's), a source whose images have other channels is refused
    in one line rather than in the model's first convolution."""
    if source is None:
        return prepare_cache(config.data, progress=sys.stderr.isatty())
    data = dataclasses.replace(config.data, source=source)
    if source != SYNTHETIC and not Path(source).expanduser().exists():
        raise CellaeError(f"no such file or folder: {source}")
    cache = prepare_cache(data, progress=sys.stderr.isatty())
    if channels is not None and cache.images.shape[1] != channels:
        raise CellaeError(f"{source} gives {cache.images.shape[1]} channel(s) "
                          f"({', '.join(cache.channel_names)}) after the run's preprocessing; "
                          f"this run's model takes {channels}: give a source of the run's kind, "
                          "or pick its channels with data.channels in a new run")
    return cache


def _batches(images: np.ndarray, rows: np.ndarray, device: torch.device) -> Iterator[torch.Tensor]:
    """Images of ``rows`` in [0, 1] on ``device``, a batch at a time so memory stays flat."""
    for start in range(0, len(rows), BATCH):
        yield unit_float(torch.from_numpy(np.asarray(images[rows[start:start + BATCH]]))).to(device)


def _mask_batches(masks: np.ndarray | None, rows: np.ndarray, device: torch.device
                  ) -> Iterator[torch.Tensor | None]:
    """The cells' masks of ``rows`` in :func:`_batches`' batches (None each, without masks)."""
    for start in range(0, len(rows), BATCH):
        yield None if masks is None else torch.from_numpy(
            np.asarray(masks[rows[start:start + BATCH]])).to(device)


@torch.no_grad()
def encode_images(model: CellAutoencoder, images: np.ndarray, rows: np.ndarray | None = None,
                  views: CodeViews = "one", masks: np.ndarray | None = None) -> np.ndarray:
    """Latent codes of uint8 images (of ``rows`` of them, or all), through the model's encode;
    with ``views`` "dihedral" each code is the mean of the codes of the image's 8 symmetries
    (``eval.code_views``). ``masks`` (N, H, W), the cells', go to a model that reads them."""
    device = next(model.parameters()).device
    rows = np.arange(len(images)) if rows is None else rows
    parts = [_code(model, x, mask, views).cpu() for x, mask in zip(
        _batches(images, rows, device), _mask_batches(masks, rows, device), strict=True)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, model.latent_dim), np.float32)


def _code(model: CellAutoencoder, x: torch.Tensor, masks: torch.Tensor | None,
          views: CodeViews) -> torch.Tensor:
    if views == "one":
        return model.encode(x, **mask_argument(model, masks))
    if views == "dihedral":
        # the masks turn with their cells
        mask_views = [None] * N_SYMMETRIES if masks is None else every_symmetry(masks)
        return sum(model.encode(view, **mask_argument(model, mask))
                   for view, mask in zip(every_symmetry(x), mask_views, strict=True)) / N_SYMMETRIES
    raise ValueError(f"eval.code_views must be one of {get_args(CodeViews)}, got {views!r}")


# images of the first test batch whose forward-pass code is checked against encode's
CODE_CHECK_IMAGES = 16


def z_is_encode(model: CellAutoencoder, x: torch.Tensor, output: Any,
                masks: torch.Tensor | None = None) -> bool:
    """Whether the forward pass's ``z`` is what ``encode`` gives (the AE's code, the VAE's mean
    in eval mode), so that its codes can be read off the forward pass instead of a second
    pass of the encoder; a plug-in family may put a sample or something else there. Checked
    on the first ``CODE_CHECK_IMAGES`` images of ``x`` (and of their ``masks``)."""
    head = x[:CODE_CHECK_IMAGES]
    cells = mask_argument(model, None if masks is None else masks[:CODE_CHECK_IMAGES])
    return output.z.shape == (len(x), model.latent_dim) and torch.allclose(
        model.encode(head, **cells), output.z[:len(head)], rtol=1e-4, atol=1e-5)


@torch.no_grad()
def _reconstruction_numbers(model: CellAutoencoder, cache: CellCache,
                            idx: np.ndarray) -> tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray]:
    """Losses and image-quality numbers of the test side, accumulated batch by batch, each
    image's error scores (the anomaly scores) and its latent code, from the same pass."""
    device = next(model.parameters()).device
    totals: dict[str, float] = {}
    psnr_parts: list[dict[str, Any]] = []
    ssim_values = []
    errors = []
    codes = []
    trusted: bool | None = None  # decided on the first batch
    n = 0
    for start, x in zip(range(0, len(idx), BATCH), _batches(cache.images, idx, device), strict=True):
        rows = idx[start:start + BATCH]
        mask = torch.from_numpy(np.asarray(cache.masks[rows])).to(device).float().unsqueeze(1)
        cells = mask_argument(model, mask)
        output = model(x, **cells)
        if trusted is None:
            trusted = z_is_encode(model, x, output, mask)
        codes.append((output.z if trusted else model.encode(x, **cells)).float().cpu())
        losses = model.loss(x, mask, output)
        for key, value in losses.items():
            totals[key] = totals.get(key, 0.0) + float(value) * len(rows)
        original = x.cpu().numpy()
        recon = output.recon.cpu().numpy()
        masks = np.asarray(cache.masks[rows])
        psnr_parts.append(metrics.mse_psnr(original, recon, masks) | {"n": len(rows)})
        errors.append(anomaly.error_scores(original, recon, masks))
        # on the device, in float32: within 1e-6 of the float64 figure (tests/test_metrics.py)
        ssim_values.append(float(metrics.ssim_per_image(x, output.recon).sum()))
        n += len(rows)
    result: dict[str, Any] = {k: v / n for k, v in totals.items()}
    weights = np.array([p["n"] for p in psnr_parts], dtype=float)
    for key in psnr_parts[0]:
        if key == "n":
            continue
        values = np.array([np.nan if p[key] is None else p[key] for p in psnr_parts], dtype=float)
        result[key] = float(np.nansum(values * weights) / weights[~np.isnan(values)].sum())
    result["ssim"] = float(sum(ssim_values) / n)
    result["n_images"] = n
    scores = {name: np.concatenate([e[name] for e in errors]) for name in errors[0]}
    return result, scores, torch.cat(codes).numpy()


def _latent_block(config: Config, train_codes: np.ndarray, train_labels: np.ndarray,
                  test_codes: np.ndarray, test_labels: np.ndarray,
                  train_patients: np.ndarray) -> dict[str, Any]:
    if len(np.unique(train_labels)) < 2 or len(np.unique(test_labels)) < 2:
        # an unlabelled source (one class): nothing for a probe to tell apart
        return {"skipped": "one class only: the latent metrics need two classes on both sides"}
    split = LatentSplit(train_codes, train_labels, test_codes, test_labels, config.eval,
                        config.seed, train_patients)
    block: dict[str, Any] = {}
    for name in config.eval.metrics:
        block.update(METRICS.get(name).compute(split))
    return block


def _pixels(cache: CellCache, idx: np.ndarray) -> np.ndarray:
    flat = np.asarray(cache.images[np.sort(idx)]).reshape(len(idx), -1)
    # converted first, then scaled in place: numpy's mixed uint8-by-float32 multiply runs a
    # slow casting loop (0.40 s against 0.05 s for the sample's train side, same values)
    pixels = flat.astype(np.float32)
    return np.multiply(pixels, np.float32(1 / 255), out=pixels)


def _spots(cache: CellCache, rows: np.ndarray) -> np.ndarray:
    """The spot features of ``rows`` of ``cache``, in that order."""
    return spot_features(np.asarray(cache.images[rows]), np.asarray(cache.masks[rows]))


def _spot_cells(config: Config, cache: CellCache, source: str, train_idx: np.ndarray,
                test_idx: np.ndarray) -> tuple[CellCache, np.ndarray, np.ndarray]:
    """The cache the spot features see, and the rows there of both sides: ``cache`` itself, or
    at ``eval.spot_size`` the same source and preprocessing at that size, matched by file."""
    size = config.eval.spot_size
    if size in (0, config.data.image_size):
        return cache, np.sort(train_idx), np.sort(test_idx)
    data = dataclasses.replace(config.data, source=source, image_size=size)
    larger = prepare_cache(data, progress=sys.stderr.isatty())
    position = {name: i for i, name in enumerate(np.asarray(larger.files).tolist())}
    files = np.asarray(cache.files).tolist()
    try:
        # in the same (sorted) order as the rows of ``cache``, so the labels line up
        sides = [np.array([position[files[i]] for i in np.sort(idx)], dtype=np.int64)
                 for idx in (train_idx, test_idx)]
    except KeyError as exc:
        raise CellaeError(f"eval.spot_size {size}: {exc.args[0]} is not in the source at that "
                          "size; evaluate with eval.spot_size 0") from exc
    return larger, sides[0], sides[1]


def _has_classes(cache: CellCache, wanted: list[str]) -> bool:
    """Whether ``cache`` holds every class of ``wanted`` (another source may lack some)."""
    try:
        class_labels(cache.class_names, wanted)
    except CellaeError:
        return False
    return True


def compute(loaded: LoadedRun, cache: CellCache, train_idx: np.ndarray, test_idx: np.ndarray,
            source: str) -> Evaluation:
    """Every number of one evaluation, with the codes and images its figures need."""
    config, model = loaded.config, loaded.model
    e, seed = config.eval, config.seed
    labels = np.asarray(cache.labels)
    patients = np.asarray(cache.patients).astype(str)

    parts: dict[str, float] = {}
    every = np.concatenate([train_idx, test_idx])
    with _timed(parts, "encode"):
        train_codes = encode_images(model, cache.images, train_idx, e.code_views, cache.masks)
    n_train = len(train_idx)
    with _timed(parts, "reconstruction"):
        reconstruction, scores, test_codes = _reconstruction_numbers(model, cache, test_idx)
    # the family's own numbers are of the model's code of each cell as it is
    family_codes = test_codes
    if e.code_views != "one":
        with _timed(parts, "encode"):
            test_codes = encode_images(model, cache.images, test_idx, e.code_views, cache.masks)
    test_errors = np.asarray(scores["interior_mean"], dtype=np.float64)
    codes = np.concatenate([train_codes, test_codes])
    result: dict[str, Any] = {
        "source": source,
        "family": model.family,
        "latent_dim": int(model.latent_dim),
        "data": runs.data_summary(labels, patients, cache.class_names, train_idx, test_idx),
        "reconstruction": reconstruction,
    }
    if config.data.train_classes and _has_classes(cache, config.data.train_classes):
        normal = np.isin(labels[train_idx], class_labels(cache.class_names,
                                                         config.data.train_classes))
        if normal.sum() >= 2:
            scores |= anomaly.latent_scores(train_codes[normal], test_codes)
        result["anomaly"] = anomaly.anomaly_numbers(
            scores.pop("interior_mean"), labels[test_idx], cache.class_names,
            config.data.train_classes, scores, headline=e.anomaly_score)
    with _timed(parts, "latent_metrics"):
        probe = _latent_block(config, train_codes, labels[train_idx], test_codes,
                              labels[test_idx], patients[train_idx])
    probe["test_patients"] = result["data"]["test"]["patients"]
    result["probe"] = probe
    # the baselines read their cells in row order (_pixels and _spot_cells sort the rows)
    train_rows, test_rows = np.sort(train_idx), np.sort(test_idx)
    with _timed(parts, "pca_baseline"):
        pca_train, pca_test = latent.pca_baseline(
            _pixels(cache, train_idx), _pixels(cache, test_idx), int(model.latent_dim), seed
        )
        result["pca_baseline"] = _latent_block(
            config, pca_train, labels[train_rows], pca_test, labels[test_rows],
            patients[train_rows],
        )
    with _timed(parts, "spot_baseline"):
        spot_cache, spot_train, spot_test = _spot_cells(config, cache, source, train_idx,
                                                        test_idx)
        result["spot_baseline"] = _latent_block(
            config, _spots(spot_cache, spot_train), labels[train_rows],
            _spots(spot_cache, spot_test), labels[test_rows], patients[train_rows],
        ) | {"image_size": int(spot_cache.images.shape[-1])}
    view = FamilyEvaluation(
        test_batches=lambda: _batches(cache.images, test_idx, loaded.device),
        test_codes=family_codes, test_losses=reconstruction, eval=e, seed=seed,
        title=displayable(config.name),
    )
    with _timed(parts, "family"):
        family_numbers = model.evaluation_numbers(view)
    if family_numbers:
        if model.family in result or model.family in RESERVED_KEYS:
            raise ValueError(f"a family may not be named {model.family!r}: metrics.json uses it")
        result[model.family] = family_numbers
    columns = list(RECONSTRUCTION_COLUMNS)
    if "anomaly" in result:
        columns += list(anomaly.columns(e.anomaly_score))
    columns += [c for name in e.metrics for c in METRICS.get(name).columns]
    if "accuracy" in result["spot_baseline"]:
        columns += list(SPOT_COLUMNS)
    columns += list(model.report_columns)
    result["columns"] = [c.to_dict() for c in columns]

    maps: dict[str, np.ndarray] = {}
    for method in e.maps:
        with _timed(parts, method):
            maps[method], map_rows = latent.map_embedding(method, test_codes, e.tsne_max_points,
                                                          e.tsne_perplexity, seed)
    shown = test_idx[plots.balanced_pick(labels[test_idx], e.n_reconstructions, seed)]
    with _timed(parts, "reconstruction"):
        reconstructions = to_uint8(loaded.reconstruct(cache.images[shown],
                                                      masks=cache.masks[shown]))
    return Evaluation(
        metrics=result, codes=codes, rows=every, n_train=n_train, maps=maps, map_rows=map_rows,
        test_errors=test_errors,
        shown_rows=shown, reconstructions=reconstructions, family_view=view,
        seconds_by_part=parts,
    )


def draw(evaluation: Evaluation, loaded: LoadedRun, cache: CellCache, figures: Path,
         rows: list[dict[str, float]]) -> list[str]:
    """Every figure of the evaluation into ``figures``, each titled with the run's name, so a
    figure copied into a slide or a report still says where it comes from; returns their names.
    """
    config, model = loaded.config, loaded.model
    seed, run = config.seed, displayable(config.name)
    figures.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(cache.labels)
    patients = np.asarray(cache.patients).astype(str)
    class_names = list(cache.class_names)
    test_idx = evaluation.rows[evaluation.n_train:]
    chosen = test_idx[evaluation.map_rows]
    columns = cell_columns(cache, chosen)
    for method, embedding in evaluation.maps.items():
        title = latent.MAP_TITLES[method]
        plots.plot_latent_tsne(embedding, labels[chosen], class_names, patients[chosen],
                               figures / f"latent_{method}.png", run=run, method=title)
    first, embedding = next(iter(evaluation.maps.items()))
    for column in config.eval.color_by:
        if column not in columns:
            raise CellaeError(f"eval.color_by: no column '{column}' in {config.data.source} "
                              f"(its columns: {', '.join(columns)})")
        plots.plot_latent_by_column(embedding, columns[column], column,
                                    figures / f"latent_{first}_by_{safe_name(column)}.png",
                                    run=run, method=latent.MAP_TITLES[first])
    if config.eval.explorer:
        errors = evaluation.test_errors[evaluation.map_rows]
        explorer.write_explorer(
            figures / "explorer.html", embedding, np.asarray(cache.images[chosen]),
            to_uint8(loaded.reconstruct(cache.images[chosen], masks=cache.masks[chosen])),
            columns | {"interior error": errors}, run=run, method=latent.MAP_TITLES[first],
            channel_names=cache.channel_names)
    rng = np.random.default_rng(seed)
    sample_idx = np.sort(rng.choice(test_idx, size=min(256, len(test_idx)), replace=False))
    plots.plot_inputs(cache.images[sample_idx], labels[sample_idx], class_names,
                      figures / "inputs.png", run=run, seed=seed)
    # an earlier cellae called the inputs samples.png; left beside inputs.png, the old name
    # would read as images the model generated
    (figures / "samples.png").unlink(missing_ok=True)
    shown = evaluation.shown_rows
    plots.plot_reconstructions(np.asarray(cache.images[shown]), evaluation.reconstructions,
                               labels[shown], class_names, figures / "reconstructions.png",
                               run=run)
    if rows:
        finite = [r for r in rows if np.isfinite(r.get("test_loss", np.nan))]
        best = int(min(finite, key=lambda r: r["test_loss"])["epoch"]) if finite else None
        plots.plot_learning_curves(rows, figures / "learning_curves.png", best_epoch=best,
                                   run=run, titles=model.term_titles)
    if "anomaly" in evaluation.metrics:
        originals, masks = np.asarray(cache.images[shown]), np.asarray(cache.masks[shown])
        scores = anomaly.error_scores(originals, evaluation.reconstructions, masks)
        # the headline score where it is one of the reconstruction's; a latent one has no map
        score = config.eval.anomaly_score if config.eval.anomaly_score in scores else "interior_mean"
        plots.plot_error_maps(originals, evaluation.reconstructions, masks, labels[shown],
                              class_names, figures / "error_maps.png", run=run,
                              scores=scores[score], score=anomaly.SCORES[score])
    numbers = evaluation.metrics.get(model.family, {})
    for name in model.figures:
        if name not in FAMILY_FIGURES:
            raise ValueError(f"the '{model.family}' family wants the figure {name!r}, which "
                             f"cellae does not draw; it draws {', '.join(FAMILY_FIGURES)}")
        FAMILY_FIGURES[name](model, evaluation.family_view, numbers, figures)
    # a plug-in family's figures of its own, drawn by the family itself
    model.draw_figures(evaluation.family_view, numbers, figures)
    return sorted(p.name for p in figures.glob("*.png"))


# a traversal moves one latent dimension over these values, the others held at a base code
TRAVERSAL_VALUES = np.linspace(-3.0, 3.0, 9)


@torch.no_grad()
def _prior_samples(model: CellAutoencoder, view: FamilyEvaluation, numbers: dict[str, Any],
                   figures: Path) -> None:
    """Images decoded from draws of the family's prior."""
    generator = torch.Generator(device="cpu").manual_seed(view.seed)
    samples = model.sample(view.eval.n_samples, generator=generator).cpu().numpy()
    plots.plot_image_grid(to_uint8(samples), figures / "prior_samples.png",
                          title="decoded draws from N(0, I)", run=view.title)


@torch.no_grad()
def _traversals(model: CellAutoencoder, view: FamilyEvaluation, numbers: dict[str, Any],
                figures: Path) -> None:
    """Traversals of the dimensions with the highest KL (the family's ``kl_per_dimension``).

    The traversals start from the mean test code, a typical cell, rather than from zero, which
    the codes need not be near; each row is labelled with its KL so that a dimension the model
    does not use (KL near 0) is not read as one with no effect.
    """
    codes = view.test_codes
    kl_dims = np.asarray(numbers["kl_per_dimension"])
    count = min(view.eval.n_traversal_dims, codes.shape[1])
    dims = [int(d) for d in np.argsort(kl_dims)[::-1][:count]]
    base = codes.mean(axis=0)
    device = next(model.parameters()).device
    grid = []
    for d in dims:
        z = np.repeat(base[None], len(TRAVERSAL_VALUES), axis=0)
        z[:, d] = TRAVERSAL_VALUES
        decoded = model.decode(torch.as_tensor(z, dtype=torch.float32, device=device))
        grid.append(to_uint8(decoded.cpu().numpy()))
    plots.plot_traversals(np.stack(grid), dims, TRAVERSAL_VALUES.tolist(),
                          figures / "traversals.png", run=view.title,
                          kl=kl_dims[dims].tolist(), base="the mean test code")


# the figures a family may ask for by name (CellAutoencoder.figures), beside every run's own
FAMILY_FIGURES = {"prior_samples": _prior_samples, "traversals": _traversals}


def cell_columns(cache: CellCache, rows: np.ndarray) -> dict[str, np.ndarray]:
    """What is known of the cells at ``rows``: file, class, patient and every metadata column
    of the source (plate, well, treatment, ...), as arrays the maps can be coloured by."""
    class_names = np.asarray(list(cache.class_names))
    columns = {
        "file": np.asarray(cache.files).astype(str)[rows],
        "class": class_names[np.asarray(cache.labels)[rows]],
        "patient": np.asarray(cache.patients).astype(str)[rows],
    }
    return columns | {name: values[rows] for name, values in cache.metadata.items()}


def metadata_arrays(cache: CellCache, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The source's further columns at ``rows`` as ``latents.npz`` and ``cellae embed``'s .npz
    keep them: ``metadata`` (N, K) strings and their K names, ``metadata_columns``; {} where
    the source has none."""
    if not cache.metadata:
        return {}
    return {"metadata_columns": np.array(list(cache.metadata)),
            "metadata": np.stack([values[rows] for values in cache.metadata.values()],
                                 axis=1).astype(str)}


def write(evaluation: Evaluation, cache: CellCache, out_dir: Path) -> None:
    """``metrics.json``, ``latents.npz`` and the drawn test cells into ``out_dir``."""
    rows, n_train = evaluation.rows, evaluation.n_train
    latents = {
        "codes": evaluation.codes,
        "labels": np.asarray(cache.labels)[rows],
        "patients": np.asarray(cache.patients).astype(str)[rows],
        "files": np.asarray(cache.files).astype(str)[rows],
        "side": np.array(["train"] * n_train + ["test"] * (len(rows) - n_train)),
        "class_names": np.array(list(cache.class_names)),
    }
    latents |= metadata_arrays(cache, rows)  # the source's further columns, one row per code
    for method, embedding in evaluation.maps.items():
        latents[f"map_{method}"] = embedding  # of the test codes at map_rows
    latents["map_rows"] = n_train + evaluation.map_rows
    shown = evaluation.shown_rows
    drawn = {
        "files": np.asarray(cache.files).astype(str)[shown],
        "labels": np.asarray(cache.labels)[shown],
        "class_names": np.array(list(cache.class_names)),
        "originals": np.asarray(cache.images[shown]),
        "reconstructions": evaluation.reconstructions,
    }
    runs.write_evaluation(out_dir, evaluation.metrics, latents, drawn)


def headline(result: dict[str, Any]) -> str:
    rec, probe, pca = result["reconstruction"], result["probe"], result["pca_baseline"]
    parts = [
        f"test loss {rec['loss']:.4g}",
        f"PSNR {rec.get('psnr', float('nan')):.2f} dB (interior {rec.get('psnr_interior', float('nan')):.2f})",
        f"SSIM {rec['ssim']:.3f}",
    ]
    if "accuracy" in probe:
        # beside the rate of always answering the commonest class: the floor an accuracy must beat
        parts.append(f"probe acc {probe['accuracy']:.3f} (majority {_fmt(probe.get('majority_accuracy'))}) "
                     f"AUROC {_fmt(probe.get('auroc'))}")
    if "accuracy" in pca:
        parts.append(f"PCA acc {pca['accuracy']:.3f} AUROC {_fmt(pca.get('auroc'))}")
    spots = result.get("spot_baseline", {})
    if "accuracy" in spots:
        parts.append(f"spot features acc {spots['accuracy']:.3f} AUROC {_fmt(spots.get('auroc'))}")
    if "anomaly" in result:
        score = result["anomaly"].get("score", "interior_mean")
        parts.append(f"anomaly AUROC {_fmt(result['anomaly'].get('auroc'))} "
                     f"({anomaly.SCORES.get(score, score)})")
    family = result.get("family", "")
    for column in result.get("columns", []):
        if column["key"].startswith(f"{family}."):
            value = result.get(family, {}).get(column["key"].split(".", 1)[1])
            if isinstance(value, int | float):
                parts.append(f"{column['title']} {value:.{column.get('digits', 3)}f}")
    return "; ".join(parts)


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def evaluate_run(run_dir: Path, data: str | None = None, quiet: bool = False,
                 cache_dir: str | None = None) -> dict[str, Any]:
    """Write the figures, ``metrics.json`` and ``latents.npz`` of a run; return the numbers.

    With ``data``, evaluate on another source: its images are preprocessed the run's way,
    split by patient with the run's seed, and the output goes to ``eval/<source-name>/``.
    A cache it needs is built in ``cache_dir`` (see :func:`cellae.api.load_run`).
    """
    run_dir = runs.require_run_dir(run_dir)
    remove_stale_temporaries(run_dir)  # what an evaluation killed midway left half written
    loaded = load_run(run_dir, cache_dir=cache_dir)
    if torch.cuda.is_available():
        loaded.to("cuda")
    loaded = dataclasses.replace(loaded, model=loaded.model.inference_copy())
    config = loaded.config
    if data is None:
        cache = run_cache(run_dir, config)
        train_idx, test_idx = split_rows(run_dir, cache)
        rows = runs.read_metrics(run_dir)
        source = config.data.source
    else:
        cache = source_cache(config, data, channels=loaded.model.channels)
        train_idx, test_idx = split_indices(
            cache.patients, cache.labels, config.data.test_fraction, config.seed, by="patient"
        )
        rows = []
        source = data
    expected = (config.data.image_size, config.data.image_size)
    if tuple(cache.images.shape[2:]) != expected:
        raise CellaeError(f"cache {cache.path} holds {cache.images.shape[2:]} images, the run expects {expected}")
    out_dir = runs.eval_dir(run_dir, data)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    evaluation = compute(loaded, cache, train_idx, test_idx, source)
    parts = evaluation.seconds_by_part
    with _timed(parts, "figures"):
        evaluation.metrics["figures"] = draw(evaluation, loaded, cache,
                                             runs.figures_dir(run_dir, data), rows)
    evaluation.metrics["seconds"] = round(time.perf_counter() - started, 2)
    evaluation.metrics["seconds_by_part"] = parts
    write(evaluation, cache, out_dir)
    if data is None and runs.read_status(run_dir) == "trained":
        # trained in full and now evaluated: what training's own evaluation would have left
        runs.set_status(run_dir, "finished")
    result = evaluation.metrics
    if not quiet:
        print(f"{run_dir.name}: {headline(result)}  [{result['seconds']:.1f} s]")
    return result


__all__ = ["FAMILY_FIGURES", "Evaluation", "compute", "draw", "evaluate_run", "headline", "write"]
