"""How long the cache takes to build and to reuse, its peak memory, and what it saves per batch.

    python benchmarks/cache_build.py [SOURCE] [--size 64] [--background keep]

SOURCE defaults to the malaria sample beside the project (``../shared/data/malaria-sample``);
the benchmark says so and stops where it is absent. Everything is measured in one run, side by
side, because the machines are shared: the numbers to compare are the ratios.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import get_args

import numpy as np

from cellae.config import BackgroundMode, DataConfig
from cellae.data.cache import prepare_cache
from cellae.data.preprocess import PreprocessSettings, preprocess
from cellae.data.sources import open_source

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "malaria-sample" / "cell_images"
BATCH = 128


def peak_mb() -> tuple[float, float]:
    """Peak resident memory of this process and of its largest finished child, in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def main() -> int:
    defaults = DataConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", default=str(SAMPLE))
    parser.add_argument("--size", type=int, default=defaults.image_size)
    parser.add_argument("--background", default=defaults.background,
                        choices=get_args(BackgroundMode))
    parser.add_argument("--workers", type=int, default=defaults.workers, help="0: all cores")
    args = parser.parse_args()
    if args.source != "synthetic" and not Path(args.source).exists():
        print(f"skipped: no data at {args.source} (the malaria sample lies beside the project)")
        return 0
    with tempfile.TemporaryDirectory() as cache_dir:
        data = DataConfig(source=args.source, image_size=args.size, background=args.background,
                          cache_dir=cache_dir, workers=args.workers)
        started = time.perf_counter()
        cache = prepare_cache(data, progress=False)
        cold = time.perf_counter() - started
        own, children = peak_mb()
        started = time.perf_counter()
        again = prepare_cache(data, progress=False)
        reuse = time.perf_counter() - started
        assert again.path == cache.path
        size_mb = (cache.images.nbytes + cache.masks.nbytes) / 1e6

        # one batch cut from the cache against the same batch decoded and preprocessed from files
        rng = np.random.default_rng(0)
        rows = np.sort(rng.choice(len(cache), size=min(BATCH, len(cache)), replace=False))
        source = open_source(data)
        position = {name: i for i, name in enumerate(source.files)}
        settings = PreprocessSettings.from_config(data)
        started = time.perf_counter()
        for row in rows:
            preprocess(source.load(position[str(cache.files[row])]), settings)
        decode = time.perf_counter() - started
        repeats = 50
        started = time.perf_counter()
        for _ in range(repeats):
            np.asarray(cache.images[rows]), np.asarray(cache.masks[rows])
        gather = (time.perf_counter() - started) / repeats

    print(f"source: {args.source} ({len(cache)} images, {args.size} px, {args.background}, "
          f"{cache.meta['workers']} build processes)")
    print(f"cold build: {cold:.2f} s ({len(cache) / cold:.0f} images/s), arrays {size_mb:.1f} MB")
    print(f"reuse: {reuse * 1000:.0f} ms  (cold / reuse = {cold / reuse:.0f}x)")
    print(f"peak memory: {own:.0f} MB in the building process, {children:.0f} MB in its largest worker")
    print(f"one batch of {len(rows)}: {decode * 1000:.1f} ms decoding PNGs, {gather * 1000:.2f} ms "
          f"from the cache (decode / cache = {decode / gather:.0f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
