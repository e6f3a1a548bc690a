"""Evaluate a run folder: figures, reconstruction and latent-space numbers, latent codes.

Evaluation reads only the run folder (its config, split, checkpoint and metrics) and the
cache its data summary names, so a run can be moved and evaluated again.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellae import plots, runs
from cellae.config import Config
from cellae.data.cache import CellCache, open_cache, prepare_cache
from cellae.data.splits import split_indices
from cellae.errors import CellaeError
from cellae.evaluation import latent, metrics

BATCH = 256


def _source_cache(config: Config, source: str | None) -> CellCache:
    """The run's own cache (rebuilt if it was deleted), or ``source`` preprocessed the run's way."""
    if source is None:
        return prepare_cache(config.data, progress=sys.stderr.isatty())
    data = dataclasses.replace(config.data, source=source)
    if source != "synthetic" and not Path(source).expanduser().exists():
        raise CellaeError(f"no such file or folder: {source}")
    return prepare_cache(data, progress=sys.stderr.isatty())


def _run_cache(run_dir: Path, config: Config) -> CellCache:
    recorded = runs.read_run_info(run_dir).get("data", {}).get("cache")
    if recorded and Path(recorded).is_dir():
        try:
            return open_cache(Path(recorded))
        except CellaeError:
            pass
    return _source_cache(config, None)


def _split_from_run(run_dir: Path, cache: CellCache) -> tuple[np.ndarray, np.ndarray]:
    """The run's own split, read from ``split.json`` and matched to the cache by file name."""
    split = json.loads((run_dir / runs.SPLIT_FILE).read_text(encoding="utf-8"))
    position = {name: i for i, name in enumerate(np.asarray(cache.files).tolist())}
    sides = []
    for side in ("train", "test"):
        names = split[side]
        missing = [n for n in names if n not in position]
        if missing:
            raise CellaeError(
                f"{len(missing)} {side} images of {run_dir} are not in the data any more "
                f"(first: {missing[0]}); evaluate on a source with --data instead"
            )
        sides.append(np.sort(np.array([position[n] for n in names], dtype=np.int64)))
    return sides[0], sides[1]


@torch.no_grad()
def _encode(model: torch.nn.Module, images: np.ndarray, device: torch.device) -> dict[str, np.ndarray]:
    """Posterior means (and log variances for a VAE) of uint8 images, in batches."""
    mus, log_vars = [], []
    for start in range(0, len(images), BATCH):
        x = torch.from_numpy(np.asarray(images[start:start + BATCH])).to(device).float() / 255.0
        output = model(x)
        mus.append((output.mu if output.mu is not None else output.z).cpu())
        if output.log_var is not None:
            log_vars.append(output.log_var.cpu())
    result = {"codes": torch.cat(mus).numpy()}
    if log_vars:
        result["log_var"] = torch.cat(log_vars).numpy()
    return result


@torch.no_grad()
def _reconstruction_numbers(model: Any, cache: CellCache, idx: np.ndarray, device: torch.device) -> dict[str, Any]:
    """Losses and image-quality numbers of the test side, accumulated batch by batch."""
    totals: dict[str, float] = {}
    psnr_parts: list[dict[str, Any]] = []
    ssim_values = []
    n = 0
    for start in range(0, len(idx), BATCH):
        rows = idx[start:start + BATCH]
        x = torch.from_numpy(np.asarray(cache.images[rows])).to(device).float() / 255.0
        mask = torch.from_numpy(np.asarray(cache.masks[rows])).to(device).float().unsqueeze(1)
        output = model(x)
        losses = model.loss(x, mask, output, kl_weight=1.0)
        for key, value in losses.items():
            totals[key] = totals.get(key, 0.0) + float(value) * len(rows)
        original = x.cpu().numpy()
        recon = output.recon.cpu().numpy()
        psnr_parts.append(metrics.mse_psnr(original, recon, np.asarray(cache.masks[rows])) | {"n": len(rows)})
        ssim_values.append(metrics.ssim(original, recon) * len(rows))
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
    return result


def _probe_block(train_codes: np.ndarray, train_labels: np.ndarray, test_codes: np.ndarray,
                 test_labels: np.ndarray, k: int, seed: int) -> dict[str, Any]:
    probe = latent.linear_probe(train_codes, train_labels, test_codes, test_labels, seed=seed)
    probe["knn_accuracy"] = latent.knn_accuracy(train_codes, train_labels, test_codes, test_labels, k=k)
    probe["knn_k"] = k
    probe["silhouette"] = latent.silhouette_by_class(test_codes, test_labels, seed=seed)
    return probe


def _pixels(cache: CellCache, idx: np.ndarray) -> np.ndarray:
    return np.asarray(cache.images[np.sort(idx)]).reshape(len(idx), -1).astype(np.float32) / 255.0


def _evaluate(loaded: runs.LoadedRun, run_dir: Path, cache: CellCache, train_idx: np.ndarray,
              test_idx: np.ndarray, out_dir: Path, rows: list[dict[str, float]], source: str) -> dict[str, Any]:
    config = loaded.config
    e = config.eval
    seed = config.seed
    model, device = loaded.model, loaded.device
    figures = out_dir / "figures" if out_dir != run_dir / runs.EVAL_DIR else run_dir / runs.FIGURES_DIR
    figures.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    labels = np.asarray(cache.labels)
    patients = np.asarray(cache.patients).astype(str)
    class_names = list(cache.class_names)

    every = np.concatenate([train_idx, test_idx])
    encoded = _encode(model, _Rows(cache.images, every), device)
    codes = encoded["codes"]
    n_train = len(train_idx)
    train_codes, test_codes = codes[:n_train], codes[n_train:]

    result: dict[str, Any] = {
        "source": source,
        "family": model.family,
        "latent_dim": int(model.latent_dim),
        "data": {
            side: {
                "images": int(len(idx)),
                "patients": int(len(set(patients[idx].tolist()))),
                "per_class": {n: int((labels[idx] == i).sum()) for i, n in enumerate(class_names)},
            }
            for side, idx in (("train", train_idx), ("test", test_idx))
        },
    }
    result["reconstruction"] = _reconstruction_numbers(model, cache, test_idx, device)
    if model.family == "vae":
        test_log_var = encoded["log_var"][n_train:]
        kl_dims = metrics.kl_per_dimension(test_codes, test_log_var)
        result["vae"] = {
            "elbo": -(result["reconstruction"]["recon"] + result["reconstruction"]["kl"]),
            "recon": result["reconstruction"]["recon"],
            "kl": result["reconstruction"]["kl"],
            "kl_per_dimension": kl_dims.tolist(),
            "active_units": int(metrics.active_units(test_codes)),
        }
    probe = _probe_block(train_codes, labels[train_idx], test_codes, labels[test_idx], e.knn_k, seed)
    probe["test_patients"] = result["data"]["test"]["patients"]
    result["probe"] = probe
    pca_train, pca_test = latent.pca_baseline(
        _pixels(cache, train_idx), _pixels(cache, test_idx), int(model.latent_dim), seed
    )
    result["pca_baseline"] = _probe_block(
        pca_train, labels[np.sort(train_idx)], pca_test, labels[np.sort(test_idx)], e.knn_k, seed
    )

    embedding, chosen = latent.tsne_embedding(test_codes, e.tsne_max_points, e.tsne_perplexity, seed)
    plots.plot_latent_tsne(
        embedding, labels[test_idx][chosen], class_names, patients[test_idx][chosen],
        figures / "latent_tsne.png",
        title=f"{config.name}: t-SNE of test latent codes ({len(chosen)} images)",
    )
    rng = np.random.default_rng(seed)
    sample_idx = np.sort(rng.choice(test_idx, size=min(256, len(test_idx)), replace=False))
    plots.plot_samples(cache.images[sample_idx], labels[sample_idx], class_names,
                       figures / "samples.png", seed=seed)
    picked = _balanced_pick(labels, test_idx, e.n_reconstructions, seed)
    plots.plot_reconstructions(
        np.asarray(cache.images[picked]), (loaded.reconstruct(cache.images[picked]) * 255).round().astype(np.uint8),
        labels[picked], class_names, figures / "reconstructions.png",
    )
    if rows:
        finite = [r for r in rows if np.isfinite(r.get("test_loss", np.nan))]
        best = int(min(finite, key=lambda r: r["test_loss"])["epoch"]) if finite else None
        plots.plot_learning_curves(rows, figures / "learning_curves.png", best_epoch=best)
    if model.family == "vae":
        generator = torch.Generator(device="cpu").manual_seed(seed)
        with torch.no_grad():
            samples = model.sample(e.n_samples, generator=generator).cpu().numpy()
        plots.plot_image_grid((samples * 255).round().astype(np.uint8), figures / "prior_samples.png",
                              title=f"{config.name}: decoded draws from N(0, I)")
        _traversals(loaded, test_codes, result["vae"]["kl_per_dimension"], e.n_traversal_dims,
                    figures / "traversals.png")

    np.savez_compressed(
        _tmp_npz(out_dir / "latents.npz"),
        codes=codes, labels=labels[every], patients=patients[every],
        files=np.asarray(cache.files).astype(str)[every],
        side=np.array(["train"] * n_train + ["test"] * len(test_idx)),
        class_names=np.array(class_names),
    )
    _tmp_npz(out_dir / "latents.npz").replace(out_dir / "latents.npz")
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["figures"] = sorted(p.name for p in figures.glob("*.png"))
    runs.write_json(out_dir / "metrics.json", result)
    return result


class _Rows:
    """Rows of a memory-mapped array, read a batch at a time so memory stays flat."""

    def __init__(self, array: np.ndarray, rows: np.ndarray) -> None:
        self.array, self.rows = array, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, part: slice) -> np.ndarray:
        return np.asarray(self.array[self.rows[part]])


def _tmp_npz(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp.npz")


def _balanced_pick(labels: np.ndarray, idx: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` test images, alternating classes, chosen by seed."""
    rng = np.random.default_rng(seed)
    pools = [rng.permutation(idx[labels[idx] == c]).tolist() for c in np.unique(labels[idx])]
    picked: list[int] = []
    while len(picked) < min(n, len(idx)):
        for pool in pools:
            if pool and len(picked) < n:
                picked.append(pool.pop())
    return np.array(picked, dtype=np.int64)


def _traversals(loaded: runs.LoadedRun, codes: np.ndarray, kl_dims: list[float], n_dims: int, path: Path) -> None:
    """Sweep the most informative latent dimensions (highest KL) from -3 to 3 around the mean code."""
    dims = [int(d) for d in np.argsort(kl_dims)[::-1][:min(n_dims, codes.shape[1])]]
    values = np.linspace(-3.0, 3.0, 9)
    base = codes.mean(axis=0)
    grid = []
    for d in dims:
        z = np.repeat(base[None], len(values), axis=0)
        z[:, d] = values
        grid.append((loaded.decode(z) * 255).round().astype(np.uint8))
    plots.plot_traversals(np.stack(grid), dims, values.tolist(), path)


def headline(result: dict[str, Any]) -> str:
    rec, probe, pca = result["reconstruction"], result["probe"], result["pca_baseline"]
    parts = [
        f"test loss {rec['loss']:.4g}",
        f"PSNR {rec.get('psnr', float('nan')):.2f} dB (interior {rec.get('psnr_interior', float('nan')):.2f})",
        f"SSIM {rec['ssim']:.3f}",
        f"probe acc {probe['accuracy']:.3f} AUROC {_fmt(probe.get('auroc'))}",
        f"PCA acc {pca['accuracy']:.3f} AUROC {_fmt(pca.get('auroc'))}",
    ]
    if "vae" in result:
        parts.append(f"active units {result['vae']['active_units']}/{result['latent_dim']}")
    return "; ".join(parts)


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def evaluate_run(run_dir: Path, data: str | None = None, quiet: bool = False) -> dict[str, Any]:
    """Write the figures, ``metrics.json`` and ``latents.npz`` of a run; return the numbers.

    With ``data``, evaluate on another source: its images are preprocessed the run's way,
    split by patient with the run's seed, and the output goes to ``eval/<source-name>/``.
    """
    run_dir = runs.require_run_dir(run_dir)
    loaded = runs.load_run(run_dir)
    if torch.cuda.is_available():
        loaded.to("cuda")
    config = loaded.config
    if data is None:
        cache = _run_cache(run_dir, config)
        train_idx, test_idx = _split_from_run(run_dir, cache)
        out_dir = run_dir / runs.EVAL_DIR
        rows = runs.read_metrics(run_dir)
        source = config.data.source
    else:
        cache = _source_cache(config, data)
        train_idx, test_idx = split_indices(
            cache.patients, cache.labels, config.data.test_fraction, config.seed, by="patient"
        )
        out_dir = run_dir / runs.EVAL_DIR / runs.source_name(data)
        rows = []
        source = data
    expected = (config.data.image_size, config.data.image_size)
    if tuple(cache.images.shape[2:]) != expected:
        raise CellaeError(f"cache {cache.path} holds {cache.images.shape[2:]} images, the run expects {expected}")
    out_dir.mkdir(parents=True, exist_ok=True)
    result = _evaluate(loaded, run_dir, cache, train_idx, test_idx, out_dir, rows, source)
    if not quiet:
        print(f"{run_dir.name}: {headline(result)}  [{result['seconds']:.1f} s]")
    return result


def embed_source(run_dir: Path, source: str, out: Path) -> Path:
    """Write the latent codes of every image of ``source`` to ``out`` (.npz, .csv or .parquet)."""
    suffix = out.suffix.lower()
    if suffix not in (".npz", ".csv", ".parquet"):
        raise CellaeError(f"--out must end in .npz, .csv or .parquet, got '{out.name}'")
    loaded = runs.load_run(runs.require_run_dir(run_dir))
    cache = _source_cache(loaded.config, source)
    codes = _encode(loaded.model, cache.images, loaded.device)["codes"]
    class_names = np.asarray(cache.class_names)
    labels = np.asarray(cache.labels)
    columns = {
        "file": np.asarray(cache.files).astype(str),
        "label": labels,
        "class": class_names[labels],
        "patient": np.asarray(cache.patients).astype(str),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npz":
        tmp = _tmp_npz(out)
        # plural keys, as in eval/latents.npz (and "file" would collide with savez's own argument)
        np.savez_compressed(tmp, codes=codes, class_names=class_names, files=columns["file"],
                            labels=labels, classes=columns["class"], patients=columns["patient"])
        tmp.replace(out)
        return out
    table = dict(columns) | {f"z{i}": codes[:, i] for i in range(codes.shape[1])}
    if suffix == ".csv":
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(list(table))
        writer.writerows(zip(*[np.asarray(v).tolist() for v in table.values()], strict=True))
        runs.write_atomic(out, buffer.getvalue())
        return out
    try:
        import pandas as pd
    except ModuleNotFoundError as exc:
        raise CellaeError("writing .parquet needs pandas and pyarrow: pip install 'cellae[parquet]'") from exc
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        pd.DataFrame(table).to_parquet(tmp, index=False)
    except ImportError as exc:
        raise CellaeError("writing .parquet needs pyarrow: pip install 'cellae[parquet]'") from exc
    tmp.replace(out)
    return out


__all__ = ["embed_source", "evaluate_run", "headline"]
