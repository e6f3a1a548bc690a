"""A run's images: the cache it was trained on, and the rows of each side of its split.

Above the run folder (:mod:`cellae.runs`) and the data package: the run folder names its cache
and its split by file name; this finds them in a cache, rebuilding it where it is gone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from cellae import runs
from cellae.config import Config
from cellae.data.cache import FORMAT_VERSION, CellCache, open_cache, prepare_cache
from cellae.errors import CellaeError


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
