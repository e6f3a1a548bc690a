"""cellae: autoencoders and VAEs for single-cell microscopy images."""

from cellae.errors import CellaeError

__version__ = "0.1.0"

__all__ = ["CellaeError", "__version__", "load_run"]


def load_run(path):  # noqa: ANN001, ANN201 - re-exported lazily to keep `import cellae` light
    """Open a finished run folder; see :func:`cellae.runs.load_run`."""
    from cellae.runs import load_run as _load_run

    return _load_run(path)
