"""What a run was made from, rebuilt from its folder: its config (with the plug-ins it names
imported), the cache of its images and the rows of each side of its split.

Above the run folder's format (:mod:`cellae.runs`, which reads config.yaml only as plain
values, so that a report never imports a model) and the data package: the run folder names
its cache and its split by file name; this finds them in a cache, rebuilding it where it is
gone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from cellae import runs
from cellae.config import Config, config_from_dict, from_older_cellae
from cellae.data.cache import FORMAT_VERSION, CellCache, open_cache, prepare_cache
from cellae.errors import CellaeError


def read_config(run_dir: Path) -> Config:
    """The run's config, built and checked; a plug-in it names (family, loss, metric) is imported.

    A run of cellae 0.1.0 (one flat model section) is read as it was meant.
    """
    # the data may have moved since training; evaluation says so when it needs the images
    return config_from_dict(from_older_cellae(runs.read_config_values(run_dir)), check_paths=False)


def run_cache(run_dir: Path, config: Config) -> CellCache:
    """The cache the run was trained on (rebuilt from its data config if it was deleted)."""
    data = runs.read_run_info(run_dir).get("data", {})
    recorded = data.get("cache") if isinstance(data, dict) else None
    if recorded and Path(recorded).is_dir():
        try:
            return open_cache(Path(recorded))
        except CellaeError:
            pass
    warn_if_older_images(run_dir, config)
    return prepare_cache(config.data, progress=sys.stderr.isatty())


def warn_if_older_images(run_dir: Path, config: Config) -> None:
    """Say so when the run's images are rebuilt by a cellae that preprocesses them differently."""
    data = runs.read_run_info(run_dir).get("data", {})
    trained = data.get("cache_format") if isinstance(data, dict) else None
    # cache format 3 paints fill_mean's rim wider; a keep run's images did not change
    if trained != FORMAT_VERSION and config.data.background != "keep":
        print(f"warning: {run_dir.name} was trained on images of an older cellae (cache format "
              f"{trained or 'before 3'}); they are rebuilt with this one's preprocessing, whose "
              f"fill_mean rim is wider", file=sys.stderr)


def split_rows(run_dir: Path, cache: CellCache) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``cache`` on each side of the run's split, matched by file name."""
    split = runs.read_split(run_dir)
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
