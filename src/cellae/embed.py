"""``cellae embed``: the latent codes of every image of a source, with each image's metadata,
as .npz, .csv, .parquet or .h5ad (AnnData, for scanpy)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from cellae import runs
from cellae.api import load_run
from cellae.config import SYNTHETIC, Config
from cellae.errors import CellaeError
from cellae.evaluate import cell_columns, encode_images, metadata_arrays, source_cache
from cellae.files import remove_stale_temporaries, temporary_path

EMBED_SUFFIXES = (".npz", ".csv", ".parquet", ".h5ad")


def side_of_each_image(run_dir: Path, config: Config, source: str, files: np.ndarray) -> np.ndarray:
    """Each image's side of the run's split ("train" or "test"), or "unseen": from another
    source, or not in the split."""
    own = source == config.data.source or (
        source != SYNTHETIC and config.data.source != SYNTHETIC
        and Path(source).expanduser().resolve() == Path(config.data.source).expanduser().resolve()
    )
    sides = np.full(len(files), "unseen", dtype=object)
    if own:
        split = runs.read_split(run_dir)
        side_of = {name: side for side in ("train", "test") for name in split[side]}
        sides = np.array([side_of.get(name, "unseen") for name in files.tolist()], dtype=object)
    return sides.astype(str)


def embed_source(run_dir: Path, source: str, out: Path, overwrite: bool = False) -> Path:
    """Write the latent codes of every image of ``source`` to ``out`` (.npz, .csv, .parquet, or
    .h5ad for AnnData / scanpy), with each image's file, class, patient and side of the split.

    An existing ``out`` is replaced only with ``overwrite``: it may be codes of another run.
    """
    suffix = out.suffix.lower()
    if suffix not in EMBED_SUFFIXES:
        raise CellaeError(f"--out must end in {', '.join(EMBED_SUFFIXES)}, got '{out.name}'")
    if out.is_dir():
        raise CellaeError(f"--out {out} is a folder; name a file in it")
    if out.is_symlink():
        raise CellaeError(f"--out {out} is a link; name a plain file (cellae does not write "
                          "through links)")
    if out.exists() and not overwrite:
        raise CellaeError(f"{out} exists; pass --overwrite to replace it")
    if any(parent.is_file() for parent in out.parents):
        raise CellaeError(f"--out {out} lies under a file, not a folder")
    run_dir = runs.require_run_dir(run_dir)
    remove_stale_temporaries(out.parent, depth=0)
    loaded = load_run(run_dir)
    cache = source_cache(loaded.config, source, channels=loaded.model.channels)
    codes = encode_images(loaded.model.inference_copy(), cache.images,
                          views=loaded.config.eval.code_views, masks=cache.masks)
    class_names = np.asarray(cache.class_names)
    labels = np.asarray(cache.labels)
    every = np.arange(len(cache))
    known = cell_columns(cache, every)  # file, class, patient, then the source's metadata
    files = known.pop("file")
    columns = {"file": files, "label": labels, "class": known.pop("class"),
               "patient": known.pop("patient"),
               "side": side_of_each_image(run_dir, loaded.config, source, files), **known}
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npz":
        buffer = io.BytesIO()
        # plural keys, as in eval/latents.npz (and "file" would collide with savez's own argument)
        metadata = metadata_arrays(cache, every)
        np.savez_compressed(buffer, codes=codes, class_names=class_names, files=columns["file"],
                            labels=labels, classes=columns["class"], patients=columns["patient"],
                            sides=columns["side"], **metadata)
        runs.write_atomic(out, buffer.getvalue())
        return out
    if suffix == ".h5ad":
        return _write_anndata(out, codes, columns, loaded.config.name)
    table = dict(columns) | {f"z{i}": codes[:, i] for i in range(codes.shape[1])}
    if suffix == ".csv":
        import csv

        buffer = io.StringIO()
        # RFC 4180's line ends: with them csv quotes a field holding \r or \n (a file name may),
        # where with "\n" alone a bare \r would end a row for most readers
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(list(table))
        writer.writerows(zip(*[np.asarray(v).tolist() for v in table.values()], strict=True))
        runs.write_atomic(out, buffer.getvalue())
        return out
    try:
        import pandas as pd
    except ModuleNotFoundError as exc:
        raise CellaeError("writing .parquet needs pandas and pyarrow: pip install 'cellae[parquet]'") from exc
    tmp = temporary_path(out)
    try:
        pd.DataFrame(table).to_parquet(tmp, index=False)
        tmp.replace(out)
    except ImportError as exc:
        raise CellaeError("writing .parquet needs pyarrow: pip install 'cellae[parquet]'") from exc
    finally:
        tmp.unlink(missing_ok=True)  # left only by a failed write
    return out


def _write_anndata(out: Path, codes: np.ndarray, columns: dict[str, np.ndarray], run_name: str) -> Path:
    """Codes as ``X`` (cells x latent dimensions) and in ``obsm["X_cellae"]`` (for
    ``sc.pp.neighbors(adata, use_rep="X_cellae")``), the rest as ``obs``: a metadata column
    whose every value is a number as numbers, any other as a category."""
    try:
        import anndata
        import pandas as pd
    except ModuleNotFoundError as exc:
        raise CellaeError("writing .h5ad needs anndata: pip install 'cellae[anndata]'") from exc
    obs = pd.DataFrame({k: v for k, v in columns.items() if k != "file"},
                       index=pd.Index(columns["file"], name="file"))
    for key in obs.columns:
        if key == "label":
            continue
        numbers = pd.to_numeric(obs[key], errors="coerce")
        if key not in ("class", "patient", "side") and numbers.notna().all():
            obs[key] = numbers
        else:
            obs[key] = obs[key].astype(str).astype("category")
    var = pd.DataFrame(index=[f"z{i}" for i in range(codes.shape[1])])
    adata = anndata.AnnData(X=codes.astype(np.float32), obs=obs, var=var,
                            obsm={"X_cellae": codes.astype(np.float32)},
                            uns={"cellae_run": run_name})
    tmp = temporary_path(out)
    try:
        adata.write_h5ad(tmp)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


__all__ = ["EMBED_SUFFIXES", "embed_source"]
