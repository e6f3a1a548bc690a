"""cellae: autoencoders and VAEs for single-cell microscopy images."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cellae.errors import CellaeError

if TYPE_CHECKING:
    from pathlib import Path

    from cellae.api import LoadedRun

__version__ = "0.1.0"

__all__ = ["CellaeError", "__version__", "load_run"]


def load_run(path: str | Path, checkpoint: str = "best", cache_dir: str | None = None) -> LoadedRun:
    """Open a finished run folder; see :func:`cellae.api.load_run` (imported on first use, to
    keep ``import cellae`` light)."""
    from cellae.api import load_run as _load_run

    return _load_run(path, checkpoint=checkpoint, cache_dir=cache_dir)
